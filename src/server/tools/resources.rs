//! Resource tools: allocate pools and locks all or nothing, release and renew
//! allocations, list them, and see pools, locks and quotas.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::resources::{AllocateRequest, AllocationPage, AllocationView, ResourceStatus};
use crate::engine::workflows::spec::Priority;
use crate::error::Error;
use crate::server::{MyrmexServer, args::Args, principal};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocateArgs {
    /// What to hold, all or nothing: whole amounts per pool (or the original's nested form, {"cpu": {"cores": 2}}) and locks.
    #[schemars(schema_with = "crate::engine::resources::allocation_schema")]
    pub requirements: Value,
    /// A label for the holder, shown to others who wait (the original's user_id; default: your principal).
    #[serde(default)]
    pub user_id: Option<String>,
    /// The owning session (closing it releases the allocation); omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Lease: the allocation is reclaimed unless renewed within this many seconds (default 300).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Wait up to this many seconds for the resources; 0 (default) answers at once.
    #[serde(default)]
    pub wait_seconds: Option<u64>,
    /// Order among waiting requests (default normal).
    #[serde(default)]
    pub priority: Priority,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseArgs {
    /// The allocation to release (`alc_...`). Omit and set `all_of_session` to release a whole session's.
    #[serde(default)]
    pub allocation_id: Option<String>,
    /// True: release every allocation of the session (session_id, or your default session).
    #[serde(default)]
    pub all_of_session: bool,
    /// The session, with all_of_session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewArgs {
    /// The allocation (`alc_...`).
    pub allocation_id: String,
    /// New lease from now, in seconds (default 300).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// Allocation statuses, for filters.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(inline)]
pub enum AllocationStatus {
    Active,
    Released,
    Expired,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListAllocationsArgs {
    /// Only this session's allocations.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Only allocations in this status.
    #[serde(default)]
    pub status: Option<AllocationStatus>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceStatusArgs {
    /// The session whose quota use to show; omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// Allocations released.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Released {
    /// How many allocations were released.
    pub released: usize,
    /// The released allocation, when one was named.
    pub allocation: Option<AllocationView>,
}

#[tool_router(router = resources_router, vis = "pub(crate)")]
impl MyrmexServer {
    #[tool(
        name = "allocate_resources",
        description = "Hold pool amounts (cpu, memory_mb, disk_mb, gpu, custom) and locks (read/write/exclusive) all or nothing, under quotas, with a renewable lease. wait_seconds waits (priority, then arrival). Answers the allocation, or RESOURCE_UNAVAILABLE with what is short and who holds it.",
        annotations(
            title = "Allocate resources",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn allocate_resources(
        &self,
        Parameters(args): Parameters<Args<AllocateArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<super::Answer<AllocationView>>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let request = AllocateRequest {
            requirements: a.requirements,
            user_id: a.user_id,
            session_id: a.session_id,
            ttl_seconds: a.ttl_seconds,
            wait_seconds: a.wait_seconds,
            priority: a.priority,
        };
        // A client that cancels the call (or disconnects) stops waiting.
        Ok(Json(super::Answer::done(
            self.engine.allocate(&p, request, &ctx.ct).await?,
        )))
    }

    #[tool(
        name = "release_resources",
        description = "Release one allocation (allocation_id), or every allocation of a session (all_of_session: true). Waiting requests are served at once.",
        annotations(
            title = "Release resources",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn release_resources(
        &self,
        Parameters(args): Parameters<Args<ReleaseArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Released>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        match (a.allocation_id, a.all_of_session) {
            (Some(id), false) => {
                let v = self
                    .engine
                    .resources()
                    .release(p.name(), &id, "released by its holder")
                    .await?;
                Ok(Json(Released {
                    released: 1,
                    allocation: Some(v),
                }))
            }
            (None, true) => {
                let session = self
                    .engine
                    .sessions()
                    .resolve(&p, a.session_id.as_deref())
                    .await?;
                let n = self
                    .engine
                    .resources()
                    .release_session(&session.session_id, "released by its holder")
                    .await?;
                Ok(Json(Released {
                    released: n,
                    allocation: None,
                }))
            }
            _ => Err(Error::invalid(
                "give either allocation_id or all_of_session: true",
                "Release one allocation by id, or all of a session with all_of_session: true (and session_id).",
            )),
        }
    }

    #[tool(
        name = "renew_allocation",
        description = "Extend an allocation's lease from now (ttl_seconds). An allocation whose lease ended was reclaimed and cannot be renewed.",
        annotations(
            title = "Renew allocation",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn renew_allocation(
        &self,
        Parameters(args): Parameters<Args<RenewArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<AllocationView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let ttl = self.engine.resources().ttl(a.ttl_seconds)?;
        Ok(Json(
            self.engine
                .resources()
                .renew(p.name(), &a.allocation_id, ttl)
                .await?,
        ))
    }

    #[tool(
        name = "list_allocations",
        description = "Your allocations, newest first: granted amounts, locks, owner (api, step, task, claim, run), status and lease. Filter by session and status; paginated.",
        annotations(
            title = "List allocations",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_allocations(
        &self,
        Parameters(args): Parameters<Args<ListAllocationsArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<AllocationPage>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let status = a.status.map(|s| match s {
            AllocationStatus::Active => crate::model::AllocationStatus::Active,
            AllocationStatus::Released => crate::model::AllocationStatus::Released,
            AllocationStatus::Expired => crate::model::AllocationStatus::Expired,
        });
        Ok(Json(
            self.engine
                .list_allocations(
                    &p,
                    a.session_id.as_deref(),
                    status,
                    a.cursor.as_deref(),
                    a.limit,
                )
                .await?,
        ))
    }

    #[tool(
        name = "get_resource_status",
        description = "Every pool's capacity, allocated, available, utilization and waiters; your held locks' holders and mode (other principals' as counts); your principal's and session's quota use.",
        annotations(
            title = "Resource status",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_resource_status(
        &self,
        Parameters(args): Parameters<Args<ResourceStatusArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ResourceStatus>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let session = match &a.session_id {
            Some(id) => self.engine.sessions().get(&p, id).await?,
            None => self.engine.sessions().resolve(&p, None).await?,
        };
        Ok(Json(
            self.engine
                .resources()
                .status(p.name(), &session.session_id, self.engine.is_admin(&p))
                .await,
        ))
    }
}

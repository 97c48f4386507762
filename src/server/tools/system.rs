//! System tools: health checks and server status.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::engine::observe::events::{EventPage, EventQuery};
use crate::engine::observe::system::{HealthReport, StatusOptions, SystemStatus};
use crate::error::Error;
use crate::server::{MyrmexServer, args::Args, principal};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthArgs {
    /// Optional; when given it must be one of your sessions.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemStatusArgs {
    /// Include per-tool call counters (calls, errors, durations) since the server started.
    #[serde(default)]
    pub include_detailed_metrics: bool,
    /// The original's flag; pool health is always included.
    #[serde(default)]
    pub include_resource_health: bool,
    /// Include your active sessions (at most one page).
    #[serde(default)]
    pub include_active_sessions: bool,
    /// Window for metrics, in hours. Counters cover the time since the server started.
    #[serde(default)]
    pub time_range_hours: Option<u32>,
    /// Also report this session (must be one of yours).
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(inline)]
pub enum EventKind {
    Session,
    Run,
    Step,
    Task,
    Allocation,
    Project,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsArgs {
    /// next_cursor of your last call; omit to start at the oldest kept event.
    #[serde(default)]
    pub since: Option<String>,
    /// Only this session's events (omit: all your sessions and projects).
    #[serde(default)]
    pub session_id: Option<String>,
    /// Only these kinds.
    #[serde(default)]
    pub kinds: Vec<EventKind>,
    /// Only events about this id; a run id also matches its steps.
    #[serde(default)]
    pub subject: Option<String>,
    /// Most events (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[tool_router(router = system_router, vis = "pub(crate)")]
impl MyrmexServer {
    #[tool(
        name = "get_health_status",
        description = "Check the server's health: overall healthy/degraded/unhealthy and per-component checks (store reachable and writable, background tasks alive).",
        annotations(
            title = "Health status",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_health_status(
        &self,
        Parameters(args): Parameters<Args<HealthArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<super::Answer<HealthReport>>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        if let Some(id) = &a.session_id {
            self.engine.sessions().get(&p, id).await?;
        }
        Ok(Json(super::Answer::done(self.engine.health().await)))
    }

    #[tool(
        name = "get_system_status",
        description = "Server status: version, uptime, store, sessions, performance_metrics, health issues and recommendations; optionally your active sessions and per-tool metrics.",
        annotations(
            title = "System status",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_system_status(
        &self,
        Parameters(args): Parameters<Args<SystemStatusArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<super::Answer<SystemStatus>>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        if let Some(h) = a.time_range_hours
            && !(1..=720).contains(&h)
        {
            return Err(Error::invalid(
                format!("time_range_hours is {h}; it must be between 1 and 720"),
                "Omit time_range_hours, or pass a value between 1 and 720.",
            ));
        }
        let opts = StatusOptions {
            include_active_sessions: a.include_active_sessions,
            include_detailed_metrics: a.include_detailed_metrics,
            session_id: a.session_id,
        };
        Ok(Json(super::Answer::done(
            self.engine.system_status(&p, opts).await?,
        )))
    }

    #[tool(
        name = "get_events",
        description = "Catch up on what changed: state changes of your sessions, runs, steps, tasks, allocations and projects after a cursor, oldest first. Call again with next_cursor.",
        annotations(
            title = "Events",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_events(
        &self,
        Parameters(args): Parameters<Args<EventsArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<EventPage>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let limit = crate::engine::sessions::bounded(
            "limit",
            a.limit.map(u64::from),
            100,
            1000,
            "Use a limit between 1 and 1000 and follow next_cursor.",
        )? as u32;
        let kinds = a
            .kinds
            .iter()
            .map(|k| match k {
                EventKind::Session => "session",
                EventKind::Run => "run",
                EventKind::Step => "step",
                EventKind::Task => "task",
                EventKind::Allocation => "allocation",
                EventKind::Project => "project",
            })
            .map(str::to_string)
            .collect();
        let q = EventQuery {
            session_id: a.session_id,
            since: a.since,
            kinds,
            subject: a.subject,
            limit,
        };
        Ok(Json(self.engine.events(&p, q).await?))
    }
}

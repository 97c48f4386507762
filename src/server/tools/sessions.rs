//! Session tools: create, get, list and close the session-scoped engine instances.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::engine::sessions::{ListSessions, NewSession, Session, SessionPage, SessionStatus};
use crate::error::Error;
use crate::server::{MyrmexServer, args::Args, principal};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetSessionArgs {
    /// The session to read; omit it for your default session (created on first use).
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSessionsArgs {
    /// Only sessions in this status.
    #[serde(default)]
    pub status: Option<SessionStatus>,
    /// `next_cursor` of the previous page; omit for the first page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Unused: sessions are listed per principal.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseSessionArgs {
    /// The session to close.
    pub session_id: String,
}

#[tool_router(router = sessions_router, vis = "pub(crate)")]
impl MyrmexServer {
    #[tool(
        name = "create_session",
        description = "Create an orchestration session: an isolated engine instance that owns its workflows, runs, tasks and allocations. Returns the session with its session_id.",
        annotations(
            title = "Create session",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn create_session(
        &self,
        Parameters(args): Parameters<Args<NewSession>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Session>, Error> {
        let p = principal(&ctx)?;
        Ok(Json(
            self.engine.sessions().create(&p, args.parse()?).await?,
        ))
    }

    #[tool(
        name = "get_session",
        description = "Read one of your sessions by session_id, or your default session when session_id is omitted (it is created on first use).",
        annotations(
            title = "Get session",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_session(
        &self,
        Parameters(args): Parameters<Args<GetSessionArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Session>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let sessions = self.engine.sessions();
        Ok(Json(match a.session_id {
            Some(id) => sessions.get(&p, &id).await?,
            None => sessions.resolve(&p, None).await?,
        }))
    }

    #[tool(
        name = "list_sessions",
        description = "List your sessions, oldest first, optionally only active or closed ones. Paginated: pass next_cursor back as cursor.",
        annotations(
            title = "List sessions",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_sessions(
        &self,
        Parameters(args): Parameters<Args<ListSessionsArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SessionPage>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        if let Some(id) = &a.session_id {
            self.engine.sessions().get(&p, id).await?;
        }
        let q = ListSessions {
            status: a.status,
            cursor: a.cursor,
            limit: a.limit,
        };
        Ok(Json(self.engine.sessions().list(&p, q).await?))
    }

    #[tool(
        name = "close_session",
        description = "Close a session: it stops accepting work, its running work is cancelled and its allocations are released. Closing an already closed session is an error that changes nothing.",
        annotations(
            title = "Close session",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn close_session(
        &self,
        Parameters(args): Parameters<Args<CloseSessionArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Session>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(self.engine.close_session(&p, &a.session_id).await?))
    }
}

//! The MCP surface: translates MCP requests into engine calls and engine
//! results into MCP results. No orchestration state lives here: rmcp may build
//! a [`MyrmexServer`] per HTTP session or even per request, and each one only
//! holds a clone of the shared [`Engine`] handle.

pub mod args;
pub mod catalog;
pub mod contract;
pub mod logging;
pub mod mcp_resources;
pub mod mcp_tasks;
pub mod profiles;
pub mod prompts;
pub mod shape;
pub mod tools;
pub mod transport;

use std::time::Instant;

use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CompleteRequestParams, CompleteResult, Implementation,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, prompt_handler, tool_handler};

use crate::engine::{Engine, Principal};
use crate::error::{Error, ErrorCode};

const INSTRUCTIONS: &str = "myrmex is an orchestration engine. Work happens inside sessions: \
create_session makes one (or omit session_id everywhere to use your default session). \
Every tool returns structured JSON; errors carry error.code, error.message and error.hint - follow the hint. \
get_health_status and get_system_status describe the server.";

#[derive(Clone)]
pub struct MyrmexServer {
    engine: Engine,
    tool_router: ToolRouter<Self>,
    /// Each offered tool's argument check against its published schema.
    checkers: std::sync::Arc<std::collections::HashMap<String, std::sync::Arc<contract::Checker>>>,
    prompt_router: PromptRouter<Self>,
    /// The log level a 2025-11-25 client set for this session.
    log: logging::ClientLog,
    /// This session's `resources/subscribe`s (2025-11-25), by URI.
    subscriptions: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, tokio_util::sync::CancellationToken>>,
    >,
    /// The MCP tasks of every session of this transport.
    mcp_tasks: std::sync::Arc<mcp_tasks::TaskRegistry>,
}

impl MyrmexServer {
    /// A server for one session, with MCP tasks of its own.
    pub fn new(engine: Engine) -> Self {
        Self::with_tasks(engine, Default::default())
    }

    /// A server for one of a transport's sessions, sharing its MCP tasks.
    pub fn with_tasks(engine: Engine, mcp_tasks: std::sync::Arc<mcp_tasks::TaskRegistry>) -> Self {
        let offered = profiles::offered(engine.config());
        Self {
            tool_router: offered.router,
            checkers: offered.checkers,
            engine,
            prompt_router: Self::prompt_router(),
            log: logging::ClientLog::default(),
            subscriptions: Default::default(),
            mcp_tasks,
        }
    }

    /// Every tool myrmex serves. Built once per process (each build checks
    /// every tool's name and schema) and cloned for each use.
    pub fn router() -> ToolRouter<Self> {
        static BUILT: std::sync::OnceLock<ToolRouter<MyrmexServer>> = std::sync::OnceLock::new();
        BUILT
            .get_or_init(|| {
                Self::sessions_router()
                    + Self::system_router()
                    + Self::workflows_router()
                    + Self::tasks_router()
                    + Self::resources_router()
                    + Self::modules_router()
                    + Self::projects_router()
            })
            .clone()
    }
}

/// The caller of this request. stdio requests carry no HTTP parts and are the
/// local principal; HTTP requests carry the principal the auth layer set.
pub(crate) fn principal(ctx: &RequestContext<RoleServer>) -> Result<Principal, Error> {
    match ctx.extensions.get::<::http::request::Parts>() {
        None => Ok(Principal::local()),
        Some(parts) => parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            Error::new(
                ErrorCode::PermissionDenied,
                "the request carries no authenticated principal",
                "Send the request through myrmex's HTTP endpoint with a valid bearer token.",
            )
        }),
    }
}

/// MCP's request methods (a request to one of them that rmcp could not
/// parse has bad params, not an unknown method).
const STANDARD_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "prompts/get",
    "prompts/list",
    "resources/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "resources/templates/list",
    "subscriptions/listen",
    "tools/call",
    "tools/list",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
];

#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for MyrmexServer {
    #[allow(deprecated)] // enable_logging: MCP logging, see logging.rs
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .enable_completions()
                .enable_logging()
                .enable_tasks()
                .build(),
        )
        .with_server_info(
            Implementation::new("myrmex", env!("CARGO_PKG_VERSION"))
                .with_title("myrmex orchestration server"),
        )
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_resources(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, ErrorData> {
        self.resource_list(request, context).await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourceTemplatesResult, ErrorData> {
        Ok(self.resource_templates())
    }

    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, ErrorData> {
        Ok(self.resource_read(request, context).await?.into())
    }

    /// 2025-11-25: `notifications/resources/updated` for `uri` as it changes,
    /// until unsubscribed or the client goes.
    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let p = principal(&context).map_err(prompts::protocol)?;
        self.readable(&p, &request.uri).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        if let Some(old) = self
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request.uri.clone(), stop.clone())
        {
            old.cancel();
        }
        let (me, peer) = (self.clone(), context.peer.clone());
        tokio::spawn(async move {
            me.watch_resources(p, vec![request.uri], stop, |uri| {
                let peer = peer.clone();
                async move {
                    peer.notify_resource_updated(
                        rmcp::model::ResourceUpdatedNotificationParam::new(uri),
                    )
                    .await
                    .is_ok()
                }
            })
            .await;
        });
        Ok(())
    }

    #[allow(deprecated)] // legacy-only, as rmcp says; 2026-07-28 clients end a listen instead
    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Some(t) = self
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request.uri)
        {
            t.cancel();
        }
        Ok(())
    }

    /// 2026-07-28 `subscriptions/listen`: myrmex resources and the resource list.
    fn accepted_subscription_filter(
        &self,
        requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        let mut f = rmcp::model::SubscriptionFilter::new();
        f.resources_list_changed = requested.resources_list_changed;
        f.resource_subscriptions = requested.resource_subscriptions.as_ref().map(|uris| {
            uris.iter()
                .filter(|u| u.starts_with("myrmex://"))
                .cloned()
                .collect()
        });
        Some(f)
    }

    async fn listen(&self, context: rmcp::service::SubscriptionContext) -> Result<(), ErrorData> {
        let p = principal(context.request_context()).map_err(prompts::protocol)?;
        let stop = tokio_util::sync::CancellationToken::new();
        let accepted = context.accepted().clone();
        let sink = context.sink().clone();
        let uris = accepted.resource_subscriptions.clone().unwrap_or_default();
        let resources = self.watch_resources(p.clone(), uris, stop.clone(), |uri| {
            let sink = sink.clone();
            async move { sink.notify_resource_updated(uri).await.is_ok() }
        });
        let list = async {
            if accepted.resources_list_changed == Some(true) {
                self.watch_list(p.clone(), stop.clone(), || {
                    let sink = sink.clone();
                    async move { sink.notify_resource_list_changed().await.is_ok() }
                })
                .await;
            }
        };
        let end = async {
            context.cancelled().await;
            stop.cancel();
        };
        tokio::join!(resources, list, end);
        Ok(())
    }

    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.log.set(request.level);
        Ok(())
    }

    async fn get_task(
        &self,
        request: rmcp::model::GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetTaskResult, ErrorData> {
        self.task_status(&request.task_id, &context)
    }

    async fn cancel_task(
        &self,
        request: rmcp::model::CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.task_cancel(&request.task_id, &context)
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        self.completions(request, context).await
    }

    /// rmcp hands over as "custom" a request whose params do not fit the
    /// method's shape (`tools/call` with `arguments: [1]`): for MCP's own
    /// methods that is -32602 invalid params, naming what is wrong.
    async fn on_custom_request(
        &self,
        request: rmcp::model::CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CustomResult, ErrorData> {
        let params = request.params.unwrap_or(serde_json::Value::Null);
        let why = match request.method.as_str() {
            "tools/call" => serde_json::from_value::<CallToolRequestParams>(params).err(),
            "prompts/get" => {
                serde_json::from_value::<rmcp::model::GetPromptRequestParams>(params).err()
            }
            "resources/read" => {
                serde_json::from_value::<rmcp::model::ReadResourceRequestParams>(params).err()
            }
            "completion/complete" => serde_json::from_value::<CompleteRequestParams>(params).err(),
            m if STANDARD_METHODS.contains(&m) => None,
            _ => {
                return Err(ErrorData::new(
                    rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                    format!(
                        "method not found: {}",
                        crate::error::excerpt(&request.method)
                    ),
                    None,
                ));
            }
        };
        Err(ErrorData::invalid_params(
            format!(
                "invalid params for {}: {}",
                request.method,
                why.map_or_else(
                    || "they do not match the request's schema".to_string(),
                    |e| crate::error::excerpt(&e.to_string()).into_owned()
                )
            ),
            None,
        ))
    }

    async fn call_tool(
        &self,
        mut request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        let started = Instant::now();
        // The arguments against the published schema first: every bad field at once.
        let checked = self.checkers.get(&name).map(|c| {
            let args = serde_json::Value::Object(request.arguments.take().unwrap_or_default());
            let r = c.check(&args);
            if let serde_json::Value::Object(m) = args {
                request.arguments = Some(m);
            }
            r
        });
        let result = if let Some(Err(e)) = checked {
            use rmcp::handler::server::tool::IntoCallToolResult as _;
            e.into_call_tool_result()
        } else if self.wants_task(&name, &context) {
            // Answers at once with a task that follows the run (mcp_tasks.rs).
            self.call_as_task(request, context).await
        } else {
            // A call whose client went away (or cancelled it) stops waiting; work it
            // started (runs, tasks) goes on and can be followed with other calls.
            let cancelled = context.ct.clone();
            let tcc = ToolCallContext::new(self, request, context);
            let result = tokio::select! {
                r = self.tool_router.call(tcc) => r,
                _ = cancelled.cancelled() => {
                    tracing::debug!(tool = %name, "tool call cancelled by the client");
                    Err(ErrorData::internal_error("the call was cancelled", None))
                }
            };
            self.bounded(&name, result)
        };
        let ok = match &result {
            Ok(CallToolResponse::Task(_)) => true,
            Ok(CallToolResponse::Complete(r)) => r.is_error != Some(true),
            _ => false,
        };
        if self.tool_router.has_route(&name) {
            self.engine.metrics().record(&name, ok, started.elapsed());
        }
        tracing::debug!(tool = %name, ok, ms = started.elapsed().as_millis() as u64, "tool call");
        result
    }
}

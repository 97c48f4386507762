//! The MCP Tasks extension (`io.modelcontextprotocol/tasks`) for the two
//! long calls: a client that declares it gets a task back from
//! `execute_workflow` and `execute_task` at once, polls it with `tasks/get`
//! (its status message follows the run's steps), reads the same result the
//! call would have answered when it ends, and `tasks/cancel` cancels the run
//! or task. Clients without it keep the wait-then-poll behaviour.
//!
//! The task is only a follower: the run or task is the engine's, durable and
//! executed wherever the cluster executes it. rmcp builds a handler per
//! request for 2026-07-28 clients, so the task store is one per process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, CreateTaskResult,
    ErrorCode, GetTaskResult,
};
use rmcp::service::RequestContext;
use rmcp::task_manager::{TaskContext, TaskExit, TaskManager as McpTasks, TaskOptions};
use rmcp::{ErrorData, RoleServer};
use serde_json::Value;

use super::{MyrmexServer, principal};
use crate::engine::Principal;
use crate::error::{Error, ErrorCode as Code};

/// The tools that answer with a task for clients that support tasks.
pub const TASK_TOOLS: &[&str] = &["execute_workflow", "execute_task"];

/// How long one poll of the engine waits for the run to finish.
const POLL: Duration = Duration::from_secs(20);

/// The tasks of every MCP session a transport serves, and who started
/// each (and when). One per transport, shared by its sessions: a client
/// that reconnects finds its tasks again.
#[derive(Default)]
pub struct TaskRegistry {
    tasks: McpTasks,
    owners: Mutex<HashMap<String, (Principal, Instant)>>,
}

/// What a task follows.
enum Follow {
    Run { run_id: String },
    Task { task_id: String, session_id: String },
}

/// A field of a structured result.
fn field(r: &CallToolResult, path: &[&str]) -> Option<String> {
    let mut v = r.structured_content.as_ref()?;
    for k in path {
        v = v.get(k)?;
    }
    v.as_str().map(str::to_string)
}

impl MyrmexServer {
    /// Whether this call answers with a task.
    pub(crate) fn wants_task(&self, name: &str, ctx: &RequestContext<RoleServer>) -> bool {
        TASK_TOOLS.contains(&name)
            && self.tool_router.has_route(name)
            && ctx
                .client_capabilities()
                .is_some_and(|c| c.supports_tasks())
    }

    /// Start the call without waiting, then answer with a task that follows it.
    /// Bad input answers at once, as without tasks.
    pub(crate) async fn call_as_task(
        &self,
        mut request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        let p = match principal(&context) {
            Ok(p) => p,
            Err(e) => return Ok(error_result(e).into()),
        };
        if let Some(args) = request.arguments.as_mut() {
            args.insert("wait_seconds".into(), Value::from(0));
        }
        let started = self
            .tool_router
            .call(ToolCallContext::new(self, request, context))
            .await?;
        let first = match started {
            CallToolResponse::Complete(r) if r.is_error != Some(true) => r,
            other => return Ok(other),
        };
        let follow = match name.as_str() {
            "execute_workflow" => field(&first, &["run_id"]).map(|run_id| Follow::Run { run_id }),
            _ => field(&first, &["task_id"]).and_then(|task_id| {
                field(&first, &["metadata", "session_id"]).map(|session_id| Follow::Task {
                    task_id,
                    session_id,
                })
            }),
        };
        let Some(follow) = follow else {
            return Err(ErrorData::internal_error(
                format!("{name} answered without the id of what it started"),
                None,
            ));
        };
        let ttl = self.engine.config().tools.task_ttl_seconds * 1000;
        let me = self.clone();
        let owner = p.clone();
        let task = self.mcp_tasks.tasks.spawn(
            TaskOptions::new()
                .with_ttl_ms(ttl)
                .with_poll_interval_ms(1000)
                .with_status_message(status_line(&first)),
            move |tctx| Box::pin(async move { me.follow(&name, &p, follow, tctx).await }),
        );
        let mut owners = self
            .mcp_tasks
            .owners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // rmcp forgets a task at the latest one TTL after its TTL ended.
        owners.retain(|_, (_, at)| at.elapsed() < Duration::from_millis(2 * ttl));
        owners.insert(task.task_id.clone(), (owner, Instant::now()));
        drop(owners);
        Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
    }

    /// Follow the run or task until it ends; cancel it when the task is cancelled.
    async fn follow(
        &self,
        name: &str,
        p: &Principal,
        follow: Follow,
        tctx: TaskContext,
    ) -> Result<CallToolResult, TaskExit> {
        let mut failures = 0u32;
        loop {
            let polled = tokio::select! {
                _ = tctx.cancelled() => {
                    let cancelled = match &follow {
                        Follow::Run { run_id } => {
                            self.engine.cancel_workflow_run(p, run_id, None).await.map(|_| ())
                        }
                        Follow::Task { task_id, session_id } => self
                            .engine
                            .tasks()
                            .cancel(&self.engine, p, task_id, Some(session_id))
                            .await
                            .map(|_| ()),
                    };
                    if let Err(e) = cancelled {
                        // Already finished: the task ends cancelled all the same.
                        tracing::debug!(error = %e, "cancelling a task's work");
                    }
                    return Err(TaskExit::Cancelled);
                }
                r = self.poll(p, &follow, &tctx) => r,
            };
            match polled {
                Ok(Some(done)) => return Ok(self.final_result(name, done)),
                Ok(None) => failures = 0,
                // The store may be back in a moment: keep following for a while.
                Err(e) if e.code == Code::StoreUnavailable && failures < 60 => {
                    failures += 1;
                    tctx.set_status_message(format!("waiting for the store: {}", e.message));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Ok(error_result(e)),
            }
        }
    }

    /// One long poll: the final answer when the work ended.
    async fn poll(
        &self,
        p: &Principal,
        follow: &Follow,
        tctx: &TaskContext,
    ) -> crate::error::Result<Option<Value>> {
        match follow {
            Follow::Run { run_id } => {
                let mut note = |done: usize, total: usize, msg: String| {
                    tctx.set_status_message(format!("{done}/{total} steps done: {msg}"));
                };
                let v = self
                    .engine
                    .get_workflow_run(p, run_id, None, POLL, &mut note)
                    .await?;
                if !crate::engine::runs::view_final(&v.status) {
                    tctx.set_status_message(format!(
                        "{}: {}/{} steps done",
                        v.status, v.steps_completed, v.steps_total
                    ));
                    return Ok(None);
                }
                Ok(Some(json(&self.fitted(v))))
            }
            Follow::Task {
                task_id,
                session_id,
            } => {
                let session = self.engine.sessions().get(p, session_id).await?;
                let r = self.engine.tasks().outcome(&session, task_id, POLL).await?;
                if !crate::model::TaskStatus::parse(&r.status).is_some_and(|s| s.is_final()) {
                    tctx.set_status_message(format!("task {}", r.status));
                    return Ok(None);
                }
                Ok(Some(json(&r)))
            }
        }
    }

    /// The answer the call gives without tasks, within the size limit.
    fn final_result(&self, name: &str, v: Value) -> CallToolResult {
        match self.bounded(name, Ok(CallToolResult::structured(v).into())) {
            Ok(CallToolResponse::Complete(r)) => r,
            Ok(_) => CallToolResult::error(vec![ContentBlock::text("unexpected answer")]),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(e.message.to_string())]),
        }
    }

    /// tasks/get: the task, if it is the caller's.
    pub(crate) fn task_status(
        &self,
        task_id: &str,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        owned(&self.mcp_tasks, task_id, ctx)?;
        Ok(GetTaskResult::new(self.mcp_tasks.tasks.get_task(task_id)?))
    }

    /// tasks/cancel: ask the task to cancel its run or task.
    pub(crate) fn task_cancel(
        &self,
        task_id: &str,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        owned(&self.mcp_tasks, task_id, ctx)?;
        self.mcp_tasks.tasks.cancel_task(task_id)
    }
}

/// A task another principal started is unknown to the caller.
fn owned(
    registry: &TaskRegistry,
    task_id: &str,
    ctx: &RequestContext<RoleServer>,
) -> Result<(), ErrorData> {
    let p =
        principal(ctx).map_err(|e| ErrorData::new(ErrorCode::INVALID_REQUEST, e.message, None))?;
    let owners = registry.owners.lock().unwrap_or_else(|e| e.into_inner());
    if owners.get(task_id).map(|(o, _)| o) != Some(&p) {
        // The same answer rmcp gives for an id it never had.
        return Err(ErrorData::invalid_params(
            format!("task not found: {task_id}"),
            None,
        ));
    }
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn error_result(e: Error) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(e.to_body().to_string())])
}

/// The first status message: where the work stands when the task starts.
fn status_line(first: &CallToolResult) -> String {
    let status = field(first, &["status"]).unwrap_or_else(|| "started".into());
    let s = first.structured_content.as_ref();
    match (
        s.and_then(|v| v.get("steps_completed")),
        s.and_then(|v| v.get("steps_total")),
    ) {
        (Some(d), Some(t)) => format!("{status}: {d}/{t} steps done"),
        _ => format!("task {status}"),
    }
}

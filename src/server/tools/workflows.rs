//! Workflow tools: define, inspect and validate workflows; execute them and
//! follow, cancel and retry their runs.

use std::collections::BTreeMap;

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::ProgressNotificationParam;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::engine::sessions::SessionMode;
use crate::engine::workflows::spec::{OnFailure, ParamSpec, Priority, StepSpec, WorkflowSpec};
use crate::engine::workflows::{
    ExecuteRequest, RunPage, RunView, Scope, ValidationReport, WorkflowPage, WorkflowView,
};
use crate::error::Error;
use crate::server::{MyrmexServer, args::Args, principal};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkflowArgs {
    /// Unique name. Creating an existing name replaces it and increments its version.
    pub name: String,
    /// What the workflow does.
    #[serde(default)]
    pub description: String,
    /// Declared inputs: name -> {type, required, default, description}.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamSpec>,
    /// The steps of the workflow.
    pub steps: Vec<StepSpec>,
    /// Time limit of a whole run, in seconds.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Steps of one run at once (default: the session's max_parallel_tasks).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// `fail_fast` (default): stop launching steps after a failure; `continue`: let independent branches finish.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// `session` (default): visible in this session only; `global`: in all your sessions.
    #[serde(default)]
    pub scope: Scope,
    /// The session to store it in; omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
}

impl CreateWorkflowArgs {
    fn split(self) -> (WorkflowSpec, Scope, Option<String>) {
        (
            WorkflowSpec {
                name: self.name,
                description: self.description,
                parameters: self.parameters,
                steps: self.steps,
                timeout_seconds: self.timeout_seconds,
                max_parallel: self.max_parallel,
                on_failure: self.on_failure,
            },
            self.scope,
            self.session_id,
        )
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameArgs {
    /// The workflow's name.
    pub workflow_name: String,
    /// The session whose definitions are searched first; omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteWorkflowArgs {
    /// The workflow's name.
    pub workflow_name: String,
    /// `session` (default) or `global`.
    #[serde(default)]
    pub scope: Scope,
    /// The session holding it; omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListWorkflowsArgs {
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
    /// The session whose definitions are listed with the global and library ones; omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteWorkflowArgs {
    /// Name of the workflow (session, global or library definition).
    pub workflow_name: String,
    /// Values of the workflow's declared parameters.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// The session to run in; omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Scheduling mode of this run (default: the session's mode).
    #[serde(default)]
    pub mode: Option<SessionMode>,
    /// Time limit of the run in seconds (default: the workflow's).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Priority of the run.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Resources held for the whole run, e.g. {"cpu": 2, "memory_mb": 4096}.
    #[serde(default)]
    #[schemars(schema_with = "crate::engine::resources::optional_requirements_schema")]
    pub resource_requirements: Option<Value>,
    /// Steps that may run at once (default: the workflow's, else the session's max_parallel_tasks).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// Run for a project (id or name): steps see {{project.path|name|config...}} and shell/fs work in its folder.
    #[serde(default)]
    pub project: Option<String>,
    /// Seconds to wait for the run (default 5); a run still going answers "running".
    #[serde(default)]
    pub wait_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// The run.
    pub run_id: String,
    /// Seconds to wait for the run to finish before answering (default 0).
    #[serde(default)]
    pub wait_seconds: Option<u64>,
    /// If given, the run's session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetRunArgs {
    /// The run.
    pub run_id: String,
    /// Seconds to wait for the run to finish before answering (default 0).
    #[serde(default)]
    pub wait_seconds: Option<u64>,
    /// If given, the run's session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Only this step, its output in full (large outputs are otherwise shortened).
    #[serde(default)]
    pub step: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRunArgs {
    /// The run to cancel.
    pub run_id: String,
    /// If given, the run's session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRunsArgs {
    /// Only runs of this session (default: all your sessions).
    #[serde(default)]
    pub session_id: Option<String>,
    /// Only runs in this status.
    #[serde(default)]
    #[schemars(schema_with = "run_status_schema")]
    pub status: Option<String>,
    /// Only runs of this workflow.
    #[serde(default)]
    pub workflow_name: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComplexDefinition {
    /// The steps ({name, module, action, parameters, ...}).
    pub steps: Vec<StepSpec>,
    /// Dependencies by step: {"step": ["upstream", ...]}; merged with each step's own `dependencies`.
    #[serde(default)]
    pub dependencies: BTreeMap<String, Vec<String>>,
    /// Accepted for compatibility with the original specification; parallelism follows from the dependencies.
    #[serde(default)]
    #[schemars(schema_with = "crate::model::bounds::any_json")]
    pub parallel_groups: Option<Value>,
    /// Declared inputs.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamSpec>,
    /// Time limit of the run, in seconds.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Steps that may run at once.
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// `fail_fast` (default) or `continue`.
    #[serde(default)]
    pub on_failure: OnFailure,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComplexWorkflowArgs {
    /// Name of the workflow (stored in the session).
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// The steps and a dependency map.
    pub workflow_definition: ComplexDefinition,
    /// Values of the declared parameters.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// Omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Seconds to wait for the run (default 5).
    #[serde(default)]
    pub wait_seconds: Option<u64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    pub name: String,
    pub deleted: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ComplexResult {
    /// The stored definition.
    pub workflow: WorkflowView,
    /// Its run.
    pub run: RunView,
}

/// What a waiting call sends as its run goes on.
#[allow(deprecated)] // MCP logging, see crate::server::logging
enum Note {
    Progress(ProgressNotificationParam),
    Log(rmcp::model::LoggingMessageNotificationParam),
}

/// Sends `notifications/progress` when the caller asked for them, and step
/// ends as log messages when it asked for those (see [`crate::server::logging`]):
/// in order, and all of them before the call's answer (see [`Progress::flush`]).
struct Progress {
    token: Option<rmcp::model::ProgressToken>,
    log: Option<crate::server::logging::Threshold>,
    send: Option<tokio::sync::mpsc::UnboundedSender<Note>>,
    drain: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn new(server: &MyrmexServer, ctx: &RequestContext<RoleServer>) -> Self {
        let token = ctx.meta.get_progress_token();
        let log = server.log.threshold(ctx);
        if token.is_none() && log.is_none() {
            return Self {
                token,
                log,
                send: None,
                drain: None,
            };
        }
        let (send, mut recv) = tokio::sync::mpsc::unbounded_channel::<Note>();
        let peer = ctx.peer.clone();
        let drain = tokio::spawn(async move {
            while let Some(n) = recv.recv().await {
                let _ = match n {
                    Note::Progress(p) => peer.notify_progress(p).await,
                    #[allow(deprecated)]
                    Note::Log(m) => peer.notify_logging_message(m).await,
                };
            }
        });
        Self {
            token,
            log,
            send: Some(send),
            drain: Some(drain),
        }
    }

    fn report(&mut self, done: usize, total: usize, message: String) {
        let Some(send) = &self.send else { return };
        if let Some(t) = self.log
            && let Some(m) = crate::server::logging::step_message(t, &message, done, total)
        {
            let _ = send.send(Note::Log(m));
        }
        if let Some(token) = &self.token {
            let mut p = ProgressNotificationParam::new(token.clone(), done as f64);
            p.total = Some(total as f64);
            p.message = Some(message);
            let _ = send.send(Note::Progress(p));
        }
    }

    /// Wait until every notification is sent.
    async fn flush(mut self) {
        self.send.take();
        if let Some(d) = self.drain.take() {
            let _ = d.await;
        }
    }
}

#[tool_router(router = workflows_router, vis = "pub(crate)")]
impl MyrmexServer {
    #[tool(
        name = "create_workflow",
        description = "Define (or replace) a workflow: a DAG of steps, each running module.action with templated parameters. Validated first: answers the stored definition with version and plan, or every problem.",
        annotations(
            title = "Create workflow",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn create_workflow(
        &self,
        Parameters(args): Parameters<Args<CreateWorkflowArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<super::Answer<WorkflowView>>, Error> {
        let p = principal(&ctx)?;
        let (spec, scope, session_id) = args.parse()?.split();
        Ok(Json(super::Answer::done(
            self.engine
                .create_workflow(&p, session_id.as_deref(), spec, scope)
                .await?,
        )))
    }

    #[tool(
        name = "get_workflow",
        description = "Read a workflow definition by name (session, then global, then library): definition, version, plan levels, critical path and a Mermaid diagram.",
        annotations(
            title = "Get workflow",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_workflow(
        &self,
        Parameters(args): Parameters<Args<NameArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<WorkflowView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(
            self.engine
                .get_workflow(&p, a.session_id.as_deref(), &a.workflow_name)
                .await?,
        ))
    }

    #[tool(
        name = "list_workflows",
        description = "List the workflows you can run (session, global, library) with step counts and modules. Paginated.",
        annotations(
            title = "List workflows",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_workflows(
        &self,
        Parameters(args): Parameters<Args<ListWorkflowsArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<super::Answer<WorkflowPage>>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(super::Answer::done(
            self.engine
                .list_workflows(&p, a.session_id.as_deref(), a.cursor.as_deref(), a.limit)
                .await?,
        )))
    }

    #[tool(
        name = "validate_workflow",
        description = "Validate a workflow definition without storing it: every problem (cycles as paths, unknown dependencies, modules, parameters, templates) with code, step and field, plus the execution plan when valid.",
        annotations(
            title = "Validate workflow",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn validate_workflow(
        &self,
        Parameters(args): Parameters<Args<WorkflowSpec>>,
    ) -> Result<Json<ValidationReport>, Error> {
        Ok(Json(self.engine.validate_workflow(&args.parse()?)))
    }

    #[tool(
        name = "delete_workflow",
        description = "Delete a session or global workflow definition. Runs already started keep their pinned copy; library definitions are read-only.",
        annotations(
            title = "Delete workflow",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn delete_workflow(
        &self,
        Parameters(args): Parameters<Args<DeleteWorkflowArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Deleted>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        self.engine
            .delete_workflow(&p, a.session_id.as_deref(), &a.workflow_name, a.scope)
            .await?;
        Ok(Json(Deleted {
            name: a.workflow_name,
            deleted: true,
        }))
    }

    #[tool(
        name = "execute_workflow",
        description = "Run a workflow. Waits up to wait_seconds, then answers with the run (status, run_id, per-step results, steps_completed of steps_total); follow a running one with get_workflow_run. Progress notifications when given a progress token.",
        annotations(
            title = "Execute workflow",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn execute_workflow(
        &self,
        Parameters(args): Parameters<Args<ExecuteWorkflowArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<super::Answer<RunView>>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let wait = self.engine.wait_for(a.wait_seconds)?;
        let req = ExecuteRequest {
            workflow_name: a.workflow_name,
            parameters: a.parameters,
            session_id: a.session_id,
            mode: a.mode,
            timeout_seconds: a.timeout_seconds,
            priority: a.priority,
            resource_requirements: a.resource_requirements,
            max_parallel: a.max_parallel,
            parent: None,
            project: match &a.project {
                Some(key) => Some(self.engine.project_context(&p, key).await?),
                None => None,
            },
        };
        let mut progress = Progress::new(self, &ctx);
        let run = self
            .engine
            .execute_workflow(&p, req, wait, &mut |d, t, m| progress.report(d, t, m))
            .await;
        progress.flush().await;
        let run = self.fitted(run?);
        let status = run.status.clone();
        Ok(Json(super::Answer::ran(run, &status)))
    }

    #[tool(
        name = "get_workflow_run",
        description = "Read a run: status, per-step states, outputs and errors. wait_seconds long-polls until it finishes; progress notifications when given a progress token.",
        annotations(
            title = "Get workflow run",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_workflow_run(
        &self,
        Parameters(args): Parameters<Args<GetRunArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RunView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let wait = self.engine.wait_for(Some(a.wait_seconds.unwrap_or(0)))?;
        let mut progress = Progress::new(self, &ctx);
        let v = self
            .engine
            .get_workflow_run(
                &p,
                &a.run_id,
                a.session_id.as_deref(),
                wait,
                &mut |d, t, m| progress.report(d, t, m),
            )
            .await;
        progress.flush().await;
        let mut v = v?;
        if let Some(step) = &a.step {
            v.only_step(step)?;
            return Ok(Json(v));
        }
        Ok(Json(self.fitted(v)))
    }

    #[tool(
        name = "list_workflow_runs",
        description = "List your runs, oldest first, filtered by session, status or workflow. Paginated.",
        annotations(
            title = "List workflow runs",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_workflow_runs(
        &self,
        Parameters(args): Parameters<Args<ListRunsArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RunPage>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(
            self.engine
                .list_workflow_runs(
                    &p,
                    a.session_id.as_deref(),
                    a.status.as_deref().map(run_status).transpose()?,
                    a.workflow_name.as_deref(),
                    a.cursor.as_deref(),
                    a.limit,
                )
                .await?,
        ))
    }

    #[tool(
        name = "cancel_workflow_run",
        description = "Cancel a run wherever it executes: its unfinished steps end cancelled. A run that already ended is an error that changes nothing.",
        annotations(
            title = "Cancel workflow run",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn cancel_workflow_run(
        &self,
        Parameters(args): Parameters<Args<CancelRunArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RunView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(
            self.fitted(
                self.engine
                    .cancel_workflow_run(&p, &a.run_id, a.session_id.as_deref())
                    .await?,
            ),
        ))
    }

    #[tool(
        name = "retry_workflow_run",
        description = "Start a new run of a finished run's workflow version and parameters: failed, cancelled and skipped steps run again; succeeded steps whose resolved inputs are unchanged are reused.",
        annotations(
            title = "Retry workflow run",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn retry_workflow_run(
        &self,
        Parameters(args): Parameters<Args<RunArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RunView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let wait = self.engine.wait_for(a.wait_seconds)?;
        let mut progress = Progress::new(self, &ctx);
        let v = self
            .engine
            .retry_workflow_run(
                &p,
                &a.run_id,
                a.session_id.as_deref(),
                wait,
                &mut |d, t, m| progress.report(d, t, m),
            )
            .await;
        progress.flush().await;
        Ok(Json(self.fitted(v?)))
    }

    #[tool(
        name = "create_complex_workflow",
        description = "Define a workflow from steps plus a dependency map ({step: [upstream...]}) and execute it in one call (the original create_complex_workflow). Returns the stored definition and the run.",
        annotations(
            title = "Create and run complex workflow",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn create_complex_workflow(
        &self,
        Parameters(args): Parameters<Args<ComplexWorkflowArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<super::Answer<ComplexResult>>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let wait = self.engine.wait_for(a.wait_seconds)?;
        let d = a.workflow_definition;
        let mut steps = d.steps;
        for (step, deps) in &d.dependencies {
            let Some(s) = steps.iter_mut().find(|s| &s.name == step) else {
                return Err(Error::invalid(
                    format!("workflow_definition.dependencies names '{step}', which is not a step"),
                    "Use step names from workflow_definition.steps as keys of dependencies.",
                ));
            };
            for dep in deps {
                if !s.dependencies.contains(dep) {
                    s.dependencies.push(dep.clone());
                }
            }
        }
        let spec = WorkflowSpec {
            name: a.name,
            description: a.description,
            parameters: d.parameters,
            steps,
            timeout_seconds: d.timeout_seconds,
            max_parallel: d.max_parallel,
            on_failure: d.on_failure,
        };
        let mut progress = Progress::new(self, &ctx);
        let r = self
            .engine
            .create_complex_workflow(
                &p,
                a.session_id.as_deref(),
                spec,
                a.parameters,
                wait,
                &mut |d, t, m| progress.report(d, t, m),
            )
            .await;
        progress.flush().await;
        let (workflow, run) = r?;
        let run = self.fitted(run);
        let status = run.status.clone();
        Ok(Json(super::Answer::ran(
            ComplexResult { workflow, run },
            &status,
        )))
    }
}

/// A run status as callers spell it.
fn run_status(s: &str) -> Result<crate::model::RunStatus, Error> {
    crate::model::RunStatus::parse(s).ok_or_else(|| {
        let all: Vec<&str> = crate::model::RunStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        Error::invalid(
            format!("status '{}' is not a run status", crate::error::excerpt(s)),
            format!("Use one of: {}.", all.join(", ")),
        )
    })
}

/// A run status filter: the statuses' spellings, or null.
fn run_status_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut vals: Vec<serde_json::Value> = crate::model::RunStatus::ALL
        .iter()
        .map(|s| serde_json::Value::from(s.as_str()))
        .collect();
    vals.push(serde_json::Value::Null);
    schemars::json_schema!({"type": ["string", "null"], "enum": vals})
}

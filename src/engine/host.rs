//! What actions may ask of the engine: child workflow runs (`workflow.run`)
//! and steps done by agents (`agent.task`). The actions only declare
//! themselves; the work is here, where runs and the task graph live.
//!
//! Both re-attach after a restart: a step attempted again finds the child
//! run (or the agent task) that its interrupted attempt started and waits
//! for it (or takes its result, when it succeeded meanwhile) instead of
//! starting a second one. Only a child or task that did not succeed is
//! replaced by a new one, which is what a retry of the step means.

use std::sync::Weak;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::runs::{error_message, view_final};
use super::tasks::NewTask;
use super::workflows::ExecuteRequest;
use super::workflows::spec::Priority;
use super::{Engine, EngineInner, Principal};
use crate::actions::{ActionCtx, ActionError, Host};
use crate::error::{Error, ErrorCode};
use crate::model::RunStatus;
use crate::store::{RunQuery, RunRecord};

/// Tag of every agent task made for a workflow step.
pub const STEP_TAG: &str = "workflow-step";
/// Metadata key linking an agent task to its step: `{run_id, step}`.
const ORIGIN_KEY: &str = "workflow_step";
/// How long a cancelled child run may take to record its end.
const CHILD_STOP_WAIT: Duration = Duration::from_millis(1500);
/// How long one wait for a child run or agent task lasts before looking again.
const WAIT_SLICE: Duration = Duration::from_secs(3600);

pub struct EngineHost {
    pub(super) inner: Weak<EngineInner>,
}

impl EngineHost {
    fn engine(&self) -> Result<Engine, ActionError> {
        self.inner
            .upgrade()
            .map(|inner| Engine { inner })
            .ok_or_else(|| ActionError::new(ErrorCode::Cancelled, "the server is stopping"))
    }
}

impl From<Error> for ActionError {
    fn from(e: Error) -> Self {
        ActionError::new(e.code, e.message)
    }
}

#[async_trait]
impl Host for EngineHost {
    async fn run_child_workflow(&self, ctx: &ActionCtx, p: Value) -> Result<Value, ActionError> {
        let engine = self.engine()?;
        engine.child_workflow(ctx, p).await
    }

    async fn agent_step(&self, ctx: &ActionCtx, p: Value) -> Result<Value, ActionError> {
        let engine = self.engine()?;
        engine.agent_step(ctx, p).await
    }

    async fn project_docs(&self, ctx: &ActionCtx, p: Value) -> Result<Value, ActionError> {
        let engine = self.engine()?;
        let principal = Principal(ctx.principal.clone());
        let key = match p.get("project").and_then(Value::as_str) {
            Some(k) => k.to_string(),
            None => engine
                .store()
                .get_run(&ctx.run_id)
                .await
                .map_err(Error::from)?
                .and_then(|r| r.project_id)
                .ok_or_else(|| {
                    ActionError::new(
                        ErrorCode::InvalidParameters,
                        "docs.generate needs `project` outside a project run",
                    )
                })?,
        };
        let (project_id, report) = engine.generate_project_docs(&principal, &key).await?;
        Ok(json!({"project_id": project_id, "written": report.written, "kept": report.kept}))
    }

    async fn principal_folders(
        &self,
        principal: &str,
    ) -> Result<Vec<std::path::PathBuf>, ActionError> {
        let engine = self.engine()?;
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = engine
                .store()
                .list_projects(&crate::store::ProjectQuery {
                    principal,
                    status: None,
                    kind: None,
                    tag: None,
                    after: after.clone(),
                    limit: 500,
                })
                .await
                .map_err(Error::from)?;
            let Some(last) = page.last() else { break };
            after = Some((last.created_at, last.id.clone()));
            let full = page.len() == 500;
            out.extend(page.into_iter().map(|r| std::path::PathBuf::from(r.path)));
            if !full {
                break;
            }
        }
        Ok(out)
    }
}

impl Engine {
    /// How deep the calling step's run is nested (a top-level run is 0).
    /// Also returns the calling run's record.
    async fn run_depth(&self, run_id: &str) -> Result<(u32, Option<RunRecord>), ActionError> {
        let max = self.config().modules.workflow.max_depth;
        let mut depth = 0;
        let me = self.store().get_run(run_id).await.map_err(Error::from)?;
        let mut cur = me.clone();
        while let Some(parent) = cur.and_then(|r| r.parent_run_id) {
            depth += 1;
            if depth > max {
                break;
            }
            cur = self.store().get_run(&parent).await.map_err(Error::from)?;
        }
        Ok((depth, me))
    }

    async fn child_workflow(&self, ctx: &ActionCtx, p: Value) -> Result<Value, ActionError> {
        let principal = Principal(ctx.principal.clone());
        let max = self.config().modules.workflow.max_depth;
        let (depth, me) = self.run_depth(&ctx.run_id).await?;
        let depth = depth + 1;
        if depth > max {
            return Err(ActionError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "workflow.run would nest runs {depth} deep; [modules.workflow] max_depth is {max}"
                ),
            ));
        }
        let name = p["workflow"].as_str().unwrap_or_default().to_string();
        // The newest child of this step: still going (the step's attempt was
        // interrupted by a restart), succeeded (its result was not recorded yet),
        // or a failed earlier attempt.
        let existing = self
            .store()
            .list_runs(&RunQuery {
                principal: &ctx.principal,
                session_id: Some(&ctx.session_id),
                status: None,
                workflow_name: None,
                parent_run_id: Some(&ctx.run_id),
                project_id: None,
                after: None,
                limit: 10_000,
            })
            .await
            .map_err(Error::from)?
            .into_iter()
            .rev()
            .find(|r| r.parent_step.as_deref() == Some(ctx.step.as_str()))
            .filter(|r| !r.status.is_final() || r.status == RunStatus::Succeeded);
        let run_id = match existing {
            Some(r) => r.id,
            None => {
                let session = self
                    .sessions()
                    .resolve(&principal, Some(&ctx.session_id))
                    .await?;
                let req = ExecuteRequest {
                    workflow_name: name.clone(),
                    parameters: p
                        .get("parameters")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default(),
                    session_id: Some(ctx.session_id.clone()),
                    timeout_seconds: p.get("timeout_seconds").and_then(Value::as_u64),
                    parent: Some((ctx.run_id.clone(), ctx.step.clone())),
                    // A child works on its parent's project.
                    project: me
                        .and_then(|r| r.project)
                        .and_then(|p| serde_json::from_str(&p).ok()),
                    ..Default::default()
                };
                self.start_named_run(&principal, &session, req).await?
            }
        };
        let mut quiet = |_: usize, _: usize, _: String| {};
        let view = loop {
            tokio::select! {
                v = self.wait_run(&run_id, WAIT_SLICE, &mut quiet) => {
                    let v = v?;
                    if view_final(&v.status) {
                        break v;
                    }
                }
                _ = ctx.cancel.cancelled() => {
                    // A stopping server leaves both runs to resume at the next start;
                    // a parent taken over by another executor re-attaches to the child there.
                    if !self.inner.stopping.is_cancelled()
                        && !self.runs().taken_over(&ctx.run_id)
                        && self.runs().request_cancel(&run_id).await.unwrap_or(false)
                    {
                        let _ = tokio::time::timeout(
                            CHILD_STOP_WAIT,
                            self.wait_run(&run_id, CHILD_STOP_WAIT, &mut quiet),
                        )
                        .await;
                    }
                    return Err(ActionError::cancelled());
                }
            }
        };
        if view.status != RunStatus::Succeeded.as_str() {
            return Err(ActionError::new(
                ErrorCode::DependencyFailed,
                format!(
                    "child run {run_id} of workflow '{}' {}: {}",
                    view.workflow_name,
                    view.status,
                    view.error_message.unwrap_or_default()
                ),
            ));
        }
        Ok(json!({
            "run_id": run_id,
            "workflow_name": view.workflow_name,
            "status": view.status,
            "workflow_results": view.workflow_results,
        }))
    }

    async fn agent_step(&self, ctx: &ActionCtx, p: Value) -> Result<Value, ActionError> {
        let principal = Principal(ctx.principal.clone());
        let session = self
            .sessions()
            .resolve(&principal, Some(&ctx.session_id))
            .await?;
        let origin = json!({"run_id": ctx.run_id, "step": ctx.step});
        // As for child runs: re-attach to a task still open or take the result
        // of one that succeeded; a failed or cancelled one is an earlier attempt.
        let existing = self
            .tasks()
            .find_by_metadata(&session, ORIGIN_KEY, &origin)
            .await?
            .filter(|t| {
                !super::tasks::status::is_final(&t.status)
                    || t.status == super::tasks::status::SUCCEEDED
            });
        let task_id = match existing {
            Some(t) => t.id,
            None => {
                let mut tags = vec![STEP_TAG.to_string()];
                if let Some(a) = p.get("tags").and_then(Value::as_array) {
                    tags.extend(a.iter().filter_map(|t| t.as_str().map(String::from)));
                }
                tags.dedup();
                let mut metadata = Map::new();
                metadata.insert(ORIGIN_KEY.into(), origin);
                let run_short = ctx.run_id.trim_start_matches("run_");
                let step: String = ctx.step.chars().take(40).collect();
                let task = NewTask {
                    name: format!(
                        "{step}-{}-{}",
                        &run_short[..run_short.len().min(8)],
                        ctx.attempt
                    ),
                    description: p
                        .get("instructions")
                        .and_then(Value::as_str)
                        .map(String::from),
                    parameters: p
                        .get("input")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default(),
                    priority: p
                        .get("priority")
                        .cloned()
                        .and_then(|v| serde_json::from_value::<Priority>(v).ok())
                        .unwrap_or_default(),
                    tags,
                    metadata,
                    ..Default::default()
                };
                let created = self.tasks().create(&session, vec![task]).await?;
                created
                    .into_iter()
                    .next()
                    .map(|t| t.task_id)
                    .ok_or_else(|| {
                        ActionError::new(ErrorCode::InternalError, "no task was created")
                    })?
            }
        };
        ctx.phase(crate::model::StepStatus::WaitingAgent).await;
        let task = loop {
            tokio::select! {
                t = self.tasks().wait_final(&session, &task_id, WAIT_SLICE) => {
                    let t = t?;
                    if super::tasks::status::is_final(&t.status) {
                        break t;
                    }
                }
                _ = ctx.cancel.cancelled() => {
                    if !self.inner.stopping.is_cancelled() {
                        let _ = self
                            .tasks()
                            .cancel(self, &principal, &task_id, Some(&ctx.session_id))
                            .await;
                    }
                    return Err(ActionError::cancelled());
                }
            }
        };
        match task.status {
            crate::model::TaskStatus::Succeeded => Ok(task
                .result
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null)),
            other => Err(ActionError::new(
                ErrorCode::ActionFailed,
                format!(
                    "agent task {task_id} ('{}') {other}: {}",
                    task.name,
                    error_message(task.error.as_deref()).unwrap_or_default()
                ),
            )),
        }
    }
}

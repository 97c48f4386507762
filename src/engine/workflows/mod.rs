//! Workflows: what a definition is (`spec`: the schema, validation and the
//! plan), the expression language of its templates and conditions
//! (`template`, `condition`), the read-only library of definition files
//! (`library`), and the Engine's workflow API here: definitions (library,
//! session, global), validation, execution, runs, waiting for runs, cancel
//! and retry.

pub mod condition;
pub mod library;
pub mod spec;
pub mod template;
pub mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::runs::{error_message, new_run_id};
use super::sessions::Session;
use super::{Engine, Principal, iso, now_ms};
use crate::engine::resources::Requirements;
use crate::error::{Error, ErrorCode, Result};
pub use crate::model::page::{decode_offset, encode_offset};
use crate::store::{RunQuery, RunRecord, StepRecord, WorkflowRecord};
use spec::{ParamSpec, Plan, Priority, Problem, WorkflowSpec, bind_params, mermaid, validate};

/// Validate a definition without an engine (`myrmex validate`): against the
/// actions and limits `config` enables.
pub fn validate_offline(
    config: &crate::config::Config,
    spec: &WorkflowSpec,
) -> std::result::Result<Plan, Vec<Problem>> {
    let registry = crate::actions::Registry::new(config);
    validate(
        spec,
        &registry,
        &spec::Limits::from_config(&config.workflows),
    )
}

/// Where a definition lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
#[schemars(inline)]
pub enum Scope {
    /// Visible in one session only (the default).
    #[default]
    Session,
    /// Visible in every session of the principal.
    Global,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Session => "session",
            Scope::Global => "global",
        }
    }
}

/// A definition as callers see it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WorkflowView {
    pub name: String,
    pub description: String,
    /// 1 for a new definition, incremented on every update. Library files are version 1.
    pub version: u64,
    /// `library`, `session` or `global`.
    pub source: String,
    /// The file of a library definition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub step_count: usize,
    /// Modules its steps use.
    pub modules: Vec<String>,
    /// Declared parameters.
    pub parameters: BTreeMap<String, ParamSpec>,
    /// Levels of steps that can run in parallel, and the critical path.
    pub plan: Plan,
    /// The full definition.
    pub definition: WorkflowSpec,
    /// A Mermaid flowchart of the steps (get_workflow only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mermaid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// One line of `list_workflows`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WorkflowSummary {
    pub name: String,
    pub description: String,
    pub version: u64,
    /// `library`, `session` or `global`.
    pub source: String,
    pub step_count: usize,
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WorkflowPage {
    pub workflows: Vec<WorkflowSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
    /// Library files that could not be loaded, with the reason.
    pub broken_library_files: Vec<BrokenFileView>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BrokenFileView {
    pub path: String,
    pub reason: String,
}

/// Result of `validate_workflow`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ValidationReport {
    pub valid: bool,
    /// The problems found, each with code, step and field: all of them, or as
    /// many as fit the answer limit (`limits.max_result_bytes`).
    pub problems: Vec<Problem>,
    /// How many problems there are in all.
    pub problems_total: usize,
    /// The execution plan when the definition is valid.
    pub plan: Option<Plan>,
}

/// One step of a run.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepView {
    pub name: String,
    /// pending, ready, running, retrying, waiting_resources, waiting_agent (an agent.task step),
    /// succeeded, failed, skipped, cancelled or timed_out.
    pub status: String,
    /// Attempts started so far.
    pub attempts: u32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// The action's output, once succeeded.
    pub output: Option<Value>,
    /// `{code, message}` when the step did not succeed (or why it was skipped).
    pub error: Option<Value>,
    /// True when the output was reused from the retried run (inputs unchanged).
    pub reused: bool,
}

/// Counters of a run.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunMetrics {
    pub steps_by_status: BTreeMap<String, u64>,
    /// Attempts started over all steps.
    pub attempts: u64,
    /// Attempts beyond the first one.
    pub retries: u64,
    pub reused_steps: u64,
}

/// A run as callers see it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunView {
    pub run_id: String,
    pub session_id: String,
    pub workflow_name: String,
    /// The definition version the run is pinned to.
    pub workflow_version: u64,
    pub workflow_source: String,
    /// pending, running, succeeded, failed, cancelled or timed_out.
    pub status: String,
    pub priority: String,
    pub mode: String,
    pub max_parallel: u32,
    /// The parameters the run was started with (defaults applied).
    pub parameters: Map<String, Value>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Seconds from start to finish (or to now while running).
    pub execution_time: f64,
    /// Steps in a final state.
    pub steps_completed: usize,
    pub steps_total: usize,
    /// Why the run did not succeed.
    pub error_message: Option<String>,
    /// `{code, message}` when the run did not succeed.
    pub error: Option<Value>,
    /// Outputs of succeeded steps, by step name.
    pub workflow_results: Map<String, Value>,
    /// Per-step state (the first `max_steps_shown`; see `steps_truncated`).
    pub steps: Vec<StepView>,
    pub steps_truncated: bool,
    pub metrics: RunMetrics,
    /// The run this one retries.
    pub retry_of: Option<String>,
    /// The run whose `workflow.run` step started this one, and that step.
    pub parent_run_id: Option<String>,
    pub parent_step: Option<String>,
    /// Set when outputs were shortened to keep the answer small, and how to read one in full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

pub use crate::error::char_prefix;

/// A large value's stand-in: `{shortened: true, bytes, preview}` (its first 200 bytes of JSON).
pub fn shortened(v: &Value) -> Value {
    let full = v.to_string();
    json!({"shortened": true, "bytes": full.len(), "preview": char_prefix(&full, 200)})
}

impl RunView {
    /// Keep only `step` with its full output (in `steps`; `workflow_results`
    /// is left empty so that the output is not repeated), for reading one large output.
    pub fn only_step(&mut self, step: &str) -> Result<()> {
        if !self.steps.iter().any(|s| s.name == step) {
            return Err(Error::not_found(
                "step",
                step,
                format!(
                    "The run's steps are: {}.",
                    self.steps
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        // The output once, in the step (workflow_results would repeat it).
        self.steps.retain(|s| s.name == step);
        self.workflow_results.clear();
        Ok(())
    }

    /// Fit the view in `budget` bytes of JSON: the largest step outputs are
    /// replaced by a preview (largest first) until it fits, and `note` says
    /// which and how to read one in full.
    pub fn fit(&mut self, budget: usize) {
        let size = |v: &RunView| serde_json::to_string(v).map_or(0, |s| s.len());
        if size(self) <= budget {
            return;
        }
        let mut outputs: Vec<(usize, usize)> = self
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.output.as_ref().map(|o| (o.to_string().len(), i)))
            .collect();
        outputs.sort_by(|a, b| b.cmp(a));
        let mut cut = Vec::new();
        for (len, i) in outputs {
            if size(self) <= budget || len < 256 {
                break;
            }
            let preview = shortened(&self.steps[i].output.take().unwrap_or_default());
            let name = self.steps[i].name.clone();
            self.workflow_results.insert(name.clone(), preview.clone());
            self.steps[i].output = Some(preview);
            cut.push(name);
        }
        if !cut.is_empty() {
            self.note = Some(format!(
                "The outputs of steps {} were shortened to keep this answer under {budget} bytes; get_workflow_run with step: \"<name>\" returns one in full.",
                cut.join(", ")
            ));
        }
    }
}

/// A page of runs.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunSummary {
    pub run_id: String,
    pub session_id: String,
    pub workflow_name: String,
    pub workflow_version: u64,
    pub status: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub error_message: Option<String>,
}

/// What `execute_workflow` asks for.
#[derive(Debug, Clone, Default)]
pub struct ExecuteRequest {
    pub workflow_name: String,
    pub parameters: Map<String, Value>,
    pub session_id: Option<String>,
    pub mode: Option<super::sessions::SessionMode>,
    pub timeout_seconds: Option<u64>,
    pub priority: Option<Priority>,
    pub resource_requirements: Option<Value>,
    pub max_parallel: Option<u32>,
    /// `(run_id, step)` of the `workflow.run` step that starts this run.
    pub parent: Option<(String, String)>,
    /// The project context the run works on (`{id, name, path, config, ...}`).
    pub project: Option<Value>,
}

/// Steps shown in a run view.
const MAX_STEPS_SHOWN: usize = 500;

fn summary(spec: &WorkflowSpec) -> (usize, Vec<String>) {
    let mut modules: Vec<String> = spec.steps.iter().map(|s| s.module.clone()).collect();
    modules.sort();
    modules.dedup();
    (spec.steps.len(), modules)
}

/// The problems an answer of at most `budget` bytes can list (at least the
/// first), and how many there are in all.
fn fit_problems(problems: Vec<Problem>, budget: usize) -> (Vec<Problem>, usize) {
    let total = problems.len();
    (super::fitting(problems, budget), total)
}

impl Engine {
    /// Room for a problem list in an answer: the answer limit less the envelope.
    fn problems_budget(&self) -> usize {
        self.config().limits.max_result_bytes.saturating_sub(2048)
    }

    fn problems_error(&self, problems: Vec<Problem>, what: &str) -> Error {
        let first = problems
            .first()
            .map(|p| p.message.clone())
            .unwrap_or_default();
        // One kind of problem that has a code of its own (a cycle; a module
        // or action that does not exist or is off) answers with that code:
        // the arguments are well formed, what they name is not there.
        let all = |codes: &[&str]| problems.iter().all(|p| codes.contains(&p.code.as_str()));
        let code = if all(&["CYCLE_DETECTED"]) && problems.len() == 1 {
            ErrorCode::CycleDetected
        } else if all(&["MODULE_NOT_FOUND", "MODULE_DISABLED"]) && !problems.is_empty() {
            ErrorCode::ModuleNotFound
        } else {
            ErrorCode::InvalidParameters
        };
        let (problems, total) = fit_problems(problems, self.problems_budget());
        let listed = if problems.len() < total {
            format!(
                " ({} of them listed; fix those and validate again for the rest)",
                problems.len()
            )
        } else {
            String::new()
        };
        Error::new(
            code,
            format!("{what}: {total} problem(s){listed}; first: {first}"),
            "Fix every problem listed in details.problems (each names its step and field) and call again; nothing was stored.",
        )
        .with_details(json!({ "problems": problems, "problems_total": total }))
    }
}

/// A definition resolved by name.
pub(crate) struct Resolved {
    spec: WorkflowSpec,
    version: u64,
    source: &'static str,
    path: Option<String>,
    updated_at: Option<i64>,
}

impl Engine {
    /// Validate without storing.
    pub fn validate_workflow(&self, spec: &WorkflowSpec) -> ValidationReport {
        match validate(spec, self.registry(), &self.workflow_limits()) {
            Ok(plan) => ValidationReport {
                valid: true,
                problems: vec![],
                problems_total: 0,
                plan: Some(plan),
            },
            Err(problems) => {
                let (problems, problems_total) = fit_problems(problems, self.problems_budget());
                ValidationReport {
                    valid: false,
                    problems,
                    problems_total,
                    plan: None,
                }
            }
        }
    }

    /// Store a definition in a session (or globally for the principal).
    pub async fn create_workflow(
        &self,
        p: &Principal,
        session_id: Option<&str>,
        spec: WorkflowSpec,
        scope: Scope,
    ) -> Result<WorkflowView> {
        let plan = validate(&spec, self.registry(), &self.workflow_limits())
            .map_err(|e| self.problems_error(e, "the workflow is invalid"))?;
        let session = self.sessions().resolve(p, session_id).await?;
        let owner = match scope {
            Scope::Session => session.session_id.clone(),
            Scope::Global => p.name().to_string(),
        };
        let now = now_ms();
        let rec = self
            .store()
            .put_workflow(&WorkflowRecord {
                scope: scope.as_str().into(),
                owner,
                name: spec.name.clone(),
                principal: p.name().into(),
                version: 0,
                definition: serde_json::to_string(&spec)
                    .map_err(|e| Error::internal(e.to_string()))?,
                created_at: now,
                updated_at: now,
            })
            .await?;
        tracing::info!(workflow = %spec.name, version = rec.version, scope = scope.as_str(), "workflow stored");
        Ok(view(
            spec,
            rec.version,
            scope.as_str(),
            None,
            Some(rec.updated_at),
            plan,
            false,
        ))
    }

    pub(crate) async fn resolve_workflow(
        &self,
        p: &Principal,
        session: &Session,
        name: &str,
    ) -> Result<Resolved> {
        for scope in [Scope::Session, Scope::Global] {
            let owner = if scope == Scope::Session {
                session.session_id.as_str()
            } else {
                p.name()
            };
            if let Some(rec) = self
                .store()
                .get_workflow(scope.as_str(), owner, name)
                .await?
            {
                let spec: WorkflowSpec = serde_json::from_str(&rec.definition).map_err(|e| {
                    Error::internal(format!("stored workflow '{name}' is corrupt: {e}"))
                })?;
                return Ok(Resolved {
                    spec,
                    version: rec.version,
                    source: scope.as_str(),
                    path: None,
                    updated_at: Some(rec.updated_at),
                });
            }
        }
        if let Some(e) = self.library().workflows.get(name) {
            return Ok(Resolved {
                spec: e.spec.clone(),
                version: 1,
                source: "library",
                path: Some(e.path.display().to_string()),
                updated_at: None,
            });
        }
        let mut names: Vec<String> = self
            .store()
            .list_workflows(&session.session_id, p.name())
            .await?
            .into_iter()
            .map(|w| w.name)
            .collect();
        names.extend(self.library().workflows.keys().cloned());
        names.sort();
        names.dedup();
        // Defined in another of the caller's sessions (the original's sequence:
        // create_workflow without a session, then create_session, then execute).
        let elsewhere = self.sessions_defining(p, session, name).await?;
        let hint = match elsewhere.first() {
            Some(sid) => format!(
                "'{name}' is defined in your session {sid}: pass session_id: \"{sid}\" to run it there, or define it with create_workflow scope: \"global\" to run it from every session. Available here: [{}].",
                names.join(", ")
            ),
            None => format!(
                "Available workflows: [{}]. Create one with create_workflow.",
                names.join(", ")
            ),
        };
        Err(Error::new(
            ErrorCode::WorkflowNotFound,
            format!(
                "no workflow named '{name}' in this session ({}), your global definitions or the library",
                session.session_id
            ),
            hint,
        )
        .with_details(json!({ "available": names, "defined_in_sessions": elsewhere })))
    }

    /// The caller's other active sessions that define `name` (at most a page).
    async fn sessions_defining(
        &self,
        p: &Principal,
        here: &Session,
        name: &str,
    ) -> Result<Vec<String>> {
        let page = self
            .sessions()
            .list(
                p,
                crate::engine::sessions::ListSessions {
                    status: Some(crate::model::SessionStatus::Active),
                    limit: Some(self.config().limits.max_page_size),
                    cursor: None,
                },
            )
            .await?;
        let mut found = Vec::new();
        for s in page.sessions {
            if s.session_id != here.session_id
                && self
                    .store()
                    .get_workflow(Scope::Session.as_str(), &s.session_id, name)
                    .await?
                    .is_some()
            {
                found.push(s.session_id);
            }
        }
        Ok(found)
    }

    pub async fn get_workflow(
        &self,
        p: &Principal,
        session_id: Option<&str>,
        name: &str,
    ) -> Result<WorkflowView> {
        let session = self.sessions().resolve(p, session_id).await?;
        let r = self.resolve_workflow(p, &session, name).await?;
        let plan = validate(&r.spec, self.registry(), &self.workflow_limits())
            .map_err(|e| self.problems_error(e, "the stored workflow no longer validates"))?;
        Ok(view(
            r.spec,
            r.version,
            r.source,
            r.path,
            r.updated_at,
            plan,
            true,
        ))
    }

    pub async fn list_workflows(
        &self,
        p: &Principal,
        session_id: Option<&str>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<WorkflowPage> {
        let session = self.sessions().resolve(p, session_id).await?;
        let limit = self.page_limit(limit)?;
        let mut all: Vec<WorkflowSummary> = Vec::new();
        for rec in self
            .store()
            .list_workflows(&session.session_id, p.name())
            .await?
        {
            let Ok(spec) = serde_json::from_str::<WorkflowSpec>(&rec.definition) else {
                tracing::warn!(workflow = %rec.name, scope = %rec.scope, "stored workflow definition is corrupt; not listed");
                continue;
            };
            let (step_count, modules) = summary(&spec);
            all.push(WorkflowSummary {
                name: spec.name,
                description: spec.description,
                version: rec.version,
                source: rec.scope,
                step_count,
                modules,
            });
        }
        for e in self.library().workflows.values() {
            let (step_count, modules) = summary(&e.spec);
            all.push(WorkflowSummary {
                name: e.spec.name.clone(),
                description: e.spec.description.clone(),
                version: 1,
                source: "library".into(),
                step_count,
                modules,
            });
        }
        let rank = |s: &str| match s {
            "session" => 0,
            "global" => 1,
            _ => 2,
        };
        all.sort_by(|a, b| {
            (a.name.as_str(), rank(&a.source)).cmp(&(b.name.as_str(), rank(&b.source)))
        });
        let start = match cursor {
            None => 0,
            Some(c) => decode_offset(c)?,
        };
        let page: Vec<WorkflowSummary> = all
            .iter()
            .skip(start)
            .take(limit as usize)
            .cloned()
            .collect();
        let next = start + page.len();
        Ok(WorkflowPage {
            workflows: page,
            next_cursor: (next < all.len()).then(|| encode_offset(next)),
            broken_library_files: self
                .library()
                .broken
                .iter()
                .map(|b| BrokenFileView {
                    path: b.path.display().to_string(),
                    reason: b.reason.clone(),
                })
                .collect(),
        })
    }

    pub async fn delete_workflow(
        &self,
        p: &Principal,
        session_id: Option<&str>,
        name: &str,
        scope: Scope,
    ) -> Result<()> {
        let session = self.sessions().resolve(p, session_id).await?;
        let owner = match scope {
            Scope::Session => session.session_id.as_str(),
            Scope::Global => p.name(),
        };
        if self
            .store()
            .delete_workflow(scope.as_str(), owner, name)
            .await?
        {
            return Ok(());
        }
        if self.library().workflows.contains_key(name) {
            return Err(Error::new(
                ErrorCode::PermissionDenied,
                format!("'{name}' is a library workflow; library definitions are read-only"),
                "Remove or edit the file in the library directory and restart the server.",
            ));
        }
        Err(Error::new(
            ErrorCode::WorkflowNotFound,
            format!("no {} workflow named '{name}'", scope.as_str()),
            "list_workflows shows the definitions and where they come from; pass scope: \"global\" for global ones.",
        ))
    }

    /// Start a run and wait up to `wait` for it to finish.
    pub async fn execute_workflow(
        &self,
        p: &Principal,
        req: ExecuteRequest,
        wait: Duration,
        progress: &mut (dyn FnMut(usize, usize, String) + Send),
    ) -> Result<RunView> {
        let session = self
            .sessions()
            .resolve(p, req.session_id.as_deref())
            .await?;
        let id = self.start_named_run(p, &session, req).await?;
        self.wait_run(&id, wait, progress).await
    }

    /// Start a run of a workflow found by name (execute_workflow, and child runs
    /// of `workflow.run` steps).
    pub(super) async fn start_named_run(
        &self,
        p: &Principal,
        session: &Session,
        req: ExecuteRequest,
    ) -> Result<String> {
        let r = self
            .resolve_workflow(p, session, &req.workflow_name)
            .await?;
        self.start_run(
            p,
            session,
            r.spec,
            r.version,
            r.source,
            req,
            None,
            Vec::new(),
        )
        .await
    }

    /// Start a run of a definition that is not stored (a workflow file run from
    /// the command line). Returns the run id without waiting.
    pub async fn start_definition(
        &self,
        p: &Principal,
        session_id: Option<&str>,
        spec: WorkflowSpec,
        req: ExecuteRequest,
    ) -> Result<String> {
        validate(&spec, self.registry(), &self.workflow_limits())
            .map_err(|e| self.problems_error(e, "the workflow is invalid"))?;
        let session = self.sessions().resolve(p, session_id).await?;
        self.start_run(p, &session, spec, 1, "file", req, None, Vec::new())
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_run(
        &self,
        p: &Principal,
        session: &Session,
        spec: WorkflowSpec,
        version: u64,
        source: &str,
        req: ExecuteRequest,
        retry_of: Option<String>,
        prior: Vec<(String, Option<String>, Option<String>)>,
    ) -> Result<String> {
        for st in &spec.steps {
            if let Some(why) = self.registry().disabled(&st.module) {
                return Err(Error::new(
                    ErrorCode::ModuleNotFound,
                    format!(
                        "workflow '{}': step '{}' uses module '{}', which is disabled",
                        spec.name, st.name, st.module
                    ),
                    format!("{why}. list_modules shows what is enabled."),
                ));
            }
        }
        let params = bind_params(&spec, &req.parameters)
            .map_err(|e| self.problems_error(e, "the parameters do not fit the workflow"))?;
        if let Some(why) = self.workflow_limits().timeout_problem(req.timeout_seconds) {
            return Err(Error::invalid(
                why,
                "Omit timeout_seconds or pass a positive number of seconds within the limit.",
            )
            .with_details(json!({"field": "timeout_seconds"})));
        }
        // What can never be granted is refused now, not left waiting.
        if let Some(r) = &req.resource_requirements {
            let r = Requirements::parse(r)?;
            self.resources()
                .check_possible(&r, "the run's resource_requirements")
                .await?;
        }
        for st in &spec.steps {
            if let Some(r) = &st.resources {
                let r = Requirements::parse(r)?;
                self.resources()
                    .check_possible(&r, &format!("the resources of step '{}'", st.name))
                    .await?;
            }
        }
        if req.max_parallel == Some(0) {
            return Err(Error::invalid(
                "max_parallel must be at least 1",
                "Omit max_parallel or pass a positive number.",
            ));
        }
        let now = now_ms();
        let id = new_run_id();
        let mode = req.mode.unwrap_or(session.mode);
        let run = RunRecord {
            id: id.clone(),
            session_id: session.session_id.clone(),
            principal: p.name().into(),
            workflow_name: spec.name.clone(),
            workflow_version: version,
            workflow_source: source.into(),
            definition: serde_json::to_string(&spec).map_err(|e| Error::internal(e.to_string()))?,
            parameters: Value::Object(params).to_string(),
            status: crate::model::RunStatus::Pending,
            priority: req.priority.unwrap_or_default(),
            max_parallel: req
                .max_parallel
                .or(spec.max_parallel)
                .unwrap_or(session.max_parallel_tasks),
            mode,
            timeout_seconds: req.timeout_seconds.or(spec.timeout_seconds),
            resources: req.resource_requirements.map(|v| v.to_string()),
            error: None,
            retry_of,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            parent_run_id: req.parent.as_ref().map(|p| p.0.clone()),
            parent_step: req.parent.map(|p| p.1),
            project_id: req
                .project
                .as_ref()
                .and_then(|p| p.get("id"))
                .and_then(Value::as_str)
                .map(String::from),
            project: req.project.map(|p| p.to_string()),
        };
        let steps: Vec<StepRecord> = spec
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let prior = prior.iter().find(|(n, _, _)| *n == s.name);
                StepRecord {
                    run_id: id.clone(),
                    name: s.name.clone(),
                    position: i as u32,
                    status: crate::model::StepStatus::Pending,
                    attempts: 0,
                    started_at: None,
                    finished_at: None,
                    output: None,
                    error: None,
                    input_hash: None,
                    reused: false,
                    prior_output: prior.and_then(|(_, o, _)| o.clone()),
                    prior_hash: prior.and_then(|(_, _, h)| h.clone()),
                }
            })
            .collect();
        self.runs()
            .start(run, steps, session.max_parallel_workflows)
            .await?;
        tracing::info!(run = %id, workflow = %spec.name, session = %session.session_id, "run started");
        Ok(id)
    }

    /// A run of the principal (and of the session, when one is named).
    async fn visible_run(
        &self,
        p: &Principal,
        run_id: &str,
        session_id: Option<&str>,
    ) -> Result<RunRecord> {
        match self.store().get_run(run_id).await? {
            Some(r) if r.principal == p.name() && session_id.is_none_or(|s| s == r.session_id) => {
                Ok(r)
            }
            _ => Err(Error::not_found(
                "run",
                run_id,
                "Check the run_id (and session_id, if given); list_workflow_runs shows your runs.",
            )),
        }
    }

    /// A run, after waiting up to `wait` for it to finish.
    pub async fn get_workflow_run(
        &self,
        p: &Principal,
        run_id: &str,
        session_id: Option<&str>,
        wait: Duration,
        progress: &mut (dyn FnMut(usize, usize, String) + Send),
    ) -> Result<RunView> {
        self.visible_run(p, run_id, session_id).await?;
        self.wait_run(run_id, wait, progress).await
    }

    pub(super) async fn wait_run(
        &self,
        run_id: &str,
        wait: Duration,
        progress: &mut (dyn FnMut(usize, usize, String) + Send),
    ) -> Result<RunView> {
        let deadline = crate::model::bounds::deadline_after(wait);
        let mut last_done: Option<usize> = None;
        // Step ends reported so far (runs driven here).
        let mut seen_ends: Option<u64> = None;
        loop {
            let mut rx = self.runs().watch(run_id);
            match self.runs().progress(run_id) {
                // Driven here: report every step end from memory, read the steps once at the end.
                Some(p) => {
                    match seen_ends {
                        // The first look: where the run is.
                        None if p.done > 0 => progress(p.done, p.total, p.last.clone()),
                        None => {}
                        Some(seen) => {
                            for (done, text) in p.ends_since(seen) {
                                progress(*done, p.total, text.clone());
                            }
                        }
                    }
                    seen_ends = Some(p.ends);
                    last_done = Some(p.done);
                }
                // Not driven here (finished, or driven by another process): read the run.
                None => {
                    let v = self.run_view(run_id).await?;
                    if last_done.is_some_and(|d| d != v.steps_completed) {
                        let last = v
                            .steps
                            .iter()
                            .filter(|s| s.finished_at.is_some())
                            .max_by(|a, b| a.finished_at.cmp(&b.finished_at))
                            .map(|s| format!("step '{}' {}", s.name, s.status))
                            .unwrap_or_default();
                        progress(v.steps_completed, v.steps_total, last);
                    }
                    if super::runs::view_final(&v.status) || tokio::time::Instant::now() >= deadline
                    {
                        return Ok(v);
                    }
                    last_done = Some(v.steps_completed);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return self.run_view(run_id).await;
            }
            match rx.as_mut() {
                Some(rx) => {
                    tokio::select! {
                        _ = rx.changed() => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
            }
        }
    }

    pub async fn run_view(&self, run_id: &str) -> Result<RunView> {
        let run = self
            .store()
            .get_run(run_id)
            .await?
            .ok_or_else(|| Error::not_found("run", run_id, "The run no longer exists."))?;
        let steps = self.store().run_steps(run_id).await?;
        Ok(run_view(run, steps))
    }

    pub async fn list_workflow_runs(
        &self,
        p: &Principal,
        session_id: Option<&str>,
        status: Option<crate::model::RunStatus>,
        workflow: Option<&str>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<RunPage> {
        if let Some(s) = session_id {
            self.sessions().get(p, s).await?;
        }
        let limit = self.page_limit(limit)?;
        let after = cursor.map(super::sessions::decode_cursor).transpose()?;
        let mut runs = self
            .store()
            .list_runs(&RunQuery {
                principal: p.name(),
                session_id,
                status,
                workflow_name: workflow,
                parent_run_id: None,
                project_id: None,
                after,
                limit: limit + 1,
            })
            .await?;
        let next_cursor = super::sessions::next_cursor(&mut runs, limit, |r| (r.created_at, &r.id));
        Ok(RunPage {
            runs: runs.into_iter().map(|r| run_summary(&r)).collect(),
            next_cursor,
        })
    }

    /// Cancel a run: running steps are cancelled, the rest marked cancelled.
    pub async fn cancel_workflow_run(
        &self,
        p: &Principal,
        run_id: &str,
        session_id: Option<&str>,
    ) -> Result<RunView> {
        let run = self.visible_run(p, run_id, session_id).await?;
        if run.status.is_final() {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("run '{run_id}' already ended ({})", run.status),
                "Nothing was changed. retry_workflow_run starts it again.",
            ));
        }
        // Here, or by whichever process executes it (it is told), or taken here to end it.
        self.runs().request_cancel(run_id).await?;
        let mut none = |_: usize, _: usize, _: String| {};
        self.wait_run(run_id, Duration::from_secs(10), &mut none)
            .await
    }

    /// Start a new run of the same definition version and parameters: steps that
    /// succeeded are reused when their resolved inputs are unchanged.
    pub async fn retry_workflow_run(
        &self,
        p: &Principal,
        run_id: &str,
        session_id: Option<&str>,
        wait: Duration,
        progress: &mut (dyn FnMut(usize, usize, String) + Send),
    ) -> Result<RunView> {
        let old = self.visible_run(p, run_id, session_id).await?;
        if !old.status.is_final() {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("run '{run_id}' is still {}", old.status),
                "Wait for it to finish (get_workflow_run with wait_seconds) or cancel it first.",
            ));
        }
        let session = self.sessions().resolve(p, Some(&old.session_id)).await?;
        let spec: WorkflowSpec =
            serde_json::from_str(&old.definition).map_err(|e| Error::internal(e.to_string()))?;
        let params: Map<String, Value> = serde_json::from_str(&old.parameters).unwrap_or_default();
        let prior: Vec<(String, Option<String>, Option<String>)> = self
            .store()
            .run_steps(run_id)
            .await?
            .into_iter()
            .filter(|s| s.status == crate::model::StepStatus::Succeeded)
            .map(|s| (s.name, s.output, s.input_hash))
            .collect();
        let req = ExecuteRequest {
            workflow_name: old.workflow_name.clone(),
            parameters: params,
            session_id: Some(old.session_id.clone()),
            mode: Some(old.mode),
            timeout_seconds: old.timeout_seconds,
            priority: Some(old.priority),
            resource_requirements: old
                .resources
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok()),
            max_parallel: Some(old.max_parallel),
            parent: None,
            project: old
                .project
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok()),
        };
        let id = self
            .start_run(
                p,
                &session,
                spec,
                old.workflow_version,
                &old.workflow_source,
                req,
                Some(run_id.to_string()),
                prior,
            )
            .await?;
        self.wait_run(&id, wait, progress).await
    }

    /// Define (in the session) and execute in one call: the original `create_complex_workflow`.
    pub async fn create_complex_workflow(
        &self,
        p: &Principal,
        session_id: Option<&str>,
        spec: WorkflowSpec,
        parameters: Map<String, Value>,
        wait: Duration,
        progress: &mut (dyn FnMut(usize, usize, String) + Send),
    ) -> Result<(WorkflowView, RunView)> {
        let name = spec.name.clone();
        let def = self
            .create_workflow(p, session_id, spec, Scope::Session)
            .await?;
        let req = ExecuteRequest {
            workflow_name: name,
            parameters,
            session_id: session_id.map(String::from),
            ..Default::default()
        };
        let run = self.execute_workflow(p, req, wait, progress).await?;
        Ok((def, run))
    }

    /// How long a call may wait, from its `wait_seconds`.
    pub fn wait_for(&self, wait_seconds: Option<u64>) -> Result<Duration> {
        let cfg = &self.config().workflows;
        match wait_seconds {
            None => Ok(Duration::from_secs(cfg.default_wait_seconds)),
            Some(w) if w > cfg.max_wait_seconds => Err(Error::invalid(
                format!(
                    "wait_seconds is {w}; the most a call may wait is {} s",
                    cfg.max_wait_seconds
                ),
                format!(
                    "Pass wait_seconds <= {} (workflows.max_wait_seconds) and call again to wait longer.",
                    cfg.max_wait_seconds
                ),
            )),
            Some(w) => Ok(Duration::from_secs(w)),
        }
    }

    /// How long a call that answers at once unless asked may wait, from its
    /// `wait_seconds` (default 0; the same cap as [`Self::wait_for`]).
    pub fn wait_if_asked(&self, wait_seconds: Option<u64>) -> Result<Duration> {
        match wait_seconds {
            None | Some(0) => Ok(Duration::ZERO),
            w => self.wait_for(w),
        }
    }

    fn page_limit(&self, limit: Option<u32>) -> Result<u32> {
        super::sessions::page_limit(&self.config().limits, limit)
    }
}

fn view(
    spec: WorkflowSpec,
    version: u64,
    source: &str,
    path: Option<String>,
    updated_at: Option<i64>,
    plan: Plan,
    with_mermaid: bool,
) -> WorkflowView {
    let (step_count, modules) = summary(&spec);
    WorkflowView {
        name: spec.name.clone(),
        description: spec.description.clone(),
        version,
        source: source.into(),
        path,
        step_count,
        modules,
        parameters: spec.parameters.clone(),
        plan,
        mermaid: with_mermaid.then(|| mermaid(&spec)),
        definition: spec,
        updated_at: updated_at.map(iso),
    }
}

fn run_view(run: RunRecord, steps: Vec<StepRecord>) -> RunView {
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut attempts = 0u64;
    let mut retries = 0u64;
    let mut reused = 0u64;
    let mut results = Map::new();
    let mut completed = 0;
    for s in &steps {
        *by_status.entry(s.status.as_str().to_string()).or_default() += 1;
        attempts += s.attempts as u64;
        retries += s.attempts.saturating_sub(1) as u64;
        reused += s.reused as u64;
        if s.status.is_final() {
            completed += 1;
        }
        if s.status == crate::model::StepStatus::Succeeded
            && let Some(o) = s
                .output
                .as_deref()
                .and_then(|o| serde_json::from_str(o).ok())
        {
            results.insert(s.name.clone(), o);
        }
    }
    let now = now_ms();
    let execution_time = run
        .started_at
        .map(|s| (run.finished_at.unwrap_or(now) - s) as f64 / 1000.0)
        .unwrap_or(0.0);
    let total = steps.len();
    let truncated = total > MAX_STEPS_SHOWN;
    RunView {
        error_message: error_message(run.error.as_deref()),
        error: run
            .error
            .as_deref()
            .and_then(|e| serde_json::from_str(e).ok()),
        run_id: run.id,
        session_id: run.session_id,
        workflow_name: run.workflow_name,
        workflow_version: run.workflow_version,
        workflow_source: run.workflow_source,
        status: run.status.to_string(),
        priority: run.priority.to_string(),
        mode: run.mode.to_string(),
        max_parallel: run.max_parallel,
        parameters: serde_json::from_str(&run.parameters).unwrap_or_default(),
        created_at: iso(run.created_at),
        started_at: run.started_at.map(iso),
        finished_at: run.finished_at.map(iso),
        execution_time,
        steps_completed: completed,
        steps_total: total,
        workflow_results: results,
        steps: steps
            .into_iter()
            .take(MAX_STEPS_SHOWN)
            .map(|s| StepView {
                duration_ms: match (s.started_at, s.finished_at) {
                    (Some(a), Some(b)) => Some(b - a),
                    _ => None,
                },
                started_at: s.started_at.map(iso),
                finished_at: s.finished_at.map(iso),
                output: if s.status == crate::model::StepStatus::Succeeded {
                    s.output
                        .as_deref()
                        .and_then(|o| serde_json::from_str(o).ok())
                } else {
                    None
                },
                error: s
                    .error
                    .as_deref()
                    .and_then(|e| serde_json::from_str(e).ok()),
                name: s.name,
                status: s.status.to_string(),
                attempts: s.attempts,
                reused: s.reused,
            })
            .collect(),
        steps_truncated: truncated,
        metrics: RunMetrics {
            steps_by_status: by_status,
            attempts,
            retries,
            reused_steps: reused,
        },
        retry_of: run.retry_of,
        parent_run_id: run.parent_run_id,
        parent_step: run.parent_step,
        note: None,
    }
}

/// A run as list_workflow_runs shows it.
pub fn run_summary(r: &RunRecord) -> RunSummary {
    RunSummary {
        error_message: error_message(r.error.as_deref()),
        run_id: r.id.clone(),
        session_id: r.session_id.clone(),
        workflow_name: r.workflow_name.clone(),
        workflow_version: r.workflow_version,
        status: r.status.to_string(),
        created_at: iso(r.created_at),
        finished_at: r.finished_at.map(iso),
    }
}

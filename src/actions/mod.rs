//! What a step or task runs: modules of actions behind one registry.
//!
//! Every action declares a JSON Schema for its parameters and for its output.
//! The registry validates parameters before anything runs (at definition time
//! for literal values, at run time for templated ones) and dispatches calls.
//! Modules are the one place myrmex touches the outside world; this file only
//! knows their shape.

/// Make rustls' crypto provider (ring) the process's, once, before any TLS
/// client is built (the http module's, an MCP server's over HTTPS).
pub fn tls_ready() {
    static READY: std::sync::Once = std::sync::Once::new();
    READY.call_once(|| {
        // Err: a provider is installed already (by an embedding program); it serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub mod agent;
pub mod core;
pub mod docs;
pub mod fs;
pub mod http;
pub mod mcp;
pub mod shell;
pub mod workflow;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;

use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::error::ErrorCode;

/// The description of one action.
#[derive(Debug, Clone)]
pub struct ActionSpec {
    pub module: &'static str,
    pub action: &'static str,
    pub description: &'static str,
    /// JSON Schema of the action's `parameters` object.
    pub params_schema: Value,
    /// JSON Schema of the action's output.
    pub output_schema: Value,
}

/// Who runs an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A step of a workflow run: `run_id` is the run, `step` the step's name.
    Step,
    /// An auto task of a session's task graph: `run_id` is the task id, `step` its name.
    Task,
}

/// Lets an action report a state of its owner (for example `waiting_agent`).
pub type PhaseHook = Arc<dyn Fn(crate::model::StepStatus) -> BoxFuture<'static, ()> + Send + Sync>;

/// What an action knows about the call it serves.
#[derive(Clone)]
pub struct ActionCtx {
    /// Cancelled when the step times out, the run is cancelled or the server stops.
    pub cancel: CancellationToken,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub run_id: String,
    pub step: String,
    pub session_id: String,
    /// The principal the run or task belongs to.
    pub principal: String,
    pub caller: Caller,
    /// The project folder of a project run: shell commands start there and
    /// relative fs paths resolve against it (it counts as an allowed root).
    pub workdir: Option<std::path::PathBuf>,
    /// Reports a state of the step while the action runs (steps only).
    pub phase: Option<PhaseHook>,
    /// The engine, for actions that start runs or tasks.
    pub host: Option<Arc<dyn Host>>,
}

impl std::fmt::Debug for ActionCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionCtx")
            .field("attempt", &self.attempt)
            .field("run_id", &self.run_id)
            .field("step", &self.step)
            .field("session_id", &self.session_id)
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

impl ActionCtx {
    /// Report a state of the owner, when it listens.
    pub async fn phase(&self, state: crate::model::StepStatus) {
        if let Some(h) = &self.phase {
            h(state).await;
        }
    }

    /// The engine, or an internal error when none is attached.
    pub fn host(&self) -> Result<&Arc<dyn Host>, ActionError> {
        self.host.as_ref().ok_or_else(|| {
            ActionError::new(
                ErrorCode::InternalError,
                "this action needs the engine, which is not attached",
            )
        })
    }
}

/// What actions may ask of the engine they run in (implemented by the engine;
/// `actions` does not import `engine`).
#[async_trait]
pub trait Host: Send + Sync + 'static {
    /// `workflow.run`: run a workflow as a child of the calling step's run and wait for it.
    async fn run_child_workflow(
        &self,
        ctx: &ActionCtx,
        params: Value,
    ) -> Result<Value, ActionError>;
    /// `agent.task`: hand the step to an agent through the task graph and wait for its result.
    async fn agent_step(&self, ctx: &ActionCtx, params: Value) -> Result<Value, ActionError>;
    /// `docs.generate`: regenerate a project's docs (the run's project by default).
    async fn project_docs(&self, ctx: &ActionCtx, params: Value) -> Result<Value, ActionError>;
    /// The folders of the projects `principal` owns (what its fs steps may reach
    /// besides its work area when no fs roots are configured).
    async fn principal_folders(
        &self,
        principal: &str,
    ) -> Result<Vec<std::path::PathBuf>, ActionError>;
}

/// Why an action failed.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionError {
    pub code: ErrorCode,
    pub message: String,
}

impl ActionError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn cancelled() -> Self {
        Self::new(ErrorCode::Cancelled, "cancelled")
    }
}

/// A module: a named group of actions.
#[async_trait]
pub trait Module: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// One line on what the module is for.
    fn description(&self) -> &'static str;
    /// Why the module cannot be used, naming the config key that enables it; None when enabled.
    fn disabled(&self) -> Option<String> {
        None
    }
    /// When the module's actions run only as workflow steps: what to use
    /// instead elsewhere (for example in the task graph).
    fn steps_only(&self) -> Option<&'static str> {
        None
    }
    fn actions(&self) -> Vec<ActionSpec>;
    /// Run one action. `params` already matches the action's schema.
    async fn call(&self, action: &str, params: Value, ctx: ActionCtx)
    -> Result<Value, ActionError>;
}

struct Entry {
    spec: ActionSpec,
    validator: jsonschema::Validator,
    module: Arc<dyn Module>,
}

/// Every action myrmex can run, by `module.action`.
pub struct Registry {
    actions: BTreeMap<(String, String), Entry>,
    modules: BTreeMap<String, Arc<dyn Module>>,
    host: OnceLock<Arc<dyn Host>>,
}

/// A module as `list_modules` shows it.
pub struct ModuleInfo<'a> {
    pub name: &'a str,
    pub description: &'static str,
    /// None when enabled; otherwise why not and which config key enables it.
    pub disabled: Option<String>,
    pub actions: Vec<&'a ActionSpec>,
}

impl Registry {
    /// The built-in modules with the default configuration.
    pub fn builtin() -> Self {
        Self::new(&crate::config::Config::default())
    }

    /// The built-in modules under a configuration's policy.
    pub fn new(config: &crate::config::Config) -> Self {
        let mut r = Registry {
            actions: BTreeMap::new(),
            modules: BTreeMap::new(),
            host: OnceLock::new(),
        };
        r.register(Arc::new(core::Core));
        r.register(Arc::new(shell::Shell::new(&config.modules.shell)));
        r.register(Arc::new(http::Http::new(&config.modules.http)));
        r.register(Arc::new(fs::Fs::new(config)));
        r.register(Arc::new(mcp::Mcp::new(&config.mcp_servers)));
        r.register(Arc::new(workflow::Workflow::new(&config.modules.workflow)));
        r.register(Arc::new(agent::Agent));
        r.register(Arc::new(docs::Docs));
        r
    }

    /// Attach the engine (once); actions reach it through their context.
    /// The host must not own the registry (hold the engine weakly).
    pub fn set_host(&self, host: Arc<dyn Host>) {
        let _ = self.host.set(host);
    }

    pub fn host(&self) -> Option<Arc<dyn Host>> {
        self.host.get().cloned()
    }

    /// For a module whose actions run only as workflow steps: what to use instead.
    pub fn steps_only(&self, module: &str) -> Option<&'static str> {
        self.modules.get(module).and_then(|m| m.steps_only())
    }

    /// Why a module cannot be used (with the config key that enables it), or None.
    pub fn disabled(&self, module: &str) -> Option<String> {
        self.modules.get(module).and_then(|m| m.disabled())
    }

    /// Every module with its actions, by name.
    pub fn module_infos(&self) -> Vec<ModuleInfo<'_>> {
        self.modules
            .iter()
            .map(|(name, m)| ModuleInfo {
                name,
                description: m.description(),
                disabled: m.disabled(),
                actions: self
                    .actions
                    .iter()
                    .filter(|((mm, _), _)| mm == name)
                    .map(|(_, e)| &e.spec)
                    .collect(),
            })
            .collect()
    }

    pub fn register(&mut self, module: Arc<dyn Module>) {
        self.modules
            .insert(module.name().to_string(), module.clone());
        for spec in module.actions() {
            let validator = jsonschema::validator_for(&spec.params_schema).unwrap_or_else(|e| {
                panic!(
                    "{}.{}: invalid parameter schema: {e}",
                    spec.module, spec.action
                )
            });
            self.actions.insert(
                (spec.module.to_string(), spec.action.to_string()),
                Entry {
                    spec,
                    validator,
                    module: module.clone(),
                },
            );
        }
    }

    pub fn spec(&self, module: &str, action: &str) -> Option<&ActionSpec> {
        self.actions
            .get(&(module.to_string(), action.to_string()))
            .map(|e| &e.spec)
    }

    pub fn specs(&self) -> impl Iterator<Item = &ActionSpec> {
        self.actions.values().map(|e| &e.spec)
    }

    pub fn modules(&self) -> Vec<&str> {
        self.modules.keys().map(String::as_str).collect()
    }

    /// Actions of a module, or None when the module does not exist.
    pub fn actions_of(&self, module: &str) -> Option<Vec<&str>> {
        let v: Vec<&str> = self
            .actions
            .keys()
            .filter(|(m, _)| m == module)
            .map(|(_, a)| a.as_str())
            .collect();
        (!v.is_empty()).then_some(v)
    }

    /// Schema violations of `params` for an action, one line each.
    /// `skip` names top-level parameters whose values are not known yet
    /// (templates); they are neither checked nor counted as missing.
    pub fn check_params(
        &self,
        module: &str,
        action: &str,
        params: &Value,
        skip: &[String],
    ) -> Vec<String> {
        let Some(e) = self.actions.get(&(module.to_string(), action.to_string())) else {
            return vec![format!("unknown action {module}.{action}")];
        };
        if skip.is_empty() {
            return e
                .validator
                .iter_errors(params)
                .map(|err| describe(&err))
                .collect();
        }
        let mut instance = params.clone();
        let mut schema = e.spec.params_schema.clone();
        if let Some(o) = instance.as_object_mut() {
            for k in skip {
                o.remove(k);
            }
        }
        unrequire(&mut schema, skip);
        match jsonschema::validator_for(&schema) {
            Ok(v) => v.iter_errors(&instance).map(|err| describe(&err)).collect(),
            Err(err) => vec![format!("schema error: {err}")],
        }
    }

    /// Run an action; parameters are validated first.
    pub async fn call(
        &self,
        module: &str,
        action: &str,
        params: Value,
        ctx: ActionCtx,
    ) -> Result<Value, ActionError> {
        let Some(e) = self.actions.get(&(module.to_string(), action.to_string())) else {
            return Err(ActionError::new(
                ErrorCode::ModuleNotFound,
                format!("unknown action {module}.{action}"),
            ));
        };
        if let Some(why) = e.module.disabled() {
            return Err(ActionError::new(ErrorCode::PermissionDenied, why));
        }
        if ctx.caller != Caller::Step
            && let Some(instead) = e.module.steps_only()
        {
            return Err(ActionError::new(
                ErrorCode::InvalidParameters,
                format!("{module}.{action} runs only as a workflow step. {instead}"),
            ));
        }
        let problems: Vec<String> = e
            .validator
            .iter_errors(&params)
            .map(|err| describe(&err))
            .collect();
        if !problems.is_empty() {
            return Err(ActionError::new(
                ErrorCode::InvalidParameters,
                format!(
                    "parameters of {module}.{action} do not match its schema: {}",
                    problems.join("; ")
                ),
            ));
        }
        e.module.call(action, params, ctx).await
    }
}

/// Drop `skip` from the `required` lists of a schema and of its `oneOf` /
/// `anyOf` / `allOf` branches (not under `not`, where it would turn a
/// refusal into a pass).
fn unrequire(schema: &mut Value, skip: &[String]) {
    if let Some(req) = schema.get_mut("required").and_then(Value::as_array_mut) {
        req.retain(|r| !r.as_str().is_some_and(|r| skip.iter().any(|s| s == r)));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(branches) = schema.get_mut(key).and_then(Value::as_array_mut) {
            for b in branches {
                unrequire(b, skip);
            }
        }
    }
}

fn describe(err: &jsonschema::ValidationError<'_>) -> String {
    let path = err.instance_path().to_string();
    if path.is_empty() {
        err.to_string()
    } else {
        format!("{path}: {err}")
    }
}

#[cfg(test)]
mod tls_tests {
    #[test]
    fn tls_clients_build_once_the_provider_is_ready() {
        super::tls_ready();
        super::tls_ready();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        reqwest::Client::builder()
            .build()
            .expect("a TLS-capable client builds");
    }
}

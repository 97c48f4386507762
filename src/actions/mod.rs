//! What a step or task runs: modules of actions behind one registry.
//!
//! Every action declares a JSON Schema for its parameters and for its output.
//! The registry validates parameters before anything runs (at definition time
//! for literal values, at run time for templated ones) and dispatches calls.
//! Modules are the one place myrmex touches the outside world; this file only
//! knows their shape.

pub mod core;

use std::collections::BTreeMap;
use std::sync::Arc;

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

/// What an action knows about the call it serves.
#[derive(Debug, Clone)]
pub struct ActionCtx {
    /// Cancelled when the step times out, the run is cancelled or the server stops.
    pub cancel: CancellationToken,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub run_id: String,
    pub step: String,
    pub session_id: String,
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
}

impl Registry {
    /// The registry of built-in modules.
    pub fn builtin() -> Self {
        let mut r = Registry {
            actions: BTreeMap::new(),
        };
        r.register(Arc::new(core::Core));
        r
    }

    pub fn register(&mut self, module: Arc<dyn Module>) {
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
        let mut m: Vec<&str> = self.actions.keys().map(|(m, _)| m.as_str()).collect();
        m.dedup();
        m
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
        if let Some(req) = schema.get_mut("required").and_then(Value::as_array_mut) {
            req.retain(|r| !r.as_str().is_some_and(|r| skip.iter().any(|s| s == r)));
        }
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

fn describe(err: &jsonschema::ValidationError<'_>) -> String {
    let path = err.instance_path().to_string();
    if path.is_empty() {
        err.to_string()
    } else {
        format!("{path}: {err}")
    }
}

//! `core`: actions that need nothing from the outside world. Useful on their
//! own (passing values around, waiting) and as the test bed of the engine.
//!
//! - `core.echo` returns its parameters.
//! - `core.sleep` waits `ms` milliseconds; cancellable (unless `ignore_cancel`).
//! - `core.fail` fails with `message`; with `times: n` only the first n attempts fail.
//! - `core.set` returns `value` (any JSON) as its output.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{ActionCtx, ActionError, ActionSpec, Module};
use crate::error::ErrorCode;

pub struct Core;

/// Longest `core.sleep`: one day.
const MAX_SLEEP_MS: u64 = 86_400_000;

#[async_trait]
impl Module for Core {
    fn name(&self) -> &'static str {
        "core"
    }

    fn description(&self) -> &'static str {
        "Actions that touch nothing outside myrmex: echo, set, sleep, fail."
    }

    fn actions(&self) -> Vec<ActionSpec> {
        vec![
            ActionSpec {
                module: "core",
                action: "echo",
                description: "Return the parameters as the output.",
                params_schema: json!({"type": "object"}),
                output_schema: json!({"type": "object"}),
            },
            ActionSpec {
                module: "core",
                action: "sleep",
                description: "Wait `ms` milliseconds (cancellable); output {slept_ms}.",
                params_schema: json!({
                    "type": "object",
                    "properties": {
                        "ms": {"type": "integer", "minimum": 0, "maximum": MAX_SLEEP_MS, "description": "Milliseconds to wait."},
                        "ignore_cancel": {"type": "boolean", "description": "Keep sleeping when asked to stop, like an uncooperative action (to exercise timeouts)."}
                    },
                    "required": ["ms"],
                    "additionalProperties": false
                }),
                output_schema: json!({"type": "object", "properties": {"slept_ms": {"type": "integer"}}}),
            },
            ActionSpec {
                module: "core",
                action: "fail",
                description: "Fail with `message`; with `times: n` only the first n attempts fail, later ones succeed with {attempt}.",
                params_schema: json!({
                    "type": "object",
                    "properties": {
                        "message": {"type": "string", "description": "The error message."},
                        "times": {"type": "integer", "minimum": 0, "description": "Fail only the first n attempts."}
                    },
                    "additionalProperties": false
                }),
                output_schema: json!({"type": "object", "properties": {"attempt": {"type": "integer"}}}),
            },
            ActionSpec {
                module: "core",
                action: "set",
                description: "Return `value` (any JSON) as the output.",
                params_schema: json!({
                    "type": "object",
                    "properties": {"value": {"description": "The output."}},
                    "required": ["value"],
                    "additionalProperties": false
                }),
                output_schema: json!({}),
            },
        ]
    }

    async fn call(
        &self,
        action: &str,
        params: Value,
        ctx: ActionCtx,
    ) -> Result<Value, ActionError> {
        match action {
            "echo" => Ok(params),
            "set" => Ok(params.get("value").cloned().unwrap_or(Value::Null)),
            "sleep" => {
                let ms = params.get("ms").and_then(Value::as_u64).unwrap_or(0);
                if params.get("ignore_cancel").and_then(Value::as_bool) == Some(true) {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    return Ok(json!({"slept_ms": ms}));
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(ms)) => Ok(json!({"slept_ms": ms})),
                    _ = ctx.cancel.cancelled() => Err(ActionError::cancelled()),
                }
            }
            "fail" => {
                let message = params
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("core.fail was asked to fail");
                match params.get("times").and_then(Value::as_u64) {
                    Some(n) if u64::from(ctx.attempt) > n => Ok(json!({"attempt": ctx.attempt})),
                    _ => Err(ActionError::new(
                        ErrorCode::ActionFailed,
                        message.to_string(),
                    )),
                }
            }
            other => Err(ActionError::new(
                ErrorCode::ModuleNotFound,
                format!("core has no action '{other}'"),
            )),
        }
    }
}

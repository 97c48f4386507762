//! `docs.generate`: regenerate a project's README/AGENTS docs from a workflow
//! step (the run's project by default). The engine does the work (see
//! `engine::host`); this file only declares the action.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{ActionCtx, ActionError, ActionSpec, Module};
use crate::error::ErrorCode;

pub struct Docs;

#[async_trait]
impl Module for Docs {
    fn name(&self) -> &'static str {
        "docs"
    }

    fn description(&self) -> &'static str {
        "Project documentation: regenerate README.md and AGENTS.md files."
    }

    fn actions(&self) -> Vec<ActionSpec> {
        vec![ActionSpec {
            module: "docs",
            action: "generate",
            description: "Regenerate a project's README/AGENTS docs (hand-edited files whose marker line was removed are kept). Output {project_id, written, kept}.",
            params_schema: json!({
                "type": "object",
                "properties": {
                    "project": {"type": "string", "minLength": 1, "description": "Project id or name (default: the run's project)."}
                },
                "additionalProperties": false
            }),
            output_schema: json!({
                "type": "object",
                "properties": {
                    "project_id": {"type": "string"},
                    "written": {"type": "array", "items": {"type": "string"}},
                    "kept": {"type": "array", "items": {"type": "string"}}
                }
            }),
        }]
    }

    async fn call(&self, action: &str, p: Value, ctx: ActionCtx) -> Result<Value, ActionError> {
        if action != "generate" {
            return Err(ActionError::new(
                ErrorCode::ModuleNotFound,
                format!("docs has no action '{action}'"),
            ));
        }
        ctx.host()?.project_docs(&ctx, p).await
    }
}

//! `workflow.run`: run another workflow as a child of the calling step's run
//! and wait for it. The engine does the work (see `engine::host`); this file
//! only declares the action.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{ActionCtx, ActionError, ActionSpec, Module};
use crate::config::WorkflowModuleConfig;
use crate::error::ErrorCode;

pub struct Workflow {
    max_depth: u32,
}

impl Workflow {
    pub fn new(c: &WorkflowModuleConfig) -> Self {
        Self {
            max_depth: c.max_depth,
        }
    }
}

#[async_trait]
impl Module for Workflow {
    fn name(&self) -> &'static str {
        "workflow"
    }

    fn description(&self) -> &'static str {
        "Run another workflow as a child run of the step's run."
    }

    fn disabled(&self) -> Option<String> {
        (self.max_depth == 0).then(|| {
            "child workflows are disabled; set [modules.workflow] max_depth to 1 or more in the server's configuration".to_string()
        })
    }

    fn steps_only(&self) -> Option<&'static str> {
        Some("From the task graph, start a workflow with execute_workflow.")
    }

    fn actions(&self) -> Vec<ActionSpec> {
        vec![ActionSpec {
            module: "workflow",
            action: "run",
            description: "Run a workflow (by name, as execute_workflow finds it) as a child run and wait for it; cancelling the parent cancels the child. Output {run_id, workflow_name, status, workflow_results}; a child that does not succeed fails the step.",
            params_schema: json!({
                "type": "object",
                "properties": {
                    "workflow": {"type": "string", "minLength": 1, "description": "Name of the workflow to run."},
                    "parameters": {"type": "object", "description": "Its parameters (templates allowed)."},
                    "timeout_seconds": {"type": "integer", "minimum": 1, "description": "Time limit of the child run."}
                },
                "required": ["workflow"],
                "additionalProperties": false
            }),
            output_schema: json!({
                "type": "object",
                "properties": {
                    "run_id": {"type": "string"},
                    "workflow_name": {"type": "string"},
                    "status": {"type": "string"},
                    "workflow_results": {"type": "object"}
                }
            }),
        }]
    }

    async fn call(&self, action: &str, p: Value, ctx: ActionCtx) -> Result<Value, ActionError> {
        if action != "run" {
            return Err(ActionError::new(
                ErrorCode::ModuleNotFound,
                format!("workflow has no action '{action}'"),
            ));
        }
        ctx.host()?.run_child_workflow(&ctx, p).await
    }
}

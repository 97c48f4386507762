//! `agent.task`: a step done by an agent. The step becomes an agent task in
//! the session's task graph (state `waiting_agent`), handed out by
//! `next_task` under a lease and resolved by `complete_task` / `fail_task`.
//! The engine does the work (see `engine::host`); this file only declares it.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{ActionCtx, ActionError, ActionSpec, Module};
use crate::error::ErrorCode;

pub struct Agent;

#[async_trait]
impl Module for Agent {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn description(&self) -> &'static str {
        "Steps done by an agent through next_task / complete_task."
    }

    fn steps_only(&self) -> Option<&'static str> {
        Some(
            "For work done by an agent in the task graph, create an agent task (omit module and action).",
        )
    }

    fn actions(&self) -> Vec<ActionSpec> {
        vec![ActionSpec {
            module: "agent",
            action: "task",
            description: "Hand the step to an agent: it waits in state waiting_agent as an agent task (tag `workflow-step`) that next_task hands out; complete_task's result is the step's output, fail_task fails the step.",
            params_schema: json!({
                "type": "object",
                "properties": {
                    "instructions": {"type": "string", "minLength": 1, "description": "What the agent must do (the task's description)."},
                    "input": {"type": "object", "description": "Data for the agent (the task's parameters; templates allowed)."},
                    "tags": {"type": "array", "items": {"type": "string"}, "description": "Labels next_task can filter by (workflow-step is always added)."},
                    "priority": {"type": "string", "enum": ["low", "normal", "high", "critical"], "description": "Order in next_task (default normal)."}
                },
                "required": ["instructions"],
                "additionalProperties": false
            }),
            output_schema: json!({"description": "The result the agent passed to complete_task."}),
        }]
    }

    async fn call(&self, action: &str, p: Value, ctx: ActionCtx) -> Result<Value, ActionError> {
        if action != "task" {
            return Err(ActionError::new(
                ErrorCode::ModuleNotFound,
                format!("agent has no action '{action}'"),
            ));
        }
        ctx.host()?.agent_step(&ctx, p).await
    }
}

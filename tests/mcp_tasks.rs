//! The MCP Tasks extension (`io.modelcontextprotocol/tasks`): a client that
//! declares it gets a task from execute_workflow and execute_task, polls it
//! to the same result the call answers without tasks, and cancels the run
//! through it. Clients without it keep the synchronous answer.

mod common;

use std::time::Duration;

use common::*;
use rmcp::RoleClient;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ClientCapabilities,
    ClientConfig, ErrorCode, GetTaskParams, Implementation, TaskPayload, TaskStatus,
};
use rmcp::service::{RunningService, ServiceError};
use serde_json::{Value, json};

type TasksClient = RunningService<RoleClient, ClientConfig>;

fn with_tasks() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::builder().enable_tasks().build(),
        Implementation::new("myrmex-tasks-test", "0"),
    )
}

fn params(tool: &str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool.to_string()).with_arguments(args.as_object().unwrap().clone())
}

/// Call a tool that must answer with a task; its id.
async fn start_task<H: rmcp::ClientHandler>(
    c: &RunningService<RoleClient, H>,
    tool: &str,
    args: Value,
) -> String {
    match c
        .call_tool_once(params(tool, args))
        .await
        .expect("tools/call")
    {
        CallToolResponse::Task(t) => {
            assert_eq!(t.task.status, TaskStatus::Working);
            assert!(t.task.status_message.is_some());
            t.task.task_id
        }
        other => panic!("{tool}: expected a task, got {other:?}"),
    }
}

/// Poll until the task ends; its final status and payload.
async fn settle<H: rmcp::ClientHandler>(
    c: &RunningService<RoleClient, H>,
    id: &str,
) -> (TaskStatus, TaskPayload, Vec<String>) {
    let mut messages = Vec::new();
    for _ in 0..1200 {
        let r = c
            .peer()
            .get_task(GetTaskParams::new(id.to_string()))
            .await
            .expect("tasks/get");
        if let Some(m) = &r.task.task.status_message {
            messages.push(m.clone());
        }
        if r.task.task.status.is_terminal() {
            return (r.task.task.status, r.task.payload, messages);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} never ended");
}

fn completed(payload: TaskPayload) -> CallToolResult {
    match payload {
        TaskPayload::Completed { result } => serde_json::from_value(Value::Object(result)).unwrap(),
        other => panic!("expected a completed task, got {other:?}"),
    }
}

async fn define<H: rmcp::ClientHandler>(c: &RunningService<RoleClient, H>) {
    for (name, ms) in [("quick", 200), ("long", 600_000)] {
        let r = c
            .call_tool(params(
                "create_workflow",
                json!({"name": name, "scope": "global", "steps": [
                    {"name": "nap", "module": "core", "action": "sleep", "parameters": {"ms": ms}},
                    {"name": "say", "module": "core", "action": "echo", "parameters": {"said": "done"}, "dependencies": ["nap"]}
                ]}),
            ))
            .await
            .unwrap();
        assert_ne!(r.is_error, Some(true), "{r:?}");
    }
}

async fn run_view<H: rmcp::ClientHandler>(
    c: &RunningService<RoleClient, H>,
    run_id: &Value,
) -> Value {
    let r = c
        .call_tool(params("get_workflow_run", json!({"run_id": run_id})))
        .await
        .unwrap();
    r.structured_content.unwrap()
}

/// Through a task: the run's final view, as a synchronous call would answer it.
async fn workflow_completes(c: &TasksClient) {
    let id = start_task(c, "execute_workflow", json!({"workflow_name": "quick"})).await;
    let (status, payload, messages) = settle(c, &id).await;
    assert_eq!(status, TaskStatus::Completed, "{messages:?}");
    let r = completed(payload);
    assert_ne!(r.is_error, Some(true));
    let run = r.structured_content.unwrap();
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["steps_completed"], 2);
    assert_eq!(steps_by_name(&run)["say"]["output"]["said"], "done");
    assert!(
        messages.iter().any(|m| m.contains("steps done")),
        "{messages:?}"
    );
}

/// tasks/cancel cancels the run behind the task.
async fn cancel_stops_the_run(c: &TasksClient) {
    let id = start_task(c, "execute_workflow", json!({"workflow_name": "long"})).await;
    // The run the task follows is the newest one of the default session.
    let runs = c
        .call_tool(params("list_workflow_runs", json!({"status": "running"})))
        .await
        .unwrap()
        .structured_content
        .unwrap();
    let run_id = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["workflow_name"] == "long")
        .map(|r| r["run_id"].clone());
    c.peer()
        .cancel_task(CancelTaskParams::new(id.clone()))
        .await
        .expect("tasks/cancel");
    let (status, _, _) = settle(c, &id).await;
    assert_eq!(status, TaskStatus::Cancelled);
    let run_id = match run_id {
        Some(r) => r,
        None => {
            // It had not started yet when listed: find it now.
            let runs = c
                .call_tool(params("list_workflow_runs", json!({})))
                .await
                .unwrap()
                .structured_content
                .unwrap();
            runs["runs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["workflow_name"] == "long" && r["status"] == "cancelled")
                .map(|r| r["run_id"].clone())
                .expect("the cancelled run")
        }
    };
    assert_eq!(run_view(c, &run_id).await["status"], "cancelled");
}

/// execute_task through a task: the original shape.
async fn auto_task_completes(c: &TasksClient, name: &str) {
    let id = start_task(
        c,
        "execute_task",
        json!({"task_name": name, "module": "core", "action": "echo", "parameters": {"v": 7}}),
    )
    .await;
    let (status, payload, _) = settle(c, &id).await;
    assert_eq!(status, TaskStatus::Completed);
    let r = completed(payload).structured_content.unwrap();
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["result"]["v"], 7);
    assert!(r["task_id"].as_str().unwrap().starts_with("tsk_"));
}

#[tokio::test]
async fn tasks_over_stdio_in_both_eras() {
    for era in ERAS {
        let env = Env::new();
        let c = env.stdio_with(era, &[], with_tasks()).await;
        assert!(
            c.peer_info().unwrap().capabilities.supports_tasks(),
            "the server advertises the tasks extension"
        );
        define(&c).await;
        workflow_completes(&c).await;
        cancel_stops_the_run(&c).await;
        auto_task_completes(&c, &format!("echo-{era:?}")).await;
        // Bad input answers at once, as without tasks.
        match c
            .call_tool_once(params("execute_workflow", json!({"workflow_name": "nope"})))
            .await
            .unwrap()
        {
            CallToolResponse::Complete(r) => {
                assert_eq!(r.is_error, Some(true));
                let body: Value =
                    serde_json::from_str(&r.content[0].as_text().unwrap().text).unwrap();
                assert_eq!(body["error"]["code"], "WORKFLOW_NOT_FOUND");
            }
            other => panic!("expected an immediate error, got {other:?}"),
        }
        // An id that is not a task of this server.
        match c
            .peer()
            .get_task(GetTaskParams::new("no-such-task".to_string()))
            .await
        {
            Err(ServiceError::McpError(e)) => assert_eq!(e.code, ErrorCode::INVALID_PARAMS),
            other => panic!("expected invalid params, got {other:?}"),
        }
        c.cancel().await.ok();
    }
}

#[tokio::test]
async fn clients_without_tasks_keep_the_synchronous_answer() {
    let env = Env::new();
    for era in ERAS {
        let c = env.stdio(era, &[]).await;
        define(&c).await;
        let run = ok(
            &c,
            "execute_workflow",
            json!({"workflow_name": "quick", "wait_seconds": 30}),
        )
        .await;
        assert_eq!(run["status"], "succeeded");
        match c
            .peer()
            .get_task(GetTaskParams::new("any".to_string()))
            .await
        {
            Err(ServiceError::McpError(e)) => {
                assert_eq!(e.code, ErrorCode::MISSING_REQUIRED_CLIENT_CAPABILITY)
            }
            other => panic!("expected a missing-capability error, got {other:?}"),
        }
        c.cancel().await.ok();
    }
}

/// Over Streamable HTTP every 2026-07-28 request reaches a new handler: the
/// task must still be found, and only by the principal that started it.
#[tokio::test]
async fn tasks_over_http_are_found_across_requests_and_kept_per_principal() {
    let env = Env::new();
    let cfg = env.two_principals();
    let srv = env.http(&["--config", cfg.to_str().unwrap()]).await;
    for era in ERAS {
        let alice = srv.client_with(era, Some(ALICE_TOKEN), with_tasks()).await;
        let bob = srv.client_with(era, Some(BOB_TOKEN), with_tasks()).await;
        define(&alice).await;
        let id = start_task(&alice, "execute_workflow", json!({"workflow_name": "long"})).await;
        for attempt in [
            bob.peer()
                .get_task(GetTaskParams::new(id.clone()))
                .await
                .map(|_| ()),
            bob.peer()
                .cancel_task(CancelTaskParams::new(id.clone()))
                .await,
        ] {
            match attempt {
                Err(ServiceError::McpError(e)) => assert_eq!(e.code, ErrorCode::INVALID_PARAMS),
                other => panic!("bob reached alice's task: {other:?}"),
            }
        }
        alice
            .peer()
            .cancel_task(CancelTaskParams::new(id.clone()))
            .await
            .unwrap();
        assert_eq!(settle(&alice, &id).await.0, TaskStatus::Cancelled);
        let id = start_task(
            &alice,
            "execute_workflow",
            json!({"workflow_name": "quick"}),
        )
        .await;
        let (status, payload, _) = settle(&alice, &id).await;
        assert_eq!(status, TaskStatus::Completed);
        assert_eq!(
            completed(payload).structured_content.unwrap()["status"],
            "succeeded"
        );
    }
}

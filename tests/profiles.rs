//! Tool profiles and the context cost of tools/list: measured through real
//! clients in both eras, failing past the limits (bytes / 4 ≈ tokens).

mod common;

use common::*;
use serde_json::json;

/// The tools/list result as it travels (compact JSON), and its tool names.
async fn listed(c: &Client) -> (usize, Vec<String>) {
    let tools = c.list_all_tools().await.unwrap();
    let bytes = serde_json::to_string(&json!({ "tools": tools }))
        .unwrap()
        .len();
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    (bytes, names)
}

#[tokio::test]
async fn profiles_stay_within_their_token_budgets() {
    for era in ERAS {
        let env = Env::new();
        let core = env.stdio(era, &["--tools", "core"]).await;
        let (bytes, names) = listed(&core).await;
        assert!(
            bytes / 4 <= 4_500,
            "core tools/list is {bytes} bytes ≈ {} tokens; the budget is 4,500",
            bytes / 4
        );
        assert_eq!(
            names,
            [
                "cancel_workflow_run",
                "complete_task",
                "create_tasks",
                "create_workflow",
                "execute_workflow",
                "fail_task",
                "get_system_status",
                "get_workflow_run",
                "list_workflows",
                "next_task"
            ]
        );
        // A tool outside the profile is not there to call.
        let e = core
            .call_tool(rmcp::model::CallToolRequestParams::new("list_sessions"))
            .await;
        assert!(e.is_err(), "{e:?}");
        // Core is enough for the whole loop: define, run, follow.
        ok(
            &core,
            "create_workflow",
            json!({"name": "w", "steps": [
            {"name": "a", "module": "core", "action": "echo", "parameters": {"x": 1}}]}),
        )
        .await;
        let r = ok(
            &core,
            "execute_workflow",
            json!({"workflow_name": "w", "wait_seconds": 10}),
        )
        .await;
        assert_eq!(r["status"], "succeeded");

        let all = env.stdio(era, &["--tools", "all"]).await;
        let (all_bytes, all_names) = listed(&all).await;
        assert!(
            all_bytes / 4 <= 16_000,
            "all tools/list is {all_bytes} bytes ≈ {} tokens; the budget is 16,000",
            all_bytes / 4
        );
        assert_eq!(all_names.len(), TOOLS.len());

        let standard = env.stdio(era, &["--tools", "standard"]).await;
        let (std_bytes, std_names) = listed(&standard).await;
        assert!(bytes < std_bytes && std_bytes < all_bytes);
        eprintln!(
            "tools/list ({era:?}): core {bytes} B ≈ {} tokens, standard {} tools {std_bytes} B ≈ {} tokens, all {} tools {all_bytes} B ≈ {} tokens",
            bytes / 4,
            std_names.len(),
            std_bytes / 4,
            all_names.len(),
            all_bytes / 4
        );
        for original in [
            "create_session",
            "execute_workflow",
            "create_project",
            "execute_task",
            "get_system_status",
            "manage_project",
            "create_workflow",
            "list_workflows",
            "list_projects",
            "get_health_status",
            "allocate_resources",
            "create_complex_workflow",
        ] {
            assert!(std_names.iter().any(|n| n == original), "{original}");
        }
        for n in &names {
            assert!(std_names.contains(n), "standard includes core: {n}");
        }

        let some = env
            .stdio(era, &["--tools", "next_task, complete_task"])
            .await;
        assert_eq!(listed(&some).await.1, ["complete_task", "next_task"]);
    }
}

#[tokio::test]
async fn descriptions_are_short_and_schemas_compact() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &[]).await;
    for t in c.list_all_tools().await.unwrap() {
        let d = t.description.as_deref().unwrap_or_default();
        assert!(
            !d.is_empty() && d.len() <= 300,
            "{}: description of {} characters",
            t.name,
            d.len()
        );
        assert!(
            t.output_schema.is_none(),
            "{}: output schemas are opt-in",
            t.name
        );
        let s = serde_json::to_string(&t.input_schema).unwrap();
        assert!(!s.contains("\"format\":\"uint"), "{}: {s}", t.name);
        assert!(!s.contains("\"$schema\""), "{}", t.name);
    }
    // Clients that validate results can have the output schemas back.
    let c = env
        .stdio_config(Era::Legacy, "[tools]\noutput_schemas = true\n")
        .await;
    for t in c.list_all_tools().await.unwrap() {
        assert!(t.output_schema.is_some(), "{}", t.name);
    }
}

#[tokio::test]
async fn an_unknown_tool_in_a_profile_stops_the_server_with_the_known_names() {
    let env = Env::new();
    let out = env
        .command(&["serve", "--tools", "next_task,no_such_tool"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no_such_tool") && err.contains("known: ") && err.contains("next_task"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout in stdio mode");
}

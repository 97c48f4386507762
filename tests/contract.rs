//! The agent contract: an agent's main loop is `next_task {wait_seconds}`
//! until `graph_finished`, with no polling of its own, across processes; and
//! the Streamable HTTP session lifecycle answers as clients expect (DELETE of
//! a live session 204, of an unknown or ended one 404).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Two `myrmex serve` processes on one store (SQLite data directory, or
/// PostgreSQL with TEST_MYRMEX_STORE=postgres).
async fn two(env: &Env) -> Vec<Arc<Client>> {
    let cfg = env.config("[cluster]\npoll_interval_ms = 200\nsignal_poll_ms = 50\n");
    let cfg = cfg.to_str().unwrap().to_string();
    let mut out = Vec::new();
    for era in [Era::Legacy, Era::Modern] {
        out.push(Arc::new(env.stdio(era, &["--config", &cfg]).await));
    }
    out
}

/// Agent tasks that become ready over time: six wait for an auto task that
/// sleeps, four more for a second one that waits on three of the six.
fn waves() -> Vec<Value> {
    let mut tasks = vec![
        json!({"name": "warm", "module": "core", "action": "sleep", "parameters": {"ms": 600}}),
    ];
    for k in 0..6 {
        tasks.push(json!({"name": format!("a{k}"), "dependencies": ["warm"]}));
    }
    tasks.push(
        json!({"name": "mid", "module": "core", "action": "sleep", "parameters": {"ms": 400},
                      "dependencies": ["a0", "a1", "a2"]}),
    );
    for k in 0..4 {
        tasks.push(json!({"name": format!("b{k}"), "dependencies": ["mid"]}));
    }
    tasks
}

/// Two agents, one per process, loop on `next_task {wait_seconds}` /
/// `complete_task` only, and both stop on `graph_finished` once every task
/// is done; no task is handed out twice, and no answer says "nothing yet"
/// (each wait ends with a claim or the end of the graph).
#[tokio::test]
async fn two_agents_drain_a_graph_with_next_task_waits_and_stop_on_graph_finished() {
    let env = Env::new();
    let cs = two(&env).await;
    let made = ok(&cs[0], "create_tasks", json!({"tasks": waves()})).await;
    assert_eq!(made["tasks"].as_array().unwrap().len(), 12, "{made}");
    let mut agents = Vec::new();
    for (i, c) in cs.iter().enumerate() {
        let c = c.clone();
        agents.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut states: HashMap<String, usize> = HashMap::new();
            loop {
                let claim = ok(
                    &c,
                    "next_task",
                    json!({"agent": format!("agent{i}"), "wait_seconds": 30}),
                )
                .await;
                let state = claim["state"].as_str().unwrap().to_string();
                *states.entry(state.clone()).or_default() += 1;
                match state.as_str() {
                    "claimed" => {
                        let id = claim["task"]["task_id"].as_str().unwrap().to_string();
                        ok(
                            &c,
                            "complete_task",
                            json!({"task_id": id, "lease_id": claim["lease_id"], "result": {"by": i}}),
                        )
                        .await;
                        mine.push(claim["task"]["name"].as_str().unwrap().to_string());
                    }
                    "graph_finished" => break,
                    other => panic!("agent{i}: {other} after waiting: {claim}"),
                }
            }
            (mine, states)
        }));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, h) in agents.into_iter().enumerate() {
        let (mine, states) = h.await.unwrap();
        assert_eq!(states["graph_finished"], 1, "agent{i}: {states:?}");
        for name in mine {
            assert!(
                seen.insert(name.clone(), i).is_none(),
                "{name} handed out twice"
            );
        }
    }
    let mut names: Vec<&String> = seen.keys().collect();
    names.sort();
    assert_eq!(
        names,
        ["a0", "a1", "a2", "a3", "a4", "a5", "b0", "b1", "b2", "b3"],
        "every agent task handed out once"
    );
    let page = ok(
        &cs[1],
        "list_tasks",
        json!({"status": "succeeded", "limit": 50}),
    )
    .await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 12, "{page}");
}

/// The three states, and the waits that end them: an empty session has no
/// tasks yet; a wait on a graph whose only task is claimed by another ends
/// when that claim's lease runs out (the task is claimed again, attempt 2);
/// a wait past the cap is refused with the config key.
#[tokio::test]
async fn next_task_states_and_a_wait_ended_by_a_lease() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &[]).await;
    let none = ok(&c, "next_task", json!({})).await;
    assert_eq!(none["state"], "nothing_ready_yet", "{none}");
    assert!(
        none["reason"].as_str().unwrap().contains("no tasks"),
        "{none}"
    );
    let e = err(
        &c,
        "next_task",
        json!({"wait_seconds": 51}),
        "INVALID_PARAMETERS",
    )
    .await;
    assert!(e.to_string().contains("workflows.max_wait_seconds"), "{e}");

    ok(&c, "create_task", json!({"task": {"name": "only"}})).await;
    let first = ok(
        &c,
        "next_task",
        json!({"agent": "slow", "lease_seconds": 1}),
    )
    .await;
    assert_eq!(first["state"], "claimed", "{first}");
    // Nothing else is claimable; a short wait ends with the state unchanged.
    let short = ok(&c, "next_task", json!({"agent": "fast", "wait_seconds": 0})).await;
    assert_eq!(short["state"], "nothing_ready_yet", "{short}");
    assert_eq!(short["counts"]["claimed_by_others"], 1, "{short}");
    // A longer one is woken by the end of slow's lease.
    let again = ok(
        &c,
        "next_task",
        json!({"agent": "fast", "wait_seconds": 20}),
    )
    .await;
    assert_eq!(again["state"], "claimed", "{again}");
    assert_eq!(again["task"]["name"], "only");
    assert_eq!(again["task"]["attempts"], 2, "{again}");
    ok(
        &c,
        "complete_task",
        json!({"task_id": again["task"]["task_id"], "lease_id": again["lease_id"]}),
    )
    .await;
    let done = ok(&c, "next_task", json!({"wait_seconds": 20})).await;
    assert_eq!(done["state"], "graph_finished", "{done}");
    assert!(done["task"].is_null());
}

/// DELETE /mcp: 204 for a live session (which then is gone: 404 on POST and
/// on a second DELETE), 404 for an id never issued, and 404 for a session
/// the server ended itself after `http.session_idle_seconds`.
#[tokio::test]
async fn delete_answers_204_for_a_live_session_and_404_for_an_unknown_or_ended_one() {
    let env = Env::new();
    let tokens = env.two_principals();
    let toml = std::fs::read_to_string(&tokens).unwrap();
    let cfg = env.config(&format!("[http]\nsession_idle_seconds = 1\n\n{toml}"));
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let url = &server.url;
    use reqwest::Method;

    let live = raw_initialize(url, ALICE_TOKEN).await.unwrap();
    assert_eq!(
        raw_in_session(url, ALICE_TOKEN, &live, Method::DELETE).await,
        204
    );
    assert_eq!(
        raw_in_session(url, ALICE_TOKEN, &live, Method::DELETE).await,
        404
    );
    assert_eq!(
        raw_in_session(url, ALICE_TOKEN, &live, Method::POST).await,
        404
    );
    assert_eq!(
        raw_in_session(url, ALICE_TOKEN, "never-issued", Method::DELETE).await,
        404
    );

    // Left idle past the limit, the session is ended by the server (rmcp's
    // own timer: no clock to advance), and its DELETE is a 404.
    let idle = raw_initialize(url, ALICE_TOKEN).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        raw_in_session(url, ALICE_TOKEN, &idle, Method::DELETE).await,
        404
    );
}

/// The original module's `manage_project` as its specification writes it:
/// `project_name`, `operation` and the operation's fields in `parameters`.
/// A field given both ways is refused, and errors use the public names.
#[tokio::test]
async fn manage_project_takes_the_original_project_name_and_parameters() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &["--store", "memory"]).await;
    ok(&c, "create_project", json!({"name": "orig"})).await;
    let m = ok(
        &c,
        "manage_project",
        json!({"project_name": "orig", "operation": "milestone",
               "parameters": {"milestone_name": "design_complete", "data": {"reviewer": "ana"}}}),
    )
    .await;
    assert_eq!(m["result"]["name"], "design_complete", "{m}");
    assert_eq!(m["result"]["milestone"]["reviewer"], "ana", "{m}");
    let u = ok(
        &c,
        "manage_project",
        json!({"project_name": "orig", "operation": "update", "parameters": {"status": "active"}}),
    )
    .await;
    assert_eq!(u["project_status"], "active", "{u}");
    let s = ok(
        &c,
        "manage_project",
        json!({"project_name": "orig", "operation": "status"}),
    )
    .await;
    assert_eq!(s["result"]["status"], "active", "{s}");

    let e = err(
        &c,
        "manage_project",
        json!({"project": "orig", "operation": "milestone", "milestone_name": "a",
               "parameters": {"milestone_name": "b"}}),
        "INVALID_PARAMETERS",
    )
    .await;
    assert!(e.to_string().contains("both"), "{e}");
    let e = err(
        &c,
        "manage_project",
        json!({"project": "orig", "operation": "status", "parameters": {"colour": "red"}}),
        "INVALID_PARAMETERS",
    )
    .await;
    assert!(e.to_string().contains("colour"), "{e}");
    let e = err(
        &c,
        "manage_project",
        json!({"project": "orig", "operation": "status", "tags": ["x"]}),
        "INVALID_PARAMETERS",
    )
    .await;
    // The published schema's rule: tags belong to operation update.
    assert_eq!(e["details"]["field"], "operation", "{e}");
    assert!(e["message"].as_str().unwrap().contains("\"update\""), "{e}");
}

/// Workflow definitions the original module wrote carry `retry_count` on
/// every step: accepted as `max_retries`, by create_workflow and by
/// validate_workflow alike.
#[tokio::test]
async fn steps_take_the_original_retry_count() {
    let env = Env::new();
    let c = env.stdio(Era::Legacy, &["--store", "memory"]).await;
    let steps = json!([
        {"name": "flaky", "module": "core", "action": "fail", "parameters": {"times": 2}, "retry_count": 2},
        {"name": "after", "module": "core", "action": "echo", "dependencies": ["flaky"], "retry_count": 0}
    ]);
    let v = ok(
        &c,
        "validate_workflow",
        json!({"name": "orig", "steps": steps}),
    )
    .await;
    assert_eq!(v["valid"], true, "{v}");
    ok(
        &c,
        "create_workflow",
        json!({"name": "orig", "steps": steps}),
    )
    .await;
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "orig", "wait_seconds": 30}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(steps_by_name(&run)["flaky"]["attempts"], 3, "{run}");
}

/// `create_project`'s `execute_workflow` takes a workflow's name, as the
/// original documents, besides true/false; a name that does not resolve, or
/// true for a template without workflows, is refused before anything exists.
#[tokio::test]
async fn create_project_runs_a_workflow_named_in_execute_workflow() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &["--store", "memory"]).await;
    ok(
        &c,
        "create_workflow",
        json!({"name": "hello", "scope": "global", "steps": [
            {"name": "a", "module": "core", "action": "echo", "parameters": {"project": "{{project.name}}"}}]}),
    )
    .await;
    let v = ok(
        &c,
        "create_project",
        json!({"name": "named", "execute_workflow": "hello"}),
    )
    .await;
    assert_eq!(v["workflow_executed"], true, "{v}");
    assert_eq!(v["workflow_name"], "hello", "{v}");
    let run = finish(&c, &v["run_id"]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        steps_by_name(&run)["a"]["output"]["project"],
        "named",
        "{run}"
    );

    err(
        &c,
        "create_project",
        json!({"name": "ghost", "execute_workflow": "no-such-workflow"}),
        "WORKFLOW_NOT_FOUND",
    )
    .await;
    err(
        &c,
        "create_project",
        json!({"name": "empty", "execute_workflow": true}),
        "INVALID_PARAMETERS",
    )
    .await;
    for name in ["ghost", "empty"] {
        err(&c, "get_project", json!({"project": name}), "NOT_FOUND").await;
    }
    let plain = ok(
        &c,
        "create_project",
        json!({"name": "plain", "execute_workflow": false}),
    )
    .await;
    assert_eq!(plain["workflow_executed"], false, "{plain}");
}

/// The original module's component names, in health and system status.
const ORIGINAL_COMPONENTS: [&str; 5] = [
    "orchestration_engine",
    "workflow_manager",
    "task_orchestrator",
    "project_manager",
    "resource_manager",
];

/// An original tool's answer: `success` true, and `key` as expected.
fn succeeded(v: &Value, key: &str, want: Value) {
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v[key], want, "{key}: {v}");
}

/// Every call form of the original module's tool contract, as its
/// specification (and its code, where they differ) writes them: accepted,
/// answered with the original's boolean `success`, errors with `success: false`.
#[tokio::test]
async fn the_original_modules_calls_work_as_written() {
    let env = Env::new();
    let c = env
        .stdio(Era::Modern, &["--store", "memory", "--tools", "all"])
        .await;
    // create_workflow, as the code documents it (a step's `timeout`).
    let v = ok(
        &c,
        "create_workflow",
        json!({"name": "orig", "description": "the original's form", "steps": [
            {"name": "a", "module": "core", "action": "echo", "parameters": {"x": 1}, "dependencies": [], "timeout": 30},
            {"name": "b", "module": "core", "action": "echo", "parameters": {}, "dependencies": ["a"]}]}),
    )
    .await;
    assert_eq!(v["success"], true, "{v}");
    let v = ok(&c, "list_workflows", json!({})).await;
    assert_eq!(v["success"], true, "{v}");
    // execute_workflow, code form and specification form.
    let v = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "orig", "parameters": {}, "session_id": null}),
    )
    .await;
    succeeded(&v, "status", json!("succeeded"));
    let v = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "orig", "parameters": {}, "mode": "parallel", "timeout_seconds": 60,
               "resource_requirements": {"cpu": {"cores": 1}, "memory": {"gb": 1}}, "priority": "high"}),
    )
    .await;
    assert_eq!(v["success"], true, "{v}");
    // execute_task, code form (name) and specification form (task_name ...).
    let v = ok(
        &c,
        "execute_task",
        json!({"name": "t1", "module": "core", "action": "echo", "parameters": {"m": "hi"},
               "priority": "normal", "dependencies": []}),
    )
    .await;
    succeeded(&v, "status", json!("succeeded"));
    let v = ok(
        &c,
        "execute_task",
        json!({"task_name": "t2", "module": "core", "action": "echo", "parameters": {},
               "dependencies": ["t1"], "priority": "critical", "timeout_seconds": 30, "retry_count": 1,
               "resource_requirements": {"cpu": {"cores": 1}}, "session_id": null}),
    )
    .await;
    succeeded(&v, "dependencies_satisfied", json!(true));
    // create_complex_workflow with its dependencies map.
    let v = ok(
        &c,
        "create_complex_workflow",
        json!({"name": "cx", "workflow_definition": {
            "steps": [{"name": "a", "module": "core", "action": "echo", "parameters": {}},
                      {"name": "b", "module": "core", "action": "echo", "parameters": {}}],
            "dependencies": {"b": ["a"]}}}),
    )
    .await;
    assert_eq!(v["success"], true, "{v}");
    // create_project, code form and specification form (with execute_workflow a name).
    let v = ok(
        &c,
        "create_project",
        json!({"name": "p1", "template": "ai_analysis", "description": "code form"}),
    )
    .await;
    succeeded(&v, "workflow_executed", json!(false));
    let v = ok(
        &c,
        "create_project",
        json!({"project_name": "p2", "template_name": "ai_analysis", "description": "doc form",
               "author": "me", "tags": ["x"], "config_overrides": {"k": 1},
               "execute_workflow": "orig", "workflow_parameters": {}}),
    )
    .await;
    succeeded(&v, "workflow_executed", json!(true));
    let v = ok(&c, "list_projects", json!({})).await;
    assert_eq!(v["success"], true, "{v}");
    // manage_project, the specification's four operations with `parameters`.
    for (op, params) in [
        ("status", json!({})),
        ("update", json!({"description": "updated"})),
        (
            "milestone",
            json!({"milestone_name": "m1", "data": {"ok": true}}),
        ),
        ("archive", json!({})),
    ] {
        let v = ok(
            &c,
            "manage_project",
            json!({"project_name": "p1", "operation": op, "parameters": params}),
        )
        .await;
        assert_eq!(v["success"], true, "{op}: {v}");
    }
    // get_system_status with the four filters; health; the original's component names.
    let v = ok(
        &c,
        "get_system_status",
        json!({"include_detailed_metrics": true, "include_resource_health": true,
               "include_active_sessions": true, "time_range_hours": 24}),
    )
    .await;
    assert_eq!(v["success"], true);
    for k in ORIGINAL_COMPONENTS {
        assert!(v[k]["status"].is_string(), "{k}: {v}");
    }
    let h = ok(&c, "get_health_status", json!({})).await;
    assert_eq!(h["success"], true);
    for k in ORIGINAL_COMPONENTS {
        assert!(h["components"][k]["status"].is_string(), "{k}: {h}");
    }
    // allocate_resources with user_id and the nested form; a pool the
    // original documents but this server does not have is refused with the
    // pools there are and where to add one.
    let v = ok(
        &c,
        "allocate_resources",
        json!({"user_id": "alice", "requirements": {"cpu": {"cores": 1}, "memory": {"gb": 1}}}),
    )
    .await;
    assert_eq!(v["success"], true, "{v}");
    let e = err(
        &c,
        "allocate_resources",
        json!({"user_id": "alice", "requirements": {"network": {"mbps": 100}}}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains("'network'") && m.contains("cpu") && m.contains("[resources.pools]"),
        "{e}"
    );
    let e = err(
        &c,
        "allocate_resources",
        json!({"user_id": "alice", "requirements": {"gpu": {"count": 1}}}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    assert!(
        e["message"].as_str().unwrap().contains("resources.gpu"),
        "{e}"
    );
}

/// The original's sequence: a workflow defined without a session, then a
/// new session, then execute_workflow in it. The error says where the
/// workflow lives and the argument that makes it visible; following it works.
#[tokio::test]
async fn the_original_sequence_is_told_where_its_workflow_lives() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &["--store", "memory"]).await;
    ok(
        &c,
        "create_workflow",
        json!({"name": "seq", "steps": [{"name": "a", "module": "core", "action": "echo"}]}),
    )
    .await;
    let home = ok(&c, "get_session", json!({})).await["session_id"].clone();
    let s = ok(&c, "create_session", json!({"name": "later"})).await;
    let e = err(
        &c,
        "execute_workflow",
        json!({"workflow_name": "seq", "session_id": s["session_id"]}),
        "WORKFLOW_NOT_FOUND",
    )
    .await;
    assert_eq!(
        e["details"]["defined_in_sessions"],
        json!([home.clone()]),
        "{e}"
    );
    let hint = e["hint"].as_str().unwrap();
    assert!(
        hint.contains(&format!("session_id: \"{}\"", home.as_str().unwrap()))
            && hint.contains("scope: \"global\""),
        "{e}"
    );
    let v = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "seq", "session_id": home}),
    )
    .await;
    assert_eq!(v["status"], "succeeded", "{v}");
}

/// create_session reports every bad field at once, with the config key of
/// each limit, and records the original's user_id (shown, never a principal).
#[tokio::test]
async fn create_session_names_every_bad_field_and_keeps_user_id() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &["--store", "memory"]).await;
    let e = err(
        &c,
        "create_session",
        json!({"max_parallel_tasks": 0, "max_parallel_workflows": 100000, "idle_ttl_seconds": 0,
               "mode": "fastest", "colour": "red"}),
        "INVALID_PARAMETERS",
    )
    .await;
    let fields = fields_named(&e);
    for f in [
        "max_parallel_tasks",
        "max_parallel_workflows",
        "idle_ttl_seconds",
        "mode",
        "colour",
    ] {
        assert!(fields.contains(&f), "{f} not named: {e}");
    }
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("sessions.max_idle_ttl_seconds"),
        "{e}"
    );
    let s = ok(
        &c,
        "create_session",
        json!({"name": "u", "user_id": "alice"}),
    )
    .await;
    assert_eq!(s["user_id"], "alice", "{s}");
    assert_eq!(s["principal"], "local", "{s}");
    let g = ok(&c, "get_session", json!({"session_id": s["session_id"]})).await;
    assert_eq!(g["user_id"], "alice", "{g}");
}

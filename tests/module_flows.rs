//! Modules that reach beyond one action: mcp.call against real downstream
//! MCP servers (a second myrmex and @modelcontextprotocol/server-everything,
//! installed by scripts/install-tools.sh) including one dying mid-run,
//! workflow.run child runs with cancellation and depth limits, agent.task
//! steps resolved through next_task/complete_task, and the example workflow
//! in workflows/ that uses shell, fs and mcp.call together.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn toml_str(p: &Path) -> String {
    p.to_str().unwrap().replace('\\', "\\\\")
}

/// Node 22 and server-everything's entry point, from .tools/npm.
fn everything() -> (PathBuf, PathBuf) {
    let npm = repo(".tools/npm/node_modules");
    let node = npm.join(".bin/node");
    let script = npm.join("@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        node.exists() && script.exists(),
        "server-everything is not installed in .tools/npm: run scripts/install-tools.sh (scripts/test.sh does)"
    );
    (node, script)
}

/// `[[mcp_servers]]`: `peer` (a second myrmex whose pid lands in `pidfile`) and `everything`.
fn mcp_config(env: &Env, pidfile: &Path) -> String {
    let peer_dir = env.path().join("peer");
    std::fs::create_dir_all(&peer_dir).unwrap();
    let (node, script) = everything();
    let peer_cmd = format!(
        "echo $$ > '{}'; exec '{}' --data-dir '{}' serve --store memory",
        pidfile.display(),
        bin(),
        peer_dir.display()
    );
    format!(
        "{LARGE_ANSWERS}[[mcp_servers]]\nname = \"peer\"\ncommand = \"sh\"\nargs = [\"-c\", {}]\n\n\
         [[mcp_servers]]\nname = \"everything\"\ncommand = \"{}\"\nargs = [\"{}\", \"stdio\"]\n",
        serde_json::to_string(&peer_cmd).unwrap(),
        toml_str(&node),
        toml_str(&script)
    )
}

async fn run_def(c: &Client, def: Value, params: Value) -> Value {
    let name = def["name"].clone();
    ok(c, "create_workflow", def).await;
    let v = ok(
        c,
        "execute_workflow",
        json!({"workflow_name": name, "parameters": params, "wait_seconds": 0}),
    )
    .await;
    finish(c, &v["run_id"]).await
}

/// A downstream's whole tool list is one step output of ~60 KB: allow answers that large.
const LARGE_ANSWERS: &str = "[limits]\nmax_result_bytes = 1000000\n\n";

/// A step's full output (run answers shorten large outputs).
async fn full_output(c: &Client, run: &Value, step: &str) -> Value {
    let v = ok(
        c,
        "get_workflow_run",
        json!({"run_id": run["run_id"], "step": step}),
    )
    .await;
    v["steps"][0]["output"].clone()
}

fn mcp_step(name: &str, server: &str, tool: &str, args: Value, deps: &[&str]) -> Value {
    json!({"name": name, "module": "mcp", "action": "call",
           "parameters": {"server": server, "tool": tool, "arguments": args},
           "dependencies": deps})
}

#[tokio::test]
async fn mcp_calls_reach_downstream_servers_and_reconnect_after_one_dies() {
    let env = Env::new();
    let pidfile = env.path().join("peer.pid");
    let c = env
        .stdio_config(Era::Legacy, &mcp_config(&env, &pidfile))
        .await;
    let mods = ok(&c, "list_modules", json!({"module": "mcp"})).await;
    let m = &mods["modules"][0];
    assert_eq!(m["enabled"], true, "{mods}");
    let call = m["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "mcp.call")
        .unwrap();
    assert_eq!(
        call["parameters_schema"]["properties"]["server"]["enum"],
        json!(["everything", "peer"])
    );

    let def = json!({"name": "downstream", "on_failure": "continue", "parameters": {"who": {"type": "string"}}, "steps": [
        {"name": "peer_tools", "module": "mcp", "action": "list_tools", "parameters": {"server": "peer"}},
        mcp_step("peer_health", "peer", "get_health_status", json!({}), &[]),
        {"name": "ev_tools", "module": "mcp", "action": "list_tools", "parameters": {"server": "everything"}},
        mcp_step("echo", "everything", "echo", json!({"message": "hi {{params.who}}"}), &[]),
        mcp_step("weather", "everything", "get-structured-content", json!({"location": "Chicago"}), &[]),
        mcp_step("unknown", "peer", "no_such_tool", json!({}), &[]),
        mcp_step("tool_error", "peer", "get_session", json!({"session_id": "ses_doesnotexist"}), &[]),
        mcp_step("uses_output", "everything", "echo", json!({"message": "{{steps.weather.output.conditions}}"}), &["weather"])
    ]});
    let run = run_def(&c, def, json!({"who": "there"})).await;
    let s = steps_by_name(&run);
    let names = |v: &Value| -> Vec<String> {
        v["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    let peer_tools = full_output(&c, &run, "peer_tools").await;
    assert!(names(&peer_tools).contains(&"create_session".to_string()));
    assert!(
        names(&s["ev_tools"]["output"]).contains(&"echo".to_string()),
        "{}",
        s["ev_tools"]
    );
    assert!(
        s["peer_health"]["output"]["overall_status"].is_string(),
        "{}",
        s["peer_health"]
    );
    assert_eq!(s["echo"]["output"], "Echo: hi there");
    assert_eq!(s["weather"]["output"]["temperature"], 36);
    assert_eq!(s["uses_output"]["output"], "Echo: Light rain / drizzle");
    let e = &s["unknown"]["error"];
    assert_eq!(s["unknown"]["status"], "failed");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("mcp server 'peer' tool 'no_such_tool'"),
        "{e}"
    );
    let e = &s["tool_error"]["error"];
    assert_eq!(s["tool_error"]["status"], "failed");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("mcp server 'peer' tool 'get_session' failed"),
        "{e}"
    );

    // The downstream dies while a call is in flight: the step fails naming
    // the server and tool, and the next call connects again.
    let first_pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let def = json!({"name": "dies", "steps": [
        mcp_step("make", "peer", "create_task", json!({"task": {"name": "wait-here"}}), &[]),
        mcp_step("wait", "peer", "get_task", json!({"task_id": "{{steps.make.output.task_id}}", "wait_seconds": 40}), &["make"])
    ]});
    ok(&c, "create_workflow", def).await;
    let started = start(&c, "dies").await;
    wait_for_step(&c, &started["run_id"], "wait", "running").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(first_pid.parse().unwrap(), "KILL");
    let run = finish(&c, &started["run_id"]).await;
    assert_eq!(run["status"], "failed", "{run}");
    let wait = &steps_by_name(&run)["wait"];
    assert_eq!(wait["status"], "failed", "{run}");
    let msg = wait["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("mcp server 'peer' tool 'get_task'") && msg.contains("connection was lost"),
        "{msg}"
    );

    let run = run_def(
        &c,
        json!({"name": "again", "steps": [mcp_step("health", "peer", "get_health_status", json!({}), &[])]}),
        json!({}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let second_pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(
        first_pid, second_pid,
        "a new downstream process was started"
    );
}

#[tokio::test]
async fn workflow_run_starts_child_runs_that_cancel_with_their_parent() {
    let env = Env::new();
    let c = env
        .stdio_config(Era::Modern, "[modules.workflow]\nmax_depth = 2\n")
        .await;
    ok(
        &c,
        "create_workflow",
        json!({"name": "child", "parameters": {"x": {"type": "integer"}}, "steps": [
            {"name": "double", "module": "core", "action": "set", "parameters": {"value": {"x": "{{params.x}}", "twice": "{{params.x}}{{params.x}}"}}}
        ]}),
    )
    .await;
    let run = run_def(
        &c,
        json!({"name": "parent", "steps": [
            {"name": "seed", "module": "core", "action": "set", "parameters": {"value": 21}},
            {"name": "call", "module": "workflow", "action": "run", "dependencies": ["seed"],
             "parameters": {"workflow": "child", "parameters": {"x": "{{steps.seed.output}}"}}},
            {"name": "after", "module": "core", "action": "echo", "dependencies": ["call"],
             "parameters": {"got": "{{steps.call.output.workflow_results.double.twice}}"}}
        ]}),
        json!({}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let s = steps_by_name(&run);
    let out = &s["call"]["output"];
    assert_eq!(out["status"], "succeeded");
    assert_eq!(out["workflow_results"]["double"]["x"], 21);
    assert_eq!(s["after"]["output"]["got"], "2121");
    let child = ok(&c, "get_workflow_run", json!({"run_id": out["run_id"]})).await;
    assert_eq!(child["parent_run_id"], run["run_id"]);
    assert_eq!(child["parent_step"], "call");

    // A failing child fails the parent's step.
    ok(&c, "create_workflow", json!({"name": "bad-child", "steps": [
        {"name": "boom", "module": "core", "action": "fail", "parameters": {"message": "child broke"}}]})).await;
    let run = run_def(&c, json!({"name": "bad-parent", "steps": [
        {"name": "call", "module": "workflow", "action": "run", "parameters": {"workflow": "bad-child"}}]}), json!({})).await;
    assert_eq!(run["status"], "failed");
    let e = &steps_by_name(&run)["call"]["error"];
    assert_eq!(e["code"], "DEPENDENCY_FAILED", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("child broke"),
        "{e}"
    );
    // An unknown workflow fails the step with the workflow's name.
    let run = run_def(&c, json!({"name": "lost-parent", "steps": [
        {"name": "call", "module": "workflow", "action": "run", "parameters": {"workflow": "nowhere"}}]}), json!({})).await;
    let e = &steps_by_name(&run)["call"]["error"];
    assert_eq!(e["code"], "WORKFLOW_NOT_FOUND", "{e}");

    // Depth is limited: a workflow that runs itself stops at max_depth.
    let run = run_def(&c, json!({"name": "recurse", "steps": [
        {"name": "again", "module": "workflow", "action": "run", "parameters": {"workflow": "recurse"}}]}), json!({})).await;
    assert_eq!(run["status"], "failed");
    let runs = ok(
        &c,
        "list_workflow_runs",
        json!({"workflow_name": "recurse"}),
    )
    .await;
    let runs = runs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "the top run and 2 nested ones: {runs:?}");
    let mut codes = Vec::new();
    for r in runs {
        let v = ok(&c, "get_workflow_run", json!({"run_id": r["run_id"]})).await;
        let e = steps_by_name(&v)["again"]["error"].clone();
        if e["code"] == "LIMIT_EXCEEDED" {
            assert!(
                e["message"].as_str().unwrap().contains("max_depth is 2"),
                "{e}"
            );
        }
        codes.push(e["code"].as_str().unwrap().to_string());
    }
    codes.sort();
    assert_eq!(
        codes,
        ["DEPENDENCY_FAILED", "DEPENDENCY_FAILED", "LIMIT_EXCEEDED"]
    );

    // Cancelling the parent cancels the running child.
    ok(
        &c,
        "create_workflow",
        json!({"name": "slow-child", "steps": [
        {"name": "nap", "module": "core", "action": "sleep", "parameters": {"ms": 60000}}]}),
    )
    .await;
    ok(&c, "create_workflow", json!({"name": "waiting-parent", "steps": [
        {"name": "call", "module": "workflow", "action": "run", "parameters": {"workflow": "slow-child"}}]})).await;
    let parent = start(&c, "waiting-parent").await;
    let mut child_id = Value::Null;
    for _ in 0..400 {
        let runs = ok(
            &c,
            "list_workflow_runs",
            json!({"workflow_name": "slow-child"}),
        )
        .await;
        if let Some(r) = runs["runs"].as_array().unwrap().first() {
            child_id = r["run_id"].clone();
            let v = ok(&c, "get_workflow_run", json!({"run_id": child_id})).await;
            if v["steps"][0]["status"] == "running" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(child_id.is_string(), "the child run started");
    ok(
        &c,
        "cancel_workflow_run",
        json!({"run_id": parent["run_id"]}),
    )
    .await;
    let child = finish(&c, &child_id).await;
    assert_eq!(child["status"], "cancelled", "{child}");
    let parent = finish(&c, &parent["run_id"]).await;
    assert_eq!(parent["status"], "cancelled", "{parent}");
}

#[tokio::test]
async fn agent_task_steps_wait_for_an_agent_through_the_task_graph() {
    let env = Env::new();
    let c = env.stdio(Era::Legacy, &["--store", "memory"]).await;
    ok(&c, "create_workflow", json!({"name": "review", "steps": [
        {"name": "draft", "module": "core", "action": "set", "parameters": {"value": {"text": "hello"}}},
        {"name": "approve", "module": "agent", "action": "task", "dependencies": ["draft"],
         "parameters": {"instructions": "Review the draft", "input": {"draft": "{{steps.draft.output.text}}"}, "tags": ["review"], "priority": "high"}},
        {"name": "publish", "module": "core", "action": "echo", "dependencies": ["approve"],
         "parameters": {"verdict": "{{steps.approve.output.verdict}}"}}
    ]})).await;

    // Completed by an agent.
    let run = start(&c, "review").await;
    wait_for_step(&c, &run["run_id"], "approve", "waiting_agent").await;
    let claim = ok(
        &c,
        "next_task",
        json!({"agent": "reviewer-1", "tags": ["review"]}),
    )
    .await;
    let task = &claim["task"];
    assert_eq!(task["description"], "Review the draft", "{claim}");
    assert_eq!(task["parameters"]["draft"], "hello");
    assert!(
        task["tags"]
            .as_array()
            .unwrap()
            .contains(&json!("workflow-step"))
    );
    assert_eq!(task["priority"], "high");
    ok(&c, "complete_task", json!({"task_id": task["task_id"], "lease_id": claim["lease_id"], "result": {"verdict": "ship it"}})).await;
    let done = finish(&c, &run["run_id"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let s = steps_by_name(&done);
    assert_eq!(s["approve"]["output"], json!({"verdict": "ship it"}));
    assert_eq!(s["publish"]["output"]["verdict"], "ship it");

    // Failed by an agent: the step fails with the agent's message.
    let run = start(&c, "review").await;
    wait_for_step(&c, &run["run_id"], "approve", "waiting_agent").await;
    // A lease applies: an expired claim goes back to the queue.
    let claim = ok(
        &c,
        "next_task",
        json!({"agent": "slow", "tags": ["workflow-step"], "lease_seconds": 1}),
    )
    .await;
    let tid = claim["task"]["task_id"].clone();
    assert!(tid.is_string(), "{claim}");
    let mut again = Value::Null;
    for _ in 0..100 {
        let v = ok(
            &c,
            "next_task",
            json!({"agent": "fast", "tags": ["workflow-step"]}),
        )
        .await;
        if v["task"].is_object() {
            again = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        again["task"]["task_id"], tid,
        "the expired claim was handed out again: {again}"
    );
    err(
        &c,
        "complete_task",
        json!({"task_id": tid, "lease_id": claim["lease_id"], "result": {}}),
        "LEASE_NOT_HELD",
    )
    .await;
    ok(
        &c,
        "fail_task",
        json!({"task_id": tid, "lease_id": again["lease_id"], "error": "not good enough"}),
    )
    .await;
    let failed = finish(&c, &run["run_id"]).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let s = steps_by_name(&failed);
    assert!(
        s["approve"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not good enough"),
        "{failed}"
    );
    assert_eq!(s["publish"]["status"], "skipped");

    // Cancelling the run cancels the waiting agent task.
    let run = start(&c, "review").await;
    wait_for_step(&c, &run["run_id"], "approve", "waiting_agent").await;
    let tasks = ok(&c, "list_tasks", json!({"status": "ready"})).await;
    let open: Vec<&Value> = tasks["tasks"].as_array().unwrap().iter().collect();
    assert_eq!(open.len(), 1, "{tasks}");
    let tid = open[0]["task_id"].clone();
    ok(&c, "cancel_workflow_run", json!({"run_id": run["run_id"]})).await;
    let t = ok(&c, "get_task", json!({"task_id": tid, "wait_seconds": 10})).await;
    assert_eq!(t["status"], "cancelled", "{t}");
    assert_eq!(finish(&c, &run["run_id"]).await["status"], "cancelled");
}

#[tokio::test]
async fn the_example_workflow_uses_shell_fs_and_mcp_together() {
    let env = Env::new();
    let pidfile = env.path().join("peer.pid");
    let root = env.path().join("projects");
    std::fs::create_dir_all(&root).unwrap();
    let toml = format!(
        "workflows_dirs = [\"{}\"]\n\n[modules.shell]\nenabled = true\nallowed_roots = [\"{}\"]\n\n[modules.fs]\nroots = [\"{}\"]\n\n{}",
        toml_str(&repo("workflows")),
        toml_str(&root),
        toml_str(&root),
        mcp_config(&env, &pidfile)
    );
    let c = env.stdio_config(Era::Modern, &toml).await;
    let v = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "system-report", "parameters": {"mcp_server": "peer", "report_path": "reports/system.md"}, "wait_seconds": 0}),
    )
    .await;
    let run = finish(&c, &v["run_id"]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let report = std::fs::read_to_string(root.join("reports/system.md")).unwrap();
    assert!(report.contains("# System report"), "{report}");
    assert!(
        report.contains(&format!("version {}", env!("CARGO_PKG_VERSION"))),
        "{report}"
    );
    assert!(report.contains("host: Linux"), "{report}");
    let tool = report
        .split("first of its tools: ")
        .nth(1)
        .unwrap_or_default()
        .trim();
    assert!(!tool.is_empty() && !tool.contains("{{"), "{report}");
    let s = steps_by_name(&run);
    assert_eq!(s["check"]["output"]["content"].as_str().unwrap(), report);
}

#[tokio::test]
async fn child_runs_and_agent_steps_are_picked_up_again_after_kill_9() {
    let env = Env::new();
    let mut server = env.http(&[]).await;
    let c = server.client(Era::Legacy, None).await;
    ok(&c, "create_workflow", json!({"name": "inner", "steps": [
        {"name": "ask", "module": "agent", "action": "task", "parameters": {"instructions": "Answer", "input": {"q": 1}}}]})).await;
    ok(&c, "create_workflow", json!({"name": "outer", "steps": [
        {"name": "call", "module": "workflow", "action": "run", "parameters": {"workflow": "inner"}},
        {"name": "after", "module": "core", "action": "echo", "dependencies": ["call"],
         "parameters": {"answer": "{{steps.call.output.workflow_results.ask.a}}"}}]})).await;
    let outer = start(&c, "outer").await;
    let mut inner_id = Value::Null;
    for _ in 0..400 {
        let runs = ok(&c, "list_workflow_runs", json!({"workflow_name": "inner"})).await;
        if let Some(r) = runs["runs"].as_array().unwrap().first() {
            inner_id = r["run_id"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    wait_for_step(&c, &inner_id, "ask", "waiting_agent").await;
    signal(server.pid(), "KILL");
    server.child.wait().await.unwrap();
    drop(c);

    let server = env.http(&[]).await;
    let c = server.client(Era::Modern, None).await;
    wait_for_step(&c, &inner_id, "ask", "waiting_agent").await;
    let claim = ok(&c, "next_task", json!({"agent": "a1"})).await;
    assert_eq!(claim["task"]["parameters"]["q"], 1, "{claim}");
    ok(&c, "complete_task", json!({"task_id": claim["task"]["task_id"], "lease_id": claim["lease_id"], "result": {"a": 42}})).await;
    let done = finish(&c, &outer["run_id"]).await;
    assert_eq!(done["status"], "succeeded", "{}", done["steps"]);
    assert_eq!(steps_by_name(&done)["after"]["output"]["answer"], 42);
    // The interrupted attempts were re-attached, not repeated.
    let runs = ok(&c, "list_workflow_runs", json!({"workflow_name": "inner"})).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
    let tasks = ok(&c, "list_tasks", json!({})).await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 1, "{tasks}");
}

#[tokio::test]
async fn mcp_servers_over_streamable_http_are_called_too() {
    let peer_env = Env::new();
    let peer = peer_env.http(&["--store", "memory"]).await;
    let env = Env::new();
    let c = env
        .stdio_config(
            Era::Modern,
            &format!(
                "{LARGE_ANSWERS}[[mcp_servers]]\nname = \"remote\"\nurl = \"{}\"\nheaders = {{ X-Trace = \"myrmex-test\" }}\ntimeout_seconds = 30\n",
                peer.url
            ),
        )
        .await;
    let run = run_def(
        &c,
        json!({"name": "remote", "steps": [
            {"name": "tools", "module": "mcp", "action": "list_tools", "parameters": {"server": "remote"}},
            mcp_step("session", "remote", "create_session", json!({"name": "from-upstream"}), &[]),
            mcp_step("read", "remote", "get_session", json!({"session_id": "{{steps.session.output.session_id}}"}), &["session"])
        ]}),
        json!({}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{}", run["steps"]);
    let s = steps_by_name(&run);
    assert_eq!(s["read"]["output"]["name"], "from-upstream");
    let tools = full_output(&c, &run, "tools").await;
    assert!(tools["tools"].as_array().unwrap().len() > 10);
}

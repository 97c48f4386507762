//! The workflow engine through a real MCP client: DAG execution, parallelism,
//! priorities, retries, timeouts, cancellation, skips, conditions, templates,
//! validation, the library, versions, retry and crash-resume.

mod common;

use common::*;
use serde_json::{Value, json};

fn step(name: &str, action: &str, params: Value, deps: &[&str]) -> Value {
    json!({"name": name, "module": "core", "action": action, "parameters": params, "dependencies": deps})
}

fn sleep(name: &str, ms: u64, deps: &[&str]) -> Value {
    step(name, "sleep", json!({"ms": ms}), deps)
}

/// Create a workflow and run it to the end (wait up to 50 s).
async fn run(c: &Client, def: Value, params: Value) -> Value {
    let name = def["name"].clone();
    ok(c, "create_workflow", def).await;
    ok(
        c,
        "execute_workflow",
        json!({"workflow_name": name, "parameters": params, "wait_seconds": 50}),
    )
    .await
}

fn ts(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
}

/// Did two steps run at the same time?
fn overlap(a: &Value, b: &Value) -> bool {
    ts(&a["started_at"]) < ts(&b["finished_at"]) && ts(&b["started_at"]) < ts(&a["finished_at"])
}

async fn client() -> (Env, Client) {
    let env = Env::new();
    let c = env.stdio(Era::Legacy, &["--store", "memory"]).await;
    (env, c)
}

#[tokio::test]
async fn diamond_and_wide_dags_run_branches_in_parallel() {
    let (_env, c) = client().await;
    let r = run(
        &c,
        json!({"name": "diamond", "steps": [
            step("a", "set", json!({"value": 1}), &[]),
            sleep("b", 400, &["a"]), sleep("c", 400, &["a"]),
            step("d", "echo", json!({}), &["b", "c"])
        ]}),
        json!({}),
    )
    .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let s = steps_by_name(&r);
    assert!(overlap(&s["b"], &s["c"]), "b and c did not overlap: {r}");
    assert!(ts(&s["d"]["started_at"]) >= ts(&s["b"]["finished_at"]));
    assert!(ts(&s["b"]["started_at"]) >= ts(&s["a"]["finished_at"]));

    let wide: Vec<Value> = (0..6).map(|i| sleep(&format!("w{i}"), 400, &[])).collect();
    let r = run(
        &c,
        json!({"name": "wide", "max_parallel": 6, "steps": wide}),
        json!({}),
    )
    .await;
    assert_eq!(r["status"], "succeeded");
    let s = steps_by_name(&r);
    for i in 0..6 {
        for j in (i + 1)..6 {
            assert!(
                overlap(&s[&format!("w{i}")], &s[&format!("w{j}")]),
                "w{i} and w{j} did not overlap"
            );
        }
    }
    // With max_parallel 2, no more than two run at once.
    let r = run(&c, json!({"name": "narrow", "max_parallel": 2, "steps": (0..5).map(|i| sleep(&format!("n{i}"), 150, &[])).collect::<Vec<_>>()}), json!({})).await;
    let all: Vec<Value> = steps_by_name(&r).into_values().collect();
    for a in &all {
        let at = ts(&a["started_at"]);
        let concurrent = all
            .iter()
            .filter(|b| ts(&b["started_at"]) <= at && at < ts(&b["finished_at"]))
            .count();
        assert!(concurrent <= 2, "{concurrent} steps ran at once");
    }
}

#[tokio::test]
async fn priority_orders_ready_steps_under_a_parallelism_of_one() {
    let (_env, c) = client().await;
    let mut steps = Vec::new();
    for (n, p) in [
        ("l", "low"),
        ("n", "normal"),
        ("c", "critical"),
        ("h", "high"),
    ] {
        let mut s = sleep(n, 30, &[]);
        s["priority"] = json!(p);
        steps.push(s);
    }
    let r = run(
        &c,
        json!({"name": "prio", "max_parallel": 1, "steps": steps}),
        json!({}),
    )
    .await;
    assert_eq!(r["status"], "succeeded");
    let s = steps_by_name(&r);
    let mut order: Vec<&str> = vec!["l", "n", "c", "h"];
    order.sort_by_key(|n| ts(&s[*n]["started_at"]));
    assert_eq!(order, ["c", "h", "n", "l"]);

    // Sequential mode runs one at a time in plan order.
    let r = ok(&c, "execute_workflow", json!({"workflow_name": "prio", "mode": "sequential", "max_parallel": 4, "wait_seconds": 30})).await;
    assert_eq!(r["mode"], "sequential");
    let all: Vec<Value> = steps_by_name(&r).into_values().collect();
    for a in &all {
        for b in &all {
            if a["name"] != b["name"] {
                assert!(!overlap(a, b), "sequential steps overlapped");
            }
        }
    }
}

#[tokio::test]
async fn retries_back_off_then_succeed_or_fail_and_skip_dependents() {
    let (_env, c) = client().await;
    let r = run(&c, json!({"name": "flaky", "steps": [{
        "name": "f", "module": "core", "action": "fail", "parameters": {"times": 2, "message": "flaky"},
        "max_retries": 3, "retry": {"initial_delay_ms": 150, "multiplier": 2, "jitter": false}
    }]}), json!({})).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let f = &steps_by_name(&r)["f"];
    assert_eq!(f["attempts"], 3);
    assert_eq!(f["output"], json!({"attempt": 3}));
    assert_eq!(r["metrics"]["retries"], 2);
    // Backoff: 150 ms then 300 ms between the three attempts.
    assert!(f["duration_ms"].as_i64().unwrap() >= 450, "{f}");

    let r = run(&c, json!({"name": "broken", "steps": [
        {"name": "f", "module": "core", "action": "fail", "parameters": {"message": "always"}, "max_retries": 1,
         "retry": {"initial_delay_ms": 10, "jitter": false}},
        step("after", "echo", json!({}), &["f"]),
        step("after2", "echo", json!({}), &["after"]),
    ]}), json!({})).await;
    assert_eq!(r["status"], "failed");
    let s = steps_by_name(&r);
    assert_eq!(s["f"]["status"], "failed");
    assert_eq!(s["f"]["attempts"], 2);
    assert_eq!(s["f"]["error"]["code"], "ACTION_FAILED");
    assert_eq!(s["f"]["error"]["message"], "always");
    for n in ["after", "after2"] {
        assert_eq!(s[n]["status"], "skipped", "{n}");
        assert_eq!(s[n]["error"]["code"], "DEPENDENCY_FAILED", "{n}");
        assert_eq!(s[n]["attempts"], 0);
    }
    assert!(r["error_message"].as_str().unwrap().contains("'f'"), "{r}");
    assert_eq!(r["steps_completed"], r["steps_total"]);
}

#[tokio::test]
async fn step_and_workflow_timeouts() {
    let (_env, c) = client().await;
    let mut s = sleep("slow", 10_000, &[]);
    s["timeout_seconds"] = json!(1);
    let r = run(
        &c,
        json!({"name": "step-timeout", "steps": [s, step("next", "echo", json!({}), &["slow"])]}),
        json!({}),
    )
    .await;
    assert_eq!(r["status"], "failed");
    let st = steps_by_name(&r);
    assert_eq!(st["slow"]["status"], "timed_out");
    assert_eq!(st["slow"]["error"]["code"], "TIMEOUT_EXCEEDED");
    assert_eq!(st["next"]["status"], "skipped");

    let r = run(&c, json!({"name": "wf-timeout", "timeout_seconds": 1, "steps": [sleep("a", 10_000, &[]), sleep("b", 10, &["a"])]}), json!({})).await;
    assert_eq!(r["status"], "timed_out", "{r}");
    assert_eq!(r["error"]["code"], "TIMEOUT_EXCEEDED");
    let st = steps_by_name(&r);
    assert_eq!(st["a"]["status"], "timed_out");
    assert_eq!(st["b"]["status"], "cancelled");
    // An action that ignores cancellation is abandoned and reported.
    let r = run(
        &c,
        json!({"name": "stubborn", "steps": [{"name": "s", "module": "core", "action": "sleep",
        "parameters": {"ms": 20000, "ignore_cancel": true}, "timeout_seconds": 1}]}),
        json!({}),
    )
    .await;
    let st = steps_by_name(&r);
    assert_eq!(st["s"]["status"], "timed_out");
    assert!(
        st["s"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("abandoned"),
        "{r}"
    );
    // The call's own timeout overrides the definition's.
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "step-timeout", "timeout_seconds": 1, "wait_seconds": 30}),
    )
    .await;
    assert!(r["status"] == "timed_out" || r["status"] == "failed", "{r}");
}

#[tokio::test]
async fn cancellation_mid_run_cancels_running_and_pending_steps() {
    let (_env, c) = client().await;
    ok(&c, "create_workflow", json!({"name": "long", "steps": [sleep("a", 20_000, &[]), sleep("b", 20_000, &[]), step("c", "echo", json!({}), &["a", "b"])]})).await;
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "long", "wait_seconds": 1}),
    )
    .await;
    assert_eq!(r["status"], "running");
    let id = r["run_id"].clone();
    let r = ok(&c, "cancel_workflow_run", json!({"run_id": id})).await;
    assert_eq!(r["status"], "cancelled", "{r}");
    let s = steps_by_name(&r);
    for n in ["a", "b", "c"] {
        assert_eq!(s[n]["status"], "cancelled", "{n}");
    }
    assert_eq!(s["a"]["attempts"], 1);
    assert_eq!(s["c"]["attempts"], 0);
    err(&c, "cancel_workflow_run", json!({"run_id": id}), "CONFLICT").await;
    err(
        &c,
        "cancel_workflow_run",
        json!({"run_id": "run_nope"}),
        "NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn closing_a_session_cancels_its_runs() {
    let (_env, c) = client().await;
    let s = ok(&c, "create_session", json!({"name": "doomed"})).await;
    let sid = s["session_id"].clone();
    ok(
        &c,
        "create_workflow",
        json!({"name": "long", "session_id": sid, "steps": [sleep("a", 20_000, &[])]}),
    )
    .await;
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "long", "session_id": sid, "wait_seconds": 0}),
    )
    .await;
    ok(&c, "close_session", json!({"session_id": sid})).await;
    let r = ok(
        &c,
        "get_workflow_run",
        json!({"run_id": r["run_id"], "wait_seconds": 10}),
    )
    .await;
    assert_eq!(r["status"], "cancelled", "{r}");
    err(
        &c,
        "execute_workflow",
        json!({"workflow_name": "long", "session_id": sid}),
        "SESSION_CLOSED",
    )
    .await;
}

#[tokio::test]
async fn all_done_cleanup_runs_and_continue_lets_branches_finish() {
    let (_env, c) = client().await;
    let mut cleanup = step(
        "cleanup",
        "echo",
        json!({"saw": "{{steps.bad.status}}"}),
        &["bad", "after"],
    );
    cleanup["trigger_rule"] = json!("all_done");
    let r = run(
        &c,
        json!({"name": "cleanup", "on_failure": "continue", "steps": [
            step("bad", "fail", json!({"message": "x"}), &[]),
            step("after", "echo", json!({}), &["bad"]),
            sleep("other", 200, &[]),
            step("other2", "echo", json!({}), &["other"]),
            cleanup
        ]}),
        json!({}),
    )
    .await;
    assert_eq!(r["status"], "failed");
    let s = steps_by_name(&r);
    assert_eq!(s["after"]["status"], "skipped");
    assert_eq!(
        s["other2"]["status"], "succeeded",
        "continue lets independent branches finish"
    );
    assert_eq!(s["cleanup"]["status"], "succeeded");
    assert_eq!(s["cleanup"]["output"], json!({"saw": "failed"}));

    // fail_fast: steps not yet started are cancelled, cleanup still runs.
    let mut cleanup = step("cleanup", "echo", json!({}), &["bad", "late"]);
    cleanup["trigger_rule"] = json!("all_done");
    let r = run(
        &c,
        json!({"name": "fast", "max_parallel": 1, "steps": [
            step("bad", "fail", json!({}), &[]),
            sleep("late", 10, &[]),
            cleanup
        ]}),
        json!({}),
    )
    .await;
    let s = steps_by_name(&r);
    assert_eq!(s["bad"]["status"], "failed");
    assert_eq!(s["late"]["status"], "cancelled");
    assert_eq!(s["cleanup"]["status"], "succeeded");
}

#[tokio::test]
async fn when_conditions_skip_steps_without_failing_dependents() {
    let (_env, c) = client().await;
    let mut prod = step("deploy", "echo", json!({}), &["check"]);
    prod["when"] = json!("{{params.env}} == 'prod' && steps.check.output.ok");
    let mut dev = step("dev-only", "echo", json!({}), &["check"]);
    dev["when"] = json!("params.env != 'prod'");
    let def = json!({"name": "cond", "parameters": {"env": {"type": "string", "default": "dev"}}, "steps": [
        step("check", "set", json!({"value": {"ok": true}}), &[]), prod, dev,
        step("report", "echo", json!({}), &["deploy"])
    ]});
    let r = run(&c, def, json!({"env": "prod"})).await;
    let s = steps_by_name(&r);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(s["deploy"]["status"], "succeeded");
    assert_eq!(s["dev-only"]["status"], "skipped");
    assert_eq!(s["dev-only"]["error"]["code"], "CONDITION_FALSE");
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "cond", "wait_seconds": 30}),
    )
    .await;
    let s = steps_by_name(&r);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(s["deploy"]["status"], "skipped");
    assert_eq!(
        s["report"]["status"], "succeeded",
        "a step skipped by its condition does not skip its dependents"
    );
}

#[tokio::test]
async fn every_template_form_resolves() {
    let (_env, c) = client().await;
    let r = run(&c, json!({"name": "tpl", "parameters": {"n": {"type": "integer", "required": true}, "cfg": {"type": "object", "default": {"k": [1, 2]}}},
        "steps": [
            step("src", "set", json!({"value": {"rows": [{"id": 7}, {"id": 8}], "count": 2}}), &[]),
            step("use", "echo", json!({
                "whole": "{{steps.src.output}}",
                "deep": "{{steps.src.output.rows[1].id}}",
                "typed_param": "{{params.n}}",
                "obj_param": "{{params.cfg}}",
                "text": "n={{params.n}} id={{steps.src.output.rows[0].id}} status={{steps.src.status}}",
                "legacy": "{{src.output.count}}",
                "dollar": "${src.result}",
                "ids": ["{{run.id}}", "{{session.id}}"],
                "literal": "\\{{params.n}}"
            }), &["src"]),
        ]}), json!({"n": 5})).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let out = &r["workflow_results"]["use"];
    assert_eq!(
        out["whole"],
        json!({"rows": [{"id": 7}, {"id": 8}], "count": 2})
    );
    assert_eq!(out["deep"], json!(8));
    assert_eq!(out["typed_param"], json!(5));
    assert_eq!(out["obj_param"], json!({"k": [1, 2]}));
    assert_eq!(out["text"], json!("n=5 id=7 status=succeeded"));
    assert_eq!(out["legacy"], json!(2));
    assert_eq!(out["dollar"], out["whole"]);
    assert_eq!(out["ids"][0], r["run_id"]);
    assert_eq!(out["ids"][1], r["session_id"]);
    assert_eq!(out["literal"], json!("{{params.n}}"));

    // A reference that cannot be resolved at run time fails that step clearly.
    let r = run(
        &c,
        json!({"name": "badref", "steps": [
            step("src", "set", json!({"value": {"a": 1}}), &[]),
            step("use", "echo", json!({"x": "{{steps.src.output.missing}}"}), &["src"])
        ]}),
        json!({}),
    )
    .await;
    let s = steps_by_name(&r);
    assert_eq!(s["use"]["status"], "failed");
    assert_eq!(s["use"]["error"]["code"], "INVALID_PARAMETERS");
    assert!(
        s["use"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing")
    );
    // A templated value that resolves to the wrong type fails the action's schema at run time.
    let r = run(
        &c,
        json!({"name": "badtype", "steps": [
            step("src", "set", json!({"value": "soon"}), &[]),
            step("wait", "sleep", json!({"ms": "{{steps.src.output}}"}), &["src"])
        ]}),
        json!({}),
    )
    .await;
    assert_eq!(
        steps_by_name(&r)["wait"]["error"]["code"],
        "INVALID_PARAMETERS"
    );
}

#[tokio::test]
async fn validation_reports_every_problem_and_stores_nothing() {
    let (_env, c) = client().await;
    let def = json!({"name": "bad", "steps": [
        step("a", "echo", json!({}), &["c"]), step("b", "echo", json!({}), &["a"]), step("c", "echo", json!({}), &["b"]),
        step("d", "nope", json!({}), &["zz", "d"]),
        step("e", "sleep", json!({"ms": "x", "extra": 1}), &[]),
        step("f", "echo", json!({"p": "{{params.undeclared}}", "q": "{{steps.e.output}}", "r": "{{bad"}), &[]),
        json!({"name": "g", "module": "ghost", "action": "run", "when": "params.x >"}),
        step("a", "echo", json!({}), &[]),
    ]});
    let v = ok(&c, "validate_workflow", def.clone()).await;
    assert_eq!(v["valid"], false);
    let problems = v["problems"].as_array().unwrap();
    let codes: Vec<&str> = problems
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    for want in [
        "CYCLE_DETECTED",
        "UNKNOWN_DEPENDENCY",
        "SELF_DEPENDENCY",
        "MODULE_NOT_FOUND",
        "INVALID_PARAMETERS",
        "UNKNOWN_PARAMETER",
        "NOT_UPSTREAM",
        "INVALID_TEMPLATE",
        "INVALID_CONDITION",
        "DUPLICATE_STEP",
    ] {
        assert!(codes.contains(&want), "{want} missing: {codes:?}");
    }
    assert!(
        problems
            .iter()
            .all(|p| p["message"].as_str().is_some_and(|m| !m.is_empty()))
    );
    let cycle = problems
        .iter()
        .find(|p| p["code"] == "CYCLE_DETECTED")
        .unwrap();
    assert_eq!(cycle["message"], "dependency cycle: a -> b -> c -> a");
    let unknown = problems
        .iter()
        .find(|p| p["code"] == "UNKNOWN_DEPENDENCY")
        .unwrap();
    assert_eq!(unknown["step"], "d");
    assert_eq!(unknown["field"], "dependencies");

    let e = err(&c, "create_workflow", def, "INVALID_PARAMETERS").await;
    assert_eq!(
        e["details"]["problems"].as_array().unwrap().len(),
        problems.len()
    );
    // A name the published schema forbids (its pattern) is refused before
    // validation, every such field named at once.
    let names = json!({"name": "bad", "steps": [
        step("Bad Name", "echo", json!({}), &[]), step("ok", "echo", json!({}), &[]),
        step("", "echo", json!({}), &[])]});
    let e = err(&c, "validate_workflow", names, "INVALID_PARAMETERS").await;
    let fields = fields_named(&e);
    assert!(
        fields.contains(&"steps[0].name") && fields.contains(&"steps[2].name"),
        "{e}"
    );
    err(
        &c,
        "get_workflow",
        json!({"workflow_name": "bad"}),
        "WORKFLOW_NOT_FOUND",
    )
    .await;
    let e = err(&c, "create_workflow", json!({"name": "cyc", "steps": [step("a", "echo", json!({}), &["b"]), step("b", "echo", json!({}), &["a"])]}), "CYCLE_DETECTED").await;
    assert!(
        e["message"].as_str().unwrap().contains("a -> b -> a"),
        "{e}"
    );
    err(
        &c,
        "create_workflow",
        json!({"name": "x", "steps": [], "colour": 1}),
        "INVALID_PARAMETERS",
    )
    .await;

    let ok_v = ok(&c, "validate_workflow", json!({"name": "fine", "steps": [step("a", "echo", json!({}), &[]), step("b", "echo", json!({}), &["a"])]})).await;
    assert_eq!(ok_v["valid"], true);
    assert_eq!(ok_v["plan"]["levels"], json!([["a"], ["b"]]));
    assert_eq!(ok_v["plan"]["critical_path"], json!(["a", "b"]));
}

#[tokio::test]
async fn definitions_have_versions_scopes_and_runs_pin_their_version() {
    let (_env, c) = client().await;
    let v1 = ok(&c, "create_workflow", json!({"name": "v", "description": "one", "steps": [step("a", "set", json!({"value": 1}), &[])]})).await;
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["source"], "session");
    let r1 = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "v", "wait_seconds": 0}),
    )
    .await;
    let v2 = ok(&c, "create_workflow", json!({"name": "v", "description": "two", "steps": [step("a", "set", json!({"value": 2}), &[])]})).await;
    assert_eq!(v2["version"], 2);
    let r1 = ok(
        &c,
        "get_workflow_run",
        json!({"run_id": r1["run_id"], "wait_seconds": 10}),
    )
    .await;
    assert_eq!(r1["workflow_version"], 1);
    assert_eq!(r1["workflow_results"]["a"], 1);
    let r2 = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "v", "wait_seconds": 10}),
    )
    .await;
    assert_eq!(r2["workflow_version"], 2);
    assert_eq!(r2["workflow_results"]["a"], 2);

    let g = ok(&c, "get_workflow", json!({"workflow_name": "v"})).await;
    assert_eq!(g["description"], "two");
    assert!(g["mermaid"].as_str().unwrap().starts_with("flowchart TD"));
    assert_eq!(g["plan"]["levels"], json!([["a"]]));

    // Session scope: another session does not see it; global scope: every session of the principal does.
    let other = ok(&c, "create_session", json!({})).await["session_id"].clone();
    err(
        &c,
        "get_workflow",
        json!({"workflow_name": "v", "session_id": other}),
        "WORKFLOW_NOT_FOUND",
    )
    .await;
    ok(
        &c,
        "create_workflow",
        json!({"name": "shared", "scope": "global", "steps": [step("a", "echo", json!({}), &[])]}),
    )
    .await;
    let s = ok(
        &c,
        "get_workflow",
        json!({"workflow_name": "shared", "session_id": other}),
    )
    .await;
    assert_eq!(s["source"], "global");
    let list = ok(&c, "list_workflows", json!({})).await;
    let names: Vec<&str> = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"v") && names.contains(&"shared"),
        "{names:?}"
    );
    let page = ok(&c, "list_workflows", json!({"limit": 1})).await;
    assert_eq!(page["workflows"].as_array().unwrap().len(), 1);
    let page2 = ok(
        &c,
        "list_workflows",
        json!({"limit": 1, "cursor": page["next_cursor"]}),
    )
    .await;
    assert_ne!(page2["workflows"][0]["name"], page["workflows"][0]["name"]);

    let e = err(
        &c,
        "execute_workflow",
        json!({"workflow_name": "nope"}),
        "WORKFLOW_NOT_FOUND",
    )
    .await;
    assert!(e["hint"].as_str().unwrap().contains("shared"), "{e}");
    ok(&c, "delete_workflow", json!({"workflow_name": "v"})).await;
    err(
        &c,
        "delete_workflow",
        json!({"workflow_name": "v"}),
        "WORKFLOW_NOT_FOUND",
    )
    .await;
    ok(
        &c,
        "delete_workflow",
        json!({"workflow_name": "shared", "scope": "global"}),
    )
    .await;

    // Runs: listing and filters.
    let runs = ok(&c, "list_workflow_runs", json!({"workflow_name": "v"})).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2);
    let runs = ok(
        &c,
        "list_workflow_runs",
        json!({"status": "succeeded", "limit": 1}),
    )
    .await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
    assert!(runs["next_cursor"].is_string());
    err(
        &c,
        "get_workflow_run",
        json!({"run_id": "run_x"}),
        "NOT_FOUND",
    )
    .await;
    err(
        &c,
        "get_workflow_run",
        json!({"run_id": r2["run_id"], "wait_seconds": 51}),
        "INVALID_PARAMETERS",
    )
    .await;
}

#[tokio::test]
async fn parameters_are_checked_before_anything_runs() {
    let (_env, c) = client().await;
    ok(&c, "create_workflow", json!({"name": "p", "parameters": {"n": {"type": "integer", "required": true}}, "steps": [step("a", "echo", json!({"n": "{{params.n}}"}), &[])]})).await;
    let e = err(
        &c,
        "execute_workflow",
        json!({"workflow_name": "p"}),
        "INVALID_PARAMETERS",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("required"), "{e}");
    err(
        &c,
        "execute_workflow",
        json!({"workflow_name": "p", "parameters": {"n": "five"}}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "execute_workflow",
        json!({"workflow_name": "p", "parameters": {"n": 1, "m": 2}}),
        "INVALID_PARAMETERS",
    )
    .await;
    let runs = ok(&c, "list_workflow_runs", json!({})).await;
    assert_eq!(
        runs["runs"].as_array().unwrap().len(),
        0,
        "a refused call started a run"
    );
}

#[tokio::test]
async fn retry_reuses_succeeded_steps_with_unchanged_inputs() {
    let (_env, c) = client().await;
    ok(
        &c,
        "create_workflow",
        json!({"name": "r", "steps": [
            step("a", "set", json!({"value": 1}), &[]),
            sleep("b", 800, &["a"]),
            step("c", "echo", json!({"from": "{{steps.a.output}}"}), &["b"])
        ]}),
    )
    .await;
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "r", "wait_seconds": 0}),
    )
    .await;
    wait_for_step(&c, &r["run_id"], "b", "running").await;
    let r = ok(&c, "cancel_workflow_run", json!({"run_id": r["run_id"]})).await;
    assert_eq!(r["status"], "cancelled");
    err(
        &c,
        "retry_workflow_run",
        json!({"run_id": "run_nope"}),
        "NOT_FOUND",
    )
    .await;
    let r2 = ok(
        &c,
        "retry_workflow_run",
        json!({"run_id": r["run_id"], "wait_seconds": 30}),
    )
    .await;
    assert_eq!(r2["status"], "succeeded", "{r2}");
    assert_eq!(r2["retry_of"], r["run_id"]);
    let s = steps_by_name(&r2);
    assert_eq!(s["a"]["reused"], true);
    assert_eq!(s["a"]["attempts"], 0);
    assert_eq!(s["b"]["reused"], false);
    assert_eq!(s["b"]["attempts"], 1);
    assert_eq!(s["c"]["output"], json!({"from": 1}));
    assert_eq!(r2["metrics"]["reused_steps"], 1);
    // A run still going cannot be retried.
    let r3 = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "r", "wait_seconds": 0}),
    )
    .await;
    err(
        &c,
        "retry_workflow_run",
        json!({"run_id": r3["run_id"]}),
        "CONFLICT",
    )
    .await;
}

#[tokio::test]
async fn create_complex_workflow_defines_and_runs() {
    let (_env, c) = client().await;
    let r = ok(&c, "create_complex_workflow", json!({"name": "cx", "workflow_definition": {
        "steps": [
            {"name": "fetch", "module": "core", "action": "set", "parameters": {"value": {"rows": 3}}},
            {"name": "count", "module": "core", "action": "echo", "parameters": {"rows": "${fetch.result}"}},
            {"name": "report", "module": "core", "action": "echo", "parameters": {"n": "{{steps.count.output.rows.rows}}"}}
        ],
        "dependencies": {"count": ["fetch"], "report": ["count"]},
        "parallel_groups": [["fetch"]]
    }, "wait_seconds": 30})).await;
    assert_eq!(
        r["workflow"]["plan"]["levels"],
        json!([["fetch"], ["count"], ["report"]])
    );
    assert_eq!(r["run"]["status"], "succeeded");
    assert_eq!(r["run"]["workflow_results"]["report"], json!({"n": 3}));
    err(
        &c,
        "create_complex_workflow",
        json!({"name": "cx2", "workflow_definition": {"steps": [], "dependencies": {"x": ["y"]}}}),
        "INVALID_PARAMETERS",
    )
    .await;
}

#[tokio::test]
async fn the_library_loads_json_and_yaml_and_reports_broken_files() {
    let env = Env::new();
    let lib = env.path().join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(
        lib.join("a.json"),
        json!({"name": "lib-json", "steps": [step("x", "set", json!({"value": "j"}), &[])]})
            .to_string(),
    )
    .unwrap();
    std::fs::write(lib.join("b.yaml"), "name: lib-yaml\nparameters:\n  who:\n    type: string\n    default: yaml\nsteps:\n  - name: x\n    module: core\n    action: echo\n    parameters:\n      hi: \"{{params.who}}\"\n").unwrap();
    std::fs::write(lib.join("c.yml"), "name: [unclosed\n").unwrap();
    std::fs::write(
        lib.join("d.json"),
        json!({"name": "cyclic", "steps": [step("a", "echo", json!({}), &["a"])]}).to_string(),
    )
    .unwrap();
    let cfg = env.config(&format!("workflows_dirs = [\"{}\"]\n", lib.display()));
    let c = env
        .stdio(
            Era::Legacy,
            &["--config", cfg.to_str().unwrap(), "--store", "memory"],
        )
        .await;
    let list = ok(&c, "list_workflows", json!({})).await;
    let names: Vec<&str> = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    // The shipped project workflows are always there.
    let shipped = ["ai-analysis", "build-and-test", "data-processing", "deploy"];
    assert_eq!(names[..4], shipped);
    assert_eq!(names[4..], ["lib-json", "lib-yaml", "visualization"]);
    assert!(
        list["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["source"] == "library")
    );
    let broken = list["broken_library_files"].as_array().unwrap();
    assert_eq!(broken.len(), 2, "{broken:?}");
    let h = ok(&c, "get_health_status", json!({})).await;
    assert_eq!(h["overall_status"], "degraded");
    assert_eq!(h["components"]["workflow_library"]["status"], "degraded");
    assert!(
        h["components"]["workflow_library"]["message"]
            .as_str()
            .unwrap()
            .contains("c.yml")
    );
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "lib-yaml", "wait_seconds": 30}),
    )
    .await;
    assert_eq!(r["workflow_results"]["x"], json!({"hi": "yaml"}));
    assert_eq!(r["workflow_source"], "library");
    err(
        &c,
        "delete_workflow",
        json!({"workflow_name": "lib-json"}),
        "PERMISSION_DENIED",
    )
    .await;
}

#[tokio::test]
async fn unfinished_runs_resume_after_kill_9_without_rerunning_succeeded_steps() {
    let env = Env::new();
    let mut server = env.http(&[]).await;
    let c = server.client(Era::Legacy, None).await;
    ok(&c, "create_workflow", json!({"name": "resume", "max_parallel": 1, "steps": [
        sleep("s1", 100, &[]), sleep("s2", 100, &["s1"]), sleep("s3", 3000, &["s2"]),
        sleep("s4", 100, &["s3"]), step("s5", "echo", json!({"prev": "{{steps.s4.output}}"}), &["s4"])
    ]})).await;
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "resume", "wait_seconds": 0}),
    )
    .await;
    let id = r["run_id"].clone();
    // Wait until s3 is running, then kill the server.
    wait_for_step(&c, &id, "s3", "running").await;
    signal(server.pid(), "KILL");
    server.child.wait().await.unwrap();
    drop(c);

    let server = env.http(&[]).await;
    let c = server.client(Era::Modern, None).await;
    let v = ok(
        &c,
        "get_workflow_run",
        json!({"run_id": id, "wait_seconds": 30}),
    )
    .await;
    assert_eq!(v["status"], "succeeded", "{v}");
    let s = steps_by_name(&v);
    assert_eq!(s["s1"]["attempts"], 1, "s1 ran again");
    assert_eq!(s["s2"]["attempts"], 1, "s2 ran again");
    assert_eq!(
        s["s3"]["attempts"], 2,
        "the interrupted attempt of s3 is counted"
    );
    assert_eq!(s["s5"]["output"], json!({"prev": {"slept_ms": 100}}));
}

//! The task graph through a real MCP client: auto tasks run by priority with
//! dependencies, references, retries, timeouts and cancellation; skip
//! propagation and cycle refusal; the agent claim protocol (leases, foreign
//! and late calls, expiry, concurrent drains, restart with a live claim).

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::{Value, json};

fn auto(name: &str, action: &str, params: Value) -> Value {
    json!({"name": name, "module": "core", "action": action, "parameters": params})
}

async fn get(c: &Client, id: &Value, wait: u64) -> Value {
    ok(c, "get_task", json!({"task_id": id, "wait_seconds": wait})).await
}

async fn session(c: &Client, max_parallel_tasks: u32) -> Value {
    ok(
        c,
        "create_session",
        json!({"name": "tasks", "max_parallel_tasks": max_parallel_tasks}),
    )
    .await["session_id"]
        .clone()
}

fn ts(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
}

#[tokio::test]
async fn auto_tasks_run_by_priority_then_fifo_at_parallelism_one() {
    let env = Env::new();
    let c = env.stdio(Era::Legacy, &[]).await;
    let s = session(&c, 1).await;
    // A gate holds the only slot while the others queue up.
    let gate = ok(
        &c,
        "create_task",
        json!({"session_id": s, "task": auto("gate", "sleep", json!({"ms": 300}))}),
    )
    .await;
    let mut batch = Vec::new();
    for (name, prio) in [
        ("l1", "low"),
        ("n1", "normal"),
        ("c1", "critical"),
        ("n2", "normal"),
        ("h1", "high"),
        ("c2", "critical"),
    ] {
        let mut t = auto(name, "echo", json!({"name": name}));
        t["priority"] = json!(prio);
        batch.push(t);
    }
    let created = ok(&c, "create_tasks", json!({"session_id": s, "tasks": batch})).await;
    assert_eq!(created["tasks"].as_array().unwrap().len(), 6);
    get(&c, &gate["task_id"], 30).await;
    let mut order: Vec<(chrono::DateTime<chrono::FixedOffset>, String)> = Vec::new();
    for t in created["tasks"].as_array().unwrap() {
        let v = get(&c, &t["task_id"], 30).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        order.push((
            ts(&v["started_at"]),
            v["name"].as_str().unwrap().to_string(),
        ));
    }
    order.sort();
    let names: Vec<&str> = order.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["c1", "c2", "h1", "n1", "n2", "l1"]);
}

#[tokio::test]
async fn dependencies_references_and_result_chaining() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &[]).await;
    let a = ok(&c, "create_task", json!({"task": auto("fetch", "set", json!({"value": {"rows": [1, 2, 3], "source": "db"}}))})).await;
    // An implicit dependency through a reference (by name), and one by id in the original ${} form.
    let b = ok(
        &c,
        "create_task",
        json!({"task": auto("count", "echo", json!({
            "rows": "{{tasks.fetch.result.rows}}",
            "label": "from {{tasks.fetch.result.source}}"
        }))}),
    )
    .await;
    assert_eq!(b["dependencies"], json!([a["task_id"]]));
    let c2 = ok(
        &c,
        "create_task",
        json!({"task": auto("final", "echo", json!({
            "prev": "${count.result}",
            "first": format!("{{{{tasks.{}.result.rows[0]}}}}", a["task_id"].as_str().unwrap())
        }))}),
    )
    .await;
    let v = get(&c, &c2["task_id"], 30).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        v["result"]["prev"]["rows"],
        json!([1, 2, 3]),
        "typed whole value: {v}"
    );
    assert_eq!(v["result"]["prev"]["label"], "from db");
    assert_eq!(v["result"]["first"], json!(1));
    let mut deps: Vec<Value> = v["dependencies"].as_array().unwrap().clone();
    deps.sort_by_key(|d| d.to_string());
    let mut want = vec![a["task_id"].clone(), b["task_id"].clone()];
    want.sort_by_key(|d| d.to_string());
    assert_eq!(deps, want);

    // An explicit dependency on a task that is still running: the dependent waits.
    let slow = ok(
        &c,
        "create_task",
        json!({"task": auto("slow", "sleep", json!({"ms": 300}))}),
    )
    .await;
    let after = ok(&c, "create_task", json!({"task": {"name": "after", "module": "core", "action": "echo", "dependencies": ["slow"]}})).await;
    assert_eq!(after["status"], "pending");
    let v = get(&c, &after["task_id"], 30).await;
    let s = get(&c, &slow["task_id"], 0).await;
    assert!(ts(&v["started_at"]) >= ts(&s["finished_at"]), "{v} {s}");
}

#[tokio::test]
async fn retries_timeouts_and_skip_propagation() {
    let env = Env::new();
    let c = env.stdio(Era::Legacy, &[]).await;
    // Fails twice, succeeds on the third attempt.
    let t = ok(
        &c,
        "create_task",
        json!({"task": {"name": "flaky", "module": "core", "action": "fail",
        "parameters": {"message": "boom", "times": 2}, "max_retries": 2,
        "retry": {"initial_delay_ms": 10, "multiplier": 2, "max_delay_ms": 50, "jitter": false}}}),
    )
    .await;
    let v = get(&c, &t["task_id"], 30).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["attempts"], 3);

    // Out of retries: failed, and the chain behind it is skipped.
    let f = ok(&c, "create_task", json!({"task": {"name": "broken", "module": "core", "action": "fail",
        "parameters": {"message": "always"}, "max_retries": 1, "retry": {"initial_delay_ms": 10, "jitter": false}}})).await;
    let d1 = ok(&c, "create_task", json!({"task": {"name": "d1", "module": "core", "action": "echo", "dependencies": ["broken"]}})).await;
    let d2 = ok(
        &c,
        "create_task",
        json!({"task": {"name": "d2", "dependencies": ["d1"]}}),
    )
    .await;
    let v = get(&c, &f["task_id"], 30).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["attempts"], 2);
    assert!(v["error"]["message"].as_str().unwrap().contains("always"));
    for d in [&d1, &d2] {
        let v = get(&c, &d["task_id"], 30).await;
        assert_eq!(v["status"], "skipped", "{v}");
        assert_eq!(v["error"]["code"], "DEPENDENCY_FAILED");
    }
    // A task created on top of a failed one is skipped at once.
    let late = ok(
        &c,
        "create_task",
        json!({"task": {"name": "late", "dependencies": [f["task_id"]]}}),
    )
    .await;
    assert_eq!(late["status"], "skipped");

    // Timeout per attempt.
    let slow = ok(
        &c,
        "execute_task",
        json!({"task_name": "too-slow", "module": "core", "action": "sleep",
        "parameters": {"ms": 5000}, "timeout_seconds": 1, "wait_seconds": 30}),
    )
    .await;
    assert_eq!(slow["status"], "timed_out", "{slow}");
    assert!(
        slow["error_message"].as_str().unwrap().contains("timeout"),
        "{slow}"
    );

    // retry_task of the failed root brings the skipped chain back; it fails
    // again after a fresh round of attempts (the action always fails).
    err(
        &c,
        "retry_task",
        json!({"task_id": d1["task_id"]}),
        "DEPENDENCY_FAILED",
    )
    .await;
    let r = ok(&c, "retry_task", json!({"task_id": f["task_id"]})).await;
    assert!(
        matches!(r["status"].as_str(), Some("ready" | "running")),
        "{r}"
    );
    let d1v = get(&c, &d1["task_id"], 0).await;
    assert!(
        matches!(d1v["status"].as_str(), Some("pending" | "skipped")),
        "{d1v}"
    );
    let v = get(&c, &f["task_id"], 30).await;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["attempts"], 2, "a fresh round of attempts: {v}");
}

#[tokio::test]
async fn execute_task_answers_in_the_original_shape_and_never_blocks_past_its_wait() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &[]).await;
    let v = ok(
        &c,
        "execute_task",
        json!({"name": "hello", "module": "core", "action": "echo",
        "parameters": {"text": "hi"}, "priority": "high", "retry_count": 1,
        "resource_requirements": {"cpu": 1}, "metadata": {"owner": "me"}, "wait_seconds": 20}),
    )
    .await;
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["result"], json!({"text": "hi"}));
    assert_eq!(v["retry_attempts"], 0);
    assert_eq!(v["dependencies_satisfied"], true);
    assert_eq!(v["resource_allocation"], json!({"cpu": 1}));
    assert!(v["execution_time"].as_f64().is_some());
    assert_eq!(v["metadata"]["owner"], "me");
    assert_eq!(v["metadata"]["priority"], "high");
    assert!(v["error_message"].is_null());

    let v = ok(
        &c,
        "execute_task",
        json!({"task_name": "long", "module": "core", "action": "sleep",
        "parameters": {"ms": 3000}, "wait_seconds": 0}),
    )
    .await;
    assert_eq!(v["status"], "running", "{v}");
    // Cancelling a running task really stops its action.
    let cancelled = ok(&c, "cancel_task", json!({"task_id": v["task_id"]})).await;
    assert_eq!(cancelled["status"], "cancelled");
    let again = get(&c, &v["task_id"], 0).await;
    assert_eq!(again["status"], "cancelled");
    assert_eq!(again["error"]["code"], "CANCELLED");
    err(
        &c,
        "cancel_task",
        json!({"task_id": v["task_id"]}),
        "CONFLICT",
    )
    .await;
    // The slot was freed: another task runs.
    let v = ok(&c, "execute_task", json!({"task_name": "after-cancel", "module": "core", "action": "echo", "wait_seconds": 20})).await;
    assert_eq!(v["status"], "succeeded");
}

#[tokio::test]
async fn cycles_and_bad_input_are_refused_and_change_nothing() {
    let env = Env::new();
    let c = env.stdio(Era::Legacy, &[]).await;
    let e = err(&c, "create_tasks", json!({"tasks": [
        {"name": "a", "dependencies": ["c"]}, {"name": "b", "dependencies": ["a"]}, {"name": "c", "dependencies": ["b"]}
    ]}), "CYCLE_DETECTED").await;
    assert!(e["message"].as_str().unwrap().contains("->"), "{e}");
    err(
        &c,
        "create_task",
        json!({"task": {"name": "self", "dependencies": ["self"]}}),
        "CYCLE_DETECTED",
    )
    .await;
    // Batch is all or none: one bad task, nothing created.
    err(
        &c,
        "create_tasks",
        json!({"tasks": [{"name": "fine"}, {"name": "bad", "dependencies": ["nope"]}]}),
        "NOT_FOUND",
    )
    .await;
    let page = ok(&c, "list_tasks", json!({})).await;
    assert_eq!(page["total"], 0, "{page}");

    let x = ok(&c, "create_task", json!({"task": {"name": "x"}})).await;
    let y = ok(
        &c,
        "create_task",
        json!({"task": {"name": "y", "dependencies": ["x"]}}),
    )
    .await;
    // x -> y exists; making x depend on y would close a cycle.
    let e = err(
        &c,
        "update_task",
        json!({"task_id": x["task_id"], "changes": {"dependencies": ["y"]}}),
        "CYCLE_DETECTED",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("'y'"), "{e}");
    assert_eq!(get(&c, &x["task_id"], 0).await["dependencies"], json!([]));
    // Safe change while pending.
    let u = ok(
        &c,
        "update_task",
        json!({"task_id": y["task_id"], "changes": {"priority": "critical", "tags": ["t"]}}),
    )
    .await;
    assert_eq!(u["priority"], "critical");
    assert_eq!(u["status"], "pending");

    err(
        &c,
        "create_task",
        json!({"task": {"name": "x"}}),
        "CONFLICT",
    )
    .await;
    err(
        &c,
        "create_task",
        json!({"task": {"name": "bad name!"}}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "create_task",
        json!({"task": {"name": "p", "priority": "urgent"}}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "create_task",
        json!({"task": {"name": "m", "module": "core"}}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "create_task",
        json!({"task": {"name": "m", "module": "nope", "action": "x"}}),
        "MODULE_NOT_FOUND",
    )
    .await;
    err(&c, "create_task", json!({"task": {"name": "m", "module": "core", "action": "sleep", "parameters": {"ms": "soon"}}}), "INVALID_PARAMETERS").await;
    err(
        &c,
        "create_task",
        json!({"task": {"name": "m", "parameters": {"x": "{{params.y}}"}}}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "create_task",
        json!({"task": {"name": "big", "parameters": {"blob": "x".repeat(300_000)}}}),
        "LIMIT_EXCEEDED",
    )
    .await;
    err(
        &c,
        "create_task",
        json!({"task": {"name": "u", "colour": "red"}}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(&c, "get_task", json!({"task_id": "tsk_nope"}), "NOT_FOUND").await;
    err(
        &c,
        "cancel_task",
        json!({"task_id": "tsk_nope"}),
        "NOT_FOUND",
    )
    .await;
    err(
        &c,
        "list_tasks",
        json!({"status": "sleeping"}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "next_task",
        json!({"lease_seconds": 0}),
        "INVALID_PARAMETERS",
    )
    .await;
    let page = ok(&c, "list_tasks", json!({})).await;
    assert_eq!(page["total"], 2, "{page}");
}

#[tokio::test]
async fn claim_protocol_leases_foreign_and_late_calls() {
    let env = Env::new();
    let server = env.http(&[]).await;
    let c = server.client(Era::Legacy, None).await;
    let s = session(&c, 4).await;
    ok(
        &c,
        "create_tasks",
        json!({"session_id": s, "tasks": [
            {"name": "design", "priority": "high", "tags": ["docs"], "parameters": {"goal": "api"}},
            {"name": "build", "dependencies": ["design"], "tags": ["code"]},
            {"name": "chore", "priority": "low"}
        ]}),
    )
    .await;
    // Tag filter: only `code` tasks, none ready yet.
    let none = ok(&c, "next_task", json!({"session_id": s, "tags": ["code"]})).await;
    assert!(none["task"].is_null());
    assert_eq!(none["counts"]["blocked"], 1, "{none}");
    assert_eq!(none["counts"]["ready_other_tags"], 2, "{none}");
    assert!(none["reason"].as_str().unwrap().contains("blocked"));

    let a = ok(&c, "next_task", json!({"session_id": s, "agent": "alice"})).await;
    assert_eq!(a["task"]["name"], "design", "priority first: {a}");
    assert_eq!(a["task"]["status"], "claimed");
    assert_eq!(a["task"]["claimed_by"], "alice");
    assert!(a["reason"].as_str().unwrap().contains("high"), "{a}");
    let (tid, lease) = (a["task"]["task_id"].clone(), a["lease_id"].clone());

    // Another agent gets the other ready task, never the same one.
    let b = ok(
        &c,
        "next_task",
        json!({"session_id": s, "agent": "bob", "lease_seconds": 1}),
    )
    .await;
    assert_eq!(b["task"]["name"], "chore");
    // Bob cannot complete Alice's task with his lease.
    err(
        &c,
        "complete_task",
        json!({"task_id": tid, "lease_id": b["lease_id"], "result": 1}),
        "LEASE_NOT_HELD",
    )
    .await;
    // Another principal does not even see it.
    drop(c);
    let c = server.client(Era::Modern, None).await;
    // Bob's lease runs out: the task is ready again, the attempt counted, and his late call is refused.
    let chore = b["task"]["task_id"].clone();
    let mut v = Value::Null;
    for _ in 0..100 {
        v = get(&c, &chore, 0).await;
        if v["status"] == "ready" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(v["status"], "ready", "{v}");
    assert_eq!(v["attempts"], 1);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
    let e = err(
        &c,
        "complete_task",
        json!({"task_id": chore, "lease_id": b["lease_id"]}),
        "LEASE_NOT_HELD",
    )
    .await;
    assert_eq!(e["details"]["status"], "ready");
    err(
        &c,
        "renew_task_lease",
        json!({"task_id": chore, "lease_id": b["lease_id"]}),
        "LEASE_NOT_HELD",
    )
    .await;

    // Alice renews, then completes; her result unblocks `build`.
    let r = ok(
        &c,
        "renew_task_lease",
        json!({"task_id": tid, "lease_id": lease, "lease_seconds": 600}),
    )
    .await;
    assert!(
        ts(&r["lease_expires_at"]) > ts(&a["lease_expires_at"])
            || a["lease_expires_at"] == r["lease_expires_at"]
    );
    let done = ok(&c, "complete_task", json!({"task_id": tid, "lease_id": lease, "result": {"doc": "api.md"}, "summary": "designed"})).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"], json!({"doc": "api.md"}));
    err(
        &c,
        "complete_task",
        json!({"task_id": tid, "lease_id": lease}),
        "LEASE_NOT_HELD",
    )
    .await;
    let n = ok(
        &c,
        "next_task",
        json!({"session_id": s, "tags": ["code"], "agent": "carol"}),
    )
    .await;
    assert_eq!(n["task"]["name"], "build");
    // fail_task retryable without retries left fails it.
    let f = ok(&c, "fail_task", json!({"task_id": n["task"]["task_id"], "lease_id": n["lease_id"], "error": "compiler crashed", "retryable": true})).await;
    assert_eq!(f["status"], "failed");
    assert_eq!(f["error"]["message"], "compiler crashed");
    let g = ok(&c, "get_task_graph", json!({"session_id": s})).await;
    assert_eq!(g["edges"].as_array().unwrap().len(), 1);
    assert!(g["mermaid"].as_str().unwrap().contains("-->"));
    assert_eq!(g["counts"]["failed"], 1);
    let status = ok(&c, "get_system_status", json!({})).await;
    assert_eq!(status["tasks"]["by_status"]["succeeded"], 1, "{status}");
    assert!(status["tasks"]["success_rate"].as_f64().is_some());
}

#[tokio::test]
async fn other_principals_cannot_see_or_touch_tasks() {
    let env = Env::new();
    let (alice, bob) = ("alice-token-0123456789", "bob-token-0123456789");
    let (fa, fb) = (env.path().join("alice.token"), env.path().join("bob.token"));
    std::fs::write(&fa, alice).unwrap();
    std::fs::write(&fb, bob).unwrap();
    let cfg = env.config(&format!(
        "[[auth.tokens]]\nname = \"alice\"\ntoken_file = \"{}\"\n[[auth.tokens]]\nname = \"bob\"\ntoken_file = \"{}\"\n",
        fa.display(),
        fb.display()
    ));
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let a = server.client(Era::Legacy, Some(alice)).await;
    let b = server.client(Era::Legacy, Some(bob)).await;
    ok(&a, "create_task", json!({"task": {"name": "secret"}})).await;
    let claim = ok(&a, "next_task", json!({})).await;
    let id = claim["task"]["task_id"].clone();
    err(&b, "get_task", json!({"task_id": id}), "NOT_FOUND").await;
    err(
        &b,
        "complete_task",
        json!({"task_id": id, "lease_id": claim["lease_id"]}),
        "NOT_FOUND",
    )
    .await;
    err(&b, "cancel_task", json!({"task_id": id}), "NOT_FOUND").await;
    assert!(ok(&b, "next_task", json!({})).await["task"].is_null());
    assert_eq!(
        ok(&a, "get_task", json!({"task_id": id})).await["status"],
        "claimed"
    );
}

/// 8 clients drain 500 agent tasks; every task is done exactly once.
#[tokio::test]
async fn eight_concurrent_clients_drain_500_tasks_exactly_once() {
    let env = Env::new();
    let server = env.http(&[]).await;
    let c = server.client(Era::Legacy, None).await;
    let s = session(&c, 4).await;
    for chunk in 0..2 {
        let tasks: Vec<Value> = (0..250)
            .map(|i| {
                let priority = ["low", "normal", "high", "critical"][i % 4];
                json!({"name": format!("t{}", chunk * 250 + i), "priority": priority})
            })
            .collect();
        ok(&c, "create_tasks", json!({"session_id": s, "tasks": tasks})).await;
    }
    let mut workers = Vec::new();
    for w in 0..8 {
        let client = server
            .client(if w % 2 == 0 { Era::Legacy } else { Era::Modern }, None)
            .await;
        let s = s.clone();
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let n = ok(
                    &client,
                    "next_task",
                    json!({"session_id": s, "agent": format!("w{w}")}),
                )
                .await;
                if n["task"].is_null() {
                    break;
                }
                let id = n["task"]["task_id"].as_str().unwrap().to_string();
                ok(
                    &client,
                    "complete_task",
                    json!({"task_id": id, "lease_id": n["lease_id"], "result": {"by": w}}),
                )
                .await;
                done.push(id);
            }
            done
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    assert_eq!(all.len(), 500, "every claim was a distinct task");
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 500, "no task was handed out twice");
    let page = ok(
        &c,
        "list_tasks",
        json!({"session_id": s, "status": "succeeded", "limit": 1}),
    )
    .await;
    assert_eq!(page["total"], 500);
    for t in ok(
        &c,
        "list_tasks",
        json!({"session_id": s, "detail": true, "limit": 200}),
    )
    .await["tasks"]
        .as_array()
        .unwrap()
    {
        assert_eq!(t["attempts"], 1, "{t}");
    }
    // The compact list of hundreds of tasks stays small.
    let compact = ok(&c, "list_tasks", json!({"session_id": s, "limit": 200})).await;
    assert!(
        compact.to_string().len() < 40_000,
        "compact page is {} bytes",
        compact.to_string().len()
    );
    assert!(compact["next_cursor"].is_string());
    // The claims and completions released the session's lock before their
    // commit: agents' changes shared commits (with the lock held through each
    // commit, every commit would hold exactly one).
    let metrics = common::http_client()
        .get(format!("http://{}/metrics", server.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    let (commits, writes) = (gauge("myrmex_store_commits"), gauge("myrmex_store_writes"));
    assert!(
        writes >= 1000.0,
        "{writes} writes for 500 claims and completions"
    );
    assert!(
        writes > commits * 1.2,
        "{writes} writes in {commits} commits: concurrent agents shared few commits"
    );
}

#[tokio::test]
async fn claims_and_interrupted_tasks_survive_kill_9() {
    let env = Env::new();
    let mut server = env.http(&[]).await;
    let c = server.client(Era::Legacy, None).await;
    let s = session(&c, 2).await;
    ok(
        &c,
        "create_tasks",
        json!({"session_id": s, "tasks": [
            {"name": "claimed"}, {"name": "waiting", "dependencies": ["claimed"]},
            {"name": "busy", "module": "core", "action": "sleep", "parameters": {"ms": 1500}}
        ]}),
    )
    .await;
    let claim = ok(
        &c,
        "next_task",
        json!({"session_id": s, "agent": "a1", "lease_seconds": 600}),
    )
    .await;
    let busy = ok(
        &c,
        "list_tasks",
        json!({"session_id": s, "status": "running"}),
    )
    .await;
    assert_eq!(busy["total"], 1, "{busy}");
    let busy_id = busy["tasks"][0]["task_id"].clone();
    signal(server.pid(), "KILL");
    server.child.wait().await.unwrap();
    drop(c);

    let server = env.http(&[]).await;
    let c = server.client(Era::Modern, None).await;
    let t = get(&c, &claim["task"]["task_id"], 0).await;
    assert_eq!(t["status"], "claimed", "the claim survived: {t}");
    assert_eq!(t["claimed_by"], "a1");
    // The interrupted auto task runs again; its interrupted attempt counts.
    let b = get(&c, &busy_id, 30).await;
    assert_eq!(b["status"], "succeeded", "{b}");
    assert_eq!(b["attempts"], 2, "{b}");
    // The lease still works after the restart.
    ok(
        &c,
        "complete_task",
        json!({"task_id": claim["task"]["task_id"], "lease_id": claim["lease_id"]}),
    )
    .await;
    let n = ok(&c, "next_task", json!({"session_id": s})).await;
    assert_eq!(n["task"]["name"], "waiting");
    // Closing the session cancels what is left.
    ok(&c, "close_session", json!({"session_id": s})).await;
    let w = get(&c, &n["task"]["task_id"], 0).await;
    assert_eq!(w["status"], "cancelled");
    assert_eq!(w["error"]["code"], "SESSION_CLOSED");
    // ... and nothing in it can be brought back.
    err(
        &c,
        "retry_task",
        json!({"task_id": n["task"]["task_id"]}),
        "SESSION_CLOSED",
    )
    .await;
}

#[tokio::test]
async fn a_session_closed_by_the_sweeper_stops_its_tasks() {
    let env = Env::new();
    let cfg = env.config("[sessions]\nsweep_interval_seconds = 1\n");
    let c = env
        .stdio(Era::Legacy, &["--config", cfg.to_str().unwrap()])
        .await;
    let s = ok(&c, "create_session", json!({"idle_ttl_seconds": 1})).await["session_id"].clone();
    let t = ok(
        &c,
        "create_task",
        json!({"session_id": s, "task": auto("long", "sleep", json!({"ms": 30000}))}),
    )
    .await;
    // get_task reads without counting as activity in the session.
    let mut v = Value::Null;
    for _ in 0..100 {
        v = get(&c, &t["task_id"], 0).await;
        if v["status"] == "cancelled" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(v["error"]["code"], "SESSION_CLOSED");
}

#[tokio::test]
async fn working_on_a_claim_keeps_its_session_alive() {
    let env = Env::new();
    let cfg = env.config("[sessions]\nsweep_interval_seconds = 1\n");
    let c = env
        .stdio(Era::Legacy, &["--config", cfg.to_str().unwrap()])
        .await;
    let s = ok(&c, "create_session", json!({"idle_ttl_seconds": 2})).await["session_id"].clone();
    ok(
        &c,
        "create_task",
        json!({"session_id": s, "task": {"name": "long-work"}}),
    )
    .await;
    let claim = ok(
        &c,
        "next_task",
        json!({"session_id": s, "lease_seconds": 60}),
    )
    .await;
    // Only renewals for 4 s, twice the idle TTL: they count as activity.
    for _ in 0..8 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        ok(
            &c,
            "renew_task_lease",
            json!({"task_id": claim["task"]["task_id"], "lease_id": claim["lease_id"]}),
        )
        .await;
    }
    let done = ok(
        &c,
        "complete_task",
        json!({"task_id": claim["task"]["task_id"], "lease_id": claim["lease_id"]}),
    )
    .await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(
        ok(&c, "get_session", json!({"session_id": s})).await["status"],
        "active"
    );
}

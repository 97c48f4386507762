//! Resource management through a real MCP client: capacity, lock modes,
//! quotas, leases, session close, waiting with priority and fairness, the
//! nested requirement form, impossible requests, restart, and a stress test.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const CONFIG: &str = "[resources]\ncpu = 8\nmemory_mb = 8192\nexpiry_sweep_interval_ms = 100\n\
[resources.pools]\nslots = 3\n\
[resources.quotas]\nmax_allocations_per_session = 50\n\
[resources.quotas.per_principal]\nmemory_mb = 6144\n";

async fn start(env: &Env, era: Era) -> Client {
    let cfg = env.config(CONFIG);
    env.stdio(era, &["--config", cfg.to_str().unwrap()]).await
}

async fn alloc(c: &Client, req: Value) -> Value {
    ok(c, "allocate_resources", json!({"requirements": req})).await
}

async fn pool(c: &Client, name: &str) -> Value {
    ok(c, "get_resource_status", json!({})).await["pools"][name].clone()
}

#[tokio::test]
async fn pools_are_granted_all_or_nothing_up_to_capacity() {
    let env = Env::new();
    let c = start(&env, Era::Legacy).await;
    let a = alloc(&c, json!({"cpu": 6, "memory_mb": 1024})).await;
    assert!(a["allocation_id"].as_str().unwrap().starts_with("alc_"));
    assert_eq!(a["granted"], json!({"cpu": 6, "memory_mb": 1024}));
    assert!(a["expires_at"].is_string());
    // 3 more cpu do not fit; nothing of the request is held.
    let e = err(
        &c,
        "allocate_resources",
        json!({"requirements": {"cpu": 3, "memory_mb": 10}}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    assert_eq!(e["details"]["pools"]["cpu"]["available"], 2, "{e}");
    assert!(e["message"].as_str().unwrap().contains("cpu"), "{e}");
    assert_eq!(pool(&c, "memory_mb").await["allocated"], 1024);
    let s = pool(&c, "cpu").await;
    assert_eq!(
        (
            s["capacity"].clone(),
            s["allocated"].clone(),
            s["available"].clone()
        ),
        (json!(8), json!(6), json!(2))
    );
    assert_eq!(s["utilization"], 0.75);
    alloc(&c, json!({"cpu": 2})).await;
    // The original nested form: memory in GB.
    let n = alloc(&c, json!({"memory": {"gb": 2}, "slots": 1})).await;
    assert_eq!(n["granted"], json!({"memory_mb": 2048, "slots": 1}));
    // A full pool makes health degraded.
    let h = ok(&c, "get_health_status", json!({})).await;
    assert_eq!(h["components"]["resources"]["status"], "degraded", "{h}");
    // Release adds back exactly.
    ok(
        &c,
        "release_resources",
        json!({"allocation_id": a["allocation_id"]}),
    )
    .await;
    assert_eq!(pool(&c, "cpu").await["allocated"], 2);
    err(
        &c,
        "release_resources",
        json!({"allocation_id": a["allocation_id"]}),
        "CONFLICT",
    )
    .await;
    err(
        &c,
        "release_resources",
        json!({"allocation_id": "alc_nope"}),
        "NOT_FOUND",
    )
    .await;
    let st = ok(&c, "get_system_status", json!({})).await;
    assert_eq!(st["resource_utilization"]["cpu"], 0.25, "{st}");
}

#[tokio::test]
async fn impossible_and_malformed_requests_are_refused_at_once() {
    let env = Env::new();
    let c = start(&env, Era::Modern).await;
    let e = err(
        &c,
        "allocate_resources",
        json!({"requirements": {"cpu": 9}, "wait_seconds": 30}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("never"), "{e}");
    let e = err(
        &c,
        "allocate_resources",
        json!({"requirements": {"memory_mb": 7000}}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("quota"), "{e}");
    err(
        &c,
        "allocate_resources",
        json!({"requirements": {"unicorns": 1}}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    err(
        &c,
        "allocate_resources",
        json!({"requirements": {"cpu": 1.5}}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "allocate_resources",
        json!({"requirements": {"cpu": -1}}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "allocate_resources",
        json!({"requirements": {"locks": [{"key": "k", "mode": "sideways"}]}}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "allocate_resources",
        json!({"requirements": {}}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "allocate_resources",
        json!({"requirements": {"cpu": 1}, "ttl_seconds": 0}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(&c, "release_resources", json!({}), "INVALID_PARAMETERS").await;
    let s = ok(&c, "get_resource_status", json!({})).await;
    assert_eq!(s["active_allocations"], 0, "nothing changed: {s}");
}

#[tokio::test]
async fn lock_modes_combine_as_documented() {
    let env = Env::new();
    let c = start(&env, Era::Legacy).await;
    let lock = |mode: &str| json!({"locks": [{"key": "repo:main", "mode": mode}]});
    // held mode -> requested mode -> granted?
    let table = [
        ("read", "read", true),
        ("read", "write", true),
        ("read", "exclusive", false),
        ("write", "read", true),
        ("write", "write", false),
        ("write", "exclusive", false),
        ("exclusive", "read", false),
        ("exclusive", "write", false),
        ("exclusive", "exclusive", false),
    ];
    for (held, wanted, granted) in table {
        let h = alloc(&c, lock(held)).await;
        let r = call(
            &c,
            "allocate_resources",
            json!({"requirements": lock(wanted), "user_id": "second"}),
        )
        .await;
        match (granted, r) {
            (true, Ok(a)) => {
                ok(
                    &c,
                    "release_resources",
                    json!({"allocation_id": a["allocation_id"]}),
                )
                .await;
            }
            (false, Err(e)) => {
                assert_eq!(e["code"], "RESOURCE_UNAVAILABLE");
                assert_eq!(e["details"]["locks"]["repo:main"][0]["mode"], held, "{e}");
            }
            (g, r) => panic!("{held} then {wanted}: expected granted={g}, got {r:?}"),
        }
        ok(
            &c,
            "release_resources",
            json!({"allocation_id": h["allocation_id"]}),
        )
        .await;
    }
    let s = ok(&c, "get_resource_status", json!({})).await;
    assert_eq!(s["locks"], json!({}), "{s}");
}

#[tokio::test]
async fn quotas_leases_renewal_and_session_close() {
    let env = Env::new();
    let c = start(&env, Era::Legacy).await;
    // Per-principal memory quota: 6144 held at most across sessions.
    alloc(&c, json!({"memory_mb": 4096})).await;
    let e = err(
        &c,
        "allocate_resources",
        json!({"requirements": {"memory_mb": 4096}}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    assert!(
        e["details"]["quotas"][0]
            .as_str()
            .unwrap()
            .contains("quota"),
        "{e}"
    );

    // A lease ends: the allocation is reclaimed, and cannot be renewed.
    let short = ok(
        &c,
        "allocate_resources",
        json!({"requirements": {"slots": 1}, "ttl_seconds": 1}),
    )
    .await;
    let renewed = ok(
        &c,
        "renew_allocation",
        json!({"allocation_id": short["allocation_id"], "ttl_seconds": 1}),
    )
    .await;
    assert_eq!(renewed["status"], "active");
    let mut gone = false;
    for _ in 0..60 {
        if pool(&c, "slots").await["allocated"] == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "expired allocation reclaimed");
    err(
        &c,
        "renew_allocation",
        json!({"allocation_id": short["allocation_id"]}),
        "CONFLICT",
    )
    .await;
    let expired = ok(&c, "list_allocations", json!({"status": "expired"})).await;
    assert_eq!(
        expired["allocations"][0]["allocation_id"],
        short["allocation_id"]
    );

    // Closing a session releases what it holds.
    let s = ok(&c, "create_session", json!({"name": "holder"})).await["session_id"].clone();
    ok(&c, "allocate_resources", json!({"session_id": s, "requirements": {"slots": 3, "locks": [{"key": "db", "mode": "exclusive"}]}})).await;
    assert_eq!(pool(&c, "slots").await["allocated"], 3);
    ok(&c, "close_session", json!({"session_id": s})).await;
    assert_eq!(pool(&c, "slots").await["allocated"], 0);
    let page = ok(&c, "list_allocations", json!({"session_id": s})).await;
    assert_eq!(page["allocations"][0]["status"], "released");
    assert!(
        page["allocations"][0]["release_reason"]
            .as_str()
            .unwrap()
            .contains("closed")
    );
}

#[tokio::test]
async fn waiters_are_served_by_priority_and_a_big_request_is_not_overtaken() {
    let env = Env::new();
    let cfg = env.config(CONFIG);
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let c = server.client(Era::Legacy, None).await;
    let first = alloc(&c, json!({"slots": 3})).await;
    // A big request waits for all 3 slots; small ones arriving later must not take them.
    let big = {
        let c = server.client(Era::Legacy, None).await;
        tokio::spawn(async move {
            let r = ok(
                &c,
                "allocate_resources",
                json!({"requirements": {"slots": 3}, "user_id": "big", "wait_seconds": 30}),
            )
            .await;
            (r, c)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let low = {
        let c = server.client(Era::Modern, None).await;
        tokio::spawn(async move {
            call(&c, "allocate_resources", json!({"requirements": {"slots": 1}, "user_id": "low", "priority": "low", "wait_seconds": 30})).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An immediate small request cannot slip past the waiting big one.
    let e = err(
        &c,
        "allocate_resources",
        json!({"requirements": {"slots": 1}}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    assert!(e["details"]["waiting_ahead"].as_u64().unwrap() >= 1, "{e}");
    let st = ok(&c, "get_resource_status", json!({})).await;
    assert_eq!(st["pools"]["slots"]["waiters"], 2, "{st}");
    ok(
        &c,
        "release_resources",
        json!({"allocation_id": first["allocation_id"]}),
    )
    .await;
    let (big, bc) = big.await.unwrap();
    assert_eq!(big["holder"], "big");
    // The low one still waits until the big one releases.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !low.is_finished(),
        "low priority waiter overtook the big one"
    );
    ok(
        &bc,
        "release_resources",
        json!({"allocation_id": big["allocation_id"]}),
    )
    .await;
    let low = low.await.unwrap().expect("low granted after the big one");
    assert_eq!(low["holder"], "low");
    // A wait that ends unserved says so.
    let e = err(
        &c,
        "allocate_resources",
        json!({"requirements": {"slots": 3}, "wait_seconds": 1}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("wait"), "{e}");
}

#[tokio::test]
async fn allocations_survive_kill_9_without_leak_or_double_grant() {
    let env = Env::new();
    let cfg = env.config(CONFIG);
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let c = server.client(Era::Legacy, None).await;
    let a = alloc(
        &c,
        json!({"slots": 2, "locks": [{"key": "k", "mode": "write"}]}),
    )
    .await;
    signal(server.pid(), "KILL");
    drop(c);
    drop(server);
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let c = server.client(Era::Modern, None).await;
    let s = ok(&c, "get_resource_status", json!({})).await;
    assert_eq!(s["pools"]["slots"]["allocated"], 2, "{s}");
    assert_eq!(s["locks"]["k"]["mode"], "write");
    err(
        &c,
        "allocate_resources",
        json!({"requirements": {"slots": 2}}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    err(
        &c,
        "allocate_resources",
        json!({"requirements": {"locks": [{"key": "k", "mode": "write"}]}}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    ok(
        &c,
        "release_resources",
        json!({"allocation_id": a["allocation_id"]}),
    )
    .await;
    alloc(&c, json!({"slots": 3})).await;
}

/// 16 clients contend for a pool of 3 slots and a write lock; every grant is
/// audited against what else was held at that moment.
#[tokio::test]
async fn sixteen_clients_contend_and_every_grant_is_legal() {
    let env = Env::new();
    let cfg = env.config(CONFIG);
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, i32, i32)>::new()));
    let mut workers = Vec::new();
    for w in 0..16 {
        let c = server
            .client(if w % 2 == 0 { Era::Legacy } else { Era::Modern }, None)
            .await;
        let log = log.clone();
        workers.push(tokio::spawn(async move {
            let mut granted = 0;
            for i in 0..6 {
                let req = if (w + i) % 3 == 0 {
                    json!({"slots": 1, "locks": [{"key": "ledger", "mode": "write"}]})
                } else {
                    json!({"slots": 1 + (w + i) % 2, "locks": [{"key": "ledger", "mode": "read"}]})
                };
                let writes = i32::from((w + i) % 3 == 0);
                let slots = req["slots"].as_i64().unwrap() as i32;
                match call(
                    &c,
                    "allocate_resources",
                    json!({"requirements": req, "user_id": format!("w{w}"), "wait_seconds": 20}),
                )
                .await
                {
                    Ok(a) => {
                        {
                            let mut l = log.lock().unwrap();
                            l.push(("grant".into(), slots, writes));
                            let (s, wr) = l.iter().fold((0, 0), |(s, wr), (k, n, x)| {
                                if k == "grant" {
                                    (s + n, wr + x)
                                } else {
                                    (s - n, wr - x)
                                }
                            });
                            assert!(s <= 3, "over capacity: {s} slots held");
                            assert!(wr <= 1, "two writers held the lock");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        log.lock().unwrap().push(("release".into(), slots, writes));
                        ok(
                            &c,
                            "release_resources",
                            json!({"allocation_id": a["allocation_id"]}),
                        )
                        .await;
                        granted += 1;
                    }
                    Err(e) => assert_eq!(e["code"], "RESOURCE_UNAVAILABLE", "{e}"),
                }
            }
            granted
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert!(total > 0);
    let c = server.client(Era::Legacy, None).await;
    let s = ok(&c, "get_resource_status", json!({})).await;
    assert_eq!(s["active_allocations"], 0, "{s}");
    assert_eq!(s["pools"]["slots"]["allocated"], 0);
    assert_eq!(s["waiting_requests"], 0);
    let h = ok(&c, "get_health_status", json!({})).await;
    assert_eq!(h["components"]["resources"]["status"], "healthy", "{h}");
}

fn step(name: &str, action: &str, params: Value, deps: &[&str], resources: Option<Value>) -> Value {
    let mut s = json!({"name": name, "module": "core", "action": action, "parameters": params, "dependencies": deps});
    if let Some(r) = resources {
        s["resources"] = r;
    }
    s
}

async fn step_status(c: &Client, run_id: &Value, step: &str) -> String {
    let v = ok(c, "get_workflow_run", json!({"run_id": run_id})).await;
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == step)
        .map(|s| s["status"].as_str().unwrap().to_string())
        .unwrap()
}

async fn wait_step(c: &Client, run_id: &Value, step: &str, status: &str) {
    for _ in 0..200 {
        if step_status(c, run_id, step).await == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("step {step} never became {status}");
}

#[tokio::test]
async fn a_step_waits_for_a_lock_held_elsewhere_and_releases_however_it_ends() {
    let env = Env::new();
    let c = start(&env, Era::Legacy).await;
    let lock = json!({"locks": [{"key": "repo:main", "mode": "write"}], "slots": 1});
    let held = alloc(
        &c,
        json!({"locks": [{"key": "repo:main", "mode": "exclusive"}]}),
    )
    .await;
    ok(&c, "create_workflow", json!({"name": "locked", "steps": [step("edit", "echo", json!({"x": 1}), &[], Some(lock.clone()))]})).await;
    // In parallel mode a step waits in the allocator's queue, holding its slot.
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "locked", "mode": "parallel", "wait_seconds": 0}),
    )
    .await;
    wait_step(&c, &r["run_id"], "edit", "waiting_resources").await;
    let mut st = Value::Null;
    for _ in 0..100 {
        st = ok(&c, "get_resource_status", json!({})).await;
        if st["locks"]["repo:main"]["waiters"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(st["locks"]["repo:main"]["waiters"], 1, "{st}");
    ok(
        &c,
        "release_resources",
        json!({"allocation_id": held["allocation_id"]}),
    )
    .await;
    let v = ok(
        &c,
        "get_workflow_run",
        json!({"run_id": r["run_id"], "wait_seconds": 20}),
    )
    .await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        pool(&c, "slots").await["allocated"],
        0,
        "released after success"
    );
    let page = ok(&c, "list_allocations", json!({"status": "released"})).await;
    assert!(
        page["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["owner_kind"] == "step"),
        "{page}"
    );

    // Failure, timeout and cancellation release too.
    ok(&c, "create_workflow", json!({"name": "ends", "on_failure": "continue", "steps": [
        step("fails", "fail", json!({"message": "no"}), &[], Some(json!({"slots": 1}))),
        {"name": "slow", "module": "core", "action": "sleep", "parameters": {"ms": 5000}, "timeout_seconds": 1, "resources": {"slots": 1}}
    ]})).await;
    let v = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "ends", "wait_seconds": 20}),
    )
    .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(pool(&c, "slots").await["allocated"], 0);
    ok(
        &c,
        "create_workflow",
        json!({"name": "cancelled", "steps": [
            step("hold", "sleep", json!({"ms": 20000}), &[], Some(json!({"slots": 2}))),
            step("queued", "echo", json!({}), &[], Some(json!({"slots": 2})))
        ]}),
    )
    .await;
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "cancelled", "wait_seconds": 0}),
    )
    .await;
    wait_step(&c, &r["run_id"], "queued", "waiting_resources").await;
    assert_eq!(step_status(&c, &r["run_id"], "hold").await, "running");
    ok(&c, "cancel_workflow_run", json!({"run_id": r["run_id"]})).await;
    let v = ok(
        &c,
        "get_workflow_run",
        json!({"run_id": r["run_id"], "wait_seconds": 20}),
    )
    .await;
    assert_eq!(v["status"], "cancelled");
    let mut released = false;
    for _ in 0..100 {
        let s = ok(&c, "get_resource_status", json!({})).await;
        if s["pools"]["slots"]["allocated"] == 0 && s["waiting_requests"] == 0 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        released,
        "cancelled run released its step's slots and waiters"
    );
}

#[tokio::test]
async fn run_requirements_hold_for_the_whole_run_and_impossible_ones_are_refused() {
    let env = Env::new();
    let c = start(&env, Era::Modern).await;
    ok(&c, "create_workflow", json!({"name": "w", "steps": [step("a", "sleep", json!({"ms": 400}), &[], None), step("b", "echo", json!({}), &["a"], None)]})).await;
    let r = ok(&c, "execute_workflow", json!({"workflow_name": "w", "resource_requirements": {"cpu": {"cores": 3}}, "wait_seconds": 0})).await;
    let mut seen = false;
    for _ in 0..40 {
        if pool(&c, "cpu").await["allocated"] == 3 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "the run holds its cpu while it runs");
    let v = ok(
        &c,
        "get_workflow_run",
        json!({"run_id": r["run_id"], "wait_seconds": 20}),
    )
    .await;
    assert_eq!(v["status"], "succeeded");
    assert_eq!(pool(&c, "cpu").await["allocated"], 0);
    err(
        &c,
        "execute_workflow",
        json!({"workflow_name": "w", "resource_requirements": {"cpu": 64}}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    ok(&c, "create_workflow", json!({"name": "greedy", "steps": [step("a", "echo", json!({}), &[], Some(json!({"gpu": 1})))]})).await;
    let e = err(
        &c,
        "execute_workflow",
        json!({"workflow_name": "greedy"}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("step 'a'"), "{e}");
    let e = err(&c, "create_workflow", json!({"name": "bad", "steps": [step("a", "echo", json!({}), &[], Some(json!({"cpu": "lots"})))]}), "INVALID_PARAMETERS").await;
    assert!(e.to_string().contains("resources"), "{e}");
}

#[tokio::test]
async fn resource_aware_sessions_run_what_can_run_first() {
    let env = Env::new();
    let c = start(&env, Era::Legacy).await;
    let s = ok(
        &c,
        "create_session",
        json!({"name": "ra", "mode": "resource_aware", "max_parallel_tasks": 1}),
    )
    .await["session_id"]
        .clone();
    let held = ok(
        &c,
        "allocate_resources",
        json!({"session_id": s, "requirements": {"locks": [{"key": "db", "mode": "exclusive"}]}}),
    )
    .await;
    // `blocked` is more urgent but its lock is taken: with one slot, `free` runs meanwhile.
    ok(&c, "create_workflow", json!({"session_id": s, "name": "ra", "steps": [
        {"name": "blocked", "module": "core", "action": "echo", "priority": "critical", "resources": {"locks": [{"key": "db", "mode": "write"}]}},
        {"name": "free", "module": "core", "action": "echo", "priority": "low"}
    ]})).await;
    let r = ok(
        &c,
        "execute_workflow",
        json!({"session_id": s, "workflow_name": "ra", "wait_seconds": 0}),
    )
    .await;
    wait_step(&c, &r["run_id"], "free", "succeeded").await;
    assert_eq!(
        step_status(&c, &r["run_id"], "blocked").await,
        "waiting_resources"
    );
    ok(
        &c,
        "release_resources",
        json!({"allocation_id": held["allocation_id"]}),
    )
    .await;
    let v = ok(
        &c,
        "get_workflow_run",
        json!({"run_id": r["run_id"], "wait_seconds": 20}),
    )
    .await;
    assert_eq!(v["status"], "succeeded", "{v}");
}

#[tokio::test]
async fn tasks_hold_their_resources_while_they_run_or_are_claimed() {
    let env = Env::new();
    let c = start(&env, Era::Legacy).await;
    let held = alloc(&c, json!({"slots": 3})).await;
    let t = ok(&c, "create_task", json!({"task": {"name": "needs-slot", "module": "core", "action": "echo", "resources": {"slots": 1}}})).await;
    let mut v = Value::Null;
    for _ in 0..100 {
        v = ok(&c, "get_task", json!({"task_id": t["task_id"]})).await;
        if v["status"] == "waiting_resources" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(v["status"], "waiting_resources", "{v}");
    // Agent tasks: one needs a slot (none free), the other does not; the claim skips the first.
    ok(
        &c,
        "create_tasks",
        json!({"tasks": [
            {"name": "agent-slot", "priority": "critical", "resources": {"slots": 1}},
            {"name": "agent-free", "priority": "low"}
        ]}),
    )
    .await;
    let claim = ok(&c, "next_task", json!({})).await;
    assert_eq!(claim["task"]["name"], "agent-free", "{claim}");
    let none = ok(&c, "next_task", json!({})).await;
    assert!(none["task"].is_null());
    assert_eq!(none["counts"]["waiting_resources"], 1, "{none}");
    ok(
        &c,
        "release_resources",
        json!({"allocation_id": held["allocation_id"]}),
    )
    .await;
    let v = ok(
        &c,
        "get_task",
        json!({"task_id": t["task_id"], "wait_seconds": 20}),
    )
    .await;
    assert_eq!(v["status"], "succeeded", "{v}");
    let claim = ok(&c, "next_task", json!({})).await;
    assert_eq!(claim["task"]["name"], "agent-slot");
    assert_eq!(
        pool(&c, "slots").await["allocated"],
        1,
        "the claim holds its slot"
    );
    ok(
        &c,
        "complete_task",
        json!({"task_id": claim["task"]["task_id"], "lease_id": claim["lease_id"]}),
    )
    .await;
    assert_eq!(
        pool(&c, "slots").await["allocated"],
        0,
        "completion released it"
    );
    err(
        &c,
        "create_task",
        json!({"task": {"name": "greedy", "resources": {"slots": 4}}}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
}

#[tokio::test]
async fn a_step_waits_for_a_lock_held_by_another_run() {
    let env = Env::new();
    let c = start(&env, Era::Modern).await;
    let lock = json!({"locks": [{"key": "deploy", "mode": "write"}]});
    ok(&c, "create_workflow", json!({"name": "holder", "steps": [step("hold", "sleep", json!({"ms": 600}), &[], Some(lock.clone()))]})).await;
    ok(
        &c,
        "create_workflow",
        json!({"name": "wanter", "steps": [step("want", "echo", json!({}), &[], Some(lock))]}),
    )
    .await;
    let a = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "holder", "mode": "parallel", "wait_seconds": 0}),
    )
    .await;
    wait_step(&c, &a["run_id"], "hold", "running").await;
    let b = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "wanter", "mode": "parallel", "wait_seconds": 0}),
    )
    .await;
    wait_step(&c, &b["run_id"], "want", "waiting_resources").await;
    let va = ok(
        &c,
        "get_workflow_run",
        json!({"run_id": a["run_id"], "wait_seconds": 20}),
    )
    .await;
    let vb = ok(
        &c,
        "get_workflow_run",
        json!({"run_id": b["run_id"], "wait_seconds": 20}),
    )
    .await;
    assert_eq!(vb["status"], "succeeded", "{vb}");
    let t = |v: &Value, k: &str| {
        chrono::DateTime::parse_from_rfc3339(v["steps"][0][k].as_str().unwrap()).unwrap()
    };
    assert!(
        t(&vb, "started_at") >= t(&va, "finished_at"),
        "the writer waited for the other run's writer"
    );
}

#[tokio::test]
async fn a_more_urgent_waiter_is_served_before_an_earlier_one() {
    let env = Env::new();
    let cfg = env.config(CONFIG);
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let c = server.client(Era::Legacy, None).await;
    let held = alloc(&c, json!({"slots": 3})).await;
    let normal = {
        let c = server.client(Era::Legacy, None).await;
        tokio::spawn(async move {
            ok(
                &c,
                "allocate_resources",
                json!({"requirements": {"slots": 1}, "user_id": "normal", "wait_seconds": 30}),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let critical = {
        let c = server.client(Era::Modern, None).await;
        tokio::spawn(async move {
            ok(&c, "allocate_resources", json!({"requirements": {"slots": 3}, "user_id": "critical", "priority": "critical", "wait_seconds": 30})).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    ok(
        &c,
        "release_resources",
        json!({"allocation_id": held["allocation_id"]}),
    )
    .await;
    let crit = critical.await.unwrap();
    assert_eq!(crit["holder"], "critical");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !normal.is_finished(),
        "the earlier normal waiter went first"
    );
    ok(
        &c,
        "release_resources",
        json!({"allocation_id": crit["allocation_id"]}),
    )
    .await;
    assert_eq!(normal.await.unwrap()["holder"], "normal");
}

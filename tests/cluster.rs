//! Scale-out: `myrmex serve --no-execute` servers and `myrmex worker`
//! processes on one PostgreSQL database (always PostgreSQL: 127.0.0.1:5432,
//! database `test`, or TEST_MYRMEX_POSTGRES; a schema of its own per test).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// Short leases and polls so that a dead worker's work moves on quickly.
fn cluster_toml(extra: &str) -> String {
    cluster_toml_leased(1500, extra)
}

/// As [`cluster_toml`] with leases of `ttl_ms`: a test that kills nobody
/// takes long ones, so that a loaded machine's late heartbeat moves no run.
fn cluster_toml_leased(ttl_ms: u64, extra: &str) -> String {
    format!(
        "[cluster]\nlease_ttl_ms = {ttl_ms}\npoll_interval_ms = 200\n\n\
         [modules.shell]\nenabled = true\nallowed_commands = [\"sh\"]\n{extra}"
    )
}

/// A `myrmex worker`, started and running.
struct Worker {
    child: Child,
    _drain: tokio::task::JoinHandle<()>,
}

impl Worker {
    async fn start(env: &Env, cfg: &Path) -> Worker {
        let mut cmd = env.command(&["--config", cfg.to_str().unwrap(), "worker"]);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn myrmex worker");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::time::timeout(Duration::from_secs(60), async {
            let mut seen = Vec::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("worker started") {
                    return;
                }
                seen.push(line);
            }
            panic!("the worker exited:\n{}", seen.join("\n"));
        })
        .await
        .expect("the worker starts within 60 s");
        let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Worker {
            child,
            _drain: drain,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }
}

/// A PostgreSQL Env with the cluster settings, and a server that executes nothing.
async fn no_execute_server() -> (Env, PathBuf, HttpServer) {
    let env = Env::postgres();
    let cfg = env.config(&cluster_toml(""));
    let server = env
        .http(&["--config", cfg.to_str().unwrap(), "--no-execute"])
        .await;
    (env, cfg, server)
}

/// A shell command whose first run leaves `mark` and hangs; later runs print `again`.
fn hang_once(mark: &Path) -> String {
    format!(
        "if [ -e {m} ]; then echo again; else touch {m}; exec sleep 20; fi",
        m = mark.display()
    )
}

/// A shell step that appends `<run>/<step> <pid of the executing myrmex>` to `log`.
fn logged(name: &str, log: &Path, deps: &[&str]) -> Value {
    json!({
        "name": name,
        "module": "shell",
        "action": "run",
        "parameters": {
            "command": format!("echo {{{{run.id}}}}/{name} $PPID >> {}", log.display()),
            "shell": true
        },
        "dependencies": deps,
    })
}

/// 2 servers that execute nothing + 2 workers: 50 concurrent workflows run to
/// completion, every step executed exactly once (no process died, so one
/// attempt each), both workers took part, and both servers answer for every run.
#[tokio::test]
async fn two_servers_and_two_workers_run_50_workflows() {
    let env = Env::postgres();
    let cfg = env.config(&cluster_toml_leased(30_000, ""));
    let cfg_s = cfg.to_str().unwrap();
    let a = env.http(&["--config", cfg_s, "--no-execute"]).await;
    let b = env.http(&["--config", cfg_s, "--no-execute"]).await;
    let w1 = Worker::start(&env, &cfg).await;
    let w2 = Worker::start(&env, &cfg).await;
    let log = env.path().join("steps.log");
    let ca = a.client(Era::Legacy, None).await;
    let cb = b.client(Era::Modern, None).await;
    ok(
        &ca,
        "create_workflow",
        json!({"name": "diamond", "scope": "global", "steps": [
            logged("a", &log, &[]),
            logged("b", &log, &["a"]),
            logged("c", &log, &["a"]),
            logged("d", &log, &["b", "c"]),
        ]}),
    )
    .await;
    let n = 50;
    let mut runs = Vec::new();
    for i in 0..n {
        let c = if i % 2 == 0 { &ca } else { &cb };
        let r = start(c, "diamond").await;
        assert!(
            matches!(r["status"].as_str(), Some("pending" | "running")),
            "{r}"
        );
        runs.push(r["run_id"].as_str().unwrap().to_string());
    }
    // Each run is followed through the server that did not start it.
    for (i, id) in runs.iter().enumerate() {
        let c = if i % 2 == 0 { &cb } else { &ca };
        let v = finish(c, &json!(id)).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        for s in v["steps"].as_array().unwrap() {
            assert_eq!(s["attempts"], 1, "{id}: {s}");
        }
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let mut executed: HashMap<String, usize> = HashMap::new();
    let mut pids = HashSet::new();
    for line in text.lines() {
        let (step, pid) = line.split_once(' ').unwrap();
        *executed.entry(step.to_string()).or_default() += 1;
        pids.insert(pid.parse::<i32>().unwrap());
    }
    assert_eq!(executed.len(), n * 4, "every step of every run ran");
    assert!(
        executed.values().all(|&k| k == 1),
        "a step ran twice: {:?}",
        executed.iter().filter(|(_, k)| **k > 1).collect::<Vec<_>>()
    );
    assert_eq!(
        pids,
        HashSet::from([w1.pid(), w2.pid()]),
        "only the workers execute, and both do"
    );
    // Both servers see the same runs.
    for c in [&ca, &cb] {
        let page = ok(
            c,
            "list_workflow_runs",
            json!({"status": "succeeded", "limit": 100}),
        )
        .await;
        assert_eq!(page["runs"].as_array().unwrap().len(), n);
    }
}

/// `kill -9` of the worker executing a step: after the lease's TTL another
/// worker claims the run and attempts the step again (the lost attempt counted).
#[tokio::test]
async fn a_killed_workers_step_is_attempted_again_elsewhere() {
    let (env, cfg, server) = no_execute_server().await;
    let mut w1 = Worker::start(&env, &cfg).await;
    let c = server.client(Era::Legacy, None).await;
    let mark = env.path().join("first-attempt");
    // The first attempt leaves a mark and hangs; the next one finishes.
    let script = hang_once(&mark);
    ok(
        &c,
        "create_workflow",
        json!({"name": "slow", "steps": [
            {"name": "first", "module": "core", "action": "echo", "parameters": {"x": 1}},
            {"name": "hang", "module": "shell", "action": "run",
             "parameters": {"command": script, "shell": true}, "dependencies": ["first"]},
            {"name": "after", "module": "core", "action": "echo",
             "parameters": {"hang": "{{steps.hang.output.stdout}}"}, "dependencies": ["hang"]},
        ]}),
    )
    .await;
    let run = start(&c, "slow").await;
    let id = run["run_id"].clone();
    wait_for_step(&c, &id, "hang", "running").await;
    while !mark.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let w2 = Worker::start(&env, &cfg).await;
    signal(w1.pid(), "KILL");
    let _ = w1.child.wait().await;
    let v = finish(&c, &id).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    let steps = steps_by_name(&v);
    assert_eq!(steps["first"]["attempts"], 1, "a finished step is kept");
    assert_eq!(steps["hang"]["attempts"], 2, "the killed attempt counts");
    assert_eq!(steps["hang"]["output"]["stdout"], "again\n");
    assert_eq!(steps["after"]["output"]["hang"], "again\n");
    drop(w2);
}

/// A cancel asked for on one server stops a run a worker executes; a run that
/// nobody executes (no worker) is cancelled by the server itself.
#[tokio::test]
async fn cancel_reaches_the_executing_process() {
    let env = Env::postgres();
    let cfg = env.config(&cluster_toml(""));
    let cfg_s = cfg.to_str().unwrap();
    let a = env.http(&["--config", cfg_s, "--no-execute"]).await;
    let b = env.http(&["--config", cfg_s, "--no-execute"]).await;
    let ca = a.client(Era::Legacy, None).await;
    let cb = b.client(Era::Modern, None).await;
    ok(
        &ca,
        "create_workflow",
        json!({"name": "long", "scope": "global", "steps": [
            {"name": "wait", "module": "core", "action": "sleep", "parameters": {"ms": 60000}},
            {"name": "then", "module": "core", "action": "echo", "parameters": {}, "dependencies": ["wait"]},
        ]}),
    )
    .await;
    // Nobody executes: the run stays pending, and the cancel ends it at once.
    let idle = start(&ca, "long").await;
    assert_eq!(idle["status"], "pending");
    // Health says so once the run waited longer than a lease.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let h = ok(&cb, "get_health_status", json!({})).await;
    let cluster = &h["components"]["cluster"];
    assert_eq!(cluster["status"], "degraded", "{h}");
    assert!(
        cluster["message"]
            .as_str()
            .unwrap()
            .contains("myrmex worker"),
        "{cluster}"
    );
    assert_eq!(cluster["details"]["unclaimed_runs"], 1, "{cluster}");
    let v = ok(
        &cb,
        "cancel_workflow_run",
        json!({"run_id": idle["run_id"]}),
    )
    .await;
    assert_eq!(v["status"], "cancelled", "{v}");

    let _w = Worker::start(&env, &cfg).await;
    let run = start(&ca, "long").await;
    let id = run["run_id"].clone();
    wait_for_step(&ca, &id, "wait", "running").await;
    let h = ok(&ca, "get_health_status", json!({})).await;
    let cluster = &h["components"]["cluster"];
    assert_eq!(cluster["status"], "healthy", "{h}");
    assert_eq!(cluster["details"]["executes"], false, "{cluster}");
    let executors = cluster["details"]["executors"].as_object().unwrap();
    assert_eq!(executors.len(), 1, "{cluster}");
    let v = ok(&cb, "cancel_workflow_run", json!({"run_id": id})).await;
    assert_eq!(v["status"], "cancelled", "{v}");
    let steps = steps_by_name(&v);
    assert_eq!(steps["wait"]["status"], "cancelled");
    assert_eq!(steps["then"]["status"], "cancelled");
}

/// Auto tasks created through a server that executes nothing are run by a worker.
#[tokio::test]
async fn workers_run_auto_tasks() {
    let (env, cfg, server) = no_execute_server().await;
    let c = server.client(Era::Legacy, None).await;
    let _w1 = Worker::start(&env, &cfg).await;
    let _w2 = Worker::start(&env, &cfg).await;
    let tasks: Vec<Value> = (0..20)
        .map(|i| {
            json!({"name": format!("t{i}"), "module": "core", "action": "echo",
                   "parameters": {"i": i},
                   "dependencies": if i > 0 { vec![format!("t{}", i - 1)] } else { vec![] }})
        })
        .collect();
    ok(&c, "create_tasks", json!({"tasks": tasks})).await;
    let mut done = Vec::new();
    for _ in 0..300 {
        let page = ok(
            &c,
            "list_tasks",
            json!({"status": "succeeded", "limit": 100}),
        )
        .await;
        done = page["tasks"].as_array().unwrap().clone();
        if done.len() == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done.len(), 20, "every auto task ran");
    // execute_task through a server that executes nothing waits for the worker.
    let r = ok(
        &c,
        "execute_task",
        json!({"task_name": "one-more", "module": "core", "action": "echo",
               "parameters": {"x": 1}, "wait_seconds": 30}),
    )
    .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"], json!({"x": 1}), "{r}");
    let last = done.iter().find(|t| t["name"] == "t19").unwrap();
    let t = ok(&c, "get_task", json!({"task_id": last["task_id"]})).await;
    assert_eq!(t["result"], json!({"i": 19}), "{t}");
    assert_eq!(t["attempts"], 1, "{t}");
}

/// Allocations from two servers never exceed a pool's capacity: 8 requests
/// at once through two servers for a pool of 3 grant exactly 3; after the
/// releases the next 3 are granted.
#[tokio::test]
async fn allocations_from_two_servers_never_exceed_capacity() {
    let env = Env::postgres();
    let cfg = env.config(&cluster_toml("\n[resources.pools]\nslots = 3\n"));
    let cfg_s = cfg.to_str().unwrap();
    let a = env.http(&["--config", cfg_s]).await;
    let b = env.http(&["--config", cfg_s]).await;
    let mut clients = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 { &a } else { &b };
        clients.push(s.client(Era::Legacy, None).await);
    }
    let clients = std::sync::Arc::new(clients);
    for round in 0..3 {
        let mut calls = Vec::new();
        for i in 0..8 {
            let clients = clients.clone();
            calls.push(tokio::spawn(async move {
                call(
                    &clients[i],
                    "allocate_resources",
                    json!({"requirements": {"slots": 1}, "user_id": format!("c{i}")}),
                )
                .await
            }));
        }
        let mut granted = Vec::new();
        for (i, h) in calls.into_iter().enumerate() {
            match h.await.unwrap() {
                Ok(v) => granted.push((i, v["allocation_id"].clone())),
                Err(e) => assert_eq!(e["code"], "RESOURCE_UNAVAILABLE", "{e}"),
            }
        }
        assert_eq!(granted.len(), 3, "round {round}: {granted:?}");
        for c in [&clients[0], &clients[1]] {
            let s = ok(c, "get_resource_status", json!({})).await;
            assert_eq!(s["pools"]["slots"]["allocated"], 3, "{s}");
        }
        // Released through the other server than the one that granted it.
        for (i, id) in granted {
            ok(
                &clients[(i + 1) % 8],
                "release_resources",
                json!({"allocation_id": id}),
            )
            .await;
        }
    }
}

/// A waiter on one server keeps its place against requests on another (they
/// may not take what it waits for), and is granted when the holder releases there.
#[tokio::test]
async fn waiters_keep_their_turn_across_servers() {
    let env = Env::postgres();
    let cfg = env.config(&cluster_toml("\n[resources.pools]\nslots = 4\n"));
    let cfg_s = cfg.to_str().unwrap();
    let a = env.http(&["--config", cfg_s]).await;
    let b = env.http(&["--config", cfg_s]).await;
    let ca = a.client(Era::Legacy, None).await;
    let cb = b.client(Era::Legacy, None).await;
    let held = ok(
        &ca,
        "allocate_resources",
        json!({"requirements": {"slots": 3}}),
    )
    .await;
    let waiter = tokio::spawn(async move {
        let v = ok(
            &cb,
            "allocate_resources",
            json!({"requirements": {"slots": 2}, "wait_seconds": 30}),
        )
        .await;
        (cb, v)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "2 of 1 free slot cannot be granted");
    // The free slot is kept for the earlier waiter on the other server.
    let e = err(
        &ca,
        "allocate_resources",
        json!({"requirements": {"slots": 1}}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    assert_eq!(e["details"]["waiting_ahead"], 1, "{e}");
    ok(
        &ca,
        "release_resources",
        json!({"allocation_id": held["allocation_id"]}),
    )
    .await;
    let (_cb, v) = waiter.await.unwrap();
    assert_eq!(v["granted"], json!({"slots": 2}), "{v}");
    // Now the one slot is free for anyone.
    ok(
        &ca,
        "allocate_resources",
        json!({"requirements": {"slots": 1}}),
    )
    .await;
}

/// `kill -9` of the worker running an auto task: after its lease's TTL
/// another worker runs the task again (the lost attempt counted).
#[tokio::test]
async fn a_killed_workers_auto_task_runs_again_elsewhere() {
    let (env, cfg, server) = no_execute_server().await;
    let c = server.client(Era::Legacy, None).await;
    let mut w1 = Worker::start(&env, &cfg).await;
    let mark = env.path().join("first-attempt");
    let script = hang_once(&mark);
    let created = ok(
        &c,
        "create_tasks",
        json!({"tasks": [{"name": "hang", "module": "shell", "action": "run",
                          "parameters": {"command": script, "shell": true}}]}),
    )
    .await;
    let id = created["tasks"][0]["task_id"].clone();
    while !mark.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _w2 = Worker::start(&env, &cfg).await;
    signal(w1.pid(), "KILL");
    let _ = w1.child.wait().await;
    let mut t = Value::Null;
    for _ in 0..300 {
        t = ok(&c, "get_task", json!({"task_id": id})).await;
        if t["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(t["status"], "succeeded", "{t}");
    assert_eq!(t["attempts"], 2, "the killed attempt counts: {t}");
    assert_eq!(t["result"]["stdout"], "again\n", "{t}");
}

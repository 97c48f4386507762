//! Several processes on one store behave as one server: three `myrmex serve`
//! stdio processes (what two or three MCP clients on one machine start) and
//! `myrmex run`, on one SQLite data directory — or, with
//! TEST_MYRMEX_STORE=postgres, on one PostgreSQL database.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Leases short enough that a takeover is quick; shell steps count executions.
fn config(env: &Env) -> std::path::PathBuf {
    env.config(
        "[modules.shell]\nenabled = true\n\n[cluster]\nlease_ttl_ms = 3000\npoll_interval_ms = 200\nsignal_poll_ms = 50\n\n[sessions]\nmax_active_per_principal = 2000\n",
    )
}

/// Three servers started at the same moment (as clients that start with the
/// desktop do), on a data directory none of them has opened before.
async fn three(env: &Env) -> Vec<Client> {
    let cfg = config(env);
    let cfg = cfg.to_str().unwrap().to_string();
    let args = ["--config", cfg.as_str()];
    futures::future::join_all(
        [Era::Legacy, Era::Modern, Era::Legacy].map(|era| env.stdio(era, &args)),
    )
    .await
}

/// Processes that open a fresh data directory at the same moment all start
/// and serve (the first creates the tables while the others wait their turn),
/// five times over.
#[tokio::test]
async fn processes_started_at_once_on_a_fresh_directory_all_serve() {
    for _ in 0..5 {
        let env = Env::new();
        let cfg = config(&env);
        let cfg = cfg.to_str().unwrap().to_string();
        let args = ["--config", cfg.as_str()];
        let cs = futures::future::join_all((0..4).map(|_| env.stdio(Era::Legacy, &args))).await;
        for c in &cs {
            let h = ok(c, "get_health_status", json!({})).await;
            assert_eq!(h["overall_status"], "healthy", "{h}");
        }
        let st = ok(&cs[0], "get_system_status", json!({})).await;
        let serving = st["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["kind"] == "serve")
            .count();
        assert!(serving >= 4, "{st}");
    }
}

/// A step that appends `<run>/<name>` to `log`, then sleeps `pause` seconds
/// on its first attempt only: a kill or a stop meant to land while it sleeps
/// does however slowly a loaded machine gets there, and the attempt after it
/// does not wait again.
fn counted(n: &str, deps: &[&str], log: &std::path::Path, pause: u32) -> Value {
    let log = log.display();
    let line = format!("{{{{run.id}}}}/{n}");
    json!({"name": n, "module": "shell", "action": "run", "dependencies": deps,
           "parameters": {"command": format!(
               "echo {line} >> {log}; [ \"$(grep -cx {line} {log})\" -gt 1 ] || sleep {pause}"),
               "shell": true}})
}

/// A diamond whose every step appends `<run>/<step>` to `log`.
fn counting(name: &str, log: &std::path::Path) -> Value {
    json!({"name": name, "scope": "global", "steps": [
        counted("a", &[], log, 0), counted("b", &["a"], log, 0),
        counted("c", &["a"], log, 0), counted("d", &["b", "c"], log, 0)]})
}

/// Define and start (without waiting) the chain a → b → c of counted steps,
/// b sleeping `pause` seconds on its first attempt: the run's id as a value and as text.
async fn start_chain(c: &Client, name: &str, log: &std::path::Path, pause: u32) -> (Value, String) {
    ok(
        c,
        "create_workflow",
        json!({"name": name, "scope": "global", "steps": [
        counted("a", &[], log, 0), counted("b", &["a"], log, pause), counted("c", &["b"], log, 0)]}),
    )
    .await;
    let run = ok(
        c,
        "execute_workflow",
        json!({"workflow_name": name, "wait_seconds": 0}),
    )
    .await;
    let id = run["run_id"].clone();
    let rid = id.as_str().unwrap().to_string();
    (id, rid)
}

/// A server to be killed or stopped (with its pid) and a peer on the same
/// store, both on the peers tests' configuration.
async fn victim_and_peer(env: &Env) -> (Client, u32, Client) {
    let cfg = config(env);
    let cfg = cfg.to_str().unwrap();
    let (a, pid) = env.stdio_pid(Era::Legacy, &["--config", cfg]).await;
    let b = env.stdio(Era::Modern, &["--config", cfg]).await;
    (a, pid, b)
}

fn executions(log: &std::path::Path) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        *n.entry(line.to_string()).or_default() += 1;
    }
    n
}

/// Runs started in any of three servers, and by `myrmex run`, execute once in
/// all: every step of every run appends its line exactly once. The servers
/// list one another.
#[tokio::test]
async fn runs_started_anywhere_execute_exactly_once() {
    let env = Env::new();
    let log = env.path().join("executions.log");
    let cs = three(&env).await;
    ok(&cs[0], "create_workflow", counting("count", &log)).await;
    // `myrmex run` on the same store, meanwhile.
    let file = env.path().join("count.json");
    let mut def = counting("count-cli", &log);
    def.as_object_mut().unwrap().remove("scope");
    std::fs::write(&file, def.to_string()).unwrap();
    let cfg = config(&env);
    let cli = env
        .command(&[
            "--config",
            cfg.to_str().unwrap(),
            "run",
            file.to_str().unwrap(),
        ])
        .output();
    let mut runs = Vec::new();
    for round in 0..4 {
        for c in &cs {
            let r = ok(
                c,
                "execute_workflow",
                json!({"workflow_name": "count", "wait_seconds": 0, "parameters": {}}),
            )
            .await;
            runs.push((round, r["run_id"].as_str().unwrap().to_string()));
        }
    }
    let st = ok(&cs[1], "get_system_status", json!({})).await;
    let kinds: Vec<&str> = st["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.iter().filter(|k| **k == "serve").count() >= 3,
        "{kinds:?}"
    );
    assert_eq!(st["processes"][0]["this_process"], true);
    let out = cli.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_run: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (i, (_, id)) in runs.iter().enumerate() {
        let v = finish(&cs[i % 3], &json!(id)).await;
        assert_eq!(v["status"], "succeeded", "{v}");
    }
    let n = executions(&log);
    for id in runs
        .iter()
        .map(|(_, id)| id.clone())
        .chain([cli_run["run_id"].as_str().unwrap().to_string()])
    {
        for step in ["a", "b", "c", "d"] {
            assert_eq!(
                n.get(&format!("{id}/{step}")),
                Some(&1),
                "{id}/{step}: {n:?}"
            );
        }
    }
    assert_eq!(n.values().sum::<usize>(), 4 * 13, "{n:?}");
}

/// Agents on three servers drain 200 agent tasks created in all three: each
/// task is handed out once, no `next_task` answers CONFLICT, and a task made
/// in one server is claimed through the others.
#[tokio::test]
async fn agents_on_three_servers_drain_one_graph() {
    let env = Env::new();
    let cs: Vec<Arc<Client>> = three(&env).await.into_iter().map(Arc::new).collect();
    let mut made: HashMap<String, usize> = HashMap::new();
    for (i, c) in cs.iter().enumerate() {
        let n = if i == 0 { 100 } else { 50 };
        let tasks: Vec<Value> = (0..n)
            .map(|k| json!({"name": format!("p{i}-{k}"), "description": "work"}))
            .collect();
        let v = ok(c, "create_tasks", json!({"tasks": tasks})).await;
        for t in v["tasks"].as_array().unwrap() {
            made.insert(t["task_id"].as_str().unwrap().to_string(), i);
        }
    }
    assert_eq!(made.len(), 200);
    let conflicts = Arc::new(AtomicUsize::new(0));
    let mut agents = Vec::new();
    for (i, c) in cs.iter().enumerate() {
        let (c, conflicts) = (c.clone(), conflicts.clone());
        agents.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claim = match call(&c, "next_task", json!({"agent": format!("agent{i}")})).await
                {
                    Ok(v) => v,
                    Err(e) => {
                        if e["code"] == "CONFLICT" {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        panic!("next_task failed: {e}");
                    }
                };
                let Some(id) = claim["task"]["task_id"].as_str().map(String::from) else {
                    break;
                };
                ok(
                    &c,
                    "complete_task",
                    json!({"task_id": id, "lease_id": claim["lease_id"], "result": {"by": i}}),
                )
                .await;
                mine.push(id);
            }
            mine
        }));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut across = 0;
    for (i, h) in agents.into_iter().enumerate() {
        for id in h.await.unwrap() {
            if made[&id] != i {
                across += 1;
            }
            assert!(
                seen.insert(id.clone(), i).is_none(),
                "{id} handed out twice"
            );
        }
    }
    assert_eq!(conflicts.load(Ordering::Relaxed), 0);
    assert_eq!(seen.len(), 200, "every task handed out");
    assert!(
        across > 0,
        "tasks made in one server were claimed through another"
    );
    for c in &cs {
        let page = ok(
            c,
            "list_tasks",
            json!({"status": "succeeded", "limit": 200}),
        )
        .await;
        assert_eq!(page["tasks"].as_array().unwrap().len(), 200);
    }
}

/// kill -9 of the server executing a run, mid-step: another one finishes it;
/// the steps that had succeeded do not run again, the interrupted one does.
#[tokio::test]
async fn a_killed_servers_run_is_finished_by_another() {
    let env = Env::new();
    let log = env.path().join("executions.log");
    let (a, pid, b) = victim_and_peer(&env).await;
    let cfg = config(&env);
    let c = env
        .stdio(Era::Legacy, &["--config", cfg.to_str().unwrap()])
        .await;
    let (id, rid) = start_chain(&a, "slow", &log, 30).await;
    // Killed while b sleeps: a has succeeded, b has begun.
    for _ in 0..400 {
        if executions(&log).contains_key(&format!("{rid}/b")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The `running` mark is queued, not awaited: the attempt counts once
    // another process can read it.
    wait_for_step(&c, &id, "b", "running").await;
    signal(pid as i32, "KILL");
    let done = finish(&b, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let n = executions(&log);
    assert_eq!(
        n[&format!("{rid}/a")],
        1,
        "a succeeded before the kill: {n:?}"
    );
    assert_eq!(
        n[&format!("{rid}/b")],
        2,
        "b was interrupted and attempted again: {n:?}"
    );
    assert_eq!(n[&format!("{rid}/c")], 1, "{n:?}");
    let steps = steps_by_name(&done);
    assert_eq!(steps["b"]["attempts"], 2);
    assert_eq!(steps["a"]["attempts"], 1);
    // The dead process is gone from the list.
    let st = ok(&c, "get_system_status", json!({})).await;
    assert!(
        st["processes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["pid"] != json!(pid)),
        "{}",
        st["processes"]
    );
}

/// A process that hangs (SIGSTOP: alive, but its heartbeats stop) loses its
/// run when the lease expires: another process takes the run over and
/// finishes it, and the hung one, when it wakes up, runs nothing more of it.
/// The processes list shows each process with its kind, pid, start and last
/// heartbeat.
#[tokio::test]
async fn a_hung_servers_run_is_taken_over_when_its_lease_expires() {
    let env = Env::new();
    let log = env.path().join("executions.log");
    let (a, pid, b) = victim_and_peer(&env).await;
    let st = ok(&b, "get_system_status", json!({})).await;
    let listed = st["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == json!(pid))
        .unwrap_or_else(|| panic!("the other process is listed: {st}"))
        .clone();
    assert_eq!(listed["kind"], "serve", "{listed}");
    assert_eq!(listed["this_process"], false, "{listed}");
    for field in ["started_at", "last_heartbeat"] {
        assert!(
            chrono::DateTime::parse_from_rfc3339(listed[field].as_str().unwrap_or_default())
                .is_ok(),
            "{field} is a time: {listed}"
        );
    }
    let (id, rid) = start_chain(&a, "hung", &log, 2).await;
    wait_for_step(&b, &id, "b", "running").await;
    signal(pid as i32, "STOP");
    let done = finish(&b, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The hung process wakes up: it has lost the run and runs none of it.
    signal(pid as i32, "CONT");
    ok(&a, "get_health_status", json!({})).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let n = executions(&log);
    assert_eq!(n[&format!("{rid}/a")], 1, "{n:?}");
    assert_eq!(
        n[&format!("{rid}/c")],
        1,
        "c ran once, by the new owner: {n:?}"
    );
    let after = ok(&a, "get_workflow_run", json!({"run_id": id})).await;
    assert_eq!(after["status"], "succeeded", "{after}");
}

/// An auto task whose process is killed mid-run is run again by another
/// process on the store (its interrupted attempt counted).
#[tokio::test]
async fn a_killed_servers_auto_task_is_finished_by_another() {
    let env = Env::new();
    let log = env.path().join("executions.log");
    let (a, pid, b) = victim_and_peer(&env).await;
    let session = ok(&a, "create_session", json!({"name": "auto"})).await["session_id"].clone();
    let t = ok(
        &a,
        "create_task",
        json!({"session_id": session, "task": {"name": "slow", "module": "shell", "action": "run",
            "parameters": {"command": format!("echo slow >> {}; sleep 3", log.display()), "shell": true}}}),
    )
    .await;
    let tid = t["task_id"].clone();
    for _ in 0..400 {
        if executions(&log).contains_key("slow") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    signal(pid as i32, "KILL");
    let mut done = Value::Null;
    for _ in 0..10 {
        done = ok(
            &b,
            "get_task",
            json!({"session_id": session, "task_id": tid, "wait_seconds": 30}),
        )
        .await;
        if done["status"] == "succeeded" || done["status"] == "failed" {
            break;
        }
    }
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        executions(&log)["slow"],
        2,
        "attempted again after the kill"
    );
    assert_eq!(done["attempts"], 2, "{done}");
}

/// An exclusive lock is held by one process's session at a time (each holder
/// checks that nobody else holds it), and a waiter in another process gets
/// it when it is released.
#[tokio::test]
async fn an_exclusive_lock_is_held_by_one_process_at_a_time() {
    let env = Env::new();
    let cs: Vec<Arc<Client>> = three(&env).await.into_iter().map(Arc::new).collect();
    let held = Arc::new(AtomicBool::new(false));
    let grants = Arc::new(AtomicUsize::new(0));
    let mut holders = Vec::new();
    for (i, c) in cs.iter().enumerate() {
        let (c, held, grants) = (c.clone(), held.clone(), grants.clone());
        holders.push(tokio::spawn(async move {
            for round in 0..5 {
                let a = ok(
                    &c,
                    "allocate_resources",
                    json!({"requirements": {"locks": [{"key": "repo:main", "mode": "exclusive"}]},
                           "user_id": format!("p{i}-{round}"), "wait_seconds": 40}),
                )
                .await;
                assert!(
                    !held.swap(true, Ordering::SeqCst),
                    "process {i} was granted the lock while another held it"
                );
                grants.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                held.store(false, Ordering::SeqCst);
                ok(
                    &c,
                    "release_resources",
                    json!({"allocation_id": a["allocation_id"]}),
                )
                .await;
            }
        }));
    }
    for h in holders {
        h.await.unwrap();
    }
    assert_eq!(grants.load(Ordering::SeqCst), 15);

    // A holds it; B waits; A releases; B gets it.
    let a = ok(
        &cs[0],
        "allocate_resources",
        json!({"requirements": {"locks": [{"key": "repo:main", "mode": "exclusive"}]}}),
    )
    .await;
    let b = cs[1].clone();
    let waiter = tokio::spawn(async move {
        ok(
            &b,
            "allocate_resources",
            json!({"requirements": {"locks": [{"key": "repo:main", "mode": "exclusive"}]}, "wait_seconds": 40}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "B waits while A holds the lock");
    ok(
        &cs[0],
        "release_resources",
        json!({"allocation_id": a["allocation_id"]}),
    )
    .await;
    let got = waiter.await.unwrap();
    assert_eq!(got["status"], "active", "{got}");
}

/// A thousand writes at once from three processes: none fails, none reports
/// a locked database.
#[tokio::test]
async fn a_thousand_concurrent_writes_from_three_processes() {
    let env = Env::new();
    let cs: Vec<Arc<Client>> = three(&env).await.into_iter().map(Arc::new).collect();
    // A session each (allocations count against a session's quota of 200).
    let mut sessions = Vec::new();
    for c in &cs {
        sessions
            .push(ok(c, "create_session", json!({"name": "writer"})).await["session_id"].clone());
    }
    let mut calls = Vec::new();
    for k in 0..1000 {
        let c = cs[k % 3].clone();
        let sid = sessions[k % 3].clone();
        calls.push(tokio::spawn(async move {
            let r = match k % 4 {
                0 => {
                    call(
                        &c,
                        "create_task",
                        json!({"task": {"name": format!("w{k}")}}),
                    )
                    .await
                }
                1 => {
                    call(
                        &c,
                        "create_workflow",
                        json!({"name": format!("w{k}"), "steps": [
                    {"name": "a", "module": "core", "action": "echo"}]}),
                    )
                    .await
                }
                2 => match call(
                    &c,
                    "allocate_resources",
                    json!({"session_id": sid, "requirements": {"locks": [
                        {"key": format!("k{k}"), "mode": "exclusive"}]}, "ttl_seconds": 60}),
                )
                .await
                {
                    Ok(a) => {
                        call(
                            &c,
                            "release_resources",
                            json!({"allocation_id": a["allocation_id"]}),
                        )
                        .await
                    }
                    e => e,
                },
                _ => match call(&c, "create_session", json!({"name": format!("s{k}")})).await {
                    Ok(s) => {
                        call(&c, "close_session", json!({"session_id": s["session_id"]})).await
                    }
                    e => e,
                },
            };
            (k, r)
        }));
    }
    let mut failed = Vec::new();
    for h in calls {
        let (k, r) = h.await.unwrap();
        if let Err(e) = r {
            failed.push(format!("{k}: {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

/// A quota counted across processes holds: 180 concurrent create_session
/// calls through three servers never leave more than the limit active.
#[tokio::test]
async fn a_quota_holds_across_processes() {
    let env = Env::new();
    let cfg = env.config("[sessions]\nmax_active_per_principal = 50\n");
    let cfg = cfg.to_str().unwrap().to_string();
    let mut cs = Vec::new();
    for era in [Era::Legacy, Era::Modern, Era::Legacy] {
        cs.push(Arc::new(env.stdio(era, &["--config", &cfg]).await));
    }
    let mut calls = Vec::new();
    for k in 0..180 {
        let c = cs[k % 3].clone();
        calls.push(tokio::spawn(async move {
            call(&c, "create_session", json!({"name": format!("q{k}")})).await
        }));
    }
    let mut created = 0;
    for h in calls {
        match h.await.unwrap() {
            Ok(_) => created += 1,
            Err(e) => assert_eq!(e["code"], "LIMIT_EXCEEDED", "{e}"),
        }
    }
    assert_eq!(created, 50, "exactly the quota was created");
    let page = ok(
        &cs[0],
        "list_sessions",
        json!({"status": "active", "limit": 200}),
    )
    .await;
    assert_eq!(page["sessions"].as_array().unwrap().len(), 50, "{page}");
}

/// A session closed through one process is refused in the others: at once
/// where it was closed, within about a second (the sessions' read cache)
/// elsewhere.
#[tokio::test]
async fn a_session_closed_in_one_process_is_refused_in_the_others() {
    let env = Env::new();
    let cs = three(&env).await;
    let s = ok(&cs[0], "create_session", json!({"name": "shared"})).await["session_id"].clone();
    let task = |n: usize| json!({"session_id": s, "task": {"name": format!("t{n}")}});
    // Every process has used the session (and holds it in its cache).
    for (n, c) in cs.iter().enumerate() {
        ok(c, "create_task", task(n)).await;
    }
    ok(&cs[1], "close_session", json!({"session_id": s})).await;
    err(&cs[1], "create_task", task(10), "SESSION_CLOSED").await;
    let mut refused = false;
    for n in 0..40 {
        match call(&cs[2], "create_task", task(20 + n)).await {
            Err(e) if e["code"] == "SESSION_CLOSED" => {
                refused = true;
                break;
            }
            Err(e) => panic!("{e}"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(
        refused,
        "the close was seen by the other process within 4 s"
    );
    err(&cs[0], "create_task", task(99), "SESSION_CLOSED").await;
}

/// A process that holds the data directory's opening lock and never lets it
/// go (stopped while it migrates) does not hang the others: they give up
/// after `sqlite_busy_timeout_ms`, naming the key; once it is gone they start.
#[tokio::test]
async fn a_stuck_opener_does_not_hang_the_others() {
    if on_postgres() {
        return;
    }
    let env = Env::new();
    let cfg = env.config("sqlite_busy_timeout_ms = 300\n");
    let cfg = cfg.to_str().unwrap().to_string();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(env.path().join("myrmex.db.lock"))
        .unwrap();
    lock.lock().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        env.command(&["--config", &cfg, "serve"])
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("the second process gives up instead of hanging")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sqlite_busy_timeout_ms"), "{stderr}");
    assert!(out.stdout.is_empty(), "stdout is protocol only");
    drop(lock);
    let c = env.stdio(Era::Modern, &["--config", &cfg]).await;
    let h = ok(&c, "get_health_status", json!({})).await;
    assert_eq!(h["overall_status"], "healthy", "{h}");
}

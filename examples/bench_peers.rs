//! Several processes on one SQLite data directory (not a test): 1, 2 and 3
//! `myrmex serve` stdio processes share a fresh data directory, one agent
//! client each, and drain agent tasks (`next_task` + `complete_task`);
//! reported as claim+complete round trips per second. Then the delay from a
//! task's creation through one process to its claim through another, whose
//! agent calls `next_task` in a loop, then whose agent waits in `next_task`
//! (`wait_seconds`): median and p99.
//!
//!     cargo build --release --bin myrmex
//!     cargo run --release --example bench_peers
//!     BENCH_TASKS=300 BENCH_DELAYS=200 cargo run --release --example bench_peers

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Client, call};
use rmcp::service::ServiceExt;
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

async fn server(bin: &str, dir: &std::path::Path) -> Client {
    let mut cmd = tokio::process::Command::new(bin);
    // MYRMEX_* variables are configuration (an unknown key is an error).
    cmd.env_remove("MYRMEX_BIN");
    cmd.args([
        "--data-dir",
        dir.to_str().unwrap(),
        "--log-level",
        "warn",
        "serve",
    ]);
    let (proc, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin}: {e} (build it with cargo build --release)")
        });
    ().serve(proc).await.expect("connect")
}

#[tokio::main]
async fn main() {
    let n = env_usize("BENCH_TASKS", 600);
    let delays = env_usize("BENCH_DELAYS", 200);
    let bin = std::env::var("MYRMEX_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/myrmex").to_string()
    });
    println!("tasks per round: {n}");
    println!(
        "{:<10} {:>10} {:>16} {:>14}",
        "processes", "seconds", "round_trips_s", "ms_per_trip"
    );
    for procs in [1usize, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let mut clients = Vec::new();
        for _ in 0..procs {
            clients.push(std::sync::Arc::new(server(&bin, dir.path()).await));
        }
        for chunk in 0..n.div_ceil(500) {
            let tasks: Vec<Value> = (chunk * 500..((chunk + 1) * 500).min(n))
                .map(|i| json!({"name": format!("t{i}")}))
                .collect();
            call(&clients[0], "create_tasks", json!({"tasks": tasks})).await;
        }
        let started = Instant::now();
        let mut workers = Vec::new();
        for (w, c) in clients.iter().enumerate() {
            let c = c.clone();
            workers.push(tokio::spawn(async move {
                let mut done = 0usize;
                loop {
                    let claim = call(&c, "next_task", json!({"agent": format!("a{w}")})).await;
                    let Some(id) = claim["task"]["task_id"].as_str().map(String::from) else {
                        break done;
                    };
                    call(
                        &c,
                        "complete_task",
                        json!({"task_id": id, "lease_id": claim["lease_id"], "result": {}}),
                    )
                    .await;
                    done += 1;
                }
            }));
        }
        let mut total = 0;
        for w in workers {
            total += w.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(total, n);
        println!(
            "{procs:<10} {secs:>10.2} {:>16.0} {:>14.2}",
            n as f64 / secs,
            secs * 1000.0 / n as f64
        );
    }

    // Creation in one process, claim through another.
    let dir = tempfile::tempdir().unwrap();
    let a = server(&bin, dir.path()).await;
    let b = server(&bin, dir.path()).await;
    let mut got = Vec::with_capacity(delays);
    for i in 0..delays {
        let t = call(
            &a,
            "create_task",
            json!({"task": {"name": format!("d{i}")}}),
        )
        .await;
        let id = t["task_id"]
            .as_str()
            .unwrap_or_else(|| t["task"]["task_id"].as_str().unwrap())
            .to_string();
        let made = Instant::now();
        loop {
            let claim = call(&b, "next_task", json!({"agent": "b"})).await;
            if let Some(cid) = claim["task"]["task_id"].as_str() {
                assert_eq!(cid, id);
                got.push(made.elapsed());
                call(
                    &b,
                    "complete_task",
                    json!({"task_id": cid, "lease_id": claim["lease_id"], "result": {}}),
                )
                .await;
                break;
            }
            if made.elapsed() > Duration::from_secs(10) {
                panic!("task {id} was never claimable through the other process");
            }
        }
    }
    report("an agent calling next_task in a loop", delays, &mut got);

    // The same, with the agent waiting in next_task (wait_seconds) before the
    // task exists: the delay is the other process's wake-up (the store's
    // change stamp, read every cluster.signal_poll_ms).
    // A fresh session, kept unfinished by a task the agent never takes (its
    // tag is not the agent's), so that a wait waits instead of answering
    // graph_finished.
    let session = call(&a, "create_session", json!({"name": "waits"})).await["session_id"].clone();
    call(
        &a,
        "create_task",
        json!({"session_id": session, "task": {"name": "keep-open", "tags": ["other"]}}),
    )
    .await;
    let b = std::sync::Arc::new(b);
    let mut got = Vec::with_capacity(delays);
    for i in 0..delays {
        let waiter = {
            let (b, session) = (b.clone(), session.clone());
            tokio::spawn(async move {
                let claim = call(
                    &b,
                    "next_task",
                    json!({"session_id": session, "agent": "b", "tags": ["b"], "wait_seconds": 10}),
                )
                .await;
                (claim, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let made = Instant::now();
        call(
            &a,
            "create_task",
            json!({"session_id": session, "task": {"name": format!("w{i}"), "tags": ["b"]}}),
        )
        .await;
        let (claim, at) = waiter.await.unwrap();
        let cid = claim["task"]["task_id"]
            .as_str()
            .unwrap_or_else(|| panic!("the waiting agent got no task: {claim}"));
        got.push(at - made);
        call(
            &b,
            "complete_task",
            json!({"task_id": cid, "lease_id": claim["lease_id"], "result": {}}),
        )
        .await;
    }
    report("an agent waiting in next_task", delays, &mut got);
}

fn report(how: &str, n: usize, got: &mut [Duration]) {
    got.sort();
    let at = |q: f64| got[((got.len() as f64 * q) as usize).min(got.len() - 1)];
    println!(
        "creation in one process to claim in another, {how} ({n} tasks): median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.5).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        got.last().unwrap().as_secs_f64() * 1000.0
    );
}

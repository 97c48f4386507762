//! Claim/complete benchmark (not a test): agents drain agent tasks through the
//! real server over Streamable HTTP (`next_task` then `complete_task`), with 1,
//! 4 and 8 concurrent clients, on the SQLite store with `synchronous=FULL`.
//! Reports round trips (one claim plus one completion) per second, and the
//! server's CPU and context switches per round trip (all its threads, /proc).
//!
//!     cargo build --release --bin myrmex
//!     cargo run --release --example bench_claims          # 2,000 tasks per round
//!     BENCH_TASKS=500 cargo run --release --example bench_claims

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{call, client, thread_usage};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let bin = std::env::var("MYRMEX_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/myrmex").to_string()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(&bin)
        // MYRMEX_* variables are configuration (an unknown key is an error).
        .env_remove("MYRMEX_BIN")
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--log-level",
            "warn,myrmex=info",
        ])
        .args(["serve", "--http", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin}: {e} (build it with cargo build --release)")
        });
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next_line().await.unwrap().expect("server exited");
        if line.contains("Streamable HTTP")
            && let Some(rest) = line.split("addr=").nth(1)
        {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = format!("http://{addr}/mcp");
    let admin = client(&url).await;
    println!("tasks per round: {n}");
    println!(
        "{:<8} {:>10} {:>16} {:>14} {:>16} {:>16}",
        "clients", "seconds", "round_trips_s", "ms_per_trip", "server_cpu_us", "switches_per_trip"
    );
    let pid = child.id().expect("the server runs");
    for clients in [1usize, 4, 8] {
        let s = call(
            &admin,
            "create_session",
            json!({"name": format!("bench-{clients}")}),
        )
        .await["session_id"]
            .clone();
        for chunk in 0..n.div_ceil(500) {
            let tasks: Vec<Value> = (chunk * 500..((chunk + 1) * 500).min(n))
                .map(|i| json!({"name": format!("t{i}")}))
                .collect();
            call(
                &admin,
                "create_tasks",
                json!({"session_id": s, "tasks": tasks}),
            )
            .await;
        }
        let mut workers = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..clients {
            conns.push(client(&url).await);
        }
        let t = Instant::now();
        let (cpu0, sw0) = thread_usage(pid);
        for (w, c) in conns.into_iter().enumerate() {
            let s = s.clone();
            workers.push(tokio::spawn(async move {
                let mut done = 0usize;
                loop {
                    let claim = call(
                        &c,
                        "next_task",
                        json!({"session_id": s, "agent": format!("w{w}")}),
                    )
                    .await;
                    if claim["task"].is_null() {
                        break;
                    }
                    let mut args = Map::new();
                    args.insert("task_id".into(), claim["task"]["task_id"].clone());
                    args.insert("lease_id".into(), claim["lease_id"].clone());
                    args.insert("result".into(), json!({"ok": true}));
                    call(&c, "complete_task", Value::Object(args)).await;
                    done += 1;
                }
                done
            }));
        }
        let mut total = 0;
        for w in workers {
            total += w.await.unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        let (cpu1, sw1) = thread_usage(pid);
        assert_eq!(total, n, "every task done exactly once");
        println!(
            "{clients:<8} {secs:>10.2} {:>16.0} {:>14.2} {:>16.0} {:>16.1}",
            n as f64 / secs,
            secs * 1000.0 / n as f64,
            (cpu1 - cpu0) as f64 / 1e3 / n as f64,
            (sw1 - sw0) as f64 / n as f64
        );
    }
    drop(admin);
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

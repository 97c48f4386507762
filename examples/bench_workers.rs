//! Worker scale-out benchmark (not a test): one `myrmex serve --no-execute`
//! and 1, 2 and 4 `myrmex worker` processes on one PostgreSQL database run
//! workflows of no-op steps (`core.echo`); reports steps per second from the
//! first submission to the last run's end (`submit_s`: how long submitting
//! the runs through one MCP client took).
//!
//!     cargo build --release --bin myrmex
//!     cargo run --release --example bench_workers
//!     BENCH_RUNS=40 BENCH_STEPS=50 BENCH_POSTGRES=postgres://... cargo run --release --example bench_workers

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{call, client};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Start `myrmex <args>` and wait for a stderr line containing `ready`; returns
/// the process and that line.
async fn spawn(bin: &str, args: &[&str], store: &str, ready: &str) -> (Child, String) {
    let mut child = Command::new(bin)
        // MYRMEX_* variables are configuration (an unknown key is an error).
        .env_remove("MYRMEX_BIN")
        .args(args)
        .env("MYRMEX_STORE", store)
        .env("MYRMEX_LOG_LEVEL", "warn,myrmex=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (cargo build --release)"));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = loop {
        let line = lines.next_line().await.unwrap().expect("myrmex exited");
        if line.contains(ready) {
            break line;
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, line)
}

#[tokio::main]
async fn main() {
    let runs = env_num("BENCH_RUNS", 40);
    let steps = env_num("BENCH_STEPS", 50);
    let base = std::env::var("BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let bin = std::env::var("MYRMEX_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/myrmex").to_string()
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("myrmex.toml");
    std::fs::write(
        &cfg,
        "[cluster]\npoll_interval_ms = 200\n\n[sessions]\ndefault_max_parallel_workflows = 256\n",
    )
    .unwrap();
    let common = [
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ];
    println!("{runs} runs x {steps} no-op steps (one root, the rest after it in parallel)");
    println!(
        "{:<8} {:>10} {:>12} {:>10} {:>10}",
        "workers", "seconds", "steps_s", "runs_s", "submit_s"
    );
    let admin = sqlx::PgPool::connect(&base).await.expect("PostgreSQL");
    for workers in [1usize, 2, 4] {
        let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
        let sep = if base.contains('?') { '&' } else { '?' };
        let store = format!("{base}{sep}schema={schema}");
        let mut args = common.to_vec();
        args.extend(["serve", "--http", "127.0.0.1:0", "--no-execute"]);
        let (server, line) = spawn(&bin, &args, &store, "Streamable HTTP").await;
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_string();
        let mut procs = vec![server];
        for _ in 0..workers {
            let mut args = common.to_vec();
            args.push("worker");
            procs.push(spawn(&bin, &args, &store, "worker started").await.0);
        }
        let c = client(&format!("http://{addr}/mcp")).await;
        let mut defs =
            vec![json!({"name": "s0", "module": "core", "action": "echo", "parameters": {}})];
        for i in 1..steps {
            defs.push(
                json!({"name": format!("s{i}"), "module": "core", "action": "echo",
                             "parameters": {"i": i}, "dependencies": ["s0"]}),
            );
        }
        call(
            &c,
            "create_workflow",
            json!({"name": "noop", "steps": defs, "max_parallel": 64}),
        )
        .await;
        let t = Instant::now();
        let mut ids = Vec::new();
        for _ in 0..runs {
            let r = call(
                &c,
                "execute_workflow",
                json!({"workflow_name": "noop", "wait_seconds": 0}),
            )
            .await;
            ids.push(r["run_id"].clone());
        }
        let submitted = t.elapsed().as_secs_f64();
        for id in &ids {
            loop {
                let v = call(
                    &c,
                    "get_workflow_run",
                    json!({"run_id": id, "wait_seconds": 30}),
                )
                .await;
                match v["status"].as_str() {
                    Some("succeeded") => break,
                    Some("pending" | "running") => {}
                    other => panic!("run {id} ended {other:?}"),
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{workers:<8} {secs:>10.2} {:>12.0} {:>10.1} {submitted:>10.2}",
            (runs * steps) as f64 / secs,
            runs as f64 / secs
        );
        drop(c);
        for mut p in procs {
            let _ = p.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), p.wait()).await;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await
            .expect("drop the bench schema");
    }
}

//! Scheduler benchmark (not a test): no-op steps (`core.echo`) on a chain, a
//! fan-out and a random DAG, on the memory and SQLite stores (and PostgreSQL
//! with BENCH_POSTGRES=postgres://...). Reports steps per
//! second, per-step overhead, validation time and peak memory.
//!
//!     cargo run --release --example bench_scheduler            # 10,000 steps
//!     BENCH_STEPS=2000 cargo run --release --example bench_scheduler

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use myrmex::config::{Config, SqliteSync};
use myrmex::engine::workflows::spec::WorkflowSpec;
use myrmex::engine::workflows::{ExecuteRequest, Scope};
use myrmex::engine::{Engine, Principal};
use myrmex::store::Store;
use serde_json::{Value, json};

fn shape(kind: &str, n: usize) -> WorkflowSpec {
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let deps: Vec<String> = match kind {
                "chain" if i > 0 => vec![format!("s{}", i - 1)],
                "fanout" if i > 0 => vec!["s0".to_string()],
                "random" if i > 0 => {
                    let mut d: Vec<String> = (0..(rand() % 3)).map(|_| format!("s{}", rand() as usize % i)).collect();
                    d.sort();
                    d.dedup();
                    d
                }
                _ => vec![],
            };
            json!({"name": format!("s{i}"), "module": "core", "action": "echo", "parameters": {"i": i}, "dependencies": deps})
        })
        .collect();
    serde_json::from_value(json!({"name": format!("bench-{kind}"), "steps": steps})).unwrap()
}

fn peak_rss_mb() -> f64 {
    common::proc_status("/proc/self/status", "VmHWM") as f64 / 1024.0
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    println!("steps per workflow: {n}");
    println!(
        "{:<8} {:<8} {:>12} {:>12} {:>14} {:>12}",
        "store", "shape", "validate_ms", "run_s", "steps_per_s", "us_per_step"
    );
    // BENCH_POSTGRES=postgres://... adds a PostgreSQL row (its own schema).
    let postgres = std::env::var("BENCH_POSTGRES").ok();
    let mut kinds = vec!["memory", "sqlite", "sqlite-normal"];
    if postgres.is_some() {
        kinds.push("postgres");
    }
    for store_kind in kinds {
        for kind in ["chain", "fanout", "random"] {
            let store: Arc<dyn Store> = match store_kind {
                "memory" => Arc::new(myrmex::store::memory::MemoryStore::default()),
                "postgres" => {
                    let base = postgres.clone().unwrap_or_default();
                    let sep = if base.contains('?') { '&' } else { '?' };
                    let url = format!("{base}{sep}schema=bench_{}_{}", kind, std::process::id());
                    Arc::new(
                        myrmex::store::postgres::PostgresStore::open(&url)
                            .await
                            .unwrap(),
                    )
                }
                _ => Arc::new(
                    myrmex::store::sqlite::SqliteStore::open_with(
                        &dir.path().join(format!("{store_kind}-{kind}.db")),
                        if store_kind == "sqlite" {
                            SqliteSync::Full
                        } else {
                            SqliteSync::Normal
                        },
                    )
                    .await
                    .unwrap(),
                ),
            };
            let engine = Engine::new(Config::default(), store.clone());
            let p = Principal::local();
            let spec = shape(kind, n);
            let t = Instant::now();
            let report = engine.validate_workflow(&spec);
            let validate_ms = t.elapsed().as_secs_f64() * 1000.0;
            assert!(report.valid, "{:?}", report.problems.first());
            engine
                .create_workflow(&p, None, spec, Scope::Session)
                .await
                .unwrap();
            let req = ExecuteRequest {
                workflow_name: format!("bench-{kind}"),
                max_parallel: Some(64),
                ..Default::default()
            };
            let mut none = |_: usize, _: usize, _: String| {};
            let t = Instant::now();
            let mut run = engine
                .execute_workflow(&p, req, Duration::from_secs(3600), &mut none)
                .await
                .unwrap();
            while run.status == "running" || run.status == "pending" {
                run = engine
                    .get_workflow_run(&p, &run.run_id, None, Duration::from_secs(3600), &mut none)
                    .await
                    .unwrap();
            }
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(run.status, "succeeded");
            // The figure counts only durable work: every step is stored as succeeded.
            let stored = store.run_steps(&run.run_id).await.unwrap();
            assert_eq!(stored.len(), n);
            assert!(
                stored
                    .iter()
                    .all(|s| s.status == myrmex::model::StepStatus::Succeeded)
            );
            println!(
                "{store_kind:<14} {kind:<8} {validate_ms:>12.1} {secs:>12.2} {:>14.0} {:>12.1}",
                n as f64 / secs,
                secs * 1e6 / n as f64
            );
            engine.stop();
        }
    }
    println!("peak RSS: {:.0} MB", peak_rss_mb());
}

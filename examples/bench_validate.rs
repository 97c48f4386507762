//! Validation benchmark (not a test): `validate` of a 20,000-step random DAG
//! in which every step reads one upstream step's output through a template,
//! half of them a step that is upstream but not a direct dependency (so the
//! reference check has to walk the graph). Prints the median of five runs.
//!
//!     cargo run --release --example bench_validate
//!     BENCH_STEPS=5000 cargo run --release --example bench_validate

use std::time::Instant;

use myrmex::actions::Registry;
use myrmex::engine::workflows::spec::{Limits, WorkflowSpec, validate};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

fn main() {
    let n: usize = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let mut deps: Vec<String> = Vec::new();
            let mut reads = String::new();
            if i > 0 {
                let d = rng.random_range(i.saturating_sub(50)..i);
                deps.push(format!("s{d}"));
                // Half read the direct dependency, half one of its ancestors
                // (s0 is upstream of every step here).
                let r = if i % 2 == 0 { d } else { 0 };
                reads = format!("{{{{steps.s{r}.output}}}}");
            }
            json!({"name": format!("s{i}"), "module": "core", "action": "echo",
                   "dependencies": deps, "parameters": {"x": reads}})
        })
        .collect();
    // Every step descends from s0: each one's dependency is an earlier step.
    let spec: WorkflowSpec =
        serde_json::from_value(json!({"name": "big", "steps": steps})).unwrap();
    let registry = Registry::builtin();
    let limits = Limits::default();
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = validate(&spec, &registry, &limits);
        times.push(t.elapsed());
        assert!(
            r.is_ok(),
            "{:?}",
            r.err().map(|p| p.into_iter().take(3).collect::<Vec<_>>())
        );
    }
    times.sort();
    println!(
        "validate {n} steps, one reference each: median {:.1} ms (min {:.1}, max {:.1})",
        times[2].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[4].as_secs_f64() * 1000.0
    );
}

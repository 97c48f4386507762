//! Property tests of the scheduler, in process: for random DAGs, no step starts
//! before its dependencies end, and every step reaches a final state.

use std::sync::Arc;
use std::time::Duration;

use myrmex::config::Config;
use myrmex::engine::workflows::spec::WorkflowSpec;
use myrmex::engine::workflows::{ExecuteRequest, Scope};
use myrmex::engine::{Engine, Principal};
use proptest::prelude::*;
use serde_json::{Value, json};

/// A random DAG: step i may depend on any step before it.
fn dag() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<u8>, u32)> {
    (1usize..24).prop_flat_map(|n| {
        let deps = (0..n)
            .map(|i| {
                proptest::collection::vec(0..i.max(1), 0..=i.min(3))
                    .prop_map(move |v| if i == 0 { vec![] } else { v })
            })
            .collect::<Vec<_>>();
        (deps, proptest::collection::vec(0u8..6, n), 1u32..6)
    })
}

fn spec(deps: &[Vec<usize>], kinds: &[u8]) -> WorkflowSpec {
    let steps: Vec<Value> = deps
        .iter()
        .enumerate()
        .map(|(i, ds)| {
            let mut d: Vec<String> = ds.iter().map(|j| format!("s{j}")).collect();
            d.sort();
            d.dedup();
            // Mostly quick sleeps, some failures (which skip dependents), some all_done steps.
            let (action, params) = match kinds[i] {
                0 => ("fail", json!({"message": "boom"})),
                1 => ("echo", json!({"i": i})),
                _ => ("sleep", json!({"ms": kinds[i] as u64 * 2})),
            };
            let mut s = json!({"name": format!("s{i}"), "module": "core", "action": action, "parameters": params, "dependencies": d});
            if kinds[i] == 5 {
                s["trigger_rule"] = json!("all_done");
            }
            s
        })
        .collect();
    serde_json::from_value(json!({"name": "prop", "on_failure": "continue", "steps": steps}))
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn no_step_starts_before_its_dependencies_end((deps, kinds, par) in dag()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let engine = Engine::new(Config::default(), Arc::new(myrmex::store::memory::MemoryStore::default()));
            let p = Principal::local();
            engine.create_workflow(&p, None, spec(&deps, &kinds), Scope::Session).await.unwrap();
            let req = ExecuteRequest { workflow_name: "prop".into(), max_parallel: Some(par), ..Default::default() };
            let mut none = |_: usize, _: usize, _: String| {};
            let mut run = engine.execute_workflow(&p, req, Duration::from_secs(30), &mut none).await.unwrap();
            // Wait for the end (the first wait may return while running).
            for _ in 0..100 {
                if run.status != "running" && run.status != "pending" { break; }
                run = engine.get_workflow_run(&p, &run.run_id, None, Duration::from_secs(5), &mut none).await.unwrap();
            }
            prop_assert!(run.status == "succeeded" || run.status == "failed", "run ended {}", run.status);
            prop_assert_eq!(run.steps_completed, deps.len());
            let by_name: std::collections::HashMap<&str, &myrmex::engine::workflows::StepView> =
                run.steps.iter().map(|s| (s.name.as_str(), s)).collect();
            for (i, ds) in deps.iter().enumerate() {
                let s = by_name[format!("s{i}").as_str()];
                prop_assert!(["succeeded", "failed", "skipped", "cancelled", "timed_out"].contains(&s.status.as_str()), "s{} is {}", i, s.status);
                let Some(start) = &s.started_at else { continue };
                for d in ds {
                    let dep = by_name[format!("s{d}").as_str()];
                    let end = dep.finished_at.as_ref().expect("a dependency of a started step has finished");
                    prop_assert!(start >= end, "s{} started at {} before its dependency s{} ended at {}", i, start, d, end);
                }
                // A step that ran had every dependency succeed, unless it is an all_done step.
                if kinds[i] != 5 && s.attempts > 0 {
                    for d in ds {
                        let st = by_name[format!("s{d}").as_str()].status.as_str();
                        prop_assert!(st == "succeeded", "s{} ran although s{} is {}", i, d, st);
                    }
                }
            }
            Ok(())
        })?;
    }
}

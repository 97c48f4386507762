//! The `validate` and `run` commands, and the shipped example workflows.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn validate_prints_the_plan_or_every_problem() {
    let env = Env::new();
    let out = env
        .command(&["validate", &repo("workflows/diamond.json")])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("valid workflow 'diamond' with 4 steps"),
        "{text}"
    );
    assert!(text.contains("critical path: start ->"), "{text}");

    let bad = env.path().join("bad.yaml");
    std::fs::write(&bad, "name: bad\nsteps:\n  - {name: a, module: core, action: echo, dependencies: [b]}\n  - {name: b, module: core, action: echo, dependencies: [a]}\n  - {name: c, module: nope, action: x}\n").unwrap();
    let out = env
        .command(&["validate", bad.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 problem(s)"), "{text}");
    assert!(
        text.contains("CYCLE_DETECTED step a, dependencies: dependency cycle: a -> b -> a"),
        "{text}"
    );
    assert!(text.contains("MODULE_NOT_FOUND step c, action"), "{text}");
    let out = env
        .command(&["validate", "/nonexistent.json"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn run_executes_a_file_and_prints_the_run() {
    let env = Env::new();
    let out = env
        .command(&[
            "run",
            &repo("workflows/hello.yaml"),
            "--param",
            "who=tests",
            "--param",
            "times=4",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is the run as JSON");
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["workflow_results"]["report"]["greeting"], "hello tests");
    assert_eq!(v["workflow_results"]["report"]["times"], 4);
    assert_eq!(v["workflow_source"], "file");

    let out = env
        .command(&["run", &repo("workflows/hello.yaml")])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("required"));
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn ctrl_c_cancels_a_run_cleanly() {
    let env = Env::new();
    let long = env.path().join("long.json");
    std::fs::write(
        &long,
        json!({"name": "long", "steps": [
            {"name": "a", "module": "core", "action": "sleep", "parameters": {"ms": 30000}},
            {"name": "b", "module": "core", "action": "echo", "dependencies": ["a"]}
        ]})
        .to_string(),
    )
    .unwrap();
    let mut cmd = env.command(&["run", long.to_str().unwrap()]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap() as i32;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(pid, "INT");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("run ends after Ctrl-C")
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["steps"][0]["status"], "cancelled");
    assert_eq!(v["steps"][1]["status"], "cancelled");
}

#[tokio::test]
async fn the_shipped_workflows_load_and_run_from_the_library() {
    let env = Env::new();
    let cfg = env.config(&format!("workflows_dirs = [\"{}\"]\n", repo("workflows")));
    let c = env
        .stdio(
            Era::Legacy,
            &["--config", cfg.to_str().unwrap(), "--store", "memory"],
        )
        .await;
    let list = ok(&c, "list_workflows", json!({})).await;
    assert_eq!(list["broken_library_files"], json!([]));
    let names: Vec<&str> = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "ai-analysis",
            "build-and-test",
            "data-processing",
            "deploy",
            "diamond",
            "hello",
            "resilient",
            "system-report",
            "visualization"
        ]
    );
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "diamond", "wait_seconds": 30}),
    )
    .await;
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["workflow_results"]["join"]["items"], json!([1, 2, 3]));
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "resilient", "parameters": {"deploy": true}, "wait_seconds": 30}),
    )
    .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(
        r["workflow_results"]["cleanup"],
        json!({"flaky": "succeeded", "deploy": "succeeded"})
    );
}

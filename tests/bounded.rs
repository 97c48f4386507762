//! Bounded answers: on a graph of 2,000 tasks every answer stays under
//! `limits.max_result_bytes` by paging or splitting, and says how to get the rest.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::{Value, json};

fn size(v: &Value) -> usize {
    serde_json::to_string(v).unwrap().len()
}

#[tokio::test]
async fn a_graph_of_2000_tasks_is_answered_in_bounded_pages() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &[]).await;
    let cap = 40_000;
    for b in 0..4 {
        let tasks: Vec<Value> = (0..500)
            .map(|k| {
                let i = b * 500 + k;
                json!({"name": format!("t{i}"),
                       "description": "analyse the module and write a short report about it",
                       "parameters": {"path": format!("src/mod{i}.rs")},
                       "dependencies": if k > 0 { vec![format!("t{}", i - 1)] } else { vec![] }})
            })
            .collect();
        let r = ok(&c, "create_tasks", json!({"tasks": tasks})).await;
        assert!(size(&r) <= cap, "create_tasks answered {} bytes", size(&r));
        assert_eq!(r["created"], 500);
        let listed = r["tasks"].as_array().unwrap().len();
        assert!(listed > 0 && listed < 500, "{listed}");
        assert!(r["note"].as_str().unwrap().contains("list_tasks"), "{r}");
    }
    // The graph, page by page.
    let mut seen = HashSet::new();
    let mut edges = 0;
    let mut cursor = Value::Null;
    let mut pages = 0;
    loop {
        let g = ok(&c, "get_task_graph", json!({"cursor": cursor})).await;
        pages += 1;
        assert!(size(&g) <= cap, "page {pages}: {} bytes", size(&g));
        assert_eq!(g["total_tasks"], 2000);
        assert_eq!(
            g["counts"]["ready"].as_u64().unwrap() + g["counts"]["pending"].as_u64().unwrap(),
            2000
        );
        for n in g["nodes"].as_array().unwrap() {
            assert!(
                seen.insert(n["task_id"].as_str().unwrap().to_string()),
                "a node twice"
            );
        }
        edges += g["edges"].as_array().unwrap().len();
        if g["next_cursor"].is_null() {
            break;
        }
        assert_eq!(g["truncated"], true);
        assert!(
            g["note"].as_str().unwrap().contains("next_cursor"),
            "{}",
            g["note"]
        );
        cursor = g["next_cursor"].clone();
        assert!(pages < 100);
    }
    assert!(pages > 1, "2,000 nodes do not fit one answer");
    assert_eq!(seen.len(), 2000);
    assert_eq!(edges, 4 * 499);
    // The biggest list page fits too.
    let page = ok(&c, "list_tasks", json!({"limit": 200})).await;
    assert!(size(&page) <= cap);
    assert!(page["next_cursor"].is_string());
}

#[tokio::test]
async fn a_read_that_cannot_fit_says_how_to_ask_for_less() {
    let env = Env::new();
    let c = env
        .stdio_config(Era::Legacy, "[limits]\nmax_result_bytes = 4096\n")
        .await;
    let tasks: Vec<Value> = (0..100)
        .map(|i| json!({"name": format!("t{i}"), "description": "x".repeat(200)}))
        .collect();
    let r = ok(&c, "create_tasks", json!({"tasks": tasks})).await;
    assert_eq!(r["created"], 100, "a change is never reported as an error");
    // A page holds fewer entries rather than grow.
    let page = ok(&c, "list_tasks", json!({"limit": 100})).await;
    assert!(size(&page) <= 4096, "{}", size(&page));
    assert!(page["tasks"].as_array().unwrap().len() < 100);
    assert!(page["next_cursor"].is_string());
    // One step's output asked for in full, larger than an answer: said so, with how to get less.
    ok(&c, "create_workflow", json!({"name": "w", "steps": [
        {"name": "a", "module": "core", "action": "echo", "parameters": {"blob": "q".repeat(6000)}}]}))
    .await;
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "w", "wait_seconds": 10}),
    )
    .await;
    assert_eq!(r["workflow_results"]["a"]["shortened"], true, "{r}");
    let e = err(
        &c,
        "get_workflow_run",
        json!({"run_id": r["run_id"], "step": "a"}),
        "RESULT_TOO_LARGE",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("4096"), "{e}");
    assert!(e["hint"].as_str().unwrap().contains("smaller limit"), "{e}");
    let small = ok(&c, "list_tasks", json!({"limit": 5})).await;
    assert_eq!(small["tasks"].as_array().unwrap().len(), 5);
    // The graph still answers, in smaller pages.
    let g = ok(&c, "get_task_graph", json!({})).await;
    assert!(size(&g) <= 4096, "{}", size(&g));
    assert!(g["next_cursor"].is_string());
}

/// A run whose outputs are too large for one answer: the largest outputs are
/// shortened to previews, the note says so, and `step` reads one in full.
#[tokio::test]
async fn large_step_outputs_are_shortened_and_readable_one_by_one() {
    let env = Env::new();
    let c = env.stdio(Era::Legacy, &[]).await;
    let big = "y".repeat(20_000);
    ok(&c, "create_workflow", json!({"name": "big", "steps": [
        {"name": "a", "module": "core", "action": "echo", "parameters": {"blob": big}},
        {"name": "b", "module": "core", "action": "echo", "parameters": {"blob": big}, "dependencies": ["a"]},
        {"name": "c", "module": "core", "action": "echo", "parameters": {"small": 1}, "dependencies": ["b"]},
    ]}))
    .await;
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "big", "wait_seconds": 20}),
    )
    .await;
    assert_eq!(r["status"], "succeeded");
    assert!(size(&r) <= 40_000, "{} bytes", size(&r));
    assert!(
        r["note"].as_str().unwrap().contains("step"),
        "{}",
        r["note"]
    );
    assert_eq!(
        r["workflow_results"]["c"],
        json!({"small": 1}),
        "small outputs stay"
    );
    let shortened = r["workflow_results"]["a"]["shortened"] == true
        || r["workflow_results"]["b"]["shortened"] == true;
    assert!(shortened, "{}", r["workflow_results"]);
    let v = ok(
        &c,
        "get_workflow_run",
        json!({"run_id": r["run_id"], "step": "a"}),
    )
    .await;
    assert_eq!(v["steps"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["steps"][0]["output"]["blob"].as_str().unwrap().len(),
        20_000
    );
    err(
        &c,
        "get_workflow_run",
        json!({"run_id": r["run_id"], "step": "zz"}),
        "NOT_FOUND",
    )
    .await;
}

/// A task whose result is larger than an answer: get_task shortens it and
/// says so; list_tasks pages hold fewer entries rather than grow.
#[tokio::test]
async fn large_task_fields_are_shortened_and_pages_shrink() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &[]).await;
    let t = ok(&c, "create_task", json!({"task": {"name": "big"}})).await;
    let claim = ok(&c, "next_task", json!({"agent": "a"})).await;
    ok(
        &c,
        "complete_task",
        json!({"task_id": t["task_id"], "lease_id": claim["lease_id"],
               "result": {"text": "z".repeat(100_000)}}),
    )
    .await;
    let v = ok(&c, "get_task", json!({"task_id": t["task_id"]})).await;
    assert!(size(&v) <= 40_000, "{}", size(&v));
    assert_eq!(v["result"]["shortened"], true, "{}", v["result"]);
    assert!(v["note"].as_str().unwrap().contains("result"), "{v}");
    let tasks: Vec<Value> = (0..120)
        .map(|i| json!({"name": format!("d{i}"), "description": "w".repeat(900)}))
        .collect();
    ok(&c, "create_tasks", json!({"tasks": tasks})).await;
    let page = ok(&c, "list_tasks", json!({"limit": 200, "detail": true})).await;
    assert!(size(&page) <= 40_000, "{}", size(&page));
    let n = page["tasks"].as_array().unwrap().len();
    assert!(n < 121 && n > 0, "{n}");
    assert!(page["next_cursor"].is_string());
}

/// A changing call whose answer would be too large (execute_task with a big
/// result) still answers, with its long strings cut and marked.
#[tokio::test]
async fn a_changing_call_answers_with_long_strings_cut() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &[]).await;
    let r = ok(
        &c,
        "execute_task",
        json!({"task_name": "big", "module": "core", "action": "echo",
               "parameters": {"text": "k".repeat(100_000)}, "wait_seconds": 20}),
    )
    .await;
    assert!(size(&r) <= 40_000, "{}", size(&r));
    assert_eq!(r["status"], "succeeded");
    let text = r["result"]["text"].as_str().unwrap();
    assert!(
        text.starts_with("kkkk") && text.contains("bytes cut"),
        "{text}"
    );
}

//! Several servers on one PostgreSQL database (always PostgreSQL: 127.0.0.1:5432,
//! database `test`, or TEST_MYRMEX_POSTGRES; a schema of its own).

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::{Value, json};

/// Claims from 8 concurrent clients through two different servers never hand
/// the same agent task to two clients, and every task is handed out.
#[tokio::test]
async fn claims_through_two_servers_are_exclusive() {
    let env = Env::postgres();
    let a = env.http(&[]).await;
    let b = env.http(&[]).await;
    let setup = a.client(Era::Legacy, None).await;
    let n = 60;
    let tasks: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("t{i}"), "description": "work"}))
        .collect();
    ok(&setup, "create_tasks", json!({"tasks": tasks})).await;
    let mut workers = Vec::new();
    for w in 0..8 {
        let server = if w % 2 == 0 { &a } else { &b };
        let c = server
            .client(if w % 4 < 2 { Era::Legacy } else { Era::Modern }, None)
            .await;
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claim = ok(&c, "next_task", json!({"agent": format!("w{w}")})).await;
                let Some(id) = claim["task"]["task_id"].as_str().map(String::from) else {
                    break;
                };
                ok(
                    &c,
                    "complete_task",
                    json!({"task_id": id, "lease_id": claim["lease_id"], "result": {"by": w}}),
                )
                .await;
                mine.push(id);
            }
            mine
        }));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (w, h) in workers.into_iter().enumerate() {
        for id in h.await.unwrap() {
            assert!(
                seen.insert(id.clone(), w).is_none(),
                "{id} was handed out twice"
            );
        }
    }
    assert_eq!(seen.len(), n, "every task was handed out once");
    // Both servers see the same, final graph.
    for server in [&a, &b] {
        let c = server.client(Era::Modern, None).await;
        let page = ok(
            &c,
            "list_tasks",
            json!({"status": "succeeded", "limit": 200}),
        )
        .await;
        assert_eq!(page["tasks"].as_array().unwrap().len(), n);
    }
}

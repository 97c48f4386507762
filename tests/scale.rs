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

/// A TCP proxy in front of PostgreSQL that the test can cut and restore.
struct Proxy {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: &'static str) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the database looks gone
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                conns2.lock().unwrap().push(h);
            }
        });
        Proxy { addr, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The database goes away while the server runs: calls fail with
/// STORE_UNAVAILABLE and health is unhealthy; when it is back the server
/// recovers by itself, and nothing acknowledged before was lost.
#[tokio::test]
async fn losing_the_database_fails_calls_clearly_and_recovers() {
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let mut env = Env::postgres();
    let url = env.postgres.clone().unwrap();
    env.postgres = Some(url.replacen("127.0.0.1:5432", &proxy.addr.to_string(), 1));
    let server = env.http(&[]).await;
    let c = server.client(Era::Legacy, None).await;
    let kept = ok(&c, "create_session", json!({"name": "before"})).await;

    proxy.cut();
    let e = err(
        &c,
        "create_session",
        json!({"name": "during"}),
        "STORE_UNAVAILABLE",
    )
    .await;
    assert!(
        e["hint"].as_str().unwrap().contains("Nothing was changed"),
        "{e}"
    );
    let h = ok(&c, "get_health_status", json!({})).await;
    assert_eq!(h["overall_status"], "unhealthy", "{h}");
    assert_eq!(h["components"]["store"]["status"], "unhealthy", "{h}");

    proxy.restore();
    let mut healthy = Value::Null;
    for _ in 0..60 {
        let h = ok(&c, "get_health_status", json!({})).await;
        if h["components"]["store"]["status"] == "healthy" {
            healthy = h;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(healthy.is_object(), "the store did not recover");
    ok(&c, "create_session", json!({"name": "after"})).await;
    let s = ok(&c, "get_session", json!({"session_id": kept["session_id"]})).await;
    assert_eq!(s["name"], "before");
}

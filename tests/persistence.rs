//! Durability: what a caller was told survives a restart and a `kill -9`;
//! the sweeper closes idle sessions, also ones idle across a restart.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn sessions_survive_a_clean_restart() {
    let env = Env::new();
    let (id, default_id) = {
        let c = env.stdio(Era::Legacy, &[]).await;
        let s = ok(
            &c,
            "create_session",
            json!({"name": "keep", "metadata": {"k": [1, 2]}}),
        )
        .await;
        let closed = ok(&c, "create_session", json!({"name": "gone"})).await;
        ok(
            &c,
            "close_session",
            json!({"session_id": closed["session_id"]}),
        )
        .await;
        let d = ok(&c, "get_session", json!({})).await;
        c.cancel().await.ok();
        (s["session_id"].clone(), d["session_id"].clone())
    };
    assert!(
        on_postgres() || env.path().join("myrmex.db").is_file(),
        "SQLite file in the data dir"
    );
    let c = env.stdio(Era::Modern, &[]).await;
    let s = ok(&c, "get_session", json!({"session_id": id})).await;
    assert_eq!(s["name"], "keep");
    assert_eq!(s["metadata"], json!({"k": [1, 2]}));
    assert_eq!(s["status"], "active");
    assert_eq!(
        ok(&c, "get_session", json!({})).await["session_id"],
        default_id
    );
    let closed = ok(&c, "list_sessions", json!({"status": "closed"})).await;
    assert_eq!(closed["sessions"][0]["name"], "gone");
    let st = ok(&c, "get_system_status", json!({})).await;
    assert_eq!(
        st["store"]["kind"],
        if on_postgres() { "postgres" } else { "sqlite" }
    );
    assert_eq!(st["sessions"]["total"], 3);
}

#[tokio::test]
async fn acknowledged_sessions_survive_kill_9() {
    let env = Env::new();
    let mut server = env.http(&[]).await;
    let c = server.client(Era::Legacy, None).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            ok(&c, "create_session", json!({"name": format!("s{i}")})).await["session_id"].clone(),
        );
    }
    let last = ids.last().unwrap().clone();
    ok(&c, "close_session", json!({"session_id": last})).await;
    signal(server.pid(), "KILL");
    server.child.wait().await.unwrap();
    drop(c);

    let server = env.http(&[]).await;
    let c = server.client(Era::Modern, None).await;
    for id in &ids {
        ok(&c, "get_session", json!({"session_id": id})).await;
    }
    assert_eq!(
        ok(&c, "get_session", json!({"session_id": last})).await["status"],
        "closed"
    );
}

#[tokio::test]
async fn memory_store_forgets_on_restart() {
    let env = Env::local();
    let c = env.stdio(Era::Legacy, &["--store", "memory"]).await;
    let id = ok(&c, "create_session", json!({})).await["session_id"].clone();
    c.cancel().await.ok();
    let c = env.stdio(Era::Legacy, &["--store", "memory"]).await;
    err(&c, "get_session", json!({"session_id": id}), "NOT_FOUND").await;
    assert!(!env.path().join("myrmex.db").exists());
}

/// Poll `get_session` until the session is closed (bounded; no timing assertion).
async fn wait_closed(c: &Client, id: &serde_json::Value) -> serde_json::Value {
    for _ in 0..120 {
        let s = ok(c, "get_session", json!({"session_id": id})).await;
        if s["status"] == "closed" {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("session {id} was never closed by the sweeper");
}

#[tokio::test]
async fn sweeper_closes_idle_and_timed_out_sessions() {
    let env = Env::new();
    let cfg = env.config("[sessions]\nsweep_interval_seconds = 1\n");
    let c = env
        .stdio(Era::Legacy, &["--config", cfg.to_str().unwrap()])
        .await;
    let idle = ok(&c, "create_session", json!({"idle_ttl_seconds": 1})).await["session_id"].clone();
    let timed = ok(&c, "create_session", json!({"timeout_seconds": 2})).await["session_id"].clone();
    let keep = ok(&c, "create_session", json!({})).await["session_id"].clone();
    assert_eq!(wait_closed(&c, &idle).await["close_reason"], "idle_timeout");
    assert_eq!(wait_closed(&c, &timed).await["close_reason"], "timeout");
    assert_eq!(
        ok(&c, "get_session", json!({"session_id": keep})).await["status"],
        "active"
    );
    // A closed session refuses to be closed again.
    err(
        &c,
        "close_session",
        json!({"session_id": idle}),
        "SESSION_CLOSED",
    )
    .await;
}

#[tokio::test]
async fn sessions_idle_while_the_server_was_down_are_closed_after_restart() {
    let env = Env::new();
    let id = {
        let c = env.stdio(Era::Legacy, &[]).await;
        let id =
            ok(&c, "create_session", json!({"idle_ttl_seconds": 1})).await["session_id"].clone();
        c.cancel().await.ok();
        id
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The sweeper's first tick runs at start.
    let cfg = env.config("[sessions]\nsweep_interval_seconds = 1\n");
    let c = env
        .stdio(Era::Legacy, &["--config", cfg.to_str().unwrap()])
        .await;
    assert_eq!(wait_closed(&c, &id).await["close_reason"], "idle_timeout");
}

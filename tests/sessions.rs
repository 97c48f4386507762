//! Session tools through real MCP clients: stdio and HTTP, both protocol eras.

mod common;

use common::*;
use serde_json::{Value, json};

/// Every session tool, its success paths and its error cases, on one client.
async fn session_scenario(c: &Client) {
    assert_eq!(tool_names(c).await, TOOLS);

    // The default session is created on first use and is stable.
    let d1 = ok(c, "get_session", json!({})).await;
    let d2 = ok(c, "get_session", json!({})).await;
    assert_eq!(d1["session_id"], d2["session_id"]);
    assert_eq!(d1["is_default"], json!(true));
    assert!(d1["session_id"].as_str().unwrap().starts_with("ses_"));

    // Create with every field.
    let s = ok(
        c,
        "create_session",
        json!({"name": "build", "description": "nightly", "mode": "parallel", "max_parallel_tasks": 8,
               "max_parallel_workflows": 3, "timeout_seconds": 3600, "idle_ttl_seconds": 600,
               "metadata": {"team": "infra", "n": 1}}),
    )
    .await;
    let id = s["session_id"].as_str().unwrap().to_string();
    assert_eq!(s["name"], "build");
    assert_eq!(s["mode"], "parallel");
    assert_eq!(s["max_parallel_tasks"], 8);
    assert_eq!(s["max_parallel_workflows"], 3);
    assert_eq!(s["timeout_seconds"], 3600);
    assert_eq!(s["idle_ttl_seconds"], 600);
    assert_eq!(s["metadata"], json!({"team": "infra", "n": 1}));
    assert_eq!(s["status"], "active");
    assert_eq!(s["is_default"], false);

    // Defaults.
    let plain = ok(c, "create_session", json!({})).await;
    assert_eq!(plain["mode"], "resource_aware");
    assert_eq!(plain["max_parallel_tasks"], 4);
    assert_eq!(plain["max_parallel_workflows"], 2);
    assert_eq!(plain["timeout_seconds"], Value::Null);

    let got = ok(c, "get_session", json!({"session_id": id})).await;
    assert_eq!(got["name"], "build");

    // Bad input: a clear error, nothing created.
    let before = ok(c, "list_sessions", json!({"limit": 200})).await["sessions"]
        .as_array()
        .unwrap()
        .len();
    let e = err(
        c,
        "create_session",
        json!({"name": "x", "colour": "red"}),
        "INVALID_PARAMETERS",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("colour"), "{e}");
    let e = err(
        c,
        "create_session",
        json!({"max_parallel_tasks": "many"}),
        "INVALID_PARAMETERS",
    )
    .await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("max_parallel_tasks"),
        "{e}"
    );
    err(
        c,
        "create_session",
        json!({"max_parallel_tasks": 0}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        c,
        "create_session",
        json!({"mode": "turbo"}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        c,
        "create_session",
        json!({"name": "n".repeat(129)}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        c,
        "create_session",
        json!({"metadata": {"blob": "x".repeat(20_000)}}),
        "LIMIT_EXCEEDED",
    )
    .await;
    err(
        c,
        "create_session",
        json!({"idle_ttl_seconds": 0}),
        "INVALID_PARAMETERS",
    )
    .await;
    let after = ok(c, "list_sessions", json!({"limit": 200})).await["sessions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "a failed create changed something");

    // Unknown session.
    err(
        c,
        "get_session",
        json!({"session_id": "ses_00000000000000000000000000000000"}),
        "NOT_FOUND",
    )
    .await;
    err(
        c,
        "close_session",
        json!({"session_id": "nope"}),
        "NOT_FOUND",
    )
    .await;
    err(c, "close_session", json!({}), "INVALID_PARAMETERS").await;

    // Pagination: 5 more sessions, pages of 2, every session exactly once, in order.
    for i in 0..5 {
        ok(c, "create_session", json!({"name": format!("p{i}")})).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = json!({"limit": 2});
        if let Some(cur) = &cursor {
            args["cursor"] = json!(cur);
        }
        let page = ok(c, "list_sessions", args).await;
        let items = page["sessions"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|s| s["session_id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
    }
    let all = ok(c, "list_sessions", json!({"limit": 200})).await;
    let all: Vec<String> = all["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, all);
    assert_eq!(all.len(), 8); // default + build + plain + 5
    err(
        c,
        "list_sessions",
        json!({"cursor": "garbage"}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        c,
        "list_sessions",
        json!({"limit": 201}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        c,
        "list_sessions",
        json!({"limit": 0}),
        "INVALID_PARAMETERS",
    )
    .await;

    // Close, then close again: SESSION_CLOSED and nothing changes.
    let closed = ok(c, "close_session", json!({"session_id": id})).await;
    assert_eq!(closed["status"], "closed");
    assert_eq!(closed["close_reason"], "closed_by_caller");
    assert!(closed["closed_at"].is_string());
    err(
        c,
        "close_session",
        json!({"session_id": id}),
        "SESSION_CLOSED",
    )
    .await;
    let again = ok(c, "get_session", json!({"session_id": id})).await;
    assert_eq!(again["closed_at"], closed["closed_at"]);
    assert_eq!(again["updated_at"], closed["updated_at"]);

    // Status filter.
    let active = ok(
        c,
        "list_sessions",
        json!({"status": "active", "limit": 200}),
    )
    .await;
    assert!(
        active["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "active")
    );
    assert_eq!(active["sessions"].as_array().unwrap().len(), 7);
    let closed_list = ok(c, "list_sessions", json!({"status": "closed"})).await;
    assert_eq!(closed_list["sessions"].as_array().unwrap().len(), 1);

    // System tools.
    let h = ok(c, "get_health_status", json!({})).await;
    assert_eq!(h["overall_status"], "healthy", "{h}");
    assert_eq!(h["components"]["store"]["status"], "healthy");
    assert_eq!(
        h["components"]["background.session_sweeper"]["status"],
        "healthy"
    );
    err(
        c,
        "get_health_status",
        json!({"session_id": "ses_nope"}),
        "NOT_FOUND",
    )
    .await;
    let st = ok(
        c,
        "get_system_status",
        json!({"include_active_sessions": true, "include_detailed_metrics": true,
               "include_resource_health": true, "time_range_hours": 24, "session_id": id}),
    )
    .await;
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["sessions"]["by_status"]["closed"], 1);
    assert_eq!(st["sessions"]["by_status"]["active"], 7);
    assert_eq!(st["active_sessions"].as_array().unwrap().len(), 7);
    assert_eq!(st["session"]["session_id"], json!(id));
    assert!(
        st["tool_calls"]["create_session"]["ok"].as_u64().unwrap() >= 7,
        "{st}"
    );
    assert!(
        st["tool_calls"]["create_session"]["errors"]
            .as_u64()
            .unwrap()
            >= 7,
        "{st}"
    );
    err(
        c,
        "get_system_status",
        json!({"time_range_hours": 0}),
        "INVALID_PARAMETERS",
    )
    .await;
    let bare = ok(c, "get_system_status", json!({})).await;
    assert!(bare.get("active_sessions").is_none() && bare.get("tool_calls").is_none());

    // A closed default session is replaced by a new one on next use.
    ok(c, "close_session", json!({"session_id": d1["session_id"]})).await;
    let d3 = ok(c, "get_session", json!({})).await;
    assert_ne!(d3["session_id"], d1["session_id"]);
    assert_eq!(d3["is_default"], true);
    assert_eq!(d3["status"], "active");
}

#[tokio::test]
async fn sessions_over_stdio_legacy_era() {
    let env = Env::new();
    let c = env.stdio(Era::Legacy, &["--store", "memory"]).await;
    session_scenario(&c).await;
    c.cancel().await.ok();
}

#[tokio::test]
async fn sessions_over_stdio_modern_era() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &[]).await;
    session_scenario(&c).await;
    c.cancel().await.ok();
}

#[tokio::test]
async fn sessions_over_http_both_eras() {
    for era in ERAS {
        let env = Env::new();
        let server = env.http(&[]).await;
        let c = server.client(era, None).await;
        session_scenario(&c).await;
        c.cancel().await.ok();
    }
}

#[tokio::test]
async fn concurrent_first_calls_share_one_default_session() {
    let env = Env::new();
    let server = env.http(&[]).await;
    let clients = futures_join(&server).await;
    let mut ids = Vec::new();
    let calls = clients.iter().map(|c| ok(c, "get_session", json!({})));
    for v in futures::future::join_all(calls).await {
        ids.push(v["session_id"].clone());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let c = &clients[0];
    let list = ok(c, "list_sessions", json!({})).await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);
}

async fn futures_join(server: &HttpServer) -> Vec<Client> {
    let mut v = Vec::new();
    for i in 0..6 {
        v.push(
            server
                .client(if i % 2 == 0 { Era::Legacy } else { Era::Modern }, None)
                .await,
        );
    }
    v
}

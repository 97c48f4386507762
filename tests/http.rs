//! The HTTP transport's security and lifecycle: principals from bearer tokens,
//! 401/403/413, the bind rule, graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const ALICE: &str = "alice-secret-token";
const BOB: &str = "bob-secret-token";

/// The SHA-256 of a token, as `myrmex hash-token` prints it.
fn sha(t: &str) -> String {
    let out = std::process::Command::new(bin())
        .arg("hash-token")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(t.as_bytes())?;
            c.wait_with_output()
        })
        .expect("hash-token");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn token_config(env: &Env) -> std::path::PathBuf {
    token_config_with(env, "")
}

/// Tokens for alice and bob, and `extra` TOML before them.
fn token_config_with(env: &Env, extra: &str) -> std::path::PathBuf {
    let bob_file = env.path().join("bob.token");
    std::fs::write(&bob_file, format!("{BOB}\n")).unwrap();
    env.config(&format!(
        "{extra}\n[[auth.tokens]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n\n[[auth.tokens]]\nname = \"bob\"\ntoken_file = \"{}\"\n",
        sha(ALICE),
        bob_file.display()
    ))
}

#[test]
fn hash_token_matches_sha256() {
    // Known vector: sha256("abc").
    assert_eq!(
        sha("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[tokio::test]
async fn principals_only_see_their_own_sessions() {
    let env = Env::new();
    let cfg = token_config(&env);
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    for era in ERAS {
        let alice = server.client(era, Some(ALICE)).await;
        let bob = server.client(era, Some(BOB)).await;
        let s = ok(&alice, "create_session", json!({"name": "alice's"})).await;
        assert_eq!(s["principal"], "alice");
        let id = s["session_id"].clone();
        // Bob gets NOT_FOUND, never the data, for every tool that takes the id.
        let e = err(&bob, "get_session", json!({"session_id": id}), "NOT_FOUND").await;
        assert!(!e.to_string().contains("alice's"));
        err(
            &bob,
            "close_session",
            json!({"session_id": id}),
            "NOT_FOUND",
        )
        .await;
        err(
            &bob,
            "get_system_status",
            json!({"session_id": id}),
            "NOT_FOUND",
        )
        .await;
        err(
            &bob,
            "list_sessions",
            json!({"session_id": id}),
            "NOT_FOUND",
        )
        .await;
        let bobs = ok(&bob, "list_sessions", json!({})).await;
        assert!(
            bobs["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["principal"] == "bob")
        );
        // Default sessions are per principal.
        let da = ok(&alice, "get_session", json!({})).await;
        let db = ok(&bob, "get_session", json!({})).await;
        assert_ne!(da["session_id"], db["session_id"]);
        assert_eq!(db["principal"], "bob");
        // Runs and workflow definitions are the principal's too.
        ok(&alice, "create_workflow", json!({"name": "private", "session_id": id,
            "steps": [{"name": "a", "module": "core", "action": "set", "parameters": {"value": 1}}]})).await;
        let run = ok(
            &alice,
            "execute_workflow",
            json!({"workflow_name": "private", "session_id": id, "wait_seconds": 10}),
        )
        .await;
        err(
            &bob,
            "get_workflow_run",
            json!({"run_id": run["run_id"]}),
            "NOT_FOUND",
        )
        .await;
        err(
            &bob,
            "cancel_workflow_run",
            json!({"run_id": run["run_id"]}),
            "NOT_FOUND",
        )
        .await;
        err(
            &bob,
            "retry_workflow_run",
            json!({"run_id": run["run_id"]}),
            "NOT_FOUND",
        )
        .await;
        err(
            &bob,
            "execute_workflow",
            json!({"workflow_name": "private", "session_id": id}),
            "NOT_FOUND",
        )
        .await;
        let bob_runs = ok(&bob, "list_workflow_runs", json!({})).await;
        assert_eq!(bob_runs["runs"], json!([]));
        // Alice's session is untouched by Bob's attempts.
        let still = ok(&alice, "get_session", json!({"session_id": id})).await;
        assert_eq!(still["status"], "active");
    }
}

fn init_body() -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
}

async fn post(url: &str, headers: &[(&str, &str)], body: String) -> reqwest::Response {
    let mut req = common::http_client()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(body).send().await.expect("request")
}

#[tokio::test]
async fn http_refuses_bad_tokens_origins_hosts_and_bodies() {
    let env = Env::new();
    let cfg = token_config(&env);
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let body = init_body().to_string();
    let alice = format!("Bearer {ALICE}");

    let r = post(&server.url, &[], body.clone()).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "UNAUTHENTICATED");
    assert_eq!(
        post(
            &server.url,
            &[("authorization", "Bearer wrong")],
            body.clone()
        )
        .await
        .status(),
        401
    );
    assert_eq!(
        post(&server.url, &[("authorization", ALICE)], body.clone())
            .await
            .status(),
        401
    );

    // The valid token passes.
    assert_eq!(
        post(&server.url, &[("authorization", &alice)], body.clone())
            .await
            .status(),
        200
    );
    // A local browser origin passes; a foreign one is refused.
    let local_origin = format!(
        "http://localhost:{}",
        server.addr.rsplit(':').next().unwrap()
    );
    assert_eq!(
        post(
            &server.url,
            &[("authorization", &alice), ("origin", &local_origin)],
            body.clone()
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        post(
            &server.url,
            &[("authorization", &alice), ("origin", "http://evil.example")],
            body.clone()
        )
        .await
        .status(),
        403
    );
    // A foreign Host (DNS rebinding) is refused.
    assert_eq!(
        post(
            &server.url,
            &[("authorization", &alice), ("host", "evil.example")],
            body.clone()
        )
        .await
        .status(),
        403
    );
    // An oversized body is refused (default limit 4 MiB).
    let mut big = init_body();
    big["params"]["clientInfo"]["name"] = json!("x".repeat(5 * 1024 * 1024));
    assert_eq!(
        post(&server.url, &[("authorization", &alice)], big.to_string())
            .await
            .status(),
        413
    );
}

#[tokio::test]
async fn body_limit_and_allowed_origins_are_configurable() {
    let env = Env::new();
    let cfg = env.config(
        "[http]\nmax_body_bytes = 2048\nallowed_origins = [\"https://app.example.com:443\"]\nallowed_hosts = [\"127.0.0.1\", \"mcp.example.com\"]\n",
    );
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let body = init_body().to_string();
    assert_eq!(
        post(
            &server.url,
            &[("origin", "https://app.example.com")],
            body.clone()
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        post(
            &server.url,
            &[("origin", "http://localhost:6274")],
            body.clone()
        )
        .await
        .status(),
        403
    );
    assert_eq!(
        post(&server.url, &[("host", "mcp.example.com")], body.clone())
            .await
            .status(),
        200
    );
    assert_eq!(
        post(&server.url, &[("host", "localhost")], body.clone())
            .await
            .status(),
        403
    );
    let mut big = init_body();
    big["params"]["clientInfo"]["name"] = json!("x".repeat(4096));
    assert_eq!(post(&server.url, &[], big.to_string()).await.status(), 413);
}

#[tokio::test]
async fn non_loopback_bind_without_tokens_is_refused() {
    let env = Env::new();
    let out = env
        .command(&["serve", "--http", "0.0.0.0:0"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without authentication"), "{stderr}");
    assert!(stderr.contains("auth.tokens"), "{stderr}");
}

#[tokio::test]
async fn non_loopback_bind_with_tokens_serves() {
    let env = Env::new();
    let cfg = token_config(&env);
    let server = HttpServer::start(env.command(&[
        "--config",
        cfg.to_str().unwrap(),
        "serve",
        "--http",
        "0.0.0.0:0",
    ]))
    .await;
    assert!(server.addr.starts_with("0.0.0.0:"), "{}", server.addr);
}

#[tokio::test]
async fn healthz_reports_health() {
    let env = Env::new();
    let server = env.http(&[]).await;
    let r = common::http_client()
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "healthy");
}

#[tokio::test]
async fn sigterm_and_sigint_shut_down_gracefully() {
    for sig in ["TERM", "INT"] {
        let env = Env::new();
        let mut server = env.http(&[]).await;
        let c = server.client(Era::Legacy, None).await;
        ok(&c, "get_session", json!({})).await;
        signal(server.pid(), sig);
        let status = tokio::time::timeout(Duration::from_secs(30), server.child.wait())
            .await
            .expect("server exits after SIG{sig}")
            .unwrap();
        assert!(status.success(), "SIG{sig}: {status:?}");
    }
}

/// One sample of a scrape: the value of `name` with these labels.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == *v))
        })
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        })
}

/// `/metrics` is Prometheus text that a Prometheus parser reads: tool calls by
/// name and outcome with latency histograms, runs, steps and tasks by state,
/// queue depths, pool use and the store probe. Behind the tokens when there are some.
#[tokio::test]
async fn metrics_are_prometheus_text() {
    let env = Env::new();
    // bob administers: he may scrape what alice did; alice may not.
    let cfg = token_config_with(&env, "[auth]\nadmin_principals = [\"bob\"]\n");
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let c = server.client(Era::Legacy, Some(ALICE)).await;
    ok(&c, "create_session", json!({"name": "m"})).await;
    err(
        &c,
        "get_session",
        json!({"session_id": "ses_nope"}),
        "NOT_FOUND",
    )
    .await;
    ok(&c, "create_workflow", json!({"name": "two", "steps": [
        {"name": "a", "module": "core", "action": "echo", "parameters": {}},
        {"name": "b", "module": "core", "action": "echo", "parameters": {}, "dependencies": ["a"]},
    ]}))
    .await;
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "two", "wait_seconds": 30}),
    )
    .await;
    assert_eq!(run["status"], "succeeded");
    ok(
        &c,
        "create_tasks",
        json!({"tasks": [{"name": "for-an-agent"}]}),
    )
    .await;
    ok(
        &c,
        "allocate_resources",
        json!({"requirements": {"cpu": 1}}),
    )
    .await;

    let url = format!("http://{}/metrics", server.addr);
    let anonymous = common::http_client().get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "tokens are configured");
    let not_admin = common::http_client()
        .get(&url)
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(not_admin.status(), 403, "alice is no administrator");
    let r = common::http_client()
        .get(&url)
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    let calls = |tool: &str, outcome: &str| {
        sample(
            &scrape,
            "myrmex_tool_calls_total",
            &[("tool", tool), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("create_session", "ok"), Some(1.0), "{text}");
    assert_eq!(calls("get_session", "error"), Some(1.0), "{text}");
    assert_eq!(calls("execute_workflow", "ok"), Some(1.0));
    let h = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "myrmex_tool_call_duration_seconds"
                && s.labels.get("tool") == Some("execute_workflow")
        })
        .expect("latency histogram");
    match &h.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(buckets.last().unwrap().count, 1.0, "{buckets:?}");
        }
        other => panic!("not a histogram: {other:?}"),
    }
    assert_eq!(
        sample(&scrape, "myrmex_runs", &[("status", "succeeded")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "myrmex_tasks", &[("status", "ready")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "myrmex_queue_depth", &[("queue", "ready_tasks")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "myrmex_pool_allocated", &[("pool", "cpu")]),
        Some(1.0)
    );
    assert!(sample(&scrape, "myrmex_pool_capacity", &[("pool", "cpu")]).unwrap() >= 1.0);
    assert_eq!(sample(&scrape, "myrmex_store_up", &[]), Some(1.0));
    assert!(sample(&scrape, "myrmex_store_probe_seconds", &[]).unwrap() >= 0.0);
    assert_eq!(
        sample(&scrape, "myrmex_sessions", &[("status", "active")]),
        Some(2.0),
        "the default session and 'm'"
    );
    // get_system_status reports the same numbers.
    let st = ok(&c, "get_system_status", json!({})).await;
    let pm = &st["performance_metrics"];
    assert_eq!(pm["runs_by_status"]["succeeded"], 1, "{pm}");
    assert_eq!(pm["queue_depths"]["ready_tasks"], 1, "{pm}");
    assert_eq!(pm["pools"]["cpu"]["allocated"], 1, "{pm}");
    assert_eq!(pm["store_up"], true);
    assert!(pm["tool_calls"].as_u64().unwrap() >= 6, "{pm}");
    assert!(pm["tool_errors"].as_u64().unwrap() >= 1, "{pm}");
}

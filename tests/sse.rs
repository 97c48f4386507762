//! The legacy HTTP+SSE transport (2024-11-05) over raw HTTP: the endpoint
//! event, JSON-RPC over POST with answers on the stream, progress, the same
//! protections as /mcp (tokens, Origin, Host, body limit, principal binding),
//! keep-alive comments, and clean-up when clients go away.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// One open SSE stream, read by hand.
struct Stream {
    resp: reqwest::Response,
    buf: String,
    endpoint: String,
}

impl Stream {
    async fn open(addr: &str, token: Option<&str>) -> Stream {
        let mut req = common::http_client().get(format!("http://{addr}/sse"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let mut s = Stream {
            resp,
            buf: String::new(),
            endpoint: String::new(),
        };
        let (event, data) = s.next_event().await;
        assert_eq!(event, "endpoint");
        assert!(data.starts_with("/messages?session_id="), "{data}");
        s.endpoint = format!("http://{addr}{data}");
        s
    }

    /// The next event (name, data); comments (keep-alives) are skipped.
    async fn next_event(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.trim_start().to_string());
                    }
                }
                if data.is_empty() {
                    continue; // a comment
                }
                return (event, data.join("\n"));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.resp.chunk())
                .await
                .expect("an event within 30 s")
                .unwrap()
                .expect("stream open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Raw text until `needle` appears (for keep-alive comments).
    async fn read_until(&mut self, needle: &str) {
        while !self.buf.contains(needle) {
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("data within 10 s")
                .unwrap()
                .expect("stream open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn post(&self, token: Option<&str>, msg: Value) -> reqwest::StatusCode {
        let mut req = common::http_client().post(&self.endpoint).json(&msg);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap().status()
    }

    /// The message answering request `id` (notifications before it are returned too).
    async fn answer(&mut self, id: u64) -> (Value, Vec<Value>) {
        let mut notes = Vec::new();
        loop {
            let (event, data) = self.next_event().await;
            assert_eq!(event, "message");
            let v: Value = serde_json::from_str(&data).unwrap();
            if v["id"] == json!(id) {
                return (v, notes);
            }
            notes.push(v);
        }
    }

    async fn initialize(&mut self, token: Option<&str>) {
        let s = self
            .post(token, json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}))
            .await;
        assert_eq!(s, 202);
        let (v, _) = self.answer(0).await;
        assert_eq!(v["result"]["serverInfo"]["name"], "myrmex", "{v}");
        assert_eq!(
            self.post(
                token,
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
            )
            .await,
            202
        );
    }

    async fn call(
        &mut self,
        token: Option<&str>,
        id: u64,
        tool: &str,
        args: Value,
        progress: bool,
    ) -> (Value, Vec<Value>) {
        let mut params = json!({"name": tool, "arguments": args});
        if progress {
            params["_meta"] = json!({"progressToken": format!("p{id}")});
        }
        let s = self
            .post(
                token,
                json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}),
            )
            .await;
        assert_eq!(s, 202);
        self.answer(id).await
    }
}

async fn sse_streams(c: &Client) -> u64 {
    ok(c, "get_system_status", json!({})).await["sse_streams"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn tools_progress_and_long_polls_work_over_sse() {
    let env = Env::new();
    let server = env.http(&[]).await;
    let mut s = Stream::open(&server.addr, None).await;
    s.initialize(None).await;
    let (v, _) = s.call(None, 1, "create_workflow", json!({"name": "w", "steps": [
        {"name": "a", "module": "core", "action": "sleep", "parameters": {"ms": 100}},
        {"name": "b", "module": "core", "action": "echo", "parameters": {"x": "{{steps.a.output}}"}, "dependencies": ["a"]}
    ]}), false).await;
    assert_eq!(v["result"]["structuredContent"]["name"], "w", "{v}");
    let (v, notes) = s
        .call(
            None,
            2,
            "execute_workflow",
            json!({"workflow_name": "w", "wait_seconds": 20}),
            true,
        )
        .await;
    assert_eq!(
        v["result"]["structuredContent"]["status"], "succeeded",
        "{v}"
    );
    let progress: Vec<&Value> = notes
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .collect();
    assert!(
        !progress.is_empty(),
        "progress notifications over SSE: {notes:?}"
    );
    assert_eq!(progress[0]["params"]["progressToken"], "p2");
    // Every notification, the last step's included, comes before the answer.
    let last = &progress[progress.len() - 1]["params"];
    assert_eq!(
        (last["progress"].as_f64(), last["total"].as_f64()),
        (Some(2.0), Some(2.0)),
        "{last}"
    );
    // A long-poll on a running run answers when it ends.
    let (v, _) = s
        .call(
            None,
            3,
            "execute_workflow",
            json!({"workflow_name": "w", "wait_seconds": 0}),
            false,
        )
        .await;
    let run_id = v["result"]["structuredContent"]["run_id"].clone();
    let (v, _) = s
        .call(
            None,
            4,
            "get_workflow_run",
            json!({"run_id": run_id, "wait_seconds": 20}),
            false,
        )
        .await;
    assert_eq!(v["result"]["structuredContent"]["status"], "succeeded");
    let c = server.client(Era::Legacy, None).await;
    assert_eq!(sse_streams(&c).await, 1);
}

#[tokio::test]
async fn sse_has_the_same_protections_as_mcp() {
    let env = Env::new();
    let (alice, bob) = ("alice-sse-token-0123456789", "bob-sse-token-0123456789");
    let (fa, fb) = (env.path().join("a.token"), env.path().join("b.token"));
    std::fs::write(&fa, alice).unwrap();
    std::fs::write(&fb, bob).unwrap();
    let cfg = env.config(&format!(
        "[http]\nmax_body_bytes = 2048\n[[auth.tokens]]\nname = \"alice\"\ntoken_file = \"{}\"\n[[auth.tokens]]\nname = \"bob\"\ntoken_file = \"{}\"\n",
        fa.display(),
        fb.display()
    ));
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let http = common::http_client();
    let sse = format!("http://{}/sse", server.addr);
    assert_eq!(http.get(&sse).send().await.unwrap().status(), 401);
    assert_eq!(
        http.get(&sse)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let evil = http
        .get(&sse)
        .bearer_auth(alice)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);
    let host = http
        .get(&sse)
        .bearer_auth(alice)
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(host.status(), 403);
    let fine = http
        .get(&sse)
        .bearer_auth(alice)
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
    drop(fine);

    let mut s = Stream::open(&server.addr, Some(alice)).await;
    s.initialize(Some(alice)).await;
    let ping = json!({"jsonrpc": "2.0", "id": 9, "method": "ping"});
    assert_eq!(s.post(None, ping.clone()).await, 401);
    assert_eq!(
        s.post(Some(bob), ping.clone()).await,
        403,
        "another principal"
    );
    let unknown = http
        .post(format!("http://{}/messages?session_id=nope", server.addr))
        .bearer_auth(alice)
        .json(&ping)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let big =
        json!({"jsonrpc": "2.0", "id": 10, "method": "ping", "params": {"pad": "x".repeat(4096)}});
    assert_eq!(s.post(Some(alice), big).await, 413);
    // The session is the caller's: tools see alice.
    let (v, _) = s
        .call(Some(alice), 11, "get_session", json!({}), false)
        .await;
    assert_eq!(
        v["result"]["structuredContent"]["principal"], "alice",
        "{v}"
    );
}

/// SSE streams are capped per principal and in all (the same numbers as
/// Streamable HTTP sessions, counted on their own): past them a new stream
/// gets 429 naming the key; closing one makes room again.
#[tokio::test]
async fn sse_streams_are_capped_per_principal_and_in_all() {
    let env = Env::new();
    let (alice, bob) = (ALICE_TOKEN, BOB_TOKEN);
    let tokens = std::fs::read_to_string(env.two_principals()).unwrap();
    let cfg = env.config(&format!(
        "[http]\nmax_sessions = 3\nmax_sessions_per_principal = 2\n\n{tokens}"
    ));
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let refused = |token: &'static str| {
        let url = format!("http://{}/sse", server.addr);
        async move {
            let r = common::http_client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    };
    let a1 = Stream::open(&server.addr, Some(alice)).await;
    let _a2 = Stream::open(&server.addr, Some(alice)).await;
    let (status, body) = refused(alice).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("http.max_sessions_per_principal"), "{body}");
    let _b1 = Stream::open(&server.addr, Some(bob)).await;
    let (status, body) = refused(bob).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("http.max_sessions"), "{body}");
    // A closed stream makes room for its principal.
    drop(a1);
    let mut again = None;
    for _ in 0..100 {
        let r = common::http_client()
            .get(format!("http://{}/sse", server.addr))
            .bearer_auth(alice)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            again = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "a closed stream's place is free again");
}

#[tokio::test]
async fn keep_alives_flow_and_dropped_streams_leave_nothing_behind() {
    let env = Env::new();
    // 200 streams of one principal: past the default per-principal cap of 64.
    let cfg = env.config("[http]\nsse_keep_alive_seconds = 1\nmax_sessions_per_principal = 250\n");
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let c = server.client(Era::Legacy, None).await;
    let mut s = Stream::open(&server.addr, None).await;
    s.read_until(":").await; // an SSE comment: the keep-alive
    drop(s);
    let mut streams = Vec::new();
    for _ in 0..200 {
        streams.push(Stream::open(&server.addr, None).await);
    }
    assert_eq!(sse_streams(&c).await, 200);
    drop(streams);
    let mut n = u64::MAX;
    for _ in 0..100 {
        n = sse_streams(&c).await;
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, 0, "every bridge is cleaned up");
}

#[tokio::test]
async fn a_disconnect_cancels_the_call_in_flight() {
    let env = Env::new();
    let server = env.http(&[]).await;
    let c = server.client(Era::Legacy, None).await;
    ok(
        &c,
        "create_workflow",
        json!({"name": "slow", "steps": [
            {"name": "a", "module": "core", "action": "sleep", "parameters": {"ms": 3000}}
        ]}),
    )
    .await;
    let mut s = Stream::open(&server.addr, None).await;
    s.initialize(None).await;
    assert_eq!(
        s.post(None, json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "execute_workflow", "arguments": {"workflow_name": "slow", "wait_seconds": 45}}}))
            .await,
        202
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    // The waiting call ends long before its 45 s: counted as an error (cancelled).
    let mut cancelled = false;
    for _ in 0..100 {
        let st = ok(
            &c,
            "get_system_status",
            json!({"include_detailed_metrics": true}),
        )
        .await;
        if st["tool_calls"]["execute_workflow"]["errors"] == 1 && st["sse_streams"] == 0 {
            cancelled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cancelled,
        "the in-flight call was cancelled and the bridge removed"
    );
    // The run itself goes on: work is not tied to the waiting call.
    let runs = ok(&c, "list_workflow_runs", json!({})).await;
    let id = runs["runs"][0]["run_id"].clone();
    let v = ok(
        &c,
        "get_workflow_run",
        json!({"run_id": id, "wait_seconds": 20}),
    )
    .await;
    assert_eq!(v["status"], "succeeded");
}

//! stdio transport: stdout carries nothing but JSON-RPC, the server exits when
//! stdin closes, and on SIGTERM.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn requests() -> Vec<Value> {
    let mut v = vec![
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    ];
    let calls = [
        ("create_session", json!({"name": "s"})),
        ("get_session", json!({})),
        ("list_sessions", json!({})),
        ("get_health_status", json!({})),
        (
            "get_system_status",
            json!({"include_detailed_metrics": true}),
        ),
        ("create_session", json!({"bogus": true})),
        ("close_session", json!({"session_id": "ses_x"})),
    ];
    for (i, (name, args)) in calls.into_iter().enumerate() {
        v.push(
            json!({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                      "params": {"name": name, "arguments": args}}),
        );
    }
    v.push(json!({"jsonrpc": "2.0", "id": 99, "method": "no/such/method"}));
    v
}

#[tokio::test]
async fn stdout_carries_only_json_rpc_and_stdin_eof_ends_the_server() {
    let env = Env::new();
    let mut cmd = env.command(&["--log-level", "trace", "serve"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let reqs = requests();
    let expected_ids: Vec<Value> = reqs.iter().filter_map(|r| r.get("id").cloned()).collect();
    for r in &reqs {
        stdin.write_all(format!("{r}\n").as_bytes()).await.unwrap();
    }
    let mut stderr = child.stderr.take().unwrap();
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        stderr.read_to_string(&mut s).await.unwrap();
        s
    });
    // Read stdout until every request is answered, then close stdin and read to EOF.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = Vec::new();
    let answered = |out: &Vec<String>| {
        expected_ids.iter().all(|id| {
            out.iter()
                .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v.get("id") == Some(id)))
        })
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        while !answered(&out) {
            match lines.next_line().await.unwrap() {
                Some(l) => out.push(l),
                None => break,
            }
        }
    })
    .await
    .expect("all requests answered");
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            out.push(l);
        }
        child.wait().await
    })
    .await
    .expect("server exits when stdin closes")
    .unwrap();
    assert!(status.success(), "{status:?}");
    let err = err_task.await.unwrap();
    assert!(
        err.contains("TRACE") || err.contains("DEBUG"),
        "trace logging reached stderr"
    );
    let mut ids = Vec::new();
    for line in &out {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        assert_eq!(v["jsonrpc"], "2.0", "{line}");
        assert!(
            v.get("result").is_some() || v.get("error").is_some() || v.get("method").is_some(),
            "{line}"
        );
        if let Some(id) = v.get("id") {
            ids.push(id.clone());
        }
    }
    for id in expected_ids {
        assert!(
            ids.contains(&id),
            "no answer to request {id}; stdout was:\n{}",
            out.join("\n")
        );
    }
}

#[tokio::test]
async fn sigterm_ends_a_stdio_server_with_stdin_open() {
    let env = Env::new();
    let mut cmd = env.command(&["serve"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{}\n", requests()[0]).as_bytes())
        .await
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).await.unwrap(); // it answered: it is serving
    signal(child.id().unwrap() as i32, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("server exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    drop(stdin);
}

//! Hostile and buggy input against the real binary: nothing kills the
//! server, every resource is bounded, no principal reaches another's data.
//! Each test names the point of the hardening issue it covers.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::raw_initialize as initialize;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A bomb of a condition: 2,000 nested parentheses, 10,000 `!`, a 100,000-term chain.
fn condition_bombs() -> Vec<(&'static str, String)> {
    vec![
        (
            "parentheses",
            format!("{}true{}", "(".repeat(2000), ")".repeat(2000)),
        ),
        ("negations", format!("{}true", "!".repeat(10_000))),
        ("chain", "true && ".repeat(100_000) + "true"),
    ]
}

fn with_when(when: &str) -> Value {
    json!({"name": "w", "steps": [{"name": "a", "module": "core", "action": "echo", "when": when}]})
}

/// 1. Deep `when` expressions are refused with the limit's key, through every
/// tool that takes a definition, the CLI and a workflow file; the server lives.
#[tokio::test]
async fn deep_conditions_are_refused_and_the_server_lives() {
    let env = Env::new();
    let c = env.stdio(Era::Legacy, &[]).await;
    for (what, when) in condition_bombs() {
        let v = ok(&c, "validate_workflow", with_when(&when)).await;
        assert_eq!(v["valid"], false, "{what}");
        let p = &v["problems"][0];
        assert_eq!(p["code"], "INVALID_CONDITION", "{what}: {v}");
        let key = if what == "chain" {
            "workflows.max_condition_bytes"
        } else {
            "workflows.max_nesting_depth"
        };
        assert!(p["message"].as_str().unwrap().contains(key), "{what}: {p}");
        assert!(
            v.to_string().len() < 2000,
            "{what}: the answer quotes the bomb"
        );
        err(
            &c,
            "create_workflow",
            with_when(&when),
            "INVALID_PARAMETERS",
        )
        .await;
        err(
            &c,
            "create_complex_workflow",
            json!({"name": "cw", "workflow_definition": {"steps": [
                {"name": "a", "module": "core", "action": "echo", "when": when}]}}),
            "INVALID_PARAMETERS",
        )
        .await;
    }
    // Still serving.
    ok(&c, "get_health_status", json!({})).await;

    // The CLI refuses the file instead of aborting.
    let file = env.path().join("bomb.json");
    std::fs::write(&file, with_when(&condition_bombs()[0].1).to_string()).unwrap();
    for cmd in ["validate", "run"] {
        let out = env
            .command(&[cmd, file.to_str().unwrap()])
            .output()
            .await
            .unwrap();
        // Refused (1: invalid, 2: refused before running), never an abort (134).
        assert!(matches!(out.status.code(), Some(1 | 2)), "{cmd}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("workflows.max_nesting_depth"),
            "{cmd}: {text}"
        );
    }

    // A workflow file with a bomb is a broken library entry, not a crash.
    let dir = env.path().join("library");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bomb.json"),
        with_when(&condition_bombs()[1].1).to_string(),
    )
    .unwrap();
    let cfg = env.config(&format!("workflows_dirs = [\"{}\"]\n", dir.display()));
    let c = env
        .stdio(Era::Modern, &["--config", cfg.to_str().unwrap()])
        .await;
    err(
        &c,
        "execute_workflow",
        json!({"workflow_name": "w"}),
        "WORKFLOW_NOT_FOUND",
    )
    .await;
    let h = ok(&c, "get_health_status", json!({})).await;
    assert!(h.to_string().contains("workflows.max_nesting_depth"), "{h}");
}

/// 1 (HTTP). One principal's bomb does not take the server from another.
#[tokio::test]
async fn a_bomb_over_http_leaves_other_principals_served() {
    let env = Env::new();
    let cfg = env.two_principals();
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let alice = server.client(Era::Legacy, Some(ALICE_TOKEN)).await;
    let bob = server.client(Era::Modern, Some(BOB_TOKEN)).await;
    for (_, when) in condition_bombs().into_iter().take(2) {
        let v = ok(&alice, "validate_workflow", with_when(&when)).await;
        assert_eq!(v["valid"], false);
    }
    ok(&bob, "create_session", json!({"name": "still-here"})).await;
}

/// 2. A timeout past `workflows.max_timeout_seconds` is refused; where an
/// operator allows any, the deadline saturates instead of overflowing.
#[tokio::test]
async fn huge_timeouts_are_refused_and_deadlines_never_overflow() {
    let env = Env::new();
    let c = env.stdio(Era::Legacy, &[]).await;
    let step = |t: u64| {
        json!({"name": "t", "timeout_seconds": t, "steps": [
            {"name": "a", "module": "core", "action": "echo", "timeout_seconds": t}]})
    };
    // The published schema says the bound, and the check at the boundary
    // names every field past it with its config key.
    let e = err(&c, "validate_workflow", step(1 << 63), "INVALID_PARAMETERS").await;
    let fields = e["details"]["fields"].as_array().unwrap();
    assert_eq!(fields.len(), 2, "{e}");
    for f in fields {
        assert!(
            f["problem"]
                .as_str()
                .unwrap()
                .contains("workflows.max_timeout_seconds"),
            "{f}"
        );
    }
    ok(&c, "create_workflow", step(60)).await;
    let e = err(
        &c,
        "execute_workflow",
        json!({"workflow_name": "t", "timeout_seconds": u64::MAX}),
        "INVALID_PARAMETERS",
    )
    .await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("max_timeout_seconds")
    );

    // An operator cannot configure a limit whose deadlines overflow: past ten
    // years the server refuses to start, naming the key.
    let cfg = env.config("[workflows]\nmax_timeout_seconds = 9223372036854775807\n");
    let out = env
        .command(&["--config", cfg.to_str().unwrap(), "serve"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("workflows.max_timeout_seconds"), "{err}");
    // The longest it accepts runs: step and run deadlines that far out are fine.
    let ten_years = 10 * 365 * 24 * 3600u64;
    let cfg = env.config(&format!("[workflows]\nmax_timeout_seconds = {ten_years}\n"));
    let c = env
        .stdio(Era::Modern, &["--config", cfg.to_str().unwrap()])
        .await;
    ok(&c, "create_workflow", step(ten_years)).await;
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "t", "timeout_seconds": ten_years, "wait_seconds": 20}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
}

/// A raw stdio server with the given configuration, initialized.
struct Raw {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Raw {
    async fn start(env: &Env, toml: &str) -> Raw {
        let cfg = env.config(toml);
        let mut cmd = env.command(&["--config", cfg.to_str().unwrap(), "serve"]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut raw = Raw {
            child,
            stdin,
            lines,
        };
        raw.send(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
            .to_string()
            .as_bytes())
            .await;
        raw.next().await;
        raw.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        raw
    }

    async fn send(&mut self, line: &[u8]) {
        self.stdin.write_all(line).await.unwrap();
        self.stdin.write_all(b"\n").await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next message, within 20 s.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .expect("an answer, at once")
            .unwrap()
            .expect("the server is still there");
        serde_json::from_str(&line).unwrap()
    }
}

/// 3. Every line that cannot be read is answered at once: -32700 for what is
/// not JSON (NaN, nested past 128, truncated), -32600 for an oversized line
/// (skipped unread) and for JSON that is no message; the next request works.
#[tokio::test]
async fn unreadable_stdio_lines_are_answered_at_once() {
    let env = Env::new();
    let mut raw = Raw::start(&env, "[limits]\nmax_message_bytes = 65536\n").await;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let oversized = format!("\"{}\"", "x".repeat(200_000));
    for (line, code) in [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}"#.to_string(),
            -32700,
        ),
        (
            format!(r#"{{"jsonrpc":"2.0","id":2,"method":"ping","params":{{"x":{deep}}}}}"#),
            -32700,
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"pi"#.to_string(),
            -32700,
        ),
        (oversized, -32600),
        ("[1, 2, 3]".to_string(), -32600),
    ] {
        raw.send(line.as_bytes()).await;
        let v = raw.next().await;
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v.get("id").is_some_and(Value::is_null), "id null: {v}");
    }
    // JSON that is not a message but names an id is answered with its id.
    raw.send(br#"{"jsonrpc":"2.0","id":7,"params":1}"#).await;
    let v = raw.next().await;
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert_eq!(v["id"], 7);
    raw.send(br#"{"jsonrpc":"2.0","id":8,"method":"ping"}"#)
        .await;
    assert_eq!(raw.next().await["id"], 8);
    drop(raw.stdin);
    let _ = raw.child.wait().await;
}

/// 4. `arguments` that is not an object is -32602 invalid params (not
/// -32601); a field serde would build from an array (`retry: [1]`) is
/// refused like the schema says, and nothing is stored.
#[tokio::test]
async fn arguments_must_have_the_shape_the_schema_publishes() {
    let env = Env::new();
    let mut raw = Raw::start(&env, "").await;
    raw.send(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_sessions","arguments":[1]}}"#)
        .await;
    let v = raw.next().await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert_eq!(v["id"], 1);
    raw.send(br#"{"jsonrpc":"2.0","id":2,"method":"no/such/method"}"#)
        .await;
    assert_eq!(raw.next().await["error"]["code"], -32601);

    let c = env.stdio(Era::Legacy, &[]).await;
    for (field, bad) in [
        ("steps[0].retry", json!({"retry": [1]})),
        ("steps[0]", json!(null)),
    ] {
        let step = match bad {
            Value::Null => json!(["a", "core", "echo"]),
            Value::Object(extra) => {
                let mut s = json!({"name": "a", "module": "core", "action": "echo"});
                s.as_object_mut().unwrap().extend(extra);
                s
            }
            _ => unreachable!(),
        };
        let e = err(
            &c,
            "create_workflow",
            json!({"name": "shape", "steps": [step]}),
            "INVALID_PARAMETERS",
        )
        .await;
        assert_eq!(e["details"]["field"], field, "{e}");
    }
    err(
        &c,
        "get_workflow",
        json!({"workflow_name": "shape"}),
        "WORKFLOW_NOT_FOUND",
    )
    .await;
}

/// 5. A step's own output is bounded apart from what rendered it: a literal
/// value under `workflows.max_rendered_bytes` but over
/// `workflows.max_step_output_bytes` fails its step, and an auto task's
/// result is bounded the same way; nothing past the bound is stored.
#[tokio::test]
async fn a_steps_and_an_auto_tasks_output_are_bounded() {
    let env = Env::new();
    let cfg = env.config(
        "[workflows]\nmax_rendered_bytes = 1048576\nmax_step_output_bytes = 262144\nmax_run_output_bytes = 4194304\n\n[tasks]\nmax_payload_bytes = 1048576\n",
    );
    let c = env
        .stdio(Era::Legacy, &["--config", cfg.to_str().unwrap()])
        .await;
    let big = "z".repeat(300_000);
    ok(
        &c,
        "create_workflow",
        json!({"name": "big", "steps": [
            {"name": "small", "module": "core", "action": "set", "parameters": {"value": "ok"}},
            {"name": "large", "module": "core", "action": "set", "parameters": {"value": big}}]}),
    )
    .await;
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "big", "wait_seconds": 40}),
    )
    .await;
    let by = steps_by_name(&run);
    assert_eq!(by["small"]["status"], "succeeded", "{run}");
    assert_eq!(by["large"]["status"], "failed", "{run}");
    assert_eq!(by["large"]["error"]["code"], "LIMIT_EXCEEDED");
    let message = by["large"]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("workflows.max_step_output_bytes"),
        "{message}"
    );
    let step = ok(
        &c,
        "get_workflow_run",
        json!({"run_id": run["run_id"], "step": "large"}),
    )
    .await;
    assert!(
        !step.to_string().contains(&"z".repeat(1000)),
        "nothing past the bound is stored"
    );

    let task = ok(
        &c,
        "create_task",
        json!({"task": {"name": "large", "module": "core", "action": "set",
                        "parameters": {"value": "z".repeat(300_000)}}}),
    )
    .await;
    let done = ok(
        &c,
        "get_task",
        json!({"task_id": task["task_id"], "wait_seconds": 30}),
    )
    .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "LIMIT_EXCEEDED", "{done}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("workflows.max_step_output_bytes"),
        "{message}"
    );
    assert!(done["result"].is_null(), "{done}");
}

/// 5. A template bomb (each step echoes its predecessor twice) fails at the
/// bound with LIMIT_EXCEEDED, stores nothing past it, and the data directory
/// stays usable: a restart does not resume the run into the bomb again.
#[tokio::test]
async fn a_template_bomb_is_bounded_and_the_data_directory_stays_usable() {
    let env = Env::new();
    let toml = "[workflows]\nmax_rendered_bytes = 1048576\nmax_step_output_bytes = 2097152\nmax_run_output_bytes = 4194304\nmax_value_depth = 40\n";
    let cfg = env.config(toml);
    let args = ["--config", cfg.to_str().unwrap()];
    let c = env.stdio(Era::Legacy, &args).await;
    let mut steps = vec![
        json!({"name": "s0", "module": "core", "action": "set", "parameters": {"value": "xxxxxxxxxxxxxxxx"}}),
    ];
    for i in 1..30 {
        steps.push(json!({"name": format!("s{i}"), "module": "core", "action": "set",
            "dependencies": [format!("s{}", i - 1)],
            "parameters": {"value": format!("{{{{steps.s{}.output}}}}{{{{steps.s{}.output}}}}", i - 1, i - 1)}}));
    }
    ok(
        &c,
        "create_workflow",
        json!({"name": "bomb", "steps": steps}),
    )
    .await;
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "bomb", "wait_seconds": 40}),
    )
    .await;
    assert_eq!(run["status"], "failed", "{run}");
    let by = steps_by_name(&run);
    // 16 bytes doubled 16 times is 1 MiB: step 17 is the first past the bound.
    assert_eq!(by["s16"]["status"], "succeeded");
    assert_eq!(by["s17"]["status"], "failed");
    assert_eq!(by["s17"]["error"]["code"], "LIMIT_EXCEEDED");
    assert!(
        by["s17"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("workflows.max_rendered_bytes"),
        "{}",
        by["s17"]
    );
    assert_eq!(by["s29"]["status"], "skipped");

    // Many steps within their own bound pass the run's.
    let fan: Vec<Value> = (0..10)
        .map(|i| {
            json!({"name": format!("f{i}"), "module": "core", "action": "set",
                         "parameters": {"value": "y".repeat(600_000)}})
        })
        .collect();
    ok(
        &c,
        "create_workflow",
        json!({"name": "fan", "steps": fan, "max_parallel": 1}),
    )
    .await;
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "fan", "wait_seconds": 40}),
    )
    .await;
    let statuses: Vec<Value> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].clone())
        .collect();
    let ok_steps = statuses.iter().filter(|s| *s == "succeeded").count();
    assert_eq!(
        ok_steps, 6,
        "4 MiB hold six outputs of 600 kB: {statuses:?}"
    );
    let failed = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"] == "failed")
        .unwrap()
        .clone();
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("workflows.max_run_output_bytes"),
        "{failed}"
    );

    // Outputs that nest one level deeper per step stop at max_value_depth.
    let mut deep =
        vec![json!({"name": "d0", "module": "core", "action": "set", "parameters": {"value": 1}})];
    for i in 1..60 {
        deep.push(
            json!({"name": format!("d{i}"), "module": "core", "action": "set",
            "dependencies": [format!("d{}", i - 1)],
            "parameters": {"value": [format!("{{{{steps.d{}.output}}}}", i - 1)]}}),
        );
    }
    ok(
        &c,
        "create_workflow",
        json!({"name": "deep", "steps": deep}),
    )
    .await;
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "deep", "wait_seconds": 40}),
    )
    .await;
    assert_eq!(run["status"], "failed");
    let failed: Vec<&Value> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("workflows.max_value_depth")
    );
    drop(c);

    // The data directory stays small and a restart has nothing to resume.
    if !on_postgres() {
        let size = std::fs::read_dir(env.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("myrmex.db"))
            .map(|e| e.metadata().unwrap().len())
            .sum::<u64>();
        assert!(size < 64 << 20, "the store holds {size} bytes");
    }
    let c = env.stdio(Era::Modern, &args).await;
    let runs = ok(&c, "list_workflow_runs", json!({"workflow_name": "bomb"})).await;
    assert_eq!(runs["runs"][0]["status"], "failed", "{runs}");
    ok(&c, "get_health_status", json!({})).await;
}

/// Connect to an HTTP server.
async fn tcp(addr: &str) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

/// Read until the peer closes (or 30 s); what arrived.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> String {
    read_until_closed(s).await.0
}

/// What the server wrote, and whether it closed the connection within 15 s
/// (false: it was still open when the test gave up waiting).
async fn read_until_closed(s: &mut tokio::net::TcpStream) -> (String, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf))
        .await
        .is_ok();
    (String::from_utf8_lossy(&buf).to_string(), closed)
}

/// A server whose HTTP timeouts are 60 s except the ones given (so only those
/// can close a connection within the tests' 15 s).
async fn server_with_timeouts(env: &Env, http: &str) -> common::HttpServer {
    let mut table = String::from("[http]\nmax_connections = 8\n");
    for key in [
        "header_read_timeout_seconds",
        "body_read_timeout_seconds",
        "idle_timeout_seconds",
    ] {
        if !http.contains(key) {
            table.push_str(&format!("{key} = 60\n"));
        }
    }
    table.push_str(http);
    let cfg = env.config(&format!(
        "[workflows]\ndefault_wait_seconds = 1\nmax_wait_seconds = 1\n\n{table}"
    ));
    env.http(&["--config", cfg.to_str().unwrap()]).await
}

/// 6. Slow and partial requests are cut off, each by its own timeout (the
/// others are 60 s, so none can stand in for another): headers that never
/// finish, a body that never arrives, an idle keep-alive connection; and
/// connections past `http.max_connections` are answered 503 while the others
/// are served.
#[tokio::test]
async fn slow_partial_and_surplus_connections_are_cut_off() {
    let env = Env::new();

    // Half a header: closed by the server (http.header_read_timeout_seconds).
    let server = server_with_timeouts(&env, "header_read_timeout_seconds = 1\n").await;
    let host = format!("Host: {}\r\n", server.addr);
    let mut s = tcp(&server.addr).await;
    s.write_all(format!("POST /mcp HTTP/1.1\r\n{host}").as_bytes())
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut s).await;
    assert!(closed, "half a header is cut off by the header timeout");
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got}");
    drop(server);

    // A body that does not come: 408 naming the key.
    let server = server_with_timeouts(&env, "body_read_timeout_seconds = 1\n").await;
    let host = format!("Host: {}\r\n", server.addr);
    let mut s = tcp(&server.addr).await;
    s.write_all(
        format!("POST /mcp HTTP/1.1\r\n{host}content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"jsonrpc\"")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (got, closed) = read_until_closed(&mut s).await;
    assert!(closed, "a body that never comes is cut off");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("http.body_read_timeout_seconds"), "{got}");
    drop(server);

    // A keep-alive connection that goes quiet after a request is closed
    // (http.idle_timeout_seconds; the header timeout is 60 s here).
    let server = server_with_timeouts(&env, "idle_timeout_seconds = 2\n").await;
    let host = format!("Host: {}\r\n", server.addr);
    let mut s = tcp(&server.addr).await;
    s.write_all(format!("GET /healthz HTTP/1.1\r\n{host}\r\n").as_bytes())
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut s).await;
    assert!(closed, "an idle keep-alive connection is closed");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");

    // Eight silent connections fill the server; the ninth is refused at once.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tcp(&server.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = tcp(&server.addr).await;
    let got = read_to_close(&mut extra).await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("http.max_connections"), "{got}");
    // The silent ones are idle: closed (idle timeout); then clients are served again.
    for mut h in held {
        assert!(
            read_until_closed(&mut h).await.1,
            "a silent connection is closed"
        );
    }
    let c = server.client(Era::Legacy, None).await;
    ok(&c, "get_health_status", json!({})).await;
}

/// An `initialize` POST with a token; the session id it got, or the status.
/// A request in a session: 2xx (served) or the status.
async fn in_session(url: &str, token: &str, session: &str, method: reqwest::Method) -> u16 {
    match raw_in_session(url, token, session, method).await {
        200..=299 => 200,
        other => other,
    }
}

/// 7 and 12. Transport sessions belong to their principal (another gets 403
/// on POST, GET and DELETE, as on the legacy SSE transport) and are capped: a
/// principal's least recently used session makes room for its next (a request
/// to it is told why, with the config key); past the total, new ones get 503.
#[tokio::test]
async fn transport_sessions_are_bound_to_their_principal_and_capped() {
    let env = Env::new();
    let tokens = env.two_principals();
    let toml = std::fs::read_to_string(&tokens).unwrap();
    let cfg = env.config(&format!(
        "[http]\nmax_sessions = 5\nmax_sessions_per_principal = 3\n\n{toml}"
    ));
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let url = &server.url;
    let a = initialize(url, ALICE_TOKEN).await.unwrap();
    assert_eq!(
        in_session(url, ALICE_TOKEN, &a, reqwest::Method::POST).await,
        200
    );
    for m in [
        reqwest::Method::POST,
        reqwest::Method::GET,
        reqwest::Method::DELETE,
    ] {
        assert_eq!(in_session(url, BOB_TOKEN, &a, m).await, 403);
    }
    // Alice's session survived bob's attempts.
    assert_eq!(
        in_session(url, ALICE_TOKEN, &a, reqwest::Method::POST).await,
        200
    );

    // Many initializes from one principal: only the newest three live.
    let mut ids = vec![a];
    for _ in 0..200 {
        ids.push(initialize(url, ALICE_TOKEN).await.unwrap());
    }
    for (i, id) in ids.iter().enumerate() {
        let want = if i + 3 >= ids.len() { 200 } else { 404 };
        assert_eq!(
            in_session(url, ALICE_TOKEN, id, reqwest::Method::POST).await,
            want,
            "session {i}"
        );
    }
    let gone = common::http_client()
        .post(url.as_str())
        .bearer_auth(ALICE_TOKEN)
        .header("mcp-session-id", &ids[0])
        .header("mcp-protocol-version", "2025-11-25")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let body = gone.text().await.unwrap();
    assert!(
        body.contains("http.max_sessions_per_principal"),
        "an evicted session says why: {body}"
    );
    // Bob gets two more; the total of five is then reached.
    initialize(url, BOB_TOKEN).await.unwrap();
    initialize(url, BOB_TOKEN).await.unwrap();
    assert_eq!(initialize(url, BOB_TOKEN).await, Err(503));
    let c = server.client(Era::Modern, Some(BOB_TOKEN)).await;
    let st = ok(&c, "get_system_status", json!({})).await;
    assert_eq!(st["http_sessions"], 5, "{st}");
    // DELETE ends one's own session and makes room.
    let last = ids.last().unwrap();
    assert_eq!(
        in_session(url, ALICE_TOKEN, last, reqwest::Method::DELETE).await,
        200
    );
    initialize(url, BOB_TOKEN).await.unwrap();
}

/// 8. Error answers are bounded: an 8 MiB name comes back as an excerpt;
/// a 10,000-step cycle is shown (shortened) by validate_workflow and
/// create_workflow alike, within the answer limit.
#[tokio::test]
async fn error_answers_quote_excerpts_and_fit_the_answer_limit() {
    let env = Env::new();
    let c = env.stdio(Era::Legacy, &[]).await;
    let name = "N".repeat(8 << 20);
    let e = err(
        &c,
        "create_workflow",
        json!({"name": name, "steps": [{"name": "a", "module": "core", "action": "echo"}]}),
        "INVALID_PARAMETERS",
    )
    .await;
    assert!(e.to_string().len() < 8000, "{} bytes", e.to_string().len());
    let n = 10_000;
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            json!({"name": format!("s{i}"), "module": "core", "action": "echo",
                         "dependencies": [format!("s{}", (i + 1) % n)]})
        })
        .collect();
    let wf = json!({"name": "cycle", "steps": steps});
    let v = ok(&c, "validate_workflow", wf.clone()).await;
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0]["code"], "CYCLE_DETECTED");
    let m = v["problems"][0]["message"].as_str().unwrap();
    assert!(
        m.starts_with("dependency cycle of 10000 steps: s0 -> s9999 -> "),
        "{m}"
    );
    assert!(m.len() < 300, "{m}");
    assert!(v.to_string().len() <= 40_000);
    let e = err(&c, "create_workflow", wf, "CYCLE_DETECTED").await;
    assert!(e.to_string().len() <= 40_000);
    // Many problems: as many as fit are listed, all are counted.
    let bad: Vec<Value> = (0..5000)
        .map(|i| json!({"name": format!("b{i}"), "module": "core", "action": "nope"}))
        .collect();
    let v = ok(
        &c,
        "validate_workflow",
        json!({"name": "many", "steps": bad}),
    )
    .await;
    assert_eq!(v["problems_total"], 5000);
    let listed = v["problems"].as_array().unwrap().len();
    assert!((1..5000).contains(&listed), "{listed}");
    assert!(v.to_string().len() <= 40_000);
}

/// 13. Every route checks Host and Origin, those without authentication too.
#[tokio::test]
async fn every_route_checks_host_and_origin() {
    let env = Env::new();
    let server = env.http(&[]).await;
    let base = format!("http://{}", server.addr);
    let client = common::http_client();
    for path in ["/metrics", "/healthz", "/sse", "/mcp", "/no-such-route"] {
        let r = client
            .get(format!("{base}{path}"))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path} with a foreign Host");
        let r = client
            .get(format!("{base}{path}"))
            .header("origin", "http://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path} with a foreign Origin");
    }
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200, "a local scrape still works");
}

/// 14. A principal sees its own lock keys and holders; others' only as
/// counts, also in the refusal of a conflicting request. An administrator
/// (`auth.admin_principals`) sees them all.
#[tokio::test]
async fn principals_see_only_their_own_locks_and_holders() {
    let env = Env::new();
    let tokens = std::fs::read_to_string(env.two_principals()).unwrap();
    let cfg = env.config(&tokens);
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let alice = server.client(Era::Legacy, Some(ALICE_TOKEN)).await;
    let bob = server.client(Era::Modern, Some(BOB_TOKEN)).await;
    ok(
        &alice,
        "allocate_resources",
        json!({"requirements": {"locks": [{"key": "secret:alice-lock", "mode": "exclusive"}]},
               "user_id": "alice-user", "ttl_seconds": 3600}),
    )
    .await;
    let mine = ok(&alice, "get_resource_status", json!({})).await;
    assert_eq!(
        mine["locks"]["secret:alice-lock"]["holders"][0]["holder"], "alice-user",
        "{mine}"
    );
    let theirs = ok(&bob, "get_resource_status", json!({})).await;
    let text = theirs.to_string();
    assert!(
        !text.contains("secret:alice-lock") && !text.contains("alice-user"),
        "{text}"
    );
    assert_eq!(theirs["locks_held_by_others"], 1, "{theirs}");
    let e = err(
        &bob,
        "allocate_resources",
        json!({"requirements": {"locks": [{"key": "secret:alice-lock", "mode": "read"}]}}),
        "RESOURCE_UNAVAILABLE",
    )
    .await;
    assert!(!e.to_string().contains("alice-user"), "{e}");
    drop((alice, bob, server));

    // With bob as administrator he sees alice's lock and holder.
    let cfg = env.config(&format!("[auth]\nadmin_principals = [\"bob\"]\n\n{tokens}"));
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let bob = server.client(Era::Modern, Some(BOB_TOKEN)).await;
    let all = ok(&bob, "get_resource_status", json!({})).await;
    assert_eq!(
        all["locks"]["secret:alice-lock"]["holders"][0]["holder"], "alice-user",
        "{all}"
    );
    assert_eq!(all["locks_held_by_others"], 0);
}

/// One action as an auto task of `c`; the finished task.
async fn act(c: &Client, module: &str, action: &str, params: Value) -> Value {
    let v = ok(
        c,
        "execute_task",
        json!({"task_name": format!("t-{}", uuid::Uuid::new_v4().simple()), "module": module,
               "action": action, "parameters": params, "wait_seconds": 30}),
    )
    .await;
    ok(
        c,
        "get_task",
        json!({"task_id": v["task_id"], "wait_seconds": 30}),
    )
    .await
}

/// 9. Without configured roots, a principal's fs steps reach only its own
/// work area and its own projects' folders; `{principal}` in a configured
/// root gives each principal its own.
#[tokio::test]
async fn fs_steps_reach_only_their_principals_folders() {
    let env = Env::new();
    let cfg = env.two_principals();
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let alice = server.client(Era::Legacy, Some(ALICE_TOKEN)).await;
    let bob = server.client(Era::Modern, Some(BOB_TOKEN)).await;
    let p = ok(
        &alice,
        "create_project",
        json!({"name": "alice-proj", "template": "web_application"}),
    )
    .await;
    let path = p["project_path"].as_str().unwrap().to_string();
    let file = format!("{path}/notes.txt");
    let t = act(
        &alice,
        "fs",
        "write",
        json!({"path": file, "content": "alice's"}),
    )
    .await;
    assert_eq!(t["status"], "succeeded", "{t}");
    let t = act(
        &alice,
        "fs",
        "write",
        json!({"path": "scratch.txt", "content": "work"}),
    )
    .await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert!(env.path().join("work/alice/scratch.txt").is_file());

    for (action, params) in [
        ("read", json!({"path": file})),
        ("write", json!({"path": file, "content": "bob's"})),
        ("delete", json!({"path": path, "recursive": true})),
        ("list", json!({"path": path})),
        (
            "read",
            json!({"path": env.path().join("work/alice/scratch.txt")}),
        ),
    ] {
        let t = act(&bob, "fs", action, params.clone()).await;
        assert_eq!(
            t["error"]["code"], "PERMISSION_DENIED",
            "bob {action} {params}: {t}"
        );
    }
    // Relative paths are bob's own.
    let t = act(
        &bob,
        "fs",
        "delete",
        json!({"path": "alice-proj", "recursive": true}),
    )
    .await;
    assert_eq!(t["error"]["code"], "NOT_FOUND", "{t}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "alice's");
    ok(&alice, "get_project", json!({"project": "alice-proj"})).await;
    drop(server);

    // A shared root with {principal}: each its own folder below it.
    let shared = env.path().join("shared");
    let tokens = std::fs::read_to_string(&cfg).unwrap();
    let cfg = env.config(&format!(
        "[modules.fs]\nroots = [\"{}/{{principal}}\"]\n\n{tokens}",
        shared.display()
    ));
    std::fs::create_dir_all(shared.join("alice")).unwrap();
    std::fs::create_dir_all(shared.join("bob")).unwrap();
    let server = env.http(&["--config", cfg.to_str().unwrap()]).await;
    let alice = server.client(Era::Legacy, Some(ALICE_TOKEN)).await;
    let bob = server.client(Era::Modern, Some(BOB_TOKEN)).await;
    let t = act(
        &alice,
        "fs",
        "write",
        json!({"path": "a.txt", "content": "a"}),
    )
    .await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert!(shared.join("alice/a.txt").is_file());
    let t = act(
        &bob,
        "fs",
        "read",
        json!({"path": shared.join("alice/a.txt")}),
    )
    .await;
    assert_eq!(t["error"]["code"], "PERMISSION_DENIED", "{t}");
}

/// 10. With `allowed_commands`, a step's env may not set what changes which
/// program runs or what it loads; `allowed_env` admits only the names it lists.
#[tokio::test]
async fn shell_env_cannot_inject_code_into_allowed_commands() {
    let env = Env::new();
    let c = env
        .stdio_config(
            Era::Legacy,
            "[modules.shell]\nenabled = true\nallowed_commands = [\"sh\", \"echo\"]\nallowed_env = [\"GREETING\", \"LD_PRELOAD\"]\n",
        )
        .await;
    for var in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "DYLD_INSERT_LIBRARIES",
        "BASH_ENV",
        "ENV",
        "PYTHONPATH",
        "NODE_OPTIONS",
        "PERL5OPT",
        "RUBYOPT",
        "GIT_SSH_COMMAND",
        "PATH",
    ] {
        let t = act(
            &c,
            "shell",
            "run",
            json!({"argv": ["echo", "hi"], "env": {var: "/tmp/evil.so"}}),
        )
        .await;
        assert_eq!(t["error"]["code"], "PERMISSION_DENIED", "{var}: {t}");
        assert!(t["error"]["message"].as_str().unwrap().contains(var), "{t}");
    }
    let t = act(
        &c,
        "shell",
        "run",
        json!({"argv": ["echo", "hi"], "env": {"OTHER": "x"}}),
    )
    .await;
    assert_eq!(t["error"]["code"], "PERMISSION_DENIED", "{t}");
    assert!(
        t["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allowed_env")
    );
    let t = act(
        &c,
        "shell",
        "run",
        json!({"command": "echo \"$GREETING\"", "shell": true, "env": {"GREETING": "hello"}}),
    )
    .await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert_eq!(t["result"]["stdout"], "hello\n");
}

/// 11. fs operations open beneath a handle of their root: a folder swapped
/// for a symlink to the outside between check and use (renameat2 with
/// RENAME_EXCHANGE, by another local writer) never lets a read return an
/// outside file or a write land outside.
#[tokio::test]
async fn fs_paths_swapped_for_symlinks_mid_operation_never_escape() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new();
    let root = env.path().join("root");
    let outside = env.path().join("outside");
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("d/f.txt"), "inside").unwrap();
    std::fs::write(outside.join("f.txt"), "OUTSIDE SECRET").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("swap")).unwrap();
    let c = env
        .stdio_config(
            Era::Modern,
            &format!("[modules.fs]\nroots = [\"{}\"]\n", root.display()),
        )
        .await;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, root) = (stop.clone(), root.clone());
        std::thread::spawn(move || {
            let (a, b) = (root.join("d"), root.join("swap"));
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &a,
                    nix::fcntl::AT_FDCWD,
                    &b,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let mut reads = 0;
    let mut writes = 0;
    for i in 0..400 {
        let r = act(&c, "fs", "read", json!({"path": "d/f.txt"})).await;
        if r["status"] == "succeeded" {
            reads += 1;
            assert_eq!(r["result"]["content"], "inside", "read {i} escaped: {r}");
        }
        let w = act(
            &c,
            "fs",
            "write",
            json!({"path": format!("d/w{i}.txt"), "content": "x"}),
        )
        .await;
        if w["status"] == "succeeded" {
            writes += 1;
        }
        let escaped: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "f.txt")
            .collect();
        assert!(escaped.is_empty(), "write {i} landed outside: {escaped:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 400, "the swapper ran ({swaps} swaps)");
    assert!(
        reads > 0 && writes > 0,
        "some operations went through ({reads} reads, {writes} writes)"
    );
}

/// 15. A redirect to another port of the same host is another origin: the
/// Authorization header (and cookies) do not follow it.
#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_origin() {
    use axum::routing::get;
    async fn serve(app: axum::Router) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        format!("http://{addr}")
    }
    let echo = |h: axum::http::HeaderMap| async move {
        axum::Json(json!({
            "authorization": h.get("authorization").and_then(|v| v.to_str().ok()),
            "cookie": h.get("cookie").and_then(|v| v.to_str().ok()),
        }))
    };
    let other = serve(axum::Router::new().route("/echo", get(echo))).await;
    let target = format!("{other}/echo");
    let first = serve(
        axum::Router::new()
            .route("/echo", get(echo))
            .route(
                "/away",
                get(move || {
                    let t = target.clone();
                    async move { axum::response::Redirect::temporary(&t) }
                }),
            )
            .route(
                "/here",
                get(|| async { axum::response::Redirect::temporary("/echo") }),
            ),
    )
    .await;
    let c = env_with_http().await;
    let headers = json!({"Authorization": "Bearer s3cret", "Cookie": "k=v"});
    let t = act(
        &c.1,
        "http",
        "request",
        json!({"url": format!("{first}/away"), "headers": headers}),
    )
    .await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert_eq!(t["result"]["json"]["authorization"], Value::Null, "{t}");
    assert_eq!(t["result"]["json"]["cookie"], Value::Null, "{t}");
    // The same origin keeps them.
    let t = act(
        &c.1,
        "http",
        "request",
        json!({"url": format!("{first}/here"), "headers": headers}),
    )
    .await;
    assert_eq!(t["result"]["json"]["authorization"], "Bearer s3cret", "{t}");
}

async fn env_with_http() -> (Env, Client) {
    let env = Env::new();
    let c = env
        .stdio_config(
            Era::Legacy,
            "[modules.http]\nenabled = true\nallowed_private = [\"127.0.0.1\"]\n",
        )
        .await;
    (env, c)
}

/// Health checks are bounded too: a client polling get_health_status does not
/// cost a store commit (and an fsync) per call. The write probe is redone only
/// past `health_probe_interval_ms`; in between, the last one is reported.
#[tokio::test]
async fn health_checks_write_at_most_one_store_probe_per_interval() {
    let probed_at = |h: &Value| h["components"]["store"]["details"]["probed_at"].clone();
    let env = Env::new();
    let kept = env
        .stdio_config(Era::Legacy, "health_probe_interval_ms = 3600000\n")
        .await;
    let first = ok(&kept, "get_health_status", json!({})).await;
    assert!(probed_at(&first).is_string(), "{first}");
    assert_eq!(first["components"]["store"]["status"], "healthy", "{first}");
    for _ in 0..3 {
        let again = ok(&kept, "get_health_status", json!({})).await;
        assert_eq!(probed_at(&again), probed_at(&first), "{again}");
    }
    drop(kept);
    let env = Env::new();
    let every = env
        .stdio_config(Era::Legacy, "health_probe_interval_ms = 0\n")
        .await;
    let first = ok(&every, "get_health_status", json!({})).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = ok(&every, "get_health_status", json!({})).await;
    assert_ne!(probed_at(&second), probed_at(&first), "{second}");
}

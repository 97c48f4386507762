//! Shared helpers: start the real `myrmex` binary and talk to it with rmcp's
//! client, over stdio (child process) or Streamable HTTP, in either protocol era.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rmcp::RoleClient;
use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub type Client = RunningService<RoleClient, ()>;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_myrmex")
}

/// Bearer tokens of [`Env::two_principals`].
pub const ALICE_TOKEN: &str = "alice-secret-token-0123456789";
pub const BOB_TOKEN: &str = "bob-secret-token-0123456789ab";

/// Which protocol era a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 2025-11-25: initialize + Mcp-Session-Id.
    Legacy,
    /// 2026-07-28: server/discover, stateless.
    Modern,
}

pub const ERAS: [Era; 2] = [Era::Legacy, Era::Modern];

/// The client really negotiated the era it was asked for.
fn check_era<H: rmcp::ClientHandler>(c: &RunningService<RoleClient, H>, era: Era) {
    let info = c.peer_info().expect("server info");
    let want = match era {
        Era::Legacy => ProtocolVersion::V_2025_11_25,
        Era::Modern => ProtocolVersion::V_2026_07_28,
    };
    assert_eq!(info.protocol_version, want);
    assert_eq!(
        info.server_info.as_ref().map(|s| s.name.as_str()),
        Some("myrmex")
    );
}

pub fn lifecycle(era: Era) -> ClientLifecycleMode {
    match era {
        Era::Legacy => ClientLifecycleMode::Initialize,
        Era::Modern => ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        },
    }
}

/// A scratch data directory plus the command line that uses it.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// With TEST_MYRMEX_STORE=postgres: the store every server of this Env uses
    /// (a schema of its own in the test database).
    pub postgres: Option<String>,
}

/// Is the suite running against PostgreSQL (TEST_MYRMEX_STORE=postgres)?
pub fn on_postgres() -> bool {
    std::env::var("TEST_MYRMEX_STORE").is_ok_and(|s| s == "postgres")
}

/// A plain HTTP client for the tests (TLS through the server's provider).
pub fn http_client() -> reqwest::Client {
    myrmex::actions::tls_ready();
    reqwest::Client::new()
}

impl Env {
    pub fn new() -> Self {
        if on_postgres() {
            return Self::postgres();
        }
        Self::local()
    }

    /// An Env on PostgreSQL whatever TEST_MYRMEX_STORE says (tests of several
    /// servers sharing one database).
    pub fn postgres() -> Self {
        let base = std::env::var("TEST_MYRMEX_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let sep = if base.contains('?') { '&' } else { '?' };
        Self {
            postgres: Some(format!(
                "{base}{sep}schema=t_{}",
                uuid::Uuid::new_v4().simple()
            )),
            ..Self::local()
        }
    }

    /// An Env that keeps the store its commands name, also on PostgreSQL runs
    /// (for tests of the store choice itself).
    pub fn local() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            postgres: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `myrmex.toml` in the data directory and return its path.
    pub fn config(&self, toml: &str) -> PathBuf {
        let p = self.dir.path().join("myrmex.toml");
        std::fs::write(&p, toml).expect("write config");
        p
    }

    /// A config with two bearer tokens: principals `alice` ([`ALICE_TOKEN`])
    /// and `bob` ([`BOB_TOKEN`]). Returns its path.
    pub fn two_principals(&self) -> PathBuf {
        let (a, b) = (self.path().join("alice.tok"), self.path().join("bob.tok"));
        std::fs::write(&a, ALICE_TOKEN).expect("write token");
        std::fs::write(&b, BOB_TOKEN).expect("write token");
        self.config(&format!(
            "[[auth.tokens]]\nname = \"alice\"\ntoken_file = \"{}\"\n[[auth.tokens]]\nname = \"bob\"\ntoken_file = \"{}\"\n",
            a.display(),
            b.display()
        ))
    }

    /// `myrmex --data-dir DIR <args>` with a clean MYRMEX_* environment. On
    /// PostgreSQL, `--store X` gives way to this Env's database schema.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--data-dir").arg(self.dir.path());
        let mut skip = false;
        for a in args {
            if skip {
                skip = false;
                continue;
            }
            if self.postgres.is_some() && *a == "--store" {
                skip = true;
                continue;
            }
            c.arg(a);
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("MYRMEX_") {
                c.env_remove(k);
            }
        }
        if let Some(url) = &self.postgres {
            c.env("MYRMEX_STORE", url);
        }
        c.env("MYRMEX_LOG_LEVEL", "debug");
        c.kill_on_drop(true);
        c
    }

    /// A stdio client on `myrmex serve <extra>`.
    pub async fn stdio(&self, era: Era, extra: &[&str]) -> Client {
        self.stdio_with(era, extra, ()).await
    }

    /// A stdio client with its own handler (to see notifications) on `myrmex serve <extra>`.
    pub async fn stdio_with<H: rmcp::ClientHandler>(
        &self,
        era: Era,
        extra: &[&str],
        handler: H,
    ) -> RunningService<RoleClient, H> {
        let mut args = vec!["serve"];
        args.extend_from_slice(extra);
        let stderr = match std::env::var("TEST_MYRMEX_STDERR_DIR") {
            Ok(d) => Stdio::from(
                std::fs::File::create(format!("{d}/{}.log", uuid::Uuid::new_v4().simple()))
                    .expect("log file"),
            ),
            Err(_) => Stdio::null(),
        };
        let (proc, _stderr) = TokioChildProcess::builder(self.command(&args))
            .stderr(stderr)
            .spawn()
            .expect("spawn myrmex");
        handler
            .serve_with_lifecycle(proc, lifecycle(era))
            .await
            .expect("stdio client connects")
    }

    /// A stdio client on `myrmex serve <extra>`, and the server's pid.
    pub async fn stdio_pid(&self, era: Era, extra: &[&str]) -> (Client, u32) {
        let mut args = vec!["serve"];
        args.extend_from_slice(extra);
        let (proc, _stderr) = TokioChildProcess::builder(self.command(&args))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn myrmex");
        let pid = proc.id().expect("a pid");
        let c = ().serve_with_lifecycle(proc, lifecycle(era)).await.expect("stdio client connects");
        (c, pid)
    }

    /// A stdio client on `myrmex serve --config <myrmex.toml with `toml`> --store memory`.
    pub async fn stdio_config(&self, era: Era, toml: &str) -> Client {
        let cfg = self.config(toml);
        let cfg = cfg.to_str().expect("utf-8 path");
        self.stdio(era, &["--config", cfg, "--store", "memory"])
            .await
    }

    /// Start `myrmex serve --http 127.0.0.1:0 <extra>` and wait until it listens.
    pub async fn http(&self, extra: &[&str]) -> HttpServer {
        let mut args = vec!["serve", "--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        HttpServer::start(self.command(&args)).await
    }
}

pub struct HttpServer {
    pub child: Child,
    pub addr: String,
    pub url: String,
    /// stderr lines after the listen line keep draining in the background.
    _drain: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub async fn start(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn myrmex");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            let mut seen = Vec::new();
            while let Some(line) = lines.next_line().await.expect("read stderr") {
                if let Some(rest) = line
                    .split("addr=")
                    .nth(1)
                    .filter(|_| line.contains("Streamable HTTP"))
                {
                    return rest.split_whitespace().next().expect("addr").to_string();
                }
                seen.push(line);
            }
            panic!("myrmex exited before listening:\n{}", seen.join("\n"));
        })
        .await
        .expect("myrmex listens within 60 s");
        let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = format!("http://{addr}/mcp");
        Self {
            child,
            addr,
            url,
            _drain: drain,
        }
    }

    /// An rmcp client, optionally with a bearer token.
    pub async fn client(&self, era: Era, token: Option<&str>) -> Client {
        self.client_with(era, token, ()).await
    }

    /// An rmcp client with its own handler (capabilities, notifications).
    pub async fn client_with<H: rmcp::ClientHandler>(
        &self,
        era: Era,
        token: Option<&str>,
        handler: H,
    ) -> RunningService<RoleClient, H> {
        let mut cfg = StreamableHttpClientTransportConfig::with_uri(self.url.clone());
        if let Some(t) = token {
            cfg = cfg.auth_header(t.to_string());
        }
        myrmex::actions::tls_ready();
        let transport = StreamableHttpClientTransport::from_config(cfg);
        let c = handler
            .serve_with_lifecycle(transport, lifecycle(era))
            .await
            .expect("http client connects");
        check_era(&c, era);
        c
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }
}

/// Send a signal to a process (Unix).
pub fn signal(pid: i32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -{sig} {pid}");
}

/// The outcome of one tool call: `Ok(structuredContent)` or `Err(error body)`.
pub type Outcome = Result<Value, Value>;

/// Call a tool; the result must carry structured content either way.
pub async fn call(client: &Client, tool: &str, args: Value) -> Outcome {
    let args: Map<String, Value> = match args {
        Value::Object(m) => m,
        other => panic!("arguments must be an object, got {other}"),
    };
    let res = client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: protocol error {e}"));
    let text = res
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .expect("text content");
    let text: Value = serde_json::from_str(&text).expect("text is JSON");
    if res.is_error == Some(true) {
        // Errors carry their body as JSON text only: structuredContent would
        // have to match the success outputSchema.
        assert!(
            res.structured_content.is_none(),
            "{tool}: error with structuredContent"
        );
        assert_eq!(text.as_object().map(|o| o.len()), Some(2), "{tool}: {text}");
        assert_eq!(text["success"], json!(false), "{tool}: {text}");
        return Err(text["error"].clone());
    }
    let structured = res
        .structured_content
        .clone()
        .unwrap_or_else(|| panic!("{tool}: no structuredContent: {res:?}"));
    assert_eq!(
        text, structured,
        "{tool}: text differs from structuredContent"
    );
    Ok(structured)
}

/// Call a tool that must succeed.
pub async fn ok(client: &Client, tool: &str, args: Value) -> Value {
    call(client, tool, args)
        .await
        .unwrap_or_else(|e| panic!("{tool} failed: {e}"))
}

/// Call a tool that must fail with `code`; returns the error body.
pub async fn err(client: &Client, tool: &str, args: Value, code: &str) -> Value {
    match call(client, tool, args).await {
        Ok(v) => panic!("{tool} succeeded but {code} was expected: {v}"),
        Err(e) => {
            assert_eq!(e["code"], json!(code), "{tool}: {e}");
            assert!(
                e["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{tool}: no message: {e}"
            );
            assert!(
                e["hint"].as_str().is_some_and(|m| !m.is_empty()),
                "{tool}: no hint: {e}"
            );
            e
        }
    }
}

/// The fields an INVALID_PARAMETERS error names (`details.fields[].field`).
pub fn fields_named(e: &Value) -> Vec<&str> {
    e["details"]["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["field"].as_str())
        .collect()
}

/// The tool names of this server, sorted.
pub async fn tool_names(client: &Client) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

pub const TOOLS: &[&str] = &[
    "allocate_resources",
    "cancel_task",
    "cancel_workflow_run",
    "close_session",
    "complete_task",
    "create_complex_workflow",
    "create_project",
    "create_session",
    "create_task",
    "create_tasks",
    "create_workflow",
    "delete_workflow",
    "execute_task",
    "execute_workflow",
    "fail_task",
    "generate_docs",
    "get_events",
    "get_health_status",
    "get_project",
    "get_resource_status",
    "get_session",
    "get_system_status",
    "get_task",
    "get_task_graph",
    "get_template",
    "get_workflow",
    "get_workflow_run",
    "list_allocations",
    "list_modules",
    "list_projects",
    "list_sessions",
    "list_tasks",
    "list_templates",
    "list_workflow_runs",
    "list_workflows",
    "manage_project",
    "next_task",
    "release_resources",
    "renew_allocation",
    "renew_task_lease",
    "retry_task",
    "retry_workflow_run",
    "update_task",
    "validate_workflow",
];

/// The steps of a run view, by name.
pub fn steps_by_name(run: &Value) -> std::collections::HashMap<String, Value> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s.clone()))
        .collect()
}

/// Poll a run until one of its steps reaches a status (bounded; no timing assertion).
pub async fn wait_for_step(c: &Client, run_id: &Value, step: &str, status: &str) -> Value {
    for _ in 0..600 {
        let v = ok(c, "get_workflow_run", json!({"run_id": run_id})).await;
        if steps_by_name(&v)[step]["status"] == status {
            return v;
        }
        assert!(
            matches!(v["status"].as_str(), Some("pending" | "running")),
            "run ended before step {step} became {status}: {}",
            v["steps"]
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("step {step} of {run_id} never became {status}");
}

/// Start a workflow by name without waiting; the run as execute_workflow answered.
pub async fn start(c: &Client, workflow: &str) -> Value {
    ok(
        c,
        "execute_workflow",
        json!({"workflow_name": workflow, "wait_seconds": 0}),
    )
    .await
}

/// Wait for a run to end.
pub async fn finish(c: &Client, run_id: &Value) -> Value {
    for _ in 0..10 {
        let v = ok(
            c,
            "get_workflow_run",
            json!({"run_id": run_id, "wait_seconds": 30}),
        )
        .await;
        if !matches!(v["status"].as_str(), Some("pending" | "running")) {
            return v;
        }
    }
    panic!("run {run_id} did not end");
}

/// A raw Streamable HTTP `initialize` as `token`: the new session's id, or
/// the status when none was issued.
pub async fn raw_initialize(url: &str, token: &str) -> Result<String, u16> {
    let r = http_client()
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}))
        .send()
        .await
        .unwrap();
    match r.headers().get("mcp-session-id") {
        Some(id) => Ok(id.to_str().unwrap().to_string()),
        None => Err(r.status().as_u16()),
    }
}

/// The HTTP status of a raw request in a transport session (a POST is a ping).
pub async fn raw_in_session(url: &str, token: &str, session: &str, method: reqwest::Method) -> u16 {
    let mut r = http_client()
        .request(method.clone(), url)
        .bearer_auth(token)
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .header("accept", "application/json, text/event-stream");
    if method == reqwest::Method::POST {
        r = r.json(&json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}));
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), r.send())
        .await
        .expect("answered")
        .unwrap()
        .status()
        .as_u16()
}

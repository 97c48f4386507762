//! `mcp`: every configured downstream MCP server becomes a module.
//! `mcp.call` calls one of its tools, `mcp.list_tools` lists them.
//!
//! Connections are made with rmcp's client on first use (a child process
//! over stdio, or Streamable HTTP), kept for later calls, and made again
//! when the server died or the connection broke. A downstream failure (a
//! tool error, a protocol error, a lost connection) becomes a step error
//! that names the server and the tool.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rmcp::RoleClient;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RunningService, ServiceExt};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Map, Value, json};
use tokio::io::AsyncBufReadExt;

use super::{ActionCtx, ActionError, ActionSpec, Module};
use crate::config::McpServerConfig;
use crate::error::ErrorCode;

type Client = RunningService<RoleClient, ()>;

/// How long connecting (start + handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit of one downstream call when neither the step nor the server config gives one.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// One downstream server and its current connection.
struct Downstream {
    config: McpServerConfig,
    conn: tokio::sync::Mutex<Option<Arc<Client>>>,
}

fn failed(server: &str, what: &str, msg: impl std::fmt::Display) -> ActionError {
    ActionError::new(
        ErrorCode::ActionFailed,
        format!("mcp server '{server}' {what}: {msg}"),
    )
}

impl Downstream {
    /// The live connection, made (again) when there is none or it broke.
    async fn client(&self) -> Result<Arc<Client>, ActionError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() && !c.peer().is_transport_closed() {
                return Ok(c.clone());
            }
            tracing::info!(server = %self.config.name, "downstream MCP connection lost; reconnecting");
        }
        let c = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| {
                failed(
                    &self.config.name,
                    "did not connect",
                    format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                )
            })??;
        let c = Arc::new(c);
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn connect(&self) -> Result<Client, ActionError> {
        let name = &self.config.name;
        if let Some(program) = &self.config.command {
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(&self.config.args)
                .envs(&self.config.env)
                .kill_on_drop(true);
            if let Some(d) = &self.config.cwd {
                cmd.current_dir(d);
            }
            let (proc, stderr) = TokioChildProcess::builder(cmd)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| failed(name, "cannot be started", format!("{program}: {e}")))?;
            if let Some(stderr) = stderr {
                let server = name.clone();
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::debug!(server = %server, "downstream stderr: {line}");
                    }
                });
            }
            ().serve(proc)
                .await
                .map_err(|e| failed(name, "did not complete the MCP handshake", e))
        } else {
            let url = self.config.url.clone().unwrap_or_default();
            let mut headers = HashMap::new();
            for (k, v) in &self.config.headers {
                let k = http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| failed(name, "has a bad header name", format!("{k}: {e}")))?;
                let v = http::HeaderValue::from_str(v)
                    .map_err(|e| failed(name, "has a bad header value", e))?;
                headers.insert(k, v);
            }
            super::tls_ready();
            let cfg = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(headers);
            ().serve(StreamableHttpClientTransport::from_config(cfg))
                .await
                .map_err(|e| failed(name, "did not complete the MCP handshake", e))
        }
    }

    /// Forget a connection that failed (unless it was replaced meanwhile).
    async fn forget(&self, c: &Arc<Client>) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, c)) {
            *slot = None;
        }
    }

    fn call_timeout(&self, p: &Value) -> Duration {
        p.get("timeout_seconds")
            .and_then(Value::as_u64)
            .or(self.config.timeout_seconds)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_CALL_TIMEOUT)
    }
}

/// Did this error (or the connection's state) show the connection is gone?
fn connection_lost(client: &Client, e: &rmcp::service::ServiceError) -> bool {
    use rmcp::service::ServiceError as E;
    matches!(e, E::TransportClosed | E::TransportSend(_))
        || client.is_closed()
        || client.peer().is_transport_closed()
}

pub struct Mcp {
    servers: BTreeMap<String, Arc<Downstream>>,
}

impl Mcp {
    pub fn new(configs: &[McpServerConfig]) -> Self {
        Self {
            servers: configs
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        Arc::new(Downstream {
                            config: c.clone(),
                            conn: tokio::sync::Mutex::new(None),
                        }),
                    )
                })
                .collect(),
        }
    }

    fn server_schema(&self) -> Value {
        let names: Vec<&String> = self.servers.keys().collect();
        if names.is_empty() {
            json!({"type": "string", "description": "Name of a configured [[mcp_servers]] entry (none are configured)."})
        } else {
            json!({"type": "string", "enum": names, "description": "Name of a configured [[mcp_servers]] entry."})
        }
    }

    fn server(&self, p: &Value) -> Result<&Arc<Downstream>, ActionError> {
        let name = p.get("server").and_then(Value::as_str).unwrap_or_default();
        self.servers.get(name).ok_or_else(|| {
            ActionError::new(
                ErrorCode::InvalidParameters,
                format!(
                    "no MCP server named '{name}' is configured; known: {}",
                    self.servers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    }

    async fn call_tool(&self, p: &Value, ctx: &ActionCtx) -> Result<Value, ActionError> {
        let d = self.server(p)?;
        let server = d.config.name.as_str();
        let tool = p
            .get("tool")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let args: Map<String, Value> = p
            .get("arguments")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let what = format!("tool '{tool}'");
        let client = d.client().await?;
        let params = CallToolRequestParams::new(tool.clone()).with_arguments(args);
        let timeout = d.call_timeout(p);
        let res = tokio::select! {
            r = tokio::time::timeout(timeout, client.call_tool(params)) => match r {
                Ok(r) => r,
                Err(_) => return Err(ActionError::new(
                    ErrorCode::TimeoutExceeded,
                    format!("mcp server '{server}' {what} did not answer within {} s", timeout.as_secs()),
                )),
            },
            _ = ctx.cancel.cancelled() => return Err(ActionError::cancelled()),
        };
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                if connection_lost(&client, &e) {
                    d.forget(&client).await;
                    return Err(failed(
                        server,
                        &what,
                        format!("the connection was lost ({e}); it is made again on the next call"),
                    ));
                }
                return Err(failed(server, &what, e));
            }
        };
        let text: Vec<String> = res
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect();
        if res.is_error == Some(true) {
            return Err(failed(server, &format!("{what} failed"), text.join("\n")));
        }
        Ok(match res.structured_content {
            Some(v) => v,
            None => Value::String(text.join("\n")),
        })
    }

    async fn list_tools(&self, p: &Value) -> Result<Value, ActionError> {
        let d = self.server(p)?;
        let server = d.config.name.as_str();
        let client = d.client().await?;
        let tools = match client.list_all_tools().await {
            Ok(t) => t,
            Err(e) => {
                if connection_lost(&client, &e) {
                    d.forget(&client).await;
                }
                return Err(failed(server, "could not list its tools", e));
            }
        };
        let tools: Vec<Value> = tools
            .into_iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description,
                    "input_schema": Value::Object((*t.input_schema).clone()),
                })
            })
            .collect();
        Ok(json!({"server": server, "tools": tools}))
    }
}

#[async_trait]
impl Module for Mcp {
    fn name(&self) -> &'static str {
        "mcp"
    }

    fn description(&self) -> &'static str {
        "Tools of other MCP servers configured as [[mcp_servers]]."
    }

    fn disabled(&self) -> Option<String> {
        self.servers.is_empty().then(|| {
            "no downstream MCP servers are configured; add [[mcp_servers]] entries (name plus command/args or url) to the server's configuration".to_string()
        })
    }

    fn actions(&self) -> Vec<ActionSpec> {
        vec![
            ActionSpec {
                module: "mcp",
                action: "call",
                description: "Call a tool of a downstream MCP server. Output: the tool's structured content, or its text content as a string; a tool error fails the step.",
                params_schema: json!({
                    "type": "object",
                    "properties": {
                        "server": self.server_schema(),
                        "tool": {"type": "string", "minLength": 1, "description": "The tool's name (see mcp.list_tools)."},
                        "arguments": {"type": "object", "description": "The tool's arguments."},
                        "timeout_seconds": {"type": "integer", "minimum": 1, "description": "Time limit of the call (default: the server's timeout_seconds, else 300)."}
                    },
                    "required": ["server", "tool"],
                    "additionalProperties": false
                }),
                output_schema: json!({}),
            },
            ActionSpec {
                module: "mcp",
                action: "list_tools",
                description: "List the tools of a downstream MCP server. Output {server, tools: [{name, description, input_schema}]}.",
                params_schema: json!({
                    "type": "object",
                    "properties": {"server": self.server_schema()},
                    "required": ["server"],
                    "additionalProperties": false
                }),
                output_schema: json!({"type": "object", "properties": {"server": {"type": "string"}, "tools": {"type": "array"}}}),
            },
        ]
    }

    async fn call(&self, action: &str, p: Value, ctx: ActionCtx) -> Result<Value, ActionError> {
        match action {
            "call" => self.call_tool(&p, &ctx).await,
            "list_tools" => tokio::select! {
                r = self.list_tools(&p) => r,
                _ = ctx.cancel.cancelled() => Err(ActionError::cancelled()),
            },
            other => Err(ActionError::new(
                ErrorCode::ModuleNotFound,
                format!("mcp has no action '{other}'"),
            )),
        }
    }
}

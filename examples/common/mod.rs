//! What the benchmarks that drive the real server over MCP share (each uses a part).
#![allow(dead_code)]

use rmcp::RoleClient;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RunningService, ServiceExt};
use rmcp::transport::StreamableHttpClientTransport;
use serde_json::Value;

pub type Client = RunningService<RoleClient, ()>;

/// Call a tool that must succeed; its structured content.
pub async fn call(c: &Client, tool: &str, args: Value) -> Value {
    let Value::Object(args) = args else {
        panic!("object")
    };
    let r = c
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert_ne!(r.is_error, Some(true), "{tool}: {r:?}");
    r.structured_content.expect("structured content")
}

/// An MCP client over Streamable HTTP.
pub async fn client(url: &str) -> Client {
    ().serve(StreamableHttpClientTransport::from_uri(url.to_string()))
        .await
        .expect("connect")
}

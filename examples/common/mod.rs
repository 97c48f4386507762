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
    myrmex::actions::tls_ready();
    ().serve(StreamableHttpClientTransport::from_uri(url.to_string()))
        .await
        .expect("connect")
}

/// A number of a `/proc/.../status` file (`VmRSS`, `VmHWM` in KiB,
/// `voluntary_ctxt_switches`, ...); 0 when the file or the line is missing.
pub fn proc_status(path: impl AsRef<std::path::Path>, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
        })
        .unwrap_or(0)
}

/// (CPU ns, context switches) of every live thread of process `pid` so far,
/// from `/proc/PID/task/*/{schedstat,status}`.
pub fn thread_usage(pid: u32) -> (u64, u64) {
    let (mut cpu, mut switches) = (0, 0);
    let dir = format!("/proc/{pid}/task");
    for task in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = task.path();
        if let Ok(s) = std::fs::read_to_string(p.join("schedstat")) {
            cpu += s
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
        let status = p.join("status");
        switches += proc_status(&status, "voluntary_ctxt_switches")
            + proc_status(&status, "nonvoluntary_ctxt_switches");
    }
    (cpu, switches)
}

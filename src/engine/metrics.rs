//! In-process counters of operations (tool calls), for `get_system_status`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

#[derive(Default)]
pub struct Metrics {
    ops: Mutex<BTreeMap<String, OpStats>>,
    /// Open legacy HTTP+SSE streams.
    pub sse_streams: std::sync::atomic::AtomicUsize,
}

/// Counters of one operation since the process started.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct OpStats {
    /// Calls that returned a result.
    pub ok: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Sum of call durations, in milliseconds.
    pub total_ms: f64,
    /// Longest call, in milliseconds.
    pub max_ms: f64,
}

impl Metrics {
    pub fn record(&self, op: &str, ok: bool, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let mut g = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let s = g.entry(op.to_string()).or_default();
        if ok {
            s.ok += 1;
        } else {
            s.errors += 1;
        }
        s.total_ms += ms;
        s.max_ms = s.max_ms.max(ms);
    }

    pub fn snapshot(&self) -> BTreeMap<String, OpStats> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

//! Counters of operations (tool calls) for `get_system_status`, and the
//! Prometheus exposition served at `/metrics`: tool calls by name and outcome
//! with latency histograms (kept here), and gauges read at scrape time (runs,
//! steps and tasks by state, queue depths, pool use, store latency).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use schemars::JsonSchema;
use serde::Serialize;

use super::{count_of, spelled_counts};
use crate::engine::{Engine, now_ms};
use crate::error::{Error, Result};
use crate::model::{StepStatus, TaskStatus};

pub struct Metrics {
    ops: Mutex<BTreeMap<String, OpStats>>,
    /// Open legacy HTTP+SSE streams.
    pub sse_streams: std::sync::atomic::AtomicUsize,
    /// Open Streamable HTTP transport sessions.
    pub http_sessions: std::sync::atomic::AtomicUsize,
    registry: Registry,
    calls: IntCounterVec,
    latency: HistogramVec,
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

/// Latency buckets of tool calls, in seconds: 1 ms to the longest wait a call may ask for.
const CALL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let calls = IntCounterVec::new(
            Opts::new(
                "myrmex_tool_calls_total",
                "Tool calls by tool and outcome (ok or error).",
            ),
            &["tool", "outcome"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "myrmex_tool_call_duration_seconds",
                "How long tool calls took, by tool.",
            )
            .buckets(CALL_BUCKETS.to_vec()),
            &["tool"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(calls.clone()))
            .expect("registered once");
        registry
            .register(Box::new(latency.clone()))
            .expect("registered once");
        Self {
            ops: Mutex::default(),
            sse_streams: Default::default(),
            http_sessions: Default::default(),
            registry,
            calls,
            latency,
        }
    }
}

impl Metrics {
    pub fn record(&self, op: &str, ok: bool, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        {
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
        self.calls
            .with_label_values(&[op, if ok { "ok" } else { "error" }])
            .inc();
        self.latency
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
    }

    pub fn snapshot(&self) -> BTreeMap<String, OpStats> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Gauges of one scrape, registered in a registry of their own.
struct Gauges {
    registry: Registry,
}

impl Gauges {
    fn new() -> Self {
        Self {
            registry: Registry::new(),
        }
    }

    /// A labelled gauge family set from `values`.
    fn family<'a>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, f64)>,
    ) {
        let g = GaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
        for (l, v) in values {
            g.with_label_values(&[l]).set(v);
        }
        self.registry
            .register(Box::new(g))
            .expect("registered once");
    }

    /// A gauge without labels.
    fn one(&self, name: &str, help: &str, value: f64) {
        let g = prometheus::Gauge::new(name, help).expect("valid metric");
        g.set(value);
        self.registry
            .register(Box::new(g))
            .expect("registered once");
    }
}

/// The numbers `/metrics` exposes, as `get_system_status` reports them.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct PerformanceMetrics {
    /// Tool calls answered by this process since it started, and how many were errors.
    pub tool_calls: u64,
    pub tool_errors: u64,
    /// Mean tool-call duration in milliseconds (null before any call).
    pub average_call_ms: Option<f64>,
    /// Workflow runs by status (every process's).
    pub runs_by_status: BTreeMap<String, u64>,
    /// Steps of unfinished runs by status.
    pub live_steps_by_status: BTreeMap<String, u64>,
    /// Tasks by status.
    pub tasks_by_status: BTreeMap<String, u64>,
    /// Sessions by status.
    pub sessions_by_status: BTreeMap<String, u64>,
    /// Work waiting: ready_steps, steps_waiting_resources, ready_tasks,
    /// tasks_waiting_resources, unclaimed_runs (no executor has them),
    /// resource_requests (waiting in this process).
    pub queue_depths: BTreeMap<String, u64>,
    /// Runs this process executes now.
    pub runs_executing_here: usize,
    /// The store's write probe: whether it succeeded and how long it took.
    pub store_up: bool,
    pub store_probe_ms: f64,
    /// Every pool's capacity, use and waiters.
    pub pools: BTreeMap<String, crate::engine::resources::PoolStatus>,
}

impl Engine {
    /// Read every number of [`PerformanceMetrics`] (counts need the store: they
    /// stay empty when its probe fails).
    pub async fn performance_metrics(&self) -> Result<PerformanceMetrics> {
        Ok(self.metrics_and_task_stats().await?.0)
    }

    /// [`Self::performance_metrics`] and the task statistics read for them
    /// (None when the store's probe failed), for the system status to use
    /// rather than read again.
    pub(crate) async fn metrics_and_task_stats(
        &self,
    ) -> Result<(PerformanceMetrics, Option<crate::store::TaskStats>)> {
        let ops = self.metrics().snapshot();
        let tool_calls: u64 = ops.values().map(|o| o.ok + o.errors).sum();
        let total_ms: f64 = ops.values().map(|o| o.total_ms).sum();
        let probe = self.store_probe().await;
        let (pools, waiting) = self.resources().pools().await;
        let mut m = PerformanceMetrics {
            tool_calls,
            tool_errors: ops.values().map(|o| o.errors).sum(),
            average_call_ms: (tool_calls > 0).then(|| total_ms / tool_calls as f64),
            runs_executing_here: self.runs().active_count(),
            store_up: probe.result.is_ok(),
            store_probe_ms: probe.latency_ms,
            pools,
            ..Default::default()
        };
        m.queue_depths
            .insert("resource_requests".into(), waiting as u64);
        if probe.result.is_err() {
            return Ok((m, None));
        }
        let o = self.store().overview(now_ms()).await?;
        m.sessions_by_status = spelled_counts(o.sessions);
        m.runs_by_status = spelled_counts(o.runs);
        let steps = o.live_steps;
        let stats = o.tasks;
        let tasks = stats.by_status.clone();
        let unclaimed = o.unclaimed_runs;
        for (queue, n) in [
            ("ready_steps", count_of(&steps, StepStatus::Ready)),
            (
                "steps_waiting_resources",
                count_of(&steps, StepStatus::WaitingResources),
            ),
            ("ready_tasks", count_of(&tasks, TaskStatus::Ready)),
            (
                "tasks_waiting_resources",
                count_of(&tasks, TaskStatus::WaitingResources),
            ),
            ("unclaimed_runs", unclaimed),
        ] {
            m.queue_depths.insert(queue.into(), n);
        }
        m.live_steps_by_status = spelled_counts(steps);
        m.tasks_by_status = spelled_counts(tasks);
        Ok((m, Some(stats)))
    }

    /// The Prometheus text exposition (format 0.0.4) of this process.
    pub async fn prometheus_text(&self) -> Result<String> {
        let m = self.performance_metrics().await?;
        let g = Gauges::new();
        g.one("myrmex_up", "1 while the process serves.", 1.0);
        g.one(
            "myrmex_uptime_seconds",
            "Seconds since the process started.",
            self.inner.started.elapsed().as_secs_f64(),
        );
        g.one(
            "myrmex_store_up",
            "1 when the store's last write probe (one per health_probe_interval_ms at most) succeeded.",
            if m.store_up { 1.0 } else { 0.0 },
        );
        g.one(
            "myrmex_store_probe_seconds",
            "How long the store's last write probe took.",
            m.store_probe_ms / 1000.0,
        );
        if let Some(gc) = self.store().group_commits() {
            g.one(
                "myrmex_store_commits",
                "Transactions this process's group-commit writer committed since it started.",
                gc.commits as f64,
            );
            g.one(
                "myrmex_store_writes",
                "Updates (runs, steps, one call's tasks) those transactions held: writes / commits share one commit.",
                gc.writes as f64,
            );
        }
        g.one(
            "myrmex_runs_executing",
            "Runs this process executes now.",
            m.runs_executing_here as f64,
        );
        g.one(
            "myrmex_http_sessions",
            "Open Streamable HTTP transport sessions.",
            self.metrics()
                .http_sessions
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
        g.one(
            "myrmex_sse_streams",
            "Open legacy HTTP+SSE streams.",
            self.metrics()
                .sse_streams
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
        let pools = &m.pools;
        g.family(
            "myrmex_pool_capacity",
            "Capacity of each resource pool.",
            "pool",
            pools.iter().map(|(p, s)| (p.as_str(), s.capacity as f64)),
        );
        g.family(
            "myrmex_pool_allocated",
            "Amount of each pool held by active allocations.",
            "pool",
            pools.iter().map(|(p, s)| (p.as_str(), s.allocated as f64)),
        );
        g.family(
            "myrmex_pool_utilization",
            "allocated / capacity of each pool (0 for an empty pool).",
            "pool",
            pools.iter().map(|(p, s)| (p.as_str(), s.utilization)),
        );
        for (name, help, label, values) in [
            (
                "myrmex_sessions",
                "Sessions by status.",
                "status",
                &m.sessions_by_status,
            ),
            (
                "myrmex_runs",
                "Workflow runs by status.",
                "status",
                &m.runs_by_status,
            ),
            (
                "myrmex_steps",
                "Steps of unfinished runs by status.",
                "status",
                &m.live_steps_by_status,
            ),
            (
                "myrmex_tasks",
                "Tasks by status.",
                "status",
                &m.tasks_by_status,
            ),
            (
                "myrmex_queue_depth",
                "Work waiting: steps ready to start, steps and tasks waiting for resources, tasks ready to run or claim, runs no executor has claimed, resource requests waiting in this process.",
                "queue",
                &m.queue_depths,
            ),
        ] {
            g.family(
                name,
                help,
                label,
                values.iter().map(|(k, n)| (k.as_str(), *n as f64)),
            );
        }
        let mut families = self.metrics().registry.gather();
        families.extend(g.registry.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(|e| Error::internal(format!("cannot encode metrics: {e}")))?;
        String::from_utf8(out).map_err(|e| Error::internal(e.to_string()))
    }
}

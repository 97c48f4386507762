//! Health and status of the whole server: what `get_health_status` and
//! `get_system_status` report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Value, json};

use super::metrics::OpStats;
use super::{count_of, spelled_counts};
use crate::engine::sessions::{ListSessions, Session, SessionStatus};
use crate::engine::{Engine, Principal, iso, now_ms};
use crate::error::Result;
use crate::model::TaskStatus;

/// healthy < degraded < unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(inline)]
pub enum HealthLevel {
    Healthy,
    Degraded,
    Unhealthy,
}

/// One component's check.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ComponentHealth {
    /// This component's level.
    pub status: HealthLevel,
    /// What was checked and what was found.
    pub message: String,
    /// Measurements of the check (latency, ages, ...).
    pub details: Value,
}

/// The original module's components (its health_check and
/// get_system_status names) and the components of ours each stands for
/// (`background.` covers every background task).
const ORIGINAL_COMPONENTS: &[(&str, &[&str])] = &[
    (
        "workflow_manager",
        &[
            "workflow_library",
            "background.work_poll",
            "background.lease_heartbeat",
        ],
    ),
    ("task_orchestrator", &["background.task_lease_sweeper"]),
    ("project_manager", &["templates"]),
    (
        "resource_manager",
        &["resources", "background.allocation_expiry"],
    ),
];

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HealthReport {
    /// The worst status of any component.
    pub overall_status: HealthLevel,
    /// When the checks ran (RFC 3339, UTC).
    pub timestamp: String,
    /// Per-component checks, by component name (`store`, `background.<task>`),
    /// and under the original module's names (`orchestration_engine`,
    /// `workflow_manager`, `task_orchestrator`, `project_manager`,
    /// `resource_manager`), each the worst of the components it stands for.
    pub components: BTreeMap<String, ComponentHealth>,
    /// One line per component that is not healthy.
    pub issues: Vec<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StoreInfo {
    /// `memory` or `sqlite`.
    pub kind: String,
    /// The database file, or `memory`.
    pub location: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionCounts {
    /// All sessions of all principals.
    pub total: u64,
    /// Sessions by status (`active`, `closed`).
    pub by_status: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SystemStatus {
    /// The health checks' overall level (as get_health_status).
    pub overall_status: HealthLevel,
    /// When the status was taken (RFC 3339, UTC).
    pub timestamp: String,
    /// myrmex version.
    pub version: String,
    /// When this server process started (RFC 3339, UTC).
    pub started_at: String,
    /// Seconds since this server process started.
    pub uptime_seconds: f64,
    /// The durable store in use.
    pub store: StoreInfo,
    /// Sessions of all principals, counted.
    pub sessions: SessionCounts,
    /// Workflow runs this process is executing right now.
    pub active_runs: usize,
    /// Tasks of all task graphs, counted.
    pub tasks: TaskStatsView,
    /// Open streams of the legacy HTTP+SSE transport.
    pub sse_streams: usize,
    /// Open Streamable HTTP transport sessions (`http.max_sessions` at most).
    pub http_sessions: usize,
    /// The live processes on this store (several servers, workers and
    /// `myrmex run` may share an SQLite data directory or a PostgreSQL database).
    pub processes: Vec<super::peers::ProcessView>,
    /// Utilization (allocated / capacity) of every non-empty pool.
    pub resource_utilization: BTreeMap<String, f64>,
    /// The caller's active sessions (with `include_active_sessions`; at most one page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_sessions: Option<Vec<Session>>,
    /// Tool-call counters since start (with `include_detailed_metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<BTreeMap<String, OpStats>>,
    /// The session named by `session_id`, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
    /// The numbers `/metrics` exposes: tool calls, runs, steps and tasks by
    /// state, queue depths, pools and the store probe.
    pub performance_metrics: super::metrics::PerformanceMetrics,
    /// The original module's component sections, mapped onto ours: each
    /// one's status and its figures.
    #[schemars(schema_with = "crate::model::bounds::any_object")]
    pub orchestration_engine: Value,
    #[schemars(schema_with = "crate::model::bounds::any_object")]
    pub workflow_manager: Value,
    #[schemars(schema_with = "crate::model::bounds::any_object")]
    pub task_orchestrator: Value,
    #[schemars(schema_with = "crate::model::bounds::any_object")]
    pub project_manager: Value,
    #[schemars(schema_with = "crate::model::bounds::any_object")]
    pub resource_manager: Value,
    /// Problems found by the health checks.
    pub issues: Vec<String>,
    /// What an operator could do about them.
    pub recommendations: Vec<String>,
}

/// Task statistics.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TaskStatsView {
    pub total: u64,
    /// Tasks by status.
    pub by_status: BTreeMap<String, u64>,
    /// Mean time from start to end of tasks that ran and finished, in milliseconds.
    pub average_execution_ms: Option<f64>,
    /// Succeeded / (succeeded + failed + timed_out); null before any of these.
    pub success_rate: Option<f64>,
}

/// The last look at the store (kept between health checks): its write
/// probe, and what health reads from it (who executes runs, how full the
/// pools are, counting every process's allocations).
#[derive(Debug, Clone)]
pub struct StoreProbe {
    /// When it started (its age decides whether it is done again).
    started: Instant,
    /// When it was written (ms since the epoch).
    pub at: i64,
    pub latency_ms: f64,
    pub result: std::result::Result<(), String>,
    /// Several processes on the store: the cluster component.
    cluster: Option<ComponentHealth>,
    /// Pool utilization and impossible states of the resources.
    resources: (Vec<(String, f64)>, Vec<String>),
}

/// What `system_status` should include beyond the basics.
#[derive(Debug, Clone, Default)]
pub struct StatusOptions {
    pub include_active_sessions: bool,
    pub include_detailed_metrics: bool,
    pub session_id: Option<String>,
}

impl Engine {
    /// Several processes on one store: who executes runs, and runs nobody
    /// has claimed for longer than a lease's TTL (no executor, or all full).
    async fn cluster_health(&self) -> ComponentHealth {
        let cluster = &self.config().cluster;
        let now = now_ms();
        let details = |ex: Option<&crate::store::RunExecutors>| {
            json!({
                "node": self.runs().node(),
                "executes": cluster.execute,
                "runs_executed_here": self.runs().active_count(),
                "executors": ex.map(|e| e.by_executor.iter().map(|(o, n)| (o.clone(), json!(n))).collect::<serde_json::Map<String, Value>>()),
                "unclaimed_runs": ex.map(|e| e.unclaimed),
                "oldest_unclaimed_ms": ex.and_then(|e| e.oldest_unclaimed_at).map(|t| now - t),
            })
        };
        match self.store().run_executors(now).await {
            Err(e) => ComponentHealth {
                status: HealthLevel::Unhealthy,
                message: format!("cannot read the run leases: {e}"),
                details: details(None),
            },
            Ok(ex) => {
                let waiting = ex
                    .oldest_unclaimed_at
                    .is_some_and(|t| now - t > cluster.lease_ttl_ms as i64);
                ComponentHealth {
                    status: if waiting {
                        HealthLevel::Degraded
                    } else {
                        HealthLevel::Healthy
                    },
                    message: if waiting {
                        format!(
                            "{} unfinished run(s) wait for an executor; start `myrmex worker` processes (or a server without --no-execute), or raise [cluster] max_active_runs",
                            ex.unclaimed
                        )
                    } else {
                        format!("{} executor(s) hold unfinished runs", ex.by_executor.len())
                    },
                    details: details(Some(&ex)),
                }
            }
        }
    }

    /// The store's write probe and the health read from the store, done
    /// again only when the last ones are older than `health_probe_interval_ms`
    /// (a health check per call must not cost a commit and an fsync, nor a
    /// read of every allocation and run lease, per call).
    pub(crate) async fn store_probe(&self) -> StoreProbe {
        let mut last = self.inner.store_probe.lock().await;
        let interval = Duration::from_millis(self.config().health_probe_interval_ms);
        if let Some(p) = last.as_ref()
            && p.started.elapsed() < interval
        {
            return p.clone();
        }
        let started = Instant::now();
        let at = now_ms();
        let result = self.store().probe(at).await.map_err(|e| e.to_string());
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let cluster = if self.store().shared() {
            Some(self.cluster_health().await)
        } else {
            None
        };
        let p = StoreProbe {
            started,
            at,
            latency_ms,
            result,
            cluster,
            resources: self.resources().health().await,
        };
        *last = Some(p.clone());
        p
    }

    /// Check every component. Never fails: a failing check is reported.
    pub async fn health(&self) -> HealthReport {
        let mut components = BTreeMap::new();
        let probe = self.store_probe().await;
        let store_details = json!({
            "kind": self.store().kind(),
            "location": self.store().location(),
            "write_probe_ms": probe.latency_ms,
            "probed_at": iso(probe.at),
            "probe_interval_ms": self.config().health_probe_interval_ms,
        });
        components.insert(
            "store".to_string(),
            match &probe.result {
                Ok(()) => ComponentHealth {
                    status: HealthLevel::Healthy,
                    message: "reachable and writable".into(),
                    details: store_details,
                },
                Err(e) => ComponentHealth {
                    status: HealthLevel::Unhealthy,
                    message: format!("write probe failed: {e}"),
                    details: store_details,
                },
            },
        );
        let broken = &self.library().broken;
        components.insert(
            "workflow_library".to_string(),
            ComponentHealth {
                status: if broken.is_empty() { HealthLevel::Healthy } else { HealthLevel::Degraded },
                message: if broken.is_empty() {
                    format!("{} workflows loaded", self.library().workflows.len())
                } else {
                    format!("{} file(s) could not be loaded: {}", broken.len(), broken.iter().map(|b| format!("{}: {}", b.path.display(), b.reason)).collect::<Vec<_>>().join("; "))
                },
                details: json!({
                    "loaded": self.library().workflows.len(),
                    "broken": broken.iter().map(|b| json!({"path": b.path.display().to_string(), "reason": b.reason})).collect::<Vec<_>>(),
                }),
            },
        );
        let invalid = self.templates().invalid();
        components.insert(
            "templates".to_string(),
            ComponentHealth {
                status: if invalid.is_empty() {
                    HealthLevel::Healthy
                } else {
                    HealthLevel::Degraded
                },
                message: if invalid.is_empty() {
                    format!(
                        "{} project templates loaded",
                        self.templates().by_name.len()
                    )
                } else {
                    format!(
                        "{} invalid template(s): {}",
                        invalid.len(),
                        invalid.join("; ")
                    )
                },
                details: json!({"loaded": self.templates().by_name.len(), "invalid": invalid}),
            },
        );
        let (utilization, broken) = &probe.resources;
        let busy: Vec<String> = utilization
            .iter()
            .filter(|(_, u)| *u > 0.9)
            .map(|(p, u)| format!("{p} at {:.0}%", u * 100.0))
            .collect();
        components.insert(
            "resources".to_string(),
            ComponentHealth {
                status: if !broken.is_empty() {
                    HealthLevel::Unhealthy
                } else if !busy.is_empty() {
                    HealthLevel::Degraded
                } else {
                    HealthLevel::Healthy
                },
                message: if !broken.is_empty() {
                    broken.join("; ")
                } else if !busy.is_empty() {
                    format!("pools above 90% utilization: {}", busy.join(", "))
                } else {
                    "every pool below 90% utilization".into()
                },
                details: json!({
                    "utilization": utilization.iter().map(|(p, u)| (p.clone(), json!(u))).collect::<serde_json::Map<String, Value>>(),
                }),
            },
        );
        if let Some(cluster) = &probe.cluster {
            components.insert("cluster".to_string(), cluster.clone());
        }
        for t in self.background().states() {
            // A tick is late when more than three intervals (plus slack) passed.
            let late_after = 3 * t.interval_ms + 5_000;
            let (status, message) = if !t.running {
                (HealthLevel::Degraded, "stopped".to_string())
            } else if t.since_last_tick_ms.is_some_and(|ms| ms > late_after) {
                (
                    HealthLevel::Degraded,
                    format!(
                        "no tick for {} ms",
                        t.since_last_tick_ms.unwrap_or_default()
                    ),
                )
            } else if let Some(e) = &t.last_error {
                (HealthLevel::Degraded, format!("last tick failed: {e}"))
            } else {
                (HealthLevel::Healthy, "running".to_string())
            };
            components.insert(
                format!("background.{}", t.name),
                ComponentHealth {
                    status,
                    message,
                    details: json!({
                        "running": t.running,
                        "interval_ms": t.interval_ms,
                        "since_last_tick_ms": t.since_last_tick_ms,
                    }),
                },
            );
        }
        let overall_status = components
            .values()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthLevel::Healthy);
        let issues = components
            .iter()
            .filter(|(_, c)| c.status != HealthLevel::Healthy)
            .map(|(n, c)| format!("{n}: {}", c.message))
            .collect();
        // The original module's component names, each the worst of ours it stands for.
        for (original, ours) in ORIGINAL_COMPONENTS {
            let covered: Vec<(&String, &ComponentHealth)> = components
                .iter()
                .filter(|(n, _)| {
                    ours.iter()
                        .any(|o| *n == o || (o.ends_with('.') && n.starts_with(o)))
                })
                .collect();
            let status = covered
                .iter()
                .map(|(_, c)| c.status)
                .max()
                .unwrap_or(HealthLevel::Healthy);
            let names: Vec<&String> = covered.iter().map(|(n, _)| *n).collect();
            let entry = ComponentHealth {
                status,
                message: format!("the original module's {original}: the worst of {names:?}"),
                details: json!({"covers": names}),
            };
            components.insert(original.to_string(), entry);
        }
        components.insert(
            "orchestration_engine".to_string(),
            ComponentHealth {
                status: overall_status,
                message: "the original module's orchestration_engine: the worst of every component"
                    .into(),
                details: json!({}),
            },
        );
        HealthReport {
            overall_status,
            timestamp: iso(now_ms()),
            components,
            issues,
        }
    }

    pub async fn system_status(
        &self,
        principal: &Principal,
        opts: StatusOptions,
    ) -> Result<SystemStatus> {
        let session = match &opts.session_id {
            Some(id) => Some(self.sessions().get(principal, id).await?),
            None => None,
        };
        let health = self.health().await;
        let (performance_metrics, stats) = self.metrics_and_task_stats().await?;
        let (by_status, stats) = match stats {
            // Read for the metrics just now: not read again.
            Some(stats) => (performance_metrics.sessions_by_status.clone(), stats),
            None => (
                spelled_counts(self.store().count_sessions_by_status().await?),
                self.store().task_stats().await?,
            ),
        };
        let processes = self.peers().live().await?;
        let count = |s| count_of(&stats.by_status, s);
        let succeeded = count(TaskStatus::Succeeded);
        let ended = succeeded + count(TaskStatus::Failed) + count(TaskStatus::TimedOut);
        let task_counts = spelled_counts(stats.by_status);
        let tasks = TaskStatsView {
            total: task_counts.values().sum(),
            average_execution_ms: stats.average_execution_ms,
            success_rate: (ended > 0).then(|| succeeded as f64 / ended as f64),
            by_status: task_counts,
        };
        let active_sessions = if opts.include_active_sessions {
            let page = self
                .sessions()
                .list(
                    principal,
                    ListSessions {
                        status: Some(SessionStatus::Active),
                        limit: Some(self.config().limits.max_page_size),
                        cursor: None,
                    },
                )
                .await?;
            Some(page.sessions)
        } else {
            None
        };
        let mut recommendations = Vec::new();
        if health
            .components
            .get("store")
            .is_some_and(|c| c.status != HealthLevel::Healthy)
        {
            recommendations.push(format!(
                "Check that the {} store at {} is reachable and its disk is writable.",
                self.store().kind(),
                self.store().location()
            ));
        }
        if health
            .components
            .iter()
            .any(|(n, c)| n.starts_with("background.") && c.status != HealthLevel::Healthy)
        {
            recommendations.push("A background task is not running as it should; see the server's log and restart it if this persists.".into());
        }
        let busy: Vec<&String> = performance_metrics
            .pools
            .iter()
            .filter(|(_, p)| p.utilization > 0.9)
            .map(|(n, _)| n)
            .collect();
        if !busy.is_empty() {
            recommendations.push(format!(
                "Pools {busy:?} are above 90% utilization: raise their capacity in [resources], or run less at once."
            ));
        }
        if health
            .components
            .get("cluster")
            .is_some_and(|c| c.status != HealthLevel::Healthy)
        {
            recommendations.push("Runs wait for an executor: start `myrmex worker` processes on this database, or raise [cluster] max_active_runs.".into());
        }
        // The original's sections: each component's level and its figures.
        let level = |n: &str| {
            health
                .components
                .get(n)
                .map_or(json!(null), |c| json!(c.status))
        };
        let active_runs = self.runs().active_count();
        let utilization: BTreeMap<String, f64> = performance_metrics
            .pools
            .iter()
            .filter(|(_, p)| p.capacity > 0)
            .map(|(n, p)| (n.clone(), p.utilization))
            .collect();
        let orchestration_engine = json!({
            "status": health.overall_status,
            "active_sessions": by_status.get("active").copied().unwrap_or(0),
            "processes": processes.len(),
        });
        let workflow_manager = json!({
            "status": level("workflow_manager"),
            "running_workflows": active_runs,
            "library_workflows": self.library().workflows.len(),
        });
        let task_orchestrator = json!({
            "status": level("task_orchestrator"),
            "total_tasks": tasks.total,
            "by_status": tasks.by_status,
            "success_rate": tasks.success_rate,
        });
        let project_manager = json!({
            "status": level("project_manager"),
            "templates": health.components.get("templates").map(|c| c.details.clone()),
        });
        let resource_manager = json!({
            "status": level("resource_manager"),
            "utilization": utilization,
        });
        Ok(SystemStatus {
            orchestration_engine,
            workflow_manager,
            task_orchestrator,
            project_manager,
            resource_manager,
            overall_status: health.overall_status,
            timestamp: health.timestamp,
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: iso(self.inner.started_at),
            uptime_seconds: self.inner.started.elapsed().as_secs_f64(),
            store: StoreInfo {
                kind: self.store().kind().to_string(),
                location: self.store().location(),
            },
            sessions: SessionCounts {
                total: by_status.values().sum(),
                by_status,
            },
            active_runs,
            tasks,
            sse_streams: self
                .metrics()
                .sse_streams
                .load(std::sync::atomic::Ordering::Relaxed),
            http_sessions: self
                .metrics()
                .http_sessions
                .load(std::sync::atomic::Ordering::Relaxed),
            processes,
            // Read once, with the pools of performance_metrics.
            resource_utilization: utilization,
            active_sessions,
            tool_calls: opts
                .include_detailed_metrics
                .then(|| self.metrics().snapshot()),
            session,
            performance_metrics,
            issues: health.issues,
            recommendations,
        })
    }
}

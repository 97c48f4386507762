//! The orchestration core. It knows nothing about MCP: the server layer calls
//! its methods with typed inputs and a [`Principal`], and gets typed outputs or
//! an [`crate::error::Error`].
//!
//! [`Engine`] is the one shared handle (like mini-redis's `Db`): it owns the
//! store, the session registry, the metrics and the background tasks, and is
//! cheap to clone into every MCP handler rmcp creates.

pub mod attempts;
#[cfg(test)]
mod clock_tests;
pub mod host;
pub mod observe;
pub mod projects;
pub mod resources;
pub mod runs;
pub mod sessions;
pub mod tasks;
pub mod workflows;

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::actions::Registry;
use crate::config::Config;
use crate::store::Store;

pub use sessions::SessionRegistry;

pub use crate::model::{Principal, iso, new_id, now_ms};

/// The shared engine handle.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    config: Config,
    store: Arc<dyn Store>,
    sessions: SessionRegistry,
    registry: Arc<Registry>,
    library: workflows::library::Library,
    templates: projects::Templates,
    runs: Arc<runs::RunManager>,
    tasks: Arc<tasks::TaskManager>,
    resources: Arc<resources::ResourceManager>,
    /// Cancelled when the engine stops: run drivers leave their state for the next start.
    stopping: tokio_util::sync::CancellationToken,
    metrics: observe::metrics::Metrics,
    background: observe::background::Background,
    /// This process among the store's processes.
    peers: observe::peers::Peers,
    started: Instant,
    started_at: i64,
    /// Where sessions, task leases and allocation leases read "now".
    clock: Arc<dyn crate::model::Clock>,
    /// The last store write probe of `health` (at most one per
    /// `health_probe_interval_ms`; the lock makes concurrent callers share one).
    store_probe: tokio::sync::Mutex<Option<observe::system::StoreProbe>>,
}

impl Engine {
    pub fn new(config: Config, store: Arc<dyn Store>) -> Self {
        let registry = Registry::new(&config);
        Self::with_registry(config, store, registry)
    }

    /// An engine whose steps run the actions of `registry` (tests add modules to it).
    pub fn with_registry(config: Config, store: Arc<dyn Store>, registry: Registry) -> Self {
        Self::with_clock(config, store, registry, Arc::new(crate::model::SystemClock))
    }

    /// An engine whose sessions, task leases and allocation leases read the
    /// time from `clock` (tests move a `ManualClock` instead of sleeping).
    pub fn with_clock(
        config: Config,
        store: Arc<dyn Store>,
        registry: Registry,
        clock: Arc<dyn crate::model::Clock>,
    ) -> Self {
        let sessions = SessionRegistry::new(store.clone(), &config).with_clock(clock.clone());
        let registry = Arc::new(registry);
        let limits = workflow_limits(&config);
        let library = workflows::library::Library::load(&config.workflows_dirs, &registry, &limits);
        let templates = projects::Templates::load(
            &config.projects.template_dirs,
            &registry
                .modules()
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>(),
            &library.workflows.keys().cloned().collect(),
        );
        let stopping = tokio_util::sync::CancellationToken::new();
        let node = node_name();
        let resources = Arc::new(
            resources::ResourceManager::new(
                store.clone(),
                &config.resources,
                node.clone(),
                config.cluster.lease_ttl_ms,
            )
            .with_clock(clock.clone()),
        );
        let runs = Arc::new(runs::RunManager::new(
            store.clone(),
            registry.clone(),
            resources.clone(),
            stopping.clone(),
            node.clone(),
            &config.cluster,
            limits.clone(),
        ));
        let tasks = Arc::new(
            tasks::TaskManager::new(
                store.clone(),
                registry.clone(),
                resources.clone(),
                &config,
                stopping.clone(),
                node.clone(),
            )
            .with_clock(clock.clone()),
        );
        let peers = observe::peers::Peers::new(store.clone(), node, config.cluster.lease_ttl_ms);
        let engine = Self {
            inner: Arc::new(EngineInner {
                tasks,
                resources,
                config,
                store,
                sessions,
                registry,
                library,
                templates,
                runs,
                stopping,
                metrics: observe::metrics::Metrics::default(),
                background: observe::background::Background::default(),
                peers,
                started: Instant::now(),
                started_at: now_ms(),
                clock,
                store_probe: tokio::sync::Mutex::new(None),
            }),
        };
        engine.inner.registry.set_host(Arc::new(host::EngineHost {
            inner: Arc::downgrade(&engine.inner),
        }));
        engine
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn sessions(&self) -> &SessionRegistry {
        &self.inner.sessions
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    pub fn library(&self) -> &workflows::library::Library {
        &self.inner.library
    }

    pub fn runs(&self) -> &Arc<runs::RunManager> {
        &self.inner.runs
    }

    pub fn tasks(&self) -> &Arc<tasks::TaskManager> {
        &self.inner.tasks
    }

    pub fn resources(&self) -> &Arc<resources::ResourceManager> {
        &self.inner.resources
    }

    /// May `p` see every principal's activity? Principals listed in
    /// `auth.admin_principals` may; without tokens everyone is the local
    /// principal, who sees everything that exists anyway.
    pub fn is_admin(&self, p: &Principal) -> bool {
        let auth = &self.inner.config.auth;
        auth.tokens.is_empty() || auth.admin_principals.iter().any(|a| a == p.name())
    }

    pub fn workflow_limits(&self) -> workflows::spec::Limits {
        workflow_limits(&self.inner.config)
    }

    /// Stop driving runs; their state stays in the store for the next start.
    pub fn stop(&self) {
        self.inner.stopping.cancel();
    }

    /// After [`Engine::stop`]: wait (at most `limit`) for the run drivers to
    /// record what they must and give their leases up.
    pub async fn wait_idle(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.inner.runs.active_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn metrics(&self) -> &observe::metrics::Metrics {
        &self.inner.metrics
    }

    pub fn background(&self) -> &observe::background::Background {
        &self.inner.background
    }

    /// The processes on this store.
    pub fn peers(&self) -> &observe::peers::Peers {
        &self.inner.peers
    }

    /// Start the engine's background work as a process of kind `role`: join
    /// the store's processes, resume unfinished runs (a `run` process only
    /// executes its own), and the sweepers. It stops when `shutdown` is cancelled.
    pub async fn start_background(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
        role: observe::peers::Role,
    ) -> crate::error::Result<()> {
        let shared = self.inner.store.shared();
        if shared {
            let reaped = self.inner.peers.join(role).await?;
            if reaped > 0 {
                tracing::info!(
                    processes = reaped,
                    "work of processes that died is taken over"
                );
            }
        }
        let held = self.inner.resources.load().await?;
        if held > 0 {
            tracing::info!(allocations = held, "resource allocations loaded");
        }
        let found = self.register_projects_on_disk().await?;
        if found > 0 {
            tracing::info!(projects = found, "projects found on disk registered");
        }
        if !role.adopts() {
            self.inner.runs.adopt_nothing();
            self.inner.tasks.adopt_nothing();
        }
        let resumed = self.inner.runs.resume_all().await?;
        if resumed > 0 {
            tracing::info!(resumed, "unfinished runs resumed");
        }
        let graphs = self.inner.tasks.resume_all().await?;
        if graphs > 0 {
            tracing::info!(
                sessions = graphs,
                "task graphs with unfinished tasks loaded"
            );
        }
        let stopping = self.inner.stopping.clone();
        let on_shutdown = shutdown.clone();
        tokio::spawn(async move {
            on_shutdown.cancelled().await;
            stopping.cancel();
        });
        if shared {
            self.start_cluster(shutdown.clone());
        }
        let tasks = self.inner.tasks.clone();
        let every = std::time::Duration::from_millis(
            self.inner.config.tasks.lease_sweep_interval_ms.max(10),
        );
        self.inner.background.spawn_periodic(
            "task_lease_sweeper",
            every,
            shutdown.clone(),
            move || {
                let tasks = tasks.clone();
                async move { tasks.sweep_leases().await }
            },
        );
        let resources = self.inner.resources.clone();
        let every = std::time::Duration::from_millis(
            self.inner.config.resources.expiry_sweep_interval_ms.max(10),
        );
        self.inner.background.spawn_periodic(
            "allocation_expiry",
            every,
            shutdown.clone(),
            move || {
                let resources = resources.clone();
                async move { resources.expire().await.map(|_| ()) }
            },
        );
        let engine = self.clone();
        self.inner.background.spawn_periodic(
            "event_pruner",
            std::time::Duration::from_secs(self.inner.config.events.prune_interval_seconds),
            shutdown.clone(),
            move || {
                let engine = engine.clone();
                async move {
                    let gone = engine.prune_events().await?;
                    if gone > 0 {
                        tracing::debug!(events = gone, "old events pruned");
                    }
                    Ok(())
                }
            },
        );
        let engine = self.clone();
        let every =
            std::time::Duration::from_secs(self.inner.config.sessions.sweep_interval_seconds);
        self.inner
            .background
            .spawn_periodic("session_sweeper", every, shutdown, move || {
                let engine = engine.clone();
                async move {
                    // What ran in a swept session stops as if the session were closed by its owner.
                    for id in engine.sessions().sweep(engine.inner.clock.now_ms()).await? {
                        engine.session_closed(&id).await?;
                    }
                    Ok(())
                }
            });
        Ok(())
    }
}

impl Engine {
    /// This process stops: leave the store's process list (after the run
    /// drivers gave their leases up).
    pub async fn leave(&self) {
        if self.inner.store.shared() {
            self.inner.peers.leave().await;
        }
    }

    /// Several processes share the store: renew leases and this process's row
    /// (heartbeat), take over the work of processes that died, look for
    /// unclaimed work, and act on other processes' notifications.
    fn start_cluster(&self, shutdown: tokio_util::sync::CancellationToken) {
        let cluster = &self.inner.config.cluster;
        let engine = self.clone();
        self.inner.background.spawn_periodic(
            "lease_heartbeat",
            std::time::Duration::from_millis((cluster.lease_ttl_ms / 3).max(100)),
            shutdown.clone(),
            move || {
                let engine = engine.clone();
                async move {
                    let inner = &engine.inner;
                    inner.runs.heartbeat().await?;
                    inner.tasks.heartbeat().await?;
                    inner.resources.heartbeat().await?;
                    if inner.peers.heartbeat().await? > 0 {
                        // A peer died: its work is free now. Taken up apart
                        // from this loop, so adopting it never delays the
                        // next renewal of the leases held here.
                        let engine = engine.clone();
                        tokio::spawn(async move {
                            if let Err(e) = engine.look_for_work("*").await {
                                tracing::warn!(error = %e, "taking up a dead peer's work failed; the next poll retries");
                            }
                        });
                    }
                    Ok(())
                }
            },
        );
        let engine = self.clone();
        self.inner.background.spawn_periodic(
            "work_poll",
            std::time::Duration::from_millis(cluster.poll_interval_ms),
            shutdown.clone(),
            move || {
                let engine = engine.clone();
                async move { engine.look_for_work("*").await }
            },
        );
        let Some(mut events) = self.inner.store.subscribe() else {
            return;
        };
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                let topic = tokio::select! {
                    t = events.recv() => match t {
                        Ok(t) => t,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => "*".to_string(),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = shutdown.cancelled() => return,
                };
                if let Err(e) = engine.look_for_work(&topic).await {
                    tracing::warn!(topic, error = %e, "acting on a notification failed; the next poll retries");
                }
            }
        });
    }

    /// Act on a notification topic (`*`: everything).
    async fn look_for_work(&self, topic: &str) -> crate::error::Result<()> {
        let all = topic == "*";
        if all || topic == "cancel" {
            self.inner.runs.heartbeat().await?;
        }
        if all || topic == "runs" {
            self.inner.runs.claim_work().await?;
        }
        if all || topic == "resources" {
            self.inner.resources.poke().await?;
        }
        if all || topic == "tasks" {
            self.inner.tasks.claim_work().await?;
        }
        Ok(())
    }
}

fn workflow_limits(config: &Config) -> workflows::spec::Limits {
    workflows::spec::Limits::from_config(&config.workflows)
}

/// This process's name in leases: host, pid and a random suffix (a restarted
/// process with the same pid is another executor).
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &suffix[..8])
}

/// The longest prefix of `items` whose JSON fits in `budget` bytes, and at
/// least the first item (an answer page that must not grow past the limit).
pub fn fitting<T: Serialize>(items: impl IntoIterator<Item = T>, budget: usize) -> Vec<T> {
    let mut used = 0;
    items
        .into_iter()
        .enumerate()
        .take_while(|(i, v)| {
            used += serde_json::to_string(v).map_or(0, |s| s.len()) + 1;
            *i == 0 || used <= budget
        })
        .map(|(_, v)| v)
        .collect()
}

//! The orchestration core. It knows nothing about MCP: the server layer calls
//! its methods with typed inputs and a [`Principal`], and gets typed outputs or
//! an [`crate::error::Error`].
//!
//! [`Engine`] is the one shared handle (like mini-redis's `Db`): it owns the
//! store, the session registry, the metrics and the background tasks, and is
//! cheap to clone into every MCP handler rmcp creates.

pub mod background;
pub mod condition;
pub mod metrics;
pub mod session;
pub mod system;
pub mod template;
pub mod workflow;

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::config::Config;
use crate::store::Store;

pub use session::SessionRegistry;

/// Who is calling. stdio callers are [`Principal::local`]; HTTP callers are
/// named by their bearer token (or local when no tokens are configured).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Principal(pub String);

impl Principal {
    pub const LOCAL: &'static str = "local";

    pub fn local() -> Self {
        Principal(Self::LOCAL.into())
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

/// The shared engine handle.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    config: Config,
    store: Arc<dyn Store>,
    sessions: SessionRegistry,
    metrics: metrics::Metrics,
    background: background::Background,
    started: Instant,
    started_at: i64,
}

impl Engine {
    pub fn new(config: Config, store: Arc<dyn Store>) -> Self {
        let sessions = SessionRegistry::new(store.clone(), &config);
        Self {
            inner: Arc::new(EngineInner {
                config,
                store,
                sessions,
                metrics: metrics::Metrics::default(),
                background: background::Background::default(),
                started: Instant::now(),
                started_at: now_ms(),
            }),
        }
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

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    pub fn background(&self) -> &background::Background {
        &self.inner.background
    }

    /// Start the engine's background work (the session sweeper). It stops
    /// when `shutdown` is cancelled.
    pub fn start_background(&self, shutdown: tokio_util::sync::CancellationToken) {
        let sessions = self.inner.sessions.clone();
        let every =
            std::time::Duration::from_secs(self.inner.config.sessions.sweep_interval_seconds);
        self.inner
            .background
            .spawn_periodic("session_sweeper", every, shutdown, move || {
                let sessions = sessions.clone();
                async move { sessions.sweep(now_ms()).await.map(|_| ()) }
            });
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T10:00:00.000Z`.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A new random id with a type prefix: `ses_3f2a...` (32 hex digits).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

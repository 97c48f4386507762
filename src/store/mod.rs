//! Durable state behind one trait.
//!
//! The engine never holds state that only its own process can see: every
//! change goes through a [`Store`] before the caller is answered, so a second
//! process on the same database (a later PostgreSQL store) or this process
//! after a crash sees exactly what callers were told. Implementations:
//! [`memory::MemoryStore`] (tests, ephemeral use) and [`sqlite::SqliteStore`]
//! (the embedded default: one WAL-mode file, migrations in `migrations/`).

pub mod memory;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::StoreSpec;

/// A failure of the store itself (not of the caller's request).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness constraint was violated (for example two default sessions
    /// for one principal created at once); the caller re-reads and retries.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<StoreError> for crate::error::Error {
    fn from(e: StoreError) -> Self {
        use crate::error::{Error, ErrorCode};
        match e {
            StoreError::Conflict(m) => Error::new(
                ErrorCode::Conflict,
                m,
                "Another call changed the same object at the same moment; retry the call.",
            ),
            StoreError::Unavailable(m) => Error::new(
                ErrorCode::StoreUnavailable,
                format!("the store cannot be used right now: {m}"),
                "Nothing was changed. Retry shortly; get_health_status shows the store's state.",
            ),
            StoreError::Corrupt(m) => Error::internal(format!("stored data is corrupt: {m}")),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One session row. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub principal: String,
    pub name: String,
    pub description: String,
    pub mode: String,
    pub max_parallel_tasks: u32,
    pub max_parallel_workflows: u32,
    pub timeout_seconds: Option<u64>,
    pub idle_ttl_seconds: u64,
    /// A JSON object, serialized.
    pub metadata: String,
    pub status: String,
    pub is_default: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_active_at: i64,
    pub closed_at: Option<i64>,
    pub close_reason: Option<String>,
}

impl SessionRecord {
    /// When the session becomes due for closing by the sweeper, and why.
    pub fn expiry(&self) -> (i64, &'static str) {
        let idle = self.last_active_at + (self.idle_ttl_seconds as i64) * 1000;
        match self.timeout_seconds {
            Some(t) if self.created_at + (t as i64) * 1000 < idle => {
                (self.created_at + (t as i64) * 1000, "timeout")
            }
            _ => (idle, "idle_timeout"),
        }
    }
}

/// Position after which a page of sessions starts: `(created_at, id)`.
pub type SessionCursor = (i64, String);

/// What a page query asks for.
#[derive(Debug, Clone)]
pub struct SessionQuery<'a> {
    pub principal: &'a str,
    pub status: Option<&'a str>,
    pub after: Option<SessionCursor>,
    pub limit: u32,
}

/// Durable state. Every method is atomic on its own.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `memory` or `sqlite` (later `postgres`).
    fn kind(&self) -> &'static str;

    /// Where the data lives, for status output (a path, or `memory`).
    fn location(&self) -> String;

    /// Insert a new session. A second active default session for the same
    /// principal is refused with [`StoreError::Conflict`].
    async fn insert_session(&self, s: &SessionRecord) -> StoreResult<()>;

    async fn get_session(&self, id: &str) -> StoreResult<Option<SessionRecord>>;

    /// The principal's active default session, if any.
    async fn default_session(&self, principal: &str) -> StoreResult<Option<SessionRecord>>;

    /// A page of the principal's sessions in creation order.
    async fn list_sessions(&self, q: &SessionQuery<'_>) -> StoreResult<Vec<SessionRecord>>;

    /// Close an active session. Returns false (and changes nothing) when the
    /// session does not exist or is not active.
    async fn close_session(&self, id: &str, now: i64, reason: &str) -> StoreResult<bool>;

    /// Record activity on an active session.
    async fn touch_session(&self, id: &str, now: i64) -> StoreResult<()>;

    /// Active sessions whose idle TTL or lifetime ended at or before `now`.
    async fn expired_sessions(&self, now: i64, limit: u32) -> StoreResult<Vec<SessionRecord>>;

    /// Number of sessions per status, over all principals.
    async fn count_sessions_by_status(&self) -> StoreResult<Vec<(String, u64)>>;

    /// Number of active sessions of one principal.
    async fn count_active_sessions(&self, principal: &str) -> StoreResult<u64>;

    /// Write and read back a probe row: proves the store is reachable and writable.
    async fn probe(&self, now: i64) -> StoreResult<()>;
}

/// Open (and migrate) the store a spec names.
pub async fn open(spec: &StoreSpec) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match spec {
        StoreSpec::Memory => Arc::new(memory::MemoryStore::default()),
        StoreSpec::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path).await?),
    })
}

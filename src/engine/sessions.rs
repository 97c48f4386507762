//! Sessions: one engine instance per session, bound to its principal.
//!
//! The registry is the only door to sessions. It checks ownership on every
//! lookup (another principal's session is `NOT_FOUND`, never its data),
//! validates input before anything is written, and writes every change through
//! the store before answering. Later capabilities (runs, tasks, allocations)
//! hang off a session id obtained from [`SessionRegistry::resolve`].

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Principal, iso, new_id};
use crate::config::{Config, LimitsConfig, SessionsConfig};
use crate::error::{Error, ErrorCode, Result};
pub use crate::model::page::{bounded, decode_cursor, next_cursor, page_limit};
use crate::model::{Clock, SystemClock};
pub use crate::model::{SessionMode, SessionStatus};
use crate::store::{SessionQuery, SessionRecord, Store, StoreError};

/// A session as callers see it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Session {
    /// Opaque id (`ses_...`), valid only for the principal that created it.
    pub session_id: String,
    /// Human-readable name given at creation.
    pub name: String,
    /// What the session is for.
    pub description: String,
    /// The principal that owns the session.
    pub principal: String,
    /// The original's user_id, as given (a label; the principal is who owns it).
    pub user_id: Option<String>,
    /// Scheduling mode.
    pub mode: SessionMode,
    /// Steps and tasks that may run at once in this session.
    pub max_parallel_tasks: u32,
    /// Workflow runs that may be active at once in this session.
    pub max_parallel_workflows: u32,
    /// Maximum lifetime in seconds; null for none.
    pub timeout_seconds: Option<u64>,
    /// Idle time after which the session is closed automatically.
    pub idle_ttl_seconds: u64,
    /// Free-form JSON object given at creation.
    pub metadata: Map<String, Value>,
    /// `active` or `closed`.
    pub status: SessionStatus,
    /// True for the principal's default session (used when a tool gets no session_id).
    pub is_default: bool,
    /// When the session was created (RFC 3339, UTC).
    pub created_at: String,
    /// When the session record last changed (RFC 3339, UTC).
    pub updated_at: String,
    /// When a tool last worked in the session (RFC 3339, UTC; recorded at most once a second).
    pub last_active_at: String,
    /// When the sweeper will close the session if nothing uses it (null once closed).
    pub expires_at: Option<String>,
    /// When the session was closed (null while active).
    pub closed_at: Option<String>,
    /// `closed_by_caller`, `idle_timeout` or `timeout`.
    pub close_reason: Option<String>,
}

/// Input of `create_session`.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    /// Human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// What the session is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Scheduling mode; default `resource_aware`.
    #[serde(default)]
    pub mode: Option<SessionMode>,
    /// Steps and tasks that may run at once in this session (default 4).
    #[serde(default)]
    pub max_parallel_tasks: Option<u32>,
    /// Workflow runs that may be active at once in this session (default 2).
    #[serde(default)]
    pub max_parallel_workflows: Option<u32>,
    /// Maximum lifetime in seconds; the session is closed when it passes.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Close the session after this many idle seconds (default from config, 7 days).
    #[serde(default)]
    pub idle_ttl_seconds: Option<u64>,
    /// Free-form JSON object stored with the session (at most `limits.max_metadata_bytes` serialized).
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Whom the session is for (the original's user_id); shown, never a principal.
    #[serde(default)]
    pub user_id: Option<String>,
}

/// Filter of `list_sessions`.
#[derive(Debug, Clone, Default)]
pub struct ListSessions {
    pub status: Option<SessionStatus>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// A page of sessions.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionPage {
    pub sessions: Vec<Session>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

use crate::model::bounds::{
    MAX_PARALLEL_TASKS, MAX_PARALLEL_WORKFLOWS, MAX_SESSION_TIMEOUT_SECONDS as MAX_TIMEOUT_SECONDS,
};
/// Activity is written at most this often per session.
const TOUCH_EVERY_MS: i64 = 1000;
/// Sessions closed by one sweep at most (the next sweep takes the rest).
const SWEEP_BATCH: u32 = 500;

/// Sessions remembered at most (past it the memory starts again empty).
const RECENT_MAX: usize = 4096;

/// Session records read from the store within the last [`TOUCH_EVERY_MS`],
/// and each principal's default session: a call in a session reads its record
/// from the store at most once per that interval (when it also records the
/// activity), not on every call. A close in this process forgets the session
/// at once; a close by another process is seen within the interval.
#[derive(Default)]
struct Recent {
    /// Session id → (record, when it was read from the store).
    by_id: std::collections::HashMap<String, (SessionRecord, i64)>,
    /// Principal → its default session's id.
    default_of: std::collections::HashMap<String, String>,
}

#[derive(Clone)]
pub struct SessionRegistry {
    store: Arc<dyn Store>,
    sessions: SessionsConfig,
    limits: LimitsConfig,
    /// Where "now" comes from: activity, idle TTLs and lifetimes by it.
    clock: Arc<dyn Clock>,
    recent: Arc<std::sync::Mutex<Recent>>,
}

impl SessionRegistry {
    pub fn new(store: Arc<dyn Store>, config: &Config) -> Self {
        Self {
            store,
            sessions: config.sessions.clone(),
            limits: config.limits.clone(),
            clock: Arc::new(SystemClock),
            recent: Arc::default(),
        }
    }

    /// The same registry, reading time from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Create a session owned by `principal`.
    pub async fn create(&self, principal: &Principal, req: NewSession) -> Result<Session> {
        let rec = self.build(principal, req, false)?;
        match self.insert_within_quota(&rec).await {
            Ok(()) => {}
            Err(StoreError::Full(n)) => return Err(self.quota_error(principal, n)),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(session = %rec.id, principal = %principal.name(), "session created");
        to_session(rec)
    }

    /// A session of `principal` by id, in any status.
    pub async fn get(&self, principal: &Principal, id: &str) -> Result<Session> {
        to_session(self.visible(principal, id).await?)
    }

    /// The session a tool call works in: the given one (which must be active),
    /// or the principal's default session, created on first use. Records activity.
    pub async fn resolve(&self, principal: &Principal, id: Option<&str>) -> Result<Session> {
        let now = self.clock.now_ms();
        let rec = match self.remembered(principal, id, now) {
            Some(rec) => rec,
            None => {
                let rec = match id {
                    Some(id) => {
                        let rec = self.visible(principal, id).await?;
                        if rec.status != SessionStatus::Active {
                            return Err(closed_error(&rec));
                        }
                        rec
                    }
                    None => self.default_record(principal).await?,
                };
                self.remember(&rec, now);
                rec
            }
        };
        if now - rec.last_active_at >= TOUCH_EVERY_MS {
            self.store.touch_session(&rec.id, now).await?;
            if let Some((r, _)) = self.recent().by_id.get_mut(&rec.id) {
                r.last_active_at = now;
            }
        }
        to_session(rec)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The active session `id` (or the principal's default one) as read from
    /// the store less than [`TOUCH_EVERY_MS`] ago, if it was.
    fn remembered(
        &self,
        principal: &Principal,
        id: Option<&str>,
        now: i64,
    ) -> Option<SessionRecord> {
        let recent = self.recent();
        let id = match id {
            Some(id) => id,
            None => recent.default_of.get(principal.name())?.as_str(),
        };
        let (rec, read_at) = recent.by_id.get(id)?;
        ((0..TOUCH_EVERY_MS).contains(&(now - read_at))
            && rec.principal == principal.name()
            && rec.status == SessionStatus::Active)
            .then(|| rec.clone())
    }

    fn remember(&self, rec: &SessionRecord, now: i64) {
        let mut recent = self.recent();
        if recent.by_id.len() >= RECENT_MAX {
            *recent = Recent::default();
        }
        if rec.is_default {
            recent
                .default_of
                .insert(rec.principal.clone(), rec.id.clone());
        }
        recent.by_id.insert(rec.id.clone(), (rec.clone(), now));
    }

    /// Forget a session this process closed.
    fn forget(&self, id: &str) {
        let mut recent = self.recent();
        if let Some((rec, _)) = recent.by_id.remove(id)
            && recent.default_of.get(&rec.principal).map(String::as_str) == Some(id)
        {
            recent.default_of.remove(&rec.principal);
        }
    }

    /// A page of the principal's sessions, oldest first.
    pub async fn list(&self, principal: &Principal, q: ListSessions) -> Result<SessionPage> {
        let limit = page_limit(&self.limits, q.limit)?;
        let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
        let mut recs = self
            .store
            .list_sessions(&SessionQuery {
                principal: principal.name(),
                status: q.status,
                after,
                limit: limit + 1,
            })
            .await?;
        let next_cursor = next_cursor(&mut recs, limit, |r| (r.created_at, &r.id));
        Ok(SessionPage {
            sessions: recs.into_iter().map(to_session).collect::<Result<_>>()?,
            next_cursor,
        })
    }

    /// Close an active session. Closing a closed session is a `SESSION_CLOSED`
    /// error and changes nothing.
    pub async fn close(&self, principal: &Principal, id: &str) -> Result<Session> {
        self.forget(id);
        let rec = self.visible(principal, id).await?;
        if rec.status != SessionStatus::Active
            || !self
                .store
                .close_session(id, self.clock.now_ms(), "closed_by_caller")
                .await?
        {
            let now = self.visible(principal, id).await?;
            return Err(closed_error(&now));
        }
        tracing::info!(session = %id, principal = %principal.name(), "session closed");
        self.get(principal, id).await
    }

    /// Close every session whose idle TTL or lifetime has passed. Returns the
    /// ids of the sessions closed.
    pub async fn sweep(&self, now: i64) -> Result<Vec<String>> {
        let mut closed = Vec::new();
        for rec in self.store.expired_sessions(now, SWEEP_BATCH).await? {
            let (_, reason) = rec.expiry();
            self.forget(&rec.id);
            if self.store.close_session(&rec.id, now, reason).await? {
                tracing::info!(session = %rec.id, reason, "session closed by sweeper");
                closed.push(rec.id);
            }
        }
        Ok(closed)
    }

    async fn visible(&self, principal: &Principal, id: &str) -> Result<SessionRecord> {
        match self.store.get_session(id).await? {
            Some(rec) if rec.principal == principal.name() => Ok(rec),
            _ => Err(Error::not_found(
                "session",
                id,
                "Check the session_id; list_sessions shows your sessions, or omit session_id to use your default session.",
            )),
        }
    }

    async fn default_record(&self, principal: &Principal) -> Result<SessionRecord> {
        for _ in 0..3 {
            if let Some(rec) = self.store.default_session(principal.name()).await? {
                return Ok(rec);
            }
            let req = NewSession {
                name: Some("default".into()),
                description: Some(format!("Default session of {}", principal.name())),
                ..Default::default()
            };
            let rec = self.build(principal, req, true)?;
            match self.insert_within_quota(&rec).await {
                Ok(()) => {
                    tracing::info!(session = %rec.id, principal = %principal.name(), "default session created");
                    return Ok(rec);
                }
                // Another call created it at the same moment: read theirs.
                Err(StoreError::Conflict(_)) => continue,
                Err(StoreError::Full(n)) => return Err(self.quota_error(principal, n)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::new(
            ErrorCode::Conflict,
            "the default session could not be created or read",
            "Retry the call, or pass an explicit session_id from create_session.",
        ))
    }

    /// Insert a session within the principal's quota of active sessions
    /// (counted inside the store's insert, so concurrent creates of several
    /// processes never pass it).
    async fn insert_within_quota(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        let max = self.sessions.max_active_per_principal as u64;
        self.store.insert_session(rec, Some(max)).await
    }

    fn quota_error(&self, principal: &Principal, active: u64) -> Error {
        let max = self.sessions.max_active_per_principal as u64;
        Error::new(
            ErrorCode::LimitExceeded,
            format!("principal '{}' already has {active} active sessions (limit {max}, sessions.max_active_per_principal)", principal.name()),
            "Close sessions you no longer need with close_session, or raise sessions.max_active_per_principal.",
        )
        .with_details(serde_json::json!({ "active": active, "limit": max }))
    }

    /// Validate a request and build the row. Nothing is written here.
    fn build(
        &self,
        principal: &Principal,
        req: NewSession,
        is_default: bool,
    ) -> Result<SessionRecord> {
        let l = &self.limits;
        let name = req.name.unwrap_or_default();
        check_len("name", &name, l.max_name_chars)?;
        if name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "name contains control characters",
                "Use printable characters only.",
            ));
        }
        let description = req.description.unwrap_or_default();
        check_len("description", &description, l.max_description_chars)?;
        if let Some(u) = &req.user_id {
            check_len("user_id", u, l.max_name_chars)?;
        }
        let max_parallel_tasks = req
            .max_parallel_tasks
            .unwrap_or(self.sessions.default_max_parallel_tasks);
        check_range(
            "max_parallel_tasks",
            max_parallel_tasks as u64,
            1,
            MAX_PARALLEL_TASKS as u64,
        )?;
        let max_parallel_workflows = req
            .max_parallel_workflows
            .unwrap_or(self.sessions.default_max_parallel_workflows);
        check_range(
            "max_parallel_workflows",
            max_parallel_workflows as u64,
            1,
            MAX_PARALLEL_WORKFLOWS as u64,
        )?;
        if let Some(t) = req.timeout_seconds {
            check_range("timeout_seconds", t, 1, MAX_TIMEOUT_SECONDS)?;
        }
        let idle_ttl_seconds = req
            .idle_ttl_seconds
            .unwrap_or(self.sessions.default_idle_ttl_seconds);
        check_range(
            "idle_ttl_seconds",
            idle_ttl_seconds,
            1,
            self.sessions.max_idle_ttl_seconds,
        )?;
        let metadata = serde_json::to_string(&req.metadata.unwrap_or_default())
            .map_err(|e| Error::internal(format!("metadata does not serialize: {e}")))?;
        if metadata.len() > l.max_metadata_bytes {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "metadata is {} bytes serialized; the limit is {}",
                    metadata.len(),
                    l.max_metadata_bytes
                ),
                "Store large data elsewhere and keep a reference in metadata.",
            ));
        }
        let now = self.clock.now_ms();
        Ok(SessionRecord {
            id: new_id("ses"),
            principal: principal.name().to_string(),
            name,
            description,
            mode: req.mode.unwrap_or_default(),
            max_parallel_tasks,
            max_parallel_workflows,
            timeout_seconds: req.timeout_seconds,
            idle_ttl_seconds,
            metadata,
            status: SessionStatus::Active,
            is_default,
            created_at: now,
            updated_at: now,
            last_active_at: now,
            closed_at: None,
            close_reason: None,
            user_id: req.user_id,
        })
    }
}

fn closed_error(rec: &SessionRecord) -> Error {
    Error::new(
        ErrorCode::SessionClosed,
        format!(
            "session '{}' is closed ({}, at {})",
            rec.id,
            rec.close_reason.as_deref().unwrap_or("closed"),
            rec.closed_at.map(iso).unwrap_or_default()
        ),
        "Nothing was changed. Create a new session with create_session, or omit session_id to use your default session.",
    )
    .with_details(serde_json::json!({ "session_id": rec.id, "status": rec.status }))
}

fn check_len(field: &str, v: &str, max: usize) -> Result<()> {
    let n = v.chars().count();
    if n > max {
        return Err(Error::new(
            ErrorCode::InvalidParameters,
            format!("{field} is {n} characters long; the limit is {max}"),
            format!("Shorten {field} to at most {max} characters."),
        ));
    }
    Ok(())
}

fn check_range(field: &str, v: u64, min: u64, max: u64) -> Result<()> {
    if v < min || v > max {
        return Err(Error::new(
            ErrorCode::InvalidParameters,
            format!("{field} is {v}; it must be between {min} and {max}"),
            format!("Pass a {field} between {min} and {max}, or omit it for the default."),
        ));
    }
    Ok(())
}

fn to_session(r: SessionRecord) -> Result<Session> {
    let metadata: Map<String, Value> = serde_json::from_str(&r.metadata)
        .map_err(|e| Error::internal(format!("session {} has corrupt metadata: {e}", r.id)))?;
    let status = r.status;
    let expires_at = (status == SessionStatus::Active).then(|| iso(r.expiry().0));
    Ok(Session {
        mode: r.mode,
        status,
        expires_at,
        created_at: iso(r.created_at),
        updated_at: iso(r.updated_at),
        last_active_at: iso(r.last_active_at),
        closed_at: r.closed_at.map(iso),
        session_id: r.id,
        name: r.name,
        description: r.description,
        principal: r.principal,
        user_id: r.user_id,
        max_parallel_tasks: r.max_parallel_tasks,
        max_parallel_workflows: r.max_parallel_workflows,
        timeout_seconds: r.timeout_seconds,
        idle_ttl_seconds: r.idle_ttl_seconds,
        metadata,
        is_default: r.is_default,
        close_reason: r.close_reason,
    })
}

impl super::Engine {
    /// Close a session by its owner; what ran in it stops.
    pub async fn close_session(&self, p: &Principal, id: &str) -> Result<Session> {
        let s = self.sessions().close(p, id).await?;
        self.session_closed(id).await?;
        Ok(s)
    }

    /// A session was closed (by its owner or by the sweeper): its runs are
    /// cancelled, its tasks cancelled, its allocations released, in that order.
    pub(crate) async fn session_closed(&self, id: &str) -> Result<()> {
        let n = self.runs().cancel_session(id).await?;
        if n > 0 {
            tracing::info!(session = %id, runs = n, "runs of the closed session cancelled");
        }
        let n = self.tasks().close_session(id).await?;
        if n > 0 {
            tracing::info!(session = %id, tasks = n, "tasks of the closed session cancelled");
        }
        let n = self
            .resources()
            .release_session(id, "the session was closed")
            .await?;
        if n > 0 {
            tracing::info!(session = %id, allocations = n, "allocations of the closed session released");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_prefers_the_earlier_of_idle_and_lifetime() {
        let mut r = SessionRecord {
            id: "ses_x".into(),
            user_id: None,
            principal: "p".into(),
            name: String::new(),
            description: String::new(),
            mode: crate::model::SessionMode::Parallel,
            max_parallel_tasks: 1,
            max_parallel_workflows: 1,
            timeout_seconds: None,
            idle_ttl_seconds: 10,
            metadata: "{}".into(),
            status: crate::model::SessionStatus::Active,
            is_default: false,
            created_at: 0,
            updated_at: 0,
            last_active_at: 5_000,
            closed_at: None,
            close_reason: None,
        };
        assert_eq!(r.expiry(), (15_000, "idle_timeout"));
        r.timeout_seconds = Some(12);
        assert_eq!(r.expiry(), (12_000, "timeout"));
        r.timeout_seconds = Some(60);
        assert_eq!(r.expiry(), (15_000, "idle_timeout"));
    }
}

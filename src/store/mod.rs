//! Durable state behind one trait.
//!
//! The engine never holds state that only its own process can see: every
//! change goes through a [`Store`] before the caller is answered, so a second
//! process on the same database (SQLite file or PostgreSQL) or this process
//! after a crash sees exactly what callers were told. Records carry the
//! model's types (statuses, priorities, kinds); strings exist only where a
//! row is encoded or decoded (`rows.rs`). Implementations:
//! [`memory::MemoryStore`] (tests, ephemeral use), [`sqlite::SqliteStore`]
//! (the embedded default: one WAL-mode file shared by every process on the
//! data directory) and [`postgres::PostgresStore`] (several servers and
//! workers); the SQL both speak is written once in `rows.rs`.

pub mod events;
pub mod memory;
pub mod postgres;
mod rows;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::StoreSpec;

pub use events::{EventCursor, EventRecord, EventWindow, StoredEvent};

/// A queued task update: resolves once durable (or refused).
pub type TaskTicket = std::pin::Pin<Box<dyn std::future::Future<Output = StoreResult<()>> + Send>>;

/// A failure of the store itself (not of the caller's request).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness constraint was violated (for example two default sessions
    /// for one principal created at once); the caller re-reads and retries.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A quota counted inside the store is reached: this many are held.
    #[error("quota reached: {0} held")]
    Full(u64),
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
            StoreError::Full(n) => Error::new(
                ErrorCode::LimitExceeded,
                format!("a quota is reached ({n} held)"),
                "Release or close what you no longer need.",
            ),
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
    pub mode: crate::model::SessionMode,
    pub max_parallel_tasks: u32,
    pub max_parallel_workflows: u32,
    pub timeout_seconds: Option<u64>,
    pub idle_ttl_seconds: u64,
    /// A JSON object, serialized.
    pub metadata: String,
    pub status: crate::model::SessionStatus,
    pub is_default: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_active_at: i64,
    pub closed_at: Option<i64>,
    pub close_reason: Option<String>,
    /// The original module's user_id: a label, recorded and shown.
    pub user_id: Option<String>,
}

impl SessionRecord {
    /// When the session becomes due for closing by the sweeper, and why.
    pub fn expiry(&self) -> (i64, &'static str) {
        let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let idle = self
            .last_active_at
            .saturating_add(ms(self.idle_ttl_seconds));
        match self.timeout_seconds {
            Some(t) if self.created_at.saturating_add(ms(t)) < idle => {
                (self.created_at.saturating_add(ms(t)), "timeout")
            }
            _ => (idle, "idle_timeout"),
        }
    }
}

/// A workflow definition created through tools.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowRecord {
    /// `session` or `global`.
    pub scope: String,
    /// The session id (scope `session`) or the principal (scope `global`).
    pub owner: String,
    pub name: String,
    pub principal: String,
    pub version: u64,
    /// The definition as JSON.
    pub definition: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One workflow run (without its steps).
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: String,
    pub session_id: String,
    pub principal: String,
    pub workflow_name: String,
    pub workflow_version: u64,
    /// `library`, `session` or `global`.
    pub workflow_source: String,
    /// The pinned definition, JSON.
    pub definition: String,
    /// Bound parameters, JSON object.
    pub parameters: String,
    pub status: crate::model::RunStatus,
    pub priority: crate::model::Priority,
    pub max_parallel: u32,
    pub mode: crate::model::SessionMode,
    pub timeout_seconds: Option<u64>,
    /// Resource requirements of the whole run (JSON), as given.
    pub resources: Option<String>,
    /// `{code, message}` JSON when the run did not succeed.
    pub error: Option<String>,
    pub retry_of: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
    /// The run whose `workflow.run` step started this one.
    pub parent_run_id: Option<String>,
    pub parent_step: Option<String>,
    /// The project the run works on, and its context as pinned at start (JSON).
    pub project_id: Option<String>,
    pub project: Option<String>,
}

/// One project.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectRecord {
    pub id: String,
    pub principal: String,
    /// Unique over all principals (it names the folder).
    pub name: String,
    pub path: String,
    pub status: crate::model::ProjectStatus,
    /// The project type (`ai_analysis`, ..., `custom`): a name a template
    /// chooses (lowercase letters and `_`), not a closed vocabulary.
    pub kind: String,
    pub template: Option<String>,
    /// JSON array of strings.
    pub tags: String,
    /// The project's metadata, JSON (as in `.myrmex/project.json`).
    pub record: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a page of projects asks for.
#[derive(Debug, Clone)]
pub struct ProjectQuery<'a> {
    pub principal: &'a str,
    pub status: Option<crate::model::ProjectStatus>,
    pub kind: Option<&'a str>,
    pub tag: Option<&'a str>,
    pub after: Option<SessionCursor>,
    pub limit: u32,
}

/// The state of one step of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub run_id: String,
    pub name: String,
    /// Index of the step in the definition.
    pub position: u32,
    pub status: crate::model::StepStatus,
    pub attempts: u32,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// JSON.
    pub output: Option<String>,
    /// `{code, message}` JSON.
    pub error: Option<String>,
    /// Hash of the resolved inputs of the last attempt.
    pub input_hash: Option<String>,
    /// True when the output was reused from the run this one retries.
    pub reused: bool,
    /// Output and input hash of the same step in the run this one retries.
    pub prior_output: Option<String>,
    pub prior_hash: Option<String>,
}

/// One task of a session's task graph.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: String,
    pub session_id: String,
    pub principal: String,
    /// Creation order within the session.
    pub seq: i64,
    pub name: String,
    pub description: Option<String>,
    /// Both set for a task myrmex runs; both None for an agent task.
    pub module: Option<String>,
    pub action: Option<String>,
    /// JSON object.
    pub parameters: String,
    /// JSON array of task ids.
    pub dependencies: Vec<String>,
    pub priority: crate::model::Priority,
    pub timeout_seconds: Option<u64>,
    pub max_retries: u32,
    /// JSON retry policy.
    pub retry: Option<String>,
    /// JSON requirements, as given.
    pub resources: Option<String>,
    /// JSON array of strings.
    pub tags: Vec<String>,
    /// JSON object.
    pub metadata: String,
    pub status: crate::model::TaskStatus,
    /// JSON.
    pub result: Option<String>,
    pub summary: Option<String>,
    /// `{code, message}` JSON.
    pub error: Option<String>,
    pub attempts: u32,
    pub claimed_by: Option<String>,
    pub lease_id: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// 1 when inserted, one more with every update.
    pub version: i64,
}

/// One resource allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocationRecord {
    pub id: String,
    pub session_id: String,
    pub principal: String,
    pub holder: String,
    /// `api`, `step`, `task`, `claim` or `run`.
    pub owner_kind: crate::model::OwnerKind,
    pub owner_ref: Option<String>,
    /// Canonical requirements, JSON.
    pub requirements: String,
    pub priority: crate::model::Priority,
    /// `active`, `released` or `expired`.
    pub status: crate::model::AllocationStatus,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub released_at: Option<i64>,
    pub release_reason: Option<String>,
}

/// Task counts for system status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskStats {
    pub by_status: Vec<(crate::model::TaskStatus, u64)>,
    /// Mean of finished_at - started_at over tasks that ran and finished.
    pub average_execution_ms: Option<f64>,
}

/// What a page of runs asks for.
#[derive(Debug, Clone)]
pub struct RunQuery<'a> {
    pub principal: &'a str,
    pub session_id: Option<&'a str>,
    pub status: Option<crate::model::RunStatus>,
    pub workflow_name: Option<&'a str>,
    /// Only children of this run.
    pub parent_run_id: Option<&'a str>,
    /// Only runs for this project.
    pub project_id: Option<&'a str>,
    pub after: Option<SessionCursor>,
    pub limit: u32,
}

/// Position after which a page of sessions starts: `(created_at, id)`.
pub type SessionCursor = (i64, String);

/// What a page query asks for.
#[derive(Debug, Clone)]
pub struct SessionQuery<'a> {
    pub principal: &'a str,
    pub status: Option<crate::model::SessionStatus>,
    pub after: Option<SessionCursor>,
    pub limit: u32,
}

/// Durable state. Every method is atomic on its own.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `memory`, `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;

    /// Several processes may use this store at once (an SQLite file, a
    /// PostgreSQL database): runs and auto tasks are leased and taken over,
    /// allocation decisions are made inside the store, task graphs are checked
    /// against it, and processes wake each other through [`Store::notify`].
    fn shared(&self) -> bool {
        false
    }

    /// Where the data lives, for status output (a path, or `memory`).
    fn location(&self) -> String;

    /// Insert a new session. A second active default session for the same
    /// principal is refused with [`StoreError::Conflict`]; with `max_active`,
    /// a principal that already holds that many active sessions gets
    /// [`StoreError::Full`] (counted and inserted under one lock, so
    /// concurrent creates in several processes never pass the quota).
    async fn insert_session(&self, s: &SessionRecord, max_active: Option<u64>) -> StoreResult<()>;

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
    async fn count_sessions_by_status(
        &self,
    ) -> StoreResult<Vec<(crate::model::SessionStatus, u64)>>;

    /// Number of active sessions of one principal.
    async fn count_active_sessions(&self, principal: &str) -> StoreResult<u64>;

    /// Create or replace a definition; the version is 1 for a new name and
    /// one more than the stored one otherwise. Returns the stored record.
    async fn put_workflow(&self, w: &WorkflowRecord) -> StoreResult<WorkflowRecord>;

    async fn get_workflow(
        &self,
        scope: &str,
        owner: &str,
        name: &str,
    ) -> StoreResult<Option<WorkflowRecord>>;

    /// Definitions of one session plus the global ones of its principal.
    async fn list_workflows(
        &self,
        session_id: &str,
        principal: &str,
    ) -> StoreResult<Vec<WorkflowRecord>>;

    async fn delete_workflow(&self, scope: &str, owner: &str, name: &str) -> StoreResult<bool>;

    /// Insert a run and all its steps in one transaction.
    async fn insert_run(&self, run: &RunRecord, steps: &[StepRecord]) -> StoreResult<()>;

    /// Replace the run row (not its steps).
    async fn update_run(&self, run: &RunRecord) -> StoreResult<()>;

    /// Replace one step row.
    async fn update_step(&self, step: &StepRecord) -> StoreResult<()>;

    /// Replace one step row without waiting for it to be durable. Queued and
    /// awaited writes are applied in the order they were made, so the store
    /// always holds a prefix of the history (a crash loses only the newest
    /// step changes, as if it had happened a moment earlier), and an awaited
    /// write (such as the run's final update) makes every earlier one durable.
    async fn queue_step(&self, step: &StepRecord) -> StoreResult<()> {
        self.update_step(step).await
    }

    async fn get_run(&self, id: &str) -> StoreResult<Option<RunRecord>>;

    /// Steps of a run in definition order.
    async fn run_steps(&self, run_id: &str) -> StoreResult<Vec<StepRecord>>;

    /// A page of runs in creation order.
    async fn list_runs(&self, q: &RunQuery<'_>) -> StoreResult<Vec<RunRecord>>;

    /// Write and read back a probe row: proves the store is reachable and writable.
    async fn probe(&self, now: i64) -> StoreResult<()>;

    /// Insert tasks, all or none (Conflict when an id or a session's name exists).
    async fn insert_tasks(&self, tasks: &[TaskRecord]) -> StoreResult<()>;

    /// Replace tasks, all or none. Each record carries its new `version`; the
    /// stored one must be `version - 1`, otherwise nothing changes and the
    /// answer is Conflict (someone else changed the task meanwhile).
    async fn update_tasks(&self, tasks: &[TaskRecord]) -> StoreResult<()>;

    /// Queue one call's task updates (as [`Store::update_tasks`]:
    /// version-fenced, all or none) behind the store's writer, to commit
    /// with whatever else is queued (one fsync for several callers). `events`
    /// are the change's events, built from the records the caller read.
    /// Updates apply in the order queued; the ticket resolves once they are
    /// durable, or with Conflict when a version moved. A store without a
    /// writer applies them before answering.
    async fn queue_task_updates(
        &self,
        tasks: Vec<TaskRecord>,
        events: Vec<EventRecord>,
    ) -> StoreResult<TaskTicket> {
        let _ = events;
        let done = self.update_tasks(&tasks).await;
        Ok(Box::pin(std::future::ready(done)))
    }

    async fn get_task(&self, id: &str) -> StoreResult<Option<TaskRecord>>;

    /// Every task of a session, in creation order.
    async fn session_tasks(&self, session_id: &str) -> StoreResult<Vec<TaskRecord>>;

    /// Sessions with tasks that are not final.
    /// `(count, sum of versions)` of a session's tasks: changes whenever any of
    /// them is inserted or updated (by this process or another).
    async fn session_tasks_stamp(&self, session_id: &str) -> StoreResult<(i64, i64)>;
    async fn sessions_with_open_tasks(&self) -> StoreResult<Vec<String>>;

    async fn task_stats(&self) -> StoreResult<TaskStats>;

    /// Insert or replace allocations, all or none.
    async fn put_allocations(&self, allocations: &[AllocationRecord]) -> StoreResult<()>;

    /// Every active allocation.
    async fn active_allocations(&self) -> StoreResult<Vec<AllocationRecord>>;

    /// A principal's allocations, newest first, optionally of one session and status.
    /// Insert a project; a taken name is `Conflict`.
    async fn insert_project(&self, p: &ProjectRecord) -> StoreResult<()>;
    async fn update_project(&self, p: &ProjectRecord) -> StoreResult<()>;
    async fn get_project(&self, id: &str) -> StoreResult<Option<ProjectRecord>>;
    async fn project_by_name(&self, name: &str) -> StoreResult<Option<ProjectRecord>>;
    /// A principal's projects, oldest first.
    async fn list_projects(&self, q: &ProjectQuery<'_>) -> StoreResult<Vec<ProjectRecord>>;
    async fn delete_project(&self, id: &str) -> StoreResult<bool>;

    async fn list_allocations(
        &self,
        principal: &str,
        session_id: Option<&str>,
        status: Option<crate::model::AllocationStatus>,
        offset: usize,
        limit: u32,
    ) -> StoreResult<Vec<AllocationRecord>>;

    // ---- scale-out: run leases, cancel requests, notifications ------------

    /// Claim up to `limit` unfinished runs whose lease is free or ended before
    /// `now` (most urgent, then oldest first) for `owner` until `until`. Two
    /// processes never claim the same run (PostgreSQL: `FOR UPDATE SKIP LOCKED`).
    async fn claim_runs(
        &self,
        owner: &str,
        now: i64,
        until: i64,
        limit: u32,
    ) -> StoreResult<Vec<RunLease>>;

    /// Claim one unfinished run if its lease is free, ended before `now`, or
    /// already `owner`'s.
    async fn lease_run(
        &self,
        run_id: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> StoreResult<Option<RunLease>>;

    /// Extend `owner`'s leases on `run_ids` to `until`; the answer lists the
    /// runs still held (a run missing from it was taken over by another executor).
    async fn renew_run_leases(
        &self,
        owner: &str,
        run_ids: &[String],
        until: i64,
    ) -> StoreResult<Vec<RunLease>>;

    /// Give a lease up (the process stops): another executor may claim the run at once.
    async fn drop_run_lease(&self, run_id: &str, owner: &str) -> StoreResult<()>;

    /// Ask whoever executes these runs to cancel them (unfinished ones only).
    /// Returns the runs marked.
    async fn request_run_cancel(&self, run_ids: &[String]) -> StoreResult<u64>;

    /// Unfinished runs of a session (to cancel them when it closes).
    async fn unfinished_session_runs(&self, session_id: &str) -> StoreResult<Vec<String>>;

    /// Serialise allocation decisions across processes: lock, read the active
    /// allocations and every process's waiting requests, let `decide` choose
    /// the grants that fit beside them (and the waiter rows they settle), store
    /// those, commit. Returns the grants.
    async fn allocate(&self, decide: &mut Decide<'_>) -> StoreResult<Vec<AllocationRecord>> {
        let (grants, settled) = decide(self.active_allocations().await?, self.waiters().await?);
        if !grants.is_empty() {
            self.put_allocations(&grants).await?;
        }
        self.drop_waiters(&settled).await?;
        Ok(grants)
    }

    /// Record a request that waits for resources.
    async fn put_waiter(&self, w: &WaiterRecord) -> StoreResult<()>;
    /// Forget waiting requests (granted, or given up).
    async fn drop_waiters(&self, ids: &[String]) -> StoreResult<()>;
    /// Every waiting request of every process.
    async fn waiters(&self) -> StoreResult<Vec<WaiterRecord>>;
    /// Renew `node`'s waiting requests (`seen_at = now`) and remove every
    /// request not seen since `stale_before` (its process died).
    async fn touch_waiters(&self, node: &str, now: i64, stale_before: i64) -> StoreResult<()>;

    /// Sessions with ready auto tasks, or auto tasks whose executor's lease ended before `now`.
    async fn sessions_with_auto_work(&self, now: i64) -> StoreResult<Vec<String>>;

    /// Runs by status.
    async fn count_runs_by_status(&self) -> StoreResult<Vec<(crate::model::RunStatus, u64)>>;

    /// Steps of unfinished runs by status.
    async fn count_live_steps_by_status(&self)
    -> StoreResult<Vec<(crate::model::StepStatus, u64)>>;

    /// Who executes unfinished runs now (leases not ended at `now`), and the
    /// unfinished runs nobody executes.
    async fn run_executors(&self, now: i64) -> StoreResult<RunExecutors>;

    /// Every count the status and metrics views show, read together (one
    /// statement on the SQL stores, where each query was a round trip).
    async fn overview(&self, now: i64) -> StoreResult<Overview> {
        Ok(Overview {
            sessions: self.count_sessions_by_status().await?,
            runs: self.count_runs_by_status().await?,
            live_steps: self.count_live_steps_by_status().await?,
            tasks: self.task_stats().await?,
            unclaimed_runs: self.run_executors(now).await?.unclaimed,
        })
    }

    /// The events after `w.after` in log order, at most `w.scan` (of every
    /// principal). Only events whose position can no longer be preceded by a
    /// later commit are returned, so a reader may continue from the last one.
    async fn events(&self, w: &EventWindow) -> StoreResult<Vec<StoredEvent>>;

    /// Remove the events recorded before `before` (ms); how many went.
    async fn prune_events(&self, before: i64) -> StoreResult<u64>;

    /// Wait until every update queued so far (`queue_step`,
    /// `queue_task_updates`) is durable.
    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }

    // ---- processes on a shared store ---------------------------------------

    /// Register this process, or renew its heartbeat (same `node`).
    async fn put_process(&self, _p: &ProcessRecord) -> StoreResult<()> {
        Ok(())
    }

    /// Every registered process, live or not (by `heartbeat_at`).
    async fn processes(&self) -> StoreResult<Vec<ProcessRecord>> {
        Ok(Vec::new())
    }

    /// `node` is gone: its run leases and auto task leases end now (its work
    /// can be taken over at once), its waiting requests and its row go. With
    /// `clean` (the process stopped itself) nothing of its work is touched.
    async fn drop_process(&self, _node: &str, _clean: bool) -> StoreResult<()> {
        Ok(())
    }

    /// Tell the other processes on this store that `topic` changed (no-op
    /// for a store only one process uses).
    async fn notify(&self, _topic: &str) -> StoreResult<()> {
        Ok(())
    }

    /// Topics other processes notified (None for a store only one process uses).
    /// A `*` means notifications may have been missed: look at everything.
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }

    /// A stamp that moves whenever any connection has committed to the store
    /// since it was last looked at (SQLite's `PRAGMA data_version`, polled
    /// every `cluster.signal_poll_ms`); None where there is no cheap stamp
    /// (a waiter polls the store instead).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// The group-commit writer's counts since the store opened; None for a
    /// store without one.
    fn group_commits(&self) -> Option<GroupCommits> {
        None
    }
}

/// What a group-commit writer did: `writes` updates (runs, steps, one call's
/// tasks) in `commits` transactions, so `writes / commits` updates share a
/// commit (and its fsync) on average.
#[derive(Debug, Default)]
pub struct GroupCommits {
    pub commits: u64,
    pub writes: u64,
}

/// The writer's counters, shared with the store that reports them.
#[derive(Debug, Default)]
pub struct WriteCounts {
    commits: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
}

impl WriteCounts {
    /// One committed batch of `writes` updates.
    pub fn committed(&self, writes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if writes > 0 {
            self.commits.fetch_add(1, Relaxed);
            self.writes.fetch_add(writes as u64, Relaxed);
        }
    }

    pub fn read(&self) -> GroupCommits {
        use std::sync::atomic::Ordering::Relaxed;
        GroupCommits {
            commits: self.commits.load(Relaxed),
            writes: self.writes.load(Relaxed),
        }
    }
}

/// What [`Store::allocate`] asks: given the active allocations and the waiting
/// requests, the grants to store and the waiter rows to remove.
pub type Decide<'a> = dyn FnMut(Vec<AllocationRecord>, Vec<WaiterRecord>) -> (Vec<AllocationRecord>, Vec<String>)
    + Send
    + 'a;

/// A request waiting for resources, as other processes see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaiterRecord {
    pub id: String,
    /// The process that waits (and grants it).
    pub node: String,
    pub principal: String,
    pub session_id: String,
    pub holder: String,
    /// JSON requirements.
    pub requirements: String,
    pub priority: String,
    /// When it started waiting (ms).
    pub since: i64,
    /// Last renewed by its process (ms).
    pub seen_at: i64,
}

/// A process working on a shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRecord {
    /// Its name in leases (`host:pid:random`).
    pub node: String,
    /// Host name and pid namespace: where `pid` identifies it.
    pub locality: String,
    pub pid: i64,
    /// `serve` (stdio), `serve-http`, `worker` or `run`.
    pub kind: String,
    pub version: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
}

/// Unfinished runs by executor, and those without one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunExecutors {
    /// Executor (lease owner) -> runs it holds.
    pub by_executor: Vec<(String, u64)>,
    /// Unfinished runs without a live lease.
    pub unclaimed: u64,
    /// Creation time of the oldest of them.
    pub oldest_unclaimed_at: Option<i64>,
}

/// The counts of [`Store::overview`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overview {
    pub sessions: Vec<(crate::model::SessionStatus, u64)>,
    pub runs: Vec<(crate::model::RunStatus, u64)>,
    /// Steps of unfinished runs.
    pub live_steps: Vec<(crate::model::StepStatus, u64)>,
    pub tasks: TaskStats,
    /// Unfinished runs without a live lease.
    pub unclaimed_runs: u64,
}

/// A run held by an executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLease {
    pub run_id: String,
    /// A cancel was requested (on any server).
    pub cancel_requested: bool,
}

/// Open (and migrate) the store a spec names, with default tuning.
pub async fn open(spec: &StoreSpec) -> anyhow::Result<Arc<dyn Store>> {
    open_spec(spec, &sqlite::SqliteOptions::default()).await
}

/// Open (and migrate) the store a configuration names, tuned as it says.
pub async fn open_configured(config: &crate::config::Config) -> anyhow::Result<Arc<dyn Store>> {
    let options = sqlite::SqliteOptions {
        synchronous: config.sqlite_synchronous,
        busy_timeout: std::time::Duration::from_millis(config.sqlite_busy_timeout_ms),
        signal_poll: std::time::Duration::from_millis(config.cluster.signal_poll_ms),
    };
    open_spec(&config.store_spec()?, &options).await
}

async fn open_spec(spec: &StoreSpec, o: &sqlite::SqliteOptions) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match spec {
        StoreSpec::Memory => Arc::new(memory::MemoryStore::default()),
        StoreSpec::Sqlite(path, sync) => Arc::new(
            sqlite::SqliteStore::open_tuned(
                path,
                &sqlite::SqliteOptions {
                    synchronous: *sync,
                    ..o.clone()
                },
            )
            .await?,
        ),
        StoreSpec::Postgres(url) => Arc::new(postgres::PostgresStore::open(url).await?),
    })
}

/// One contract, checked against every implementation.
#[cfg(test)]
mod contract {
    use super::*;

    async fn window(store: &dyn Store, after: EventCursor, scan: u32) -> Vec<StoredEvent> {
        store.events(&EventWindow { after, scan }).await.unwrap()
    }

    /// The first `n` events once they are visible: on PostgreSQL, once every
    /// older transaction of the server has ended (other tests run at once).
    async fn first_events(store: &dyn Store, n: usize) -> Vec<StoredEvent> {
        for _ in 0..400 {
            let got = window(store, EventCursor::default(), 100).await;
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("{n} events never became visible");
    }

    fn rec(id: &str, principal: &str, created_at: i64, is_default: bool) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            principal: principal.into(),
            name: format!("n-{id}"),
            user_id: None,
            description: String::new(),
            mode: crate::model::SessionMode::Parallel,
            max_parallel_tasks: 4,
            max_parallel_workflows: 2,
            timeout_seconds: None,
            idle_ttl_seconds: 10,
            metadata: "{}".into(),
            status: crate::model::SessionStatus::Active,
            is_default,
            created_at,
            updated_at: created_at,
            last_active_at: created_at,
            closed_at: None,
            close_reason: None,
        }
    }

    /// The overview reads what the separate counts read.
    async fn overview_agrees(store: &dyn Store, now: i64) {
        let mut o = store.overview(now).await.unwrap();
        o.sessions.sort_by_key(|p| p.0.as_str());
        o.runs.sort_by_key(|p| p.0.as_str());
        o.live_steps.sort_by_key(|p| p.0.as_str());
        o.tasks.by_status.sort_by_key(|p| p.0.as_str());
        let mut each = Overview {
            sessions: store.count_sessions_by_status().await.unwrap(),
            runs: store.count_runs_by_status().await.unwrap(),
            live_steps: store.count_live_steps_by_status().await.unwrap(),
            tasks: store.task_stats().await.unwrap(),
            unclaimed_runs: store.run_executors(now).await.unwrap().unclaimed,
        };
        each.sessions.sort_by_key(|p| p.0.as_str());
        each.runs.sort_by_key(|p| p.0.as_str());
        each.live_steps.sort_by_key(|p| p.0.as_str());
        each.tasks.by_status.sort_by_key(|p| p.0.as_str());
        assert_eq!(o, each);
        assert!(!o.runs.is_empty() || !o.tasks.by_status.is_empty(), "{o:?}");
    }

    async fn check(store: Arc<dyn Store>) {
        // Insert and read back, field for field.
        let mut a = rec("ses_a", "p", 1_000, false);
        a.timeout_seconds = Some(5);
        a.metadata = r#"{"x":1}"#.into();
        store.insert_session(&a, None).await.unwrap();
        assert_eq!(store.get_session("ses_a").await.unwrap(), Some(a.clone()));
        assert_eq!(store.get_session("ses_missing").await.unwrap(), None);
        assert!(matches!(
            store.insert_session(&a, None).await,
            Err(StoreError::Conflict(_))
        ));

        // At most one active default session per principal.
        store
            .insert_session(&rec("ses_d1", "p", 2_000, true), None)
            .await
            .unwrap();
        assert!(matches!(
            store
                .insert_session(&rec("ses_d2", "p", 2_001, true), None)
                .await,
            Err(StoreError::Conflict(_))
        ));
        store
            .insert_session(&rec("ses_q", "q", 2_000, true), None)
            .await
            .unwrap();
        assert_eq!(
            store.default_session("p").await.unwrap().unwrap().id,
            "ses_d1"
        );
        // Once closed, a new default may be created.
        assert!(
            store
                .close_session("ses_d1", 3_000, "closed_by_caller")
                .await
                .unwrap()
        );
        assert!(!store.close_session("ses_d1", 3_500, "again").await.unwrap());
        let d1 = store.get_session("ses_d1").await.unwrap().unwrap();
        assert_eq!(
            (d1.status.as_str(), d1.closed_at, d1.close_reason.as_deref()),
            ("closed", Some(3_000), Some("closed_by_caller"))
        );
        assert_eq!(store.default_session("p").await.unwrap(), None);
        store
            .insert_session(&rec("ses_d3", "p", 4_000, true), None)
            .await
            .unwrap();

        // Pages in (created_at, id) order, per principal, with status filter.
        store
            .insert_session(&rec("ses_b", "p", 1_000, false), None)
            .await
            .unwrap();
        let page = |after, status, limit| {
            let store = store.clone();
            async move {
                store
                    .list_sessions(&SessionQuery {
                        principal: "p",
                        status,
                        after,
                        limit,
                    })
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|s| s.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            page(None, None, 10).await,
            ["ses_a", "ses_b", "ses_d1", "ses_d3"]
        );
        assert_eq!(page(None, None, 2).await, ["ses_a", "ses_b"]);
        assert_eq!(
            page(Some((1_000, "ses_b".into())), None, 10).await,
            ["ses_d1", "ses_d3"]
        );
        assert_eq!(
            page(None, Some(crate::model::SessionStatus::Closed), 10).await,
            ["ses_d1"]
        );
        assert_eq!(store.count_active_sessions("p").await.unwrap(), 3);
        let counts = store.count_sessions_by_status().await.unwrap();
        assert_eq!(
            counts,
            vec![
                (crate::model::SessionStatus::Active, 4),
                (crate::model::SessionStatus::Closed, 1)
            ]
        );

        // Touch only moves forward and only on active sessions.
        store.touch_session("ses_b", 9_000).await.unwrap();
        store.touch_session("ses_b", 8_000).await.unwrap();
        assert_eq!(
            store
                .get_session("ses_b")
                .await
                .unwrap()
                .unwrap()
                .last_active_at,
            9_000
        );
        store.touch_session("ses_d1", 9_000).await.unwrap();
        assert_eq!(
            store
                .get_session("ses_d1")
                .await
                .unwrap()
                .unwrap()
                .last_active_at,
            2_000
        );

        // Expiry: idle TTL 10 s; ses_a also has a 5 s lifetime.
        let due = |now| {
            let store = store.clone();
            async move {
                let mut v: Vec<String> = store
                    .expired_sessions(now, 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|s| s.id)
                    .collect();
                v.sort();
                v
            }
        };
        assert_eq!(due(5_999).await, Vec::<String>::new());
        assert_eq!(due(6_000).await, ["ses_a"]);
        assert_eq!(due(12_000).await, ["ses_a", "ses_q"]);
        assert_eq!(due(14_000).await, ["ses_a", "ses_d3", "ses_q"]);
        assert_eq!(due(19_000).await, ["ses_a", "ses_b", "ses_d3", "ses_q"]);

        store.probe(42).await.unwrap();
        store.probe(43).await.unwrap();
    }

    /// Runs and steps: bulk insert, queued updates in order (last write wins,
    /// also across the multi-row statements of one batch), and reads.
    async fn check_runs(store: Arc<dyn Store>) {
        let run = RunRecord {
            id: "run_1".into(),
            session_id: "ses_a".into(),
            principal: "p".into(),
            workflow_name: "w".into(),
            workflow_version: 1,
            workflow_source: "session".into(),
            definition: "{}".into(),
            parameters: "{}".into(),
            status: crate::model::RunStatus::Running,
            priority: crate::model::Priority::Normal,
            max_parallel: 4,
            mode: crate::model::SessionMode::Parallel,
            timeout_seconds: None,
            resources: None,
            error: None,
            retry_of: None,
            created_at: 1,
            started_at: Some(1),
            finished_at: None,
            updated_at: 1,
            parent_run_id: None,
            parent_step: None,
            project_id: None,
            project: None,
        };
        let step = |i: u32, status: &str| StepRecord {
            run_id: "run_1".into(),
            name: format!("s{i}"),
            position: i,
            status: crate::model::StepStatus::parse(status).unwrap(),
            attempts: u32::from(status != "pending"),
            started_at: None,
            finished_at: None,
            output: (status == "succeeded").then(|| format!("{{\"i\":{i}}}")),
            error: None,
            input_hash: None,
            reused: false,
            prior_output: None,
            prior_hash: None,
        };
        let n = 700;
        let steps: Vec<StepRecord> = (0..n).map(|i| step(i, "pending")).collect();
        store.insert_run(&run, &steps).await.unwrap();
        assert_eq!(store.run_steps("run_1").await.unwrap(), steps);
        assert_eq!(
            store.unfinished_session_runs("ses_a").await.unwrap(),
            ["run_1"]
        );
        for i in 0..n {
            store.queue_step(&step(i, "running")).await.unwrap();
        }
        for i in 0..n {
            store.queue_step(&step(i, "succeeded")).await.unwrap();
        }
        let done = RunRecord {
            status: crate::model::RunStatus::parse("succeeded").unwrap(),
            finished_at: Some(2),
            updated_at: 2,
            ..run
        };
        // The awaited run update makes every step update queued before it durable.
        store.update_run(&done).await.unwrap();
        let stored = store.run_steps("run_1").await.unwrap();
        assert_eq!(
            stored,
            (0..n).map(|i| step(i, "succeeded")).collect::<Vec<_>>()
        );
        assert_eq!(store.get_run("run_1").await.unwrap(), Some(done.clone()));
        assert!(
            store
                .unfinished_session_runs("ses_a")
                .await
                .unwrap()
                .is_empty()
        );

        // A child run is found through its parent.
        let child = RunRecord {
            id: "run_2".into(),
            created_at: 3,
            parent_run_id: Some("run_1".into()),
            parent_step: Some("s0".into()),
            ..done
        };
        store.insert_run(&child, &[]).await.unwrap();
        let q = |parent| RunQuery {
            principal: "p",
            session_id: None,
            status: None,
            workflow_name: None,
            parent_run_id: parent,
            project_id: None,
            after: None,
            limit: 10,
        };
        assert_eq!(
            store.list_runs(&q(Some("run_1"))).await.unwrap(),
            vec![child.clone()]
        );
        assert!(store.list_runs(&q(Some("run_2"))).await.unwrap().is_empty());
        assert_eq!(store.list_runs(&q(None)).await.unwrap().len(), 2);
        assert_eq!(store.get_run("run_2").await.unwrap(), Some(child.clone()));

        // Leases: unfinished runs only, most urgent first, one owner at a time,
        // taken over when they end, kept by renewals, untouched by run updates.
        let pending = |id: &str, priority: &str, at: i64| RunRecord {
            id: id.into(),
            status: crate::model::RunStatus::Pending,
            priority: crate::model::Priority::parse(priority).unwrap(),
            created_at: at,
            finished_at: None,
            parent_run_id: None,
            parent_step: None,
            ..child.clone()
        };
        store
            .insert_run(&pending("run_l1", "low", 10), &[])
            .await
            .unwrap();
        store
            .insert_run(&pending("run_l2", "critical", 11), &[])
            .await
            .unwrap();
        store
            .insert_run(&pending("run_l3", "normal", 12), &[])
            .await
            .unwrap();
        // The order of a claim's answer is not part of the contract.
        let ids = |v: Vec<RunLease>| {
            let mut v: Vec<String> = v.into_iter().map(|l| l.run_id).collect();
            v.sort();
            v
        };
        assert_eq!(
            ids(store.claim_runs("a", 100, 200, 2).await.unwrap()),
            ["run_l2", "run_l3"]
        );
        assert_eq!(
            ids(store.claim_runs("b", 100, 200, 5).await.unwrap()),
            ["run_l1"]
        );
        assert!(store.claim_runs("b", 150, 250, 5).await.unwrap().is_empty());
        assert!(
            store
                .lease_run("run_l2", "b", 150, 250)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .lease_run("run_1", "b", 150, 250)
                .await
                .unwrap()
                .is_none(),
            "finished"
        );
        // An update of the run keeps its lease.
        store
            .update_run(&RunRecord {
                status: crate::model::RunStatus::Running,
                ..pending("run_l2", "critical", 11)
            })
            .await
            .unwrap();
        let held = vec![
            "run_l2".to_string(),
            "run_l3".to_string(),
            "run_l1".to_string(),
        ];
        assert_eq!(
            ids(store.renew_run_leases("a", &held, 300).await.unwrap()).len(),
            2
        );
        // a's leases last until 300: at 250 b takes l1 again (its own lease ended) but nothing of a's.
        assert_eq!(
            ids(store.claim_runs("b", 250, 400, 5).await.unwrap()),
            ["run_l1"]
        );
        assert_eq!(
            store
                .request_run_cancel(&["run_l3".into(), "run_1".into()])
                .await
                .unwrap(),
            1
        );
        let renewed = store.renew_run_leases("a", &held, 300).await.unwrap();
        assert!(
            renewed
                .iter()
                .any(|l| l.run_id == "run_l3" && l.cancel_requested)
        );
        assert!(
            renewed
                .iter()
                .any(|l| l.run_id == "run_l2" && !l.cancel_requested)
        );
        // a stops renewing: after 300 b takes both over; a dropped lease is free at once.
        let taken = store.claim_runs("b", 301, 500, 5).await.unwrap();
        assert!(
            taken
                .iter()
                .any(|l| l.run_id == "run_l3" && l.cancel_requested)
        );
        assert_eq!(ids(taken), ["run_l2", "run_l3"]);
        assert!(
            store
                .renew_run_leases("a", &held, 600)
                .await
                .unwrap()
                .is_empty()
        );
        store.drop_run_lease("run_l1", "b").await.unwrap();
        assert_eq!(
            ids(store.claim_runs("c", 302, 500, 5).await.unwrap()),
            ["run_l1"]
        );
        assert_eq!(
            store
                .lease_run("run_l1", "c", 302, 700)
                .await
                .unwrap()
                .map(|l| l.run_id)
                .as_deref(),
            Some("run_l1")
        );
        assert_eq!(
            store.unfinished_session_runs("ses_a").await.unwrap(),
            ["run_l1", "run_l2", "run_l3"]
        );
        // c holds l1 until 700, b's leases on l2 and l3 ended at 500.
        let ex = store.run_executors(600).await.unwrap();
        assert_eq!(ex.by_executor, vec![("c".to_string(), 1)]);
        assert_eq!((ex.unclaimed, ex.oldest_unclaimed_at), (2, Some(11)));
        overview_agrees(&*store, 600).await;

        // Waiting requests: listed in arrival order, renewed by their process,
        // removed when settled or when their process stopped renewing them.
        let w = |id: &str, node: &str, since: i64| WaiterRecord {
            id: id.into(),
            node: node.into(),
            principal: "p".into(),
            session_id: "ses_a".into(),
            holder: "h".into(),
            requirements: "{\"cpu\":1}".into(),
            priority: "normal".into(),
            since,
            seen_at: since,
        };
        store.put_waiter(&w("w2", "b", 20)).await.unwrap();
        store.put_waiter(&w("w1", "a", 10)).await.unwrap();
        store.put_waiter(&w("w3", "a", 30)).await.unwrap();
        let ws = store.waiters().await.unwrap();
        assert_eq!(
            ws.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
            ["w1", "w2", "w3"]
        );
        store.touch_waiters("a", 100, 50).await.unwrap();
        let ws = store.waiters().await.unwrap();
        assert_eq!(
            ws.iter()
                .map(|w| (w.id.as_str(), w.seen_at))
                .collect::<Vec<_>>(),
            [("w1", 100), ("w3", 100)]
        );
        store.drop_waiters(&["w1".into()]).await.unwrap();
        let granted = store
            .allocate(&mut |active, waiters| {
                assert!(active.is_empty());
                assert_eq!(waiters.len(), 1);
                (Vec::new(), vec![waiters[0].id.clone()])
            })
            .await
            .unwrap();
        assert!(granted.is_empty());
        assert!(store.waiters().await.unwrap().is_empty());
    }

    /// Tasks: all-or-nothing inserts and updates, versions as optimistic locks.
    async fn check_tasks(store: Arc<dyn Store>) {
        let task = |id: &str, name: &str, seq: i64| TaskRecord {
            id: id.into(),
            session_id: "ses_t".into(),
            principal: "p".into(),
            seq,
            name: name.into(),
            description: None,
            module: None,
            action: None,
            parameters: "{}".into(),
            dependencies: vec![],
            priority: crate::model::Priority::Normal,
            timeout_seconds: Some(5),
            max_retries: 1,
            retry: None,
            resources: None,
            tags: vec![],
            metadata: "{}".into(),
            status: crate::model::TaskStatus::parse("ready").unwrap(),
            result: None,
            summary: None,
            error: None,
            attempts: 0,
            claimed_by: None,
            lease_id: None,
            lease_expires_at: None,
            created_at: 1,
            updated_at: 1,
            started_at: None,
            finished_at: None,
            version: 1,
        };
        let (a, b) = (task("tsk_a", "a", 0), task("tsk_b", "b", 1));
        store.insert_tasks(&[a.clone(), b.clone()]).await.unwrap();
        // A clashing name anywhere in the batch: nothing is inserted.
        assert!(matches!(
            store
                .insert_tasks(&[task("tsk_c", "c", 2), task("tsk_d", "a", 3)])
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.get_task("tsk_c").await.unwrap(), None);
        assert_eq!(
            store.session_tasks("ses_t").await.unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert_eq!(store.sessions_with_open_tasks().await.unwrap(), ["ses_t"]);

        let claimed = TaskRecord {
            status: crate::model::TaskStatus::parse("claimed").unwrap(),
            attempts: 1,
            version: 2,
            ..a.clone()
        };
        store
            .update_tasks(std::slice::from_ref(&claimed))
            .await
            .unwrap();
        // A writer that read version 1 loses, and its whole batch is rolled back.
        let stale = TaskRecord {
            status: crate::model::TaskStatus::parse("succeeded").unwrap(),
            version: 2,
            ..a.clone()
        };
        let b2 = TaskRecord {
            status: crate::model::TaskStatus::parse("succeeded").unwrap(),
            started_at: Some(10),
            finished_at: Some(30),
            updated_at: 30,
            version: 2,
            ..b.clone()
        };
        assert!(matches!(
            store.update_tasks(&[b2.clone(), stale]).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.get_task("tsk_b").await.unwrap(), Some(b));
        assert_eq!(store.get_task("tsk_a").await.unwrap(), Some(claimed));
        store.update_tasks(std::slice::from_ref(&b2)).await.unwrap();
        // Events: inserts and changes, none for the rolled-back batch or the
        // failed insert, none for a lease renewal.
        let renewed = TaskRecord {
            lease_expires_at: Some(99),
            updated_at: 50,
            version: 3,
            ..b2.clone()
        };
        store.update_tasks(&[renewed]).await.unwrap();
        let events = first_events(&*store, 4).await;
        let seen: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.subject.as_str(), e.status.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("tsk_a", "ready"),
                ("tsk_b", "ready"),
                ("tsk_a", "claimed"),
                ("tsk_b", "succeeded")
            ]
        );
        assert!(events.windows(2).all(|w| w[0].cursor < w[1].cursor));
        assert!(events.iter().all(|e| e.kind == "task"
            && e.principal.as_deref() == Some("p")
            && e.session_id.as_deref() == Some("ses_t")));
        // Windows: from a cursor, at most `scan`.
        let rest = window(&*store, events[1].cursor, 1).await;
        assert_eq!(rest, events[2..3]);
        // Pruning goes by time (these events carry their records' updated_at).
        assert_eq!(store.prune_events(2).await.unwrap(), 3);
        let left = window(&*store, EventCursor::default(), 100).await;
        assert_eq!(left, events[3..]);
        let stats = store.task_stats().await.unwrap();
        assert_eq!(
            stats.by_status,
            vec![
                (crate::model::TaskStatus::Claimed, 1),
                (crate::model::TaskStatus::Succeeded, 1)
            ]
        );
        assert_eq!(stats.average_execution_ms, Some(20.0));
        overview_agrees(&*store, 600).await;
        // The stamp moves with every insert and update of the session's tasks.
        let stamp =
            |ts: &[TaskRecord]| (ts.len() as i64, ts.iter().map(|t| t.version).sum::<i64>());
        let now = store.session_tasks("ses_t").await.unwrap();
        assert_eq!(
            store.session_tasks_stamp("ses_t").await.unwrap(),
            stamp(&now)
        );
        assert_eq!(store.session_tasks_stamp("ses_none").await.unwrap(), (0, 0));

        // Queued updates apply in order; one whose version moved is refused
        // alone, every row of it rolled back, and the others land.
        let in_g = |t: TaskRecord| TaskRecord {
            session_id: "ses_g".into(),
            ..t
        };
        let (x, y) = (in_g(task("tsk_x", "x", 0)), in_g(task("tsk_y", "y", 1)));
        store.insert_tasks(&[x.clone(), y.clone()]).await.unwrap();
        let with = |t: &TaskRecord, status: &str, version: i64| TaskRecord {
            status: crate::model::TaskStatus::parse(status).unwrap(),
            version,
            updated_at: 60,
            ..t.clone()
        };
        let events_of = |ts: &[TaskRecord]| ts.iter().map(EventRecord::task).collect::<Vec<_>>();
        let x_claimed = with(&x, "claimed", 2);
        let first = vec![x_claimed.clone()];
        // Its first row fits, its second read x before the first update.
        let second = vec![with(&y, "succeeded", 2), with(&x, "failed", 2)];
        let y_claimed = with(&y, "claimed", 2);
        let third = vec![y_claimed.clone()];
        let t1 = store
            .queue_task_updates(first.clone(), events_of(&first))
            .await
            .unwrap();
        let t2 = store
            .queue_task_updates(second.clone(), events_of(&second))
            .await
            .unwrap();
        let t3 = store
            .queue_task_updates(third.clone(), events_of(&third))
            .await
            .unwrap();
        assert_eq!(t3.await.map_err(|e| e.to_string()), Ok(()));
        assert!(matches!(t2.await, Err(StoreError::Conflict(_))));
        t1.await.unwrap();
        assert_eq!(
            store.session_tasks("ses_g").await.unwrap(),
            vec![x_claimed.clone(), y_claimed.clone()]
        );
        assert_eq!(store.session_tasks_stamp("ses_g").await.unwrap(), (2, 4));
        // A call alone in its batch (the writer gives it no savepoint of its
        // own) is refused whole too: its first row fits, its second is stale.
        let lone = vec![with(&x_claimed, "succeeded", 3), with(&y, "failed", 2)];
        let t = store
            .queue_task_updates(lone.clone(), events_of(&lone))
            .await
            .unwrap();
        assert!(matches!(t.await, Err(StoreError::Conflict(_))));
        assert_eq!(
            store.session_tasks("ses_g").await.unwrap(),
            vec![x_claimed.clone(), y_claimed.clone()]
        );
        assert_eq!(store.session_tasks_stamp("ses_g").await.unwrap(), (2, 4));
        // And one that fits lands, its stamp and event with it.
        let done = vec![with(&x_claimed, "succeeded", 3)];
        store
            .queue_task_updates(done.clone(), events_of(&done))
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(store.session_tasks_stamp("ses_g").await.unwrap(), (2, 5));
        let mut seen = Vec::new();
        for _ in 0..400 {
            seen = window(&*store, EventCursor::default(), 100)
                .await
                .into_iter()
                .filter(|e| e.session_id.as_deref() == Some("ses_g"))
                .map(|e| (e.subject, e.status))
                .collect::<Vec<_>>();
            if seen.len() >= 5 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            seen,
            pairs(&[
                ("tsk_x", "ready"),
                ("tsk_y", "ready"),
                ("tsk_x", "claimed"),
                ("tsk_y", "claimed"),
                ("tsk_x", "succeeded")
            ])
        );
    }

    #[tokio::test]
    async fn memory_store_keeps_the_contract() {
        check(Arc::new(memory::MemoryStore::default())).await;
        check_runs(Arc::new(memory::MemoryStore::default())).await;
        check_tasks(Arc::new(memory::MemoryStore::default())).await;
        check_projects(Arc::new(memory::MemoryStore::default())).await;
    }

    #[tokio::test]
    async fn sqlite_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite::SqliteStore::open(&dir.path().join("nested/dir/t.db"))
            .await
            .unwrap();
        check(Arc::new(store)).await;
        let store = sqlite::SqliteStore::open(&dir.path().join("runs.db"))
            .await
            .unwrap();
        check_runs(Arc::new(store)).await;
        let store = sqlite::SqliteStore::open(&dir.path().join("tasks.db"))
            .await
            .unwrap();
        check_tasks(Arc::new(store)).await;
        let store = sqlite::SqliteStore::open(&dir.path().join("projects.db"))
            .await
            .unwrap();
        check_projects(Arc::new(store)).await;
    }

    /// The PostgreSQL store (127.0.0.1:5432, database `test`, or TEST_MYRMEX_POSTGRES),
    /// each check in a schema of its own.
    #[tokio::test]
    async fn postgres_store_keeps_the_contract() {
        let base = std::env::var("TEST_MYRMEX_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let admin = sqlx::PgPool::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {base} is needed for this test: {e}"));
        let schema = format!("contract_{}", uuid::Uuid::new_v4().simple());
        let open = |name: &'static str| {
            let (base, admin, schema) = (base.clone(), admin.clone(), format!("{schema}_{name}"));
            async move {
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&admin)
                    .await
                    .unwrap();
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                Arc::new(postgres::PostgresStore::open(&url).await.unwrap()) as Arc<dyn Store>
            }
        };
        check(open("sessions").await).await;
        check_runs(open("runs").await).await;
        check_tasks(open("tasks").await).await;
        check_projects(open("projects").await).await;
        for name in ["sessions", "runs", "tasks", "projects"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA {schema}_{name} CASCADE"
            )))
            .execute(&admin)
            .await
            .unwrap();
        }
    }

    /// PostgreSQL: an event committed while an older transaction that wrote
    /// events is still open stays unseen until that one ends, so a reader
    /// following cursors cannot step past the older transaction's events.
    #[tokio::test]
    async fn postgres_events_wait_for_older_transactions() {
        let base = std::env::var("TEST_MYRMEX_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("contract_{}_ev", uuid::Uuid::new_v4().simple());
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}schema={schema}");
        let store = postgres::PostgresStore::open(&url).await.unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(
                base.parse::<sqlx::postgres::PgConnectOptions>()
                    .unwrap()
                    .options([("search_path", schema.as_str())]),
            )
            .await
            .unwrap();
        let insert = "INSERT INTO events (at, kind, subject, status, data) \
                      VALUES (1, 'session', $1, 'active', '{}')";
        let mut older = pool.begin().await.unwrap();
        sqlx::query(insert)
            .bind("older")
            .execute(&mut *older)
            .await
            .unwrap();
        let mut newer = pool.begin().await.unwrap();
        sqlx::query(insert)
            .bind("newer")
            .execute(&mut *newer)
            .await
            .unwrap();
        newer.commit().await.unwrap();
        let all = EventWindow {
            after: EventCursor::default(),
            scan: 10,
        };
        assert_eq!(store.events(&all).await.unwrap(), vec![]);
        older.commit().await.unwrap();
        // Other transactions of the cluster (parallel tests) may hold the horizon a moment longer.
        let mut seen = Vec::new();
        for _ in 0..200 {
            seen = store.events(&all).await.unwrap();
            if seen.len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        let subjects: Vec<&str> = seen.iter().map(|e| e.subject.as_str()).collect();
        assert_eq!(subjects, ["older", "newer"]);
        assert!(seen[0].cursor < seen[1].cursor);
        pool.close().await;
        let admin = sqlx::PgPool::connect(&base).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await
            .unwrap();
    }

    /// Projects: unique names, lookups by id and name, filtered pages, updates, deletes.
    async fn check_projects(store: Arc<dyn Store>) {
        let p = |id: &str, name: &str, at: i64, kind: &str, tags: &str| ProjectRecord {
            id: id.into(),
            principal: "p".into(),
            name: name.into(),
            path: format!("/x/{name}"),
            status: crate::model::ProjectStatus::Planning,
            kind: kind.into(),
            template: None,
            tags: tags.into(),
            record: "{}".into(),
            created_at: at,
            updated_at: at,
        };
        let a = p("prj_a", "alpha", 1, "custom", r#"["t1","t2"]"#);
        let b = p("prj_b", "beta", 2, "data_pipeline", r#"["t2"]"#);
        store.insert_project(&a).await.unwrap();
        store.insert_project(&b).await.unwrap();
        assert!(matches!(
            store
                .insert_project(&p("prj_c", "alpha", 3, "custom", "[]"))
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.get_project("prj_a").await.unwrap(), Some(a.clone()));
        assert_eq!(
            store.project_by_name("beta").await.unwrap(),
            Some(b.clone())
        );
        let q = |kind, tag, after| ProjectQuery {
            principal: "p",
            status: None,
            kind,
            tag,
            after,
            limit: 10,
        };
        assert_eq!(
            store.list_projects(&q(None, None, None)).await.unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert_eq!(
            store
                .list_projects(&q(Some("custom"), None, None))
                .await
                .unwrap(),
            vec![a.clone()]
        );
        assert_eq!(
            store
                .list_projects(&q(None, Some("t1"), None))
                .await
                .unwrap(),
            vec![a.clone()]
        );
        assert_eq!(
            store
                .list_projects(&q(None, Some("t"), None))
                .await
                .unwrap(),
            vec![]
        );
        assert_eq!(
            store
                .list_projects(&q(None, None, Some((1, "prj_a".into()))))
                .await
                .unwrap(),
            vec![b.clone()]
        );
        let archived = ProjectRecord {
            status: crate::model::ProjectStatus::Archived,
            updated_at: 9,
            ..a.clone()
        };
        store.update_project(&archived).await.unwrap();
        assert_eq!(store.get_project("prj_a").await.unwrap(), Some(archived));
        assert!(store.delete_project("prj_a").await.unwrap());
        assert!(!store.delete_project("prj_a").await.unwrap());
        assert!(store.update_project(&a).await.is_err());
        assert_eq!(store.project_by_name("alpha").await.unwrap(), None);
    }
}

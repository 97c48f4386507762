//! The embedded default store: one SQLite file in WAL mode.
//!
//! `synchronous = FULL` makes every committed transaction durable before the
//! engine answers the caller, so a `kill -9` right after a reply loses nothing.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, query};

use super::{
    AllocationRecord, Decide, EventCursor, EventRecord, EventWindow, ProcessRecord, ProjectQuery,
    ProjectRecord, RunExecutors, RunLease, RunQuery, RunRecord, SessionQuery, SessionRecord,
    StepRecord, Store, StoreError, StoreResult, StoredEvent, TaskRecord, TaskStats, TaskTicket,
    WaiterRecord, WorkflowRecord,
};

pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    /// Topics other processes (and this one) signalled, seen by the poller.
    events: tokio::sync::broadcast::Sender<String>,
    /// Moves when another connection (of any process) has committed.
    changes: tokio::sync::watch::Sender<u64>,
    /// Run, step and task updates go through one writer that commits whatever
    /// is queued in a single transaction (group commit): one fsync for many.
    writes: tokio::sync::mpsc::Sender<Write>,
    /// What the writer committed.
    counts: std::sync::Arc<super::WriteCounts>,
}

/// Most updates committed in one transaction.
const GROUP_COMMIT_MAX: usize = 512;

/// Rows per multi-row statement: 13 columns each stays far below SQLite's
/// 32,766 bound variables.
const STEP_ROWS_PER_STATEMENT: usize = 256;

/// Write step rows with as few statements as possible: per-statement cost, not
/// fsync, is what bounds SQLite throughput here.
async fn write_steps(
    conn: &mut sqlx::SqliteConnection,
    upsert: bool,
    steps: &[&StepRecord],
) -> Result<(), sqlx::Error> {
    let verb = if upsert { "REPLACE" } else { "INSERT" };
    for chunk in steps.chunks(STEP_ROWS_PER_STATEMENT) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
            "{verb} INTO run_steps ({STEP_COLUMNS}) "
        ));
        qb.push_values(chunk.iter(), |mut b, s| {
            b.push_bind(s.run_id.clone())
                .push_bind(s.name.clone())
                .push_bind(s.position as i64)
                .push_bind(s.status.as_str())
                .push_bind(s.attempts as i64)
                .push_bind(s.started_at)
                .push_bind(s.finished_at)
                .push_bind(s.output.clone())
                .push_bind(s.error.clone())
                .push_bind(s.input_hash.clone())
                .push_bind(s.reused)
                .push_bind(s.prior_output.clone())
                .push_bind(s.prior_hash.clone());
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The writer owns one connection for its lifetime: no pool round trips per batch.
async fn writer(
    mut conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    mut rx: tokio::sync::mpsc::Receiver<Write>,
    counts: std::sync::Arc<super::WriteCounts>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        // Queued step states must not be lost to a busy database: the batch
        // is tried again (each try waits up to the busy timeout) before it fails.
        let mut tries = 0;
        let result = loop {
            match commit_batch(&mut conn, &batch).await.map_err(db_err) {
                Err(StoreError::Unavailable(m)) if m == super::rows::BUSY && tries < 5 => {
                    tries += 1;
                    tracing::warn!(
                        tries,
                        "the SQLite write lock stayed busy; the batch is tried again"
                    );
                }
                other => break other,
            }
        };
        answer_batch(batch, result, &counts);
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations");

super::rows::shared_rows!(sqlx::Sqlite, SqliteRow, sqlx::sqlite::SqliteArguments);

/// How an SQLite store is opened.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub synchronous: crate::config::SqliteSync,
    /// How long a write waits for another connection's (or process's) write
    /// lock before it fails (`sqlite_busy_timeout_ms`).
    pub busy_timeout: Duration,
    /// How often the change stamp is read for other processes' signals
    /// (`cluster.signal_poll_ms`).
    pub signal_poll: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: crate::config::SqliteSync::Full,
            busy_timeout: Duration::from_secs(10),
            signal_poll: Duration::from_millis(100),
        }
    }
}

/// Watch for other processes' signals: `PRAGMA data_version` changes when
/// another connection commits, and only then is the (tiny) signals table
/// read; every topic whose counter moved is sent to the subscribers.
async fn watch_signals(
    mut conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    every: Duration,
    events: tokio::sync::broadcast::Sender<String>,
    changes: tokio::sync::watch::Sender<u64>,
) {
    let mut version: Option<i64> = None;
    let mut seen: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut first = true;
    loop {
        tokio::time::sleep(every).await;
        if events.receiver_count() == 0 && changes.receiver_count() == 0 && !first {
            continue;
        }
        let v: Result<i64, sqlx::Error> = query("PRAGMA data_version")
            .fetch_one(&mut *conn)
            .await
            .and_then(|r| r.try_get(0));
        let v = match v {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the SQLite change stamp; everything is looked at");
                let _ = events.send("*".into());
                continue;
            }
        };
        if version == Some(v) {
            continue;
        }
        version = Some(v);
        changes.send_modify(|n| *n += 1);
        let rows = match query("SELECT topic, counter FROM signals")
            .fetch_all(&mut *conn)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the signals; everything is looked at");
                let _ = events.send("*".into());
                continue;
            }
        };
        for r in rows {
            let (Ok(topic), Ok(counter)) = (
                r.try_get::<String, _>("topic"),
                r.try_get::<i64, _>("counter"),
            ) else {
                continue;
            };
            if seen.insert(topic.clone(), counter) != Some(counter) && !first {
                let _ = events.send(topic);
            }
        }
        first = false;
    }
}

impl SqliteStore {
    /// Open or create the database file, then apply pending migrations.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_tuned(path, &SqliteOptions::default()).await
    }

    /// Open with a chosen durability level.
    pub async fn open_with(path: &Path, sync: crate::config::SqliteSync) -> anyhow::Result<Self> {
        Self::open_tuned(
            path,
            &SqliteOptions {
                synchronous: sync,
                ..SqliteOptions::default()
            },
        )
        .await
    }

    /// Open with every option chosen.
    pub async fn open_tuned(path: &Path, o: &SqliteOptions) -> anyhow::Result<Self> {
        let sync = o.synchronous;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!("cannot create data directory {}: {e}", dir.display())
            })?;
        }
        // Held until the tables are migrated: processes that open one data
        // directory at the same moment take turns.
        let _opening = open_lock(path, o.busy_timeout).await?;
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                crate::config::SqliteSync::Full => SqliteSynchronous::Full,
                crate::config::SqliteSync::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(o.busy_timeout)
            .foreign_keys(true);
        // The writer and the signal watcher hold one connection each.
        let pool = SqlitePoolOptions::new()
            .max_connections(6)
            // A connection to a local file cannot hang up: sqlx's ping before
            // each acquire was one more hop to the connection's thread per query.
            .test_before_acquire(false)
            .connect_with(opts)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open SQLite store {}: {e}", path.display()))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("cannot migrate SQLite store {}: {e}", path.display()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4 * GROUP_COMMIT_MAX);
        let conn = pool
            .acquire()
            .await
            .map_err(|e| anyhow::anyhow!("cannot open SQLite store {}: {e}", path.display()))?;
        let counts = std::sync::Arc::new(super::WriteCounts::default());
        tokio::spawn(writer(conn, rx, counts.clone()));
        let (events, _) = tokio::sync::broadcast::channel(256);
        let (changes, _) = tokio::sync::watch::channel(0);
        let watcher = pool
            .acquire()
            .await
            .map_err(|e| anyhow::anyhow!("cannot open SQLite store {}: {e}", path.display()))?;
        tokio::spawn(watch_signals(
            watcher,
            o.signal_poll,
            events.clone(),
            changes.clone(),
        ));
        Ok(Self {
            pool,
            path: path.to_path_buf(),
            writes: tx,
            counts,
            events,
            changes,
        })
    }
}

/// An exclusive lock on `<database>.lock`, taken while a process creates
/// and migrates the database: sqlx's migration lock does nothing on SQLite,
/// so two processes starting at once on a fresh data directory would both
/// try to create the tables (`table ... already exists`). The lock is the
/// operating system's (`flock`), released when the file handle is dropped or
/// the process dies. The wait is bounded by `sqlite_busy_timeout_ms`: a
/// process stopped while it migrates does not hang every later start.
async fn open_lock(path: &Path, wait: std::time::Duration) -> anyhow::Result<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", lock_path.display()))?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another process has held {} for longer than sqlite_busy_timeout_ms ({} ms) while it opens the store; \
                 is a myrmex process on this data directory stopped (kill -CONT it) or stuck?",
                lock_path.display(),
                wait.as_millis()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                anyhow::bail!("cannot lock {}: {e}", lock_path.display())
            }
        }
    }
}

/// The first of `n` event sequence numbers. Taken under SQLite's write lock,
/// so sequence order is commit order.
async fn event_seq_base(
    conn: &mut sqlx::SqliteConnection,
    n: usize,
) -> Result<Option<i64>, sqlx::Error> {
    let last: i64 = query("UPDATE event_counter SET last = last + ?1 WHERE id = 1 RETURNING last")
        .bind(n as i64)
        .fetch_one(&mut *conn)
        .await?
        .try_get("last")?;
    Ok(Some(last - n as i64 + 1))
}

/// A transaction that reads before it writes takes the write lock at once.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// Every committed event is visible in order.
const EVENTS_VISIBLE: &str = "";

/// SQLite serialises writers: a claim needs no row locks.
const CLAIM_LOCK: &str = "";

/// `BEGIN IMMEDIATE` takes the database's write lock: allocation decisions of
/// every process are serialised by it.
const GUARD_LOCK: &str = "";

/// The write lock serialises per-principal quota counts too.
const PRINCIPAL_LOCK: &str = "";

/// Insert or replace one allocation.
async fn upsert_allocation(
    conn: &mut sqlx::SqliteConnection,
    a: &AllocationRecord,
) -> Result<(), sqlx::Error> {
    bind_allocation(
        query(AssertSqlSafe(format!(
            "REPLACE INTO allocations ({ALLOCATION_COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ))),
        a,
    )
    .execute(conn)
    .await?;
    Ok(())
}

super::rows::sql_store!(SqliteStore, {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    async fn notify(&self, topic: &str) -> StoreResult<()> {
        query(
            "INSERT INTO signals (topic, counter) VALUES (?1, 1) \
             ON CONFLICT (topic) DO UPDATE SET counter = counter + 1",
        )
        .bind(topic)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        Some(self.events.subscribe())
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    async fn insert_run(&self, run: &RunRecord, steps: &[StepRecord]) -> StoreResult<()> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
        let sql = format!(
            "INSERT INTO runs ({RUN_COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)"
        );
        bind_run(query(AssertSqlSafe(sql)), run)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let steps: Vec<&StepRecord> = steps.iter().collect();
        write_steps(&mut tx, false, &steps).await.map_err(db_err)?;
        insert_events(&mut tx, &[EventRecord::run(run)])
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn queue_step(&self, step: &StepRecord) -> StoreResult<()> {
        // Not awaited: a later awaited write makes it durable.
        self.enqueue(WriteOp::Step(step.clone())).await.map(drop)
    }
});

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

use super::rows::Arg;
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
    /// A connection for the hottest point read (a session's task stamp, read
    /// before every claim and report), used on the calling thread: a few
    /// microseconds, where through the pool it was a hop to sqlx's worker
    /// thread and back.
    reader: std::sync::Mutex<rusqlite::Connection>,
}

impl SqliteStore {
    /// A session's task stamp read on this thread, or None when the database
    /// would make it wait (it never waits for a lock: the caller reads
    /// through the pool then). Another thread's read holds the reader for a
    /// few microseconds at most.
    fn inline_stamp(&self, session_id: &str) -> Option<(i64, i64)> {
        use rusqlite::OptionalExtension as _;
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let read = conn
            .prepare_cached(super::rows::STAMP_READ)
            .and_then(|mut q| {
                q.query_row([session_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            });
        match read {
            Ok(stamp) => Some(stamp.unwrap_or((0, 0))),
            Err(e) => {
                tracing::debug!(error = %e, "the inline stamp read failed; read through the pool");
                None
            }
        }
    }
}

/// Most updates committed in one transaction.
const GROUP_COMMIT_MAX: usize = 512;

/// Rows per multi-row statement: 13 columns each stays far below SQLite's
/// 32,766 bound variables.
const STEP_ROWS_PER_STATEMENT: usize = 256;

/// Insert a new run's step rows with as few statements as possible:
/// per-statement cost, not fsync, is what bounds SQLite throughput here.
async fn write_steps(
    conn: &mut sqlx::SqliteConnection,
    steps: &[&StepRecord],
) -> Result<(), sqlx::Error> {
    for chunk in steps.chunks(STEP_ROWS_PER_STATEMENT) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
            "INSERT INTO run_steps ({STEP_COLUMNS}) "
        ));
        qb.push_values(chunk.iter(), |mut b, s| {
            push_args(&mut b, super::rows::step_args(s))
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The group-commit writer: a thread of its own holding one rusqlite
/// connection, so a batch runs start to commit without leaving the thread
/// (through sqlx every statement was a hop to the connection's worker thread
/// and back), each statement prepared once and cached.
fn writer(
    mut conn: rusqlite::Connection,
    mut rx: tokio::sync::mpsc::Receiver<Write>,
    counts: std::sync::Arc<super::WriteCounts>,
) {
    let sql = WriterSql {
        fenced_update: fenced_update_sql(),
        upsert_run: upsert_run_sql(),
    };
    while let Some(first) = rx.blocking_recv() {
        let batch = super::rows::gather(first, &mut rx, GROUP_COMMIT_MAX);
        // Queued step states must not be lost to a busy database: the batch
        // is tried again (each try waits up to the busy timeout) before it fails.
        let mut tries = 0;
        let result = loop {
            match commit_batch(&mut conn, &sql, &batch).map_err(direct_err) {
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

/// The writer's statements that are the same for every batch, written once.
struct WriterSql {
    fenced_update: String,
    upsert_run: String,
}

/// Open the inline reader's connection: reads only, and never waiting for a
/// lock (busy means "read through the pool").
fn reader_connection(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::ZERO)?;
    conn.pragma_update(None, "query_only", "ON")?;
    Ok(conn)
}

/// Open the writer's connection on a migrated database, tuned as sqlx's are.
fn writer_connection(path: &Path, o: &SqliteOptions) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(o.busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match o.synchronous {
            crate::config::SqliteSync::Full => "FULL",
            crate::config::SqliteSync::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl rusqlite::ToSql for super::rows::Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use super::rows::Arg;
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match self {
            Arg::Text(Some(s)) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Arg::Owned(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Arg::Int(Some(i)) => ToSqlOutput::Owned(Value::Integer(*i)),
            Arg::Bool(b) => ToSqlOutput::Owned(Value::Integer(*b as i64)),
            Arg::Text(None) | Arg::Int(None) => ToSqlOutput::Owned(Value::Null),
        })
    }
}

/// A writer's error as the store's: busy and locked (another process held
/// the write lock past the busy timeout) as `db_err` maps them, a unique
/// violation as a conflict.
fn direct_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match e.sqlite_error() {
        Some(f) if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(super::rows::BUSY.into())
        }
        Some(f)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            StoreError::Conflict(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// `(?, ..., ?), ...`: `rows` rows of `columns` placeholders.
fn values_list(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// Replace tasks whose stored version is the one before theirs (see
/// `update_fenced`); a moved version or a refused row is this call's answer.
fn update_fenced_direct(
    conn: &rusqlite::Connection,
    sql: &WriterSql,
    tasks: &[TaskRecord],
) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached(&sql.fenced_update)
        .map_err(direct_err)?;
    for t in super::rows::in_lock_order(tasks) {
        let args = super::rows::task_args(t);
        let fence = [Arg::Text(Some(&t.id)), Arg::Int(Some(t.version - 1))];
        let n = stmt
            .execute(rusqlite::params_from_iter(args.iter().chain(fence.iter())))
            .map_err(direct_err)?;
        if n != 1 {
            return Err(moved(&t.id));
        }
    }
    Ok(())
}

/// One call's task updates under a savepoint (see `apply_task_updates`).
fn call_task_updates(
    conn: &rusqlite::Connection,
    sql: &WriterSql,
    tasks: &[TaskRecord],
) -> rusqlite::Result<StoreResult<()>> {
    conn.prepare_cached("SAVEPOINT call")?.execute([])?;
    let r = update_fenced_direct(conn, sql, tasks);
    if r.is_err() {
        conn.prepare_cached("ROLLBACK TO call")?.execute([])?;
    }
    conn.prepare_cached("RELEASE call")?.execute([])?;
    Ok(r)
}

/// Record `events` in the writer's transaction, numbered under its write lock.
fn insert_events_direct(
    conn: &rusqlite::Connection,
    events: &[EventRecord],
) -> rusqlite::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let last: i64 = conn
        .prepare_cached("UPDATE event_counter SET last = last + ?1 WHERE id = 1 RETURNING last")?
        .query_row([events.len() as i64], |r| r.get(0))?;
    let mut seq = last - events.len() as i64 + 1;
    for chunk in events.chunks(EVENT_ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO events (seq, {EVENT_COLUMNS}) VALUES {}",
            values_list(chunk.len(), 9)
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut args: Vec<Arg<'_>> = Vec::with_capacity(chunk.len() * 9);
        for e in chunk {
            args.push(Arg::Int(Some(seq)));
            seq += 1;
            args.extend(super::rows::event_args(e));
        }
        stmt.execute(rusqlite::params_from_iter(args.iter()))?;
    }
    Ok(())
}

/// Replace step rows, many per statement.
fn replace_steps_direct(
    conn: &rusqlite::Connection,
    steps: &[&StepRecord],
) -> rusqlite::Result<()> {
    for chunk in steps.chunks(STEP_ROWS_PER_STATEMENT) {
        let sql = format!(
            "REPLACE INTO run_steps ({STEP_COLUMNS}) VALUES {}",
            values_list(chunk.len(), 13)
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let args: Vec<Arg<'_>> = chunk
            .iter()
            .flat_map(|s| super::rows::step_args(s))
            .collect();
        stmt.execute(rusqlite::params_from_iter(args.iter()))?;
    }
    Ok(())
}

/// Commit a batch in one transaction: the task writes (each answered on its
/// own, under a savepoint unless it is the batch's only write), the stamps of
/// those that landed, then every event, run and step of the batch.
fn commit_batch(
    conn: &mut rusqlite::Connection,
    sql: &WriterSql,
    batch: &[Write],
) -> rusqlite::Result<Vec<StoreResult<()>>> {
    if only_barriers(batch) {
        return Ok(batch.iter().map(|_| Ok(())).collect());
    }
    let (runs, steps) = latest(batch);
    let alone = lone_task_call(batch);
    // Dropped without a commit, the transaction rolls back.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut answers = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    let mut landed: Vec<&TaskRecord> = Vec::new();
    for w in batch {
        let WriteOp::Tasks {
            tasks,
            events: made,
        } = &w.op
        else {
            answers.push(Ok(()));
            continue;
        };
        let r = if alone {
            update_fenced_direct(&tx, sql, tasks)
        } else {
            call_task_updates(&tx, sql, tasks)?
        };
        if r.is_ok() {
            landed.extend(tasks);
            events.extend(made.iter().cloned());
        } else if alone {
            // The batch's only write was refused: nothing to commit (the
            // rest are barriers).
            drop(tx);
            answers.push(r);
            answers.resize_with(batch.len(), || Ok(()));
            return Ok(answers);
        }
        answers.push(r);
    }
    {
        let mut stamp = tx.prepare_cached(super::rows::STAMP_SQL)?;
        for (session, (n, v)) in super::rows::stamp_moves(landed, false) {
            stamp.execute(rusqlite::params![session, n, v])?;
        }
    }
    events.extend(batch_events(batch));
    insert_events_direct(&tx, &events)?;
    if !runs.is_empty() {
        let mut upsert = tx.prepare_cached(&sql.upsert_run)?;
        for r in runs {
            upsert.execute(rusqlite::params_from_iter(super::rows::run_args(r).iter()))?;
        }
    }
    replace_steps_direct(&tx, &steps)?;
    tx.commit()?;
    Ok(answers)
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
        let conn = writer_connection(path, o)
            .map_err(|e| anyhow::anyhow!("cannot open SQLite store {}: {e}", path.display()))?;
        let counts = std::sync::Arc::new(super::WriteCounts::default());
        let writer_counts = counts.clone();
        std::thread::Builder::new()
            .name("myrmex-sqlite-writer".into())
            .spawn(move || writer(conn, rx, writer_counts))
            .map_err(|e| anyhow::anyhow!("cannot start the SQLite writer: {e}"))?;
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
        let reader = reader_connection(path)
            .map_err(|e| anyhow::anyhow!("cannot open SQLite store {}: {e}", path.display()))?;
        Ok(Self {
            reader: std::sync::Mutex::new(reader),
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
        write_steps(&mut tx, &steps).await.map_err(db_err)?;
        insert_events(&mut tx, &[EventRecord::run(run)])
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn session_tasks_stamp(&self, session_id: &str) -> StoreResult<(i64, i64)> {
        match self.inline_stamp(session_id) {
            Some(stamp) => Ok(stamp),
            None => pooled_tasks_stamp(&self.pool, session_id).await,
        }
    }

    async fn queue_step(&self, step: &StepRecord) -> StoreResult<()> {
        // Not awaited: a later awaited write makes it durable.
        self.enqueue(WriteOp::Step(step.clone())).await.map(drop)
    }
});

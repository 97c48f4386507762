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
    AllocationRecord, EventCursor, EventRecord, EventWindow, ProjectQuery, ProjectRecord,
    RunExecutors, RunLease, RunQuery, RunRecord, SessionQuery, SessionRecord, StepRecord, Store,
    StoreError, StoreResult, StoredEvent, TaskRecord, TaskStats, WaiterRecord, WorkflowRecord,
};

pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    /// Run and step updates go through one writer that commits whatever is
    /// queued in a single transaction (group commit): one fsync for many updates.
    writes: tokio::sync::mpsc::Sender<Write>,
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
    verb: &str,
    steps: &[&StepRecord],
) -> Result<(), sqlx::Error> {
    for chunk in steps.chunks(STEP_ROWS_PER_STATEMENT) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
            "{verb} INTO run_steps ({STEP_COLUMNS}) "
        ));
        qb.push_values(chunk.iter(), |mut b, s| {
            b.push_bind(s.run_id.clone())
                .push_bind(s.name.clone())
                .push_bind(s.position as i64)
                .push_bind(s.status.clone())
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

async fn commit_batch(
    conn: &mut sqlx::SqliteConnection,
    batch: &[Write],
) -> Result<(), sqlx::Error> {
    use sqlx::Connection as _;
    let run_sql = upsert_run_sql();
    let (runs, steps) = latest(batch);
    let events = batch_events(batch);
    let mut tx = conn.begin().await?;
    insert_events(&mut tx, &events).await?;
    for r in runs {
        bind_run(query(AssertSqlSafe(run_sql.clone())), r)
            .execute(&mut *tx)
            .await?;
    }
    write_steps(&mut tx, "REPLACE", &steps).await?;
    tx.commit().await
}

/// The writer owns one connection for its lifetime: no pool round trips per batch.
async fn writer(
    mut conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    mut rx: tokio::sync::mpsc::Receiver<Write>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = commit_batch(&mut conn, &batch)
            .await
            .map_err(|e| e.to_string());
        for w in batch {
            let _ = w.done.send(result.clone());
        }
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations");

super::rows::shared_rows!(sqlx::Sqlite, SqliteRow, sqlx::sqlite::SqliteArguments);

impl SqliteStore {
    /// Open or create the database file, then apply pending migrations.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_with(path, crate::config::SqliteSync::Full).await
    }

    /// Open with a chosen durability level.
    pub async fn open_with(path: &Path, sync: crate::config::SqliteSync) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!("cannot create data directory {}: {e}", dir.display())
            })?;
        }
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                crate::config::SqliteSync::Full => SqliteSynchronous::Full,
                crate::config::SqliteSync::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
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
        tokio::spawn(writer(conn, rx));
        Ok(Self {
            pool,
            path: path.to_path_buf(),
            writes: tx,
        })
    }
}

impl SqliteStore {
    /// Queue an update for the group-commit writer and wait until it is durable.
    async fn write(&self, op: WriteOp) -> StoreResult<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.writes
            .send(Write { op, done })
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?
            .map_err(StoreError::Unavailable)
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

super::rows::sql_store!(SqliteStore, {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    async fn insert_run(&self, run: &RunRecord, steps: &[StepRecord]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let sql = format!(
            "INSERT INTO runs ({RUN_COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)"
        );
        bind_run(query(AssertSqlSafe(sql)), run)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let steps: Vec<&StepRecord> = steps.iter().collect();
        write_steps(&mut tx, "INSERT", &steps)
            .await
            .map_err(db_err)?;
        insert_events(&mut tx, &[EventRecord::run(run)])
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn queue_step(&self, step: &StepRecord) -> StoreResult<()> {
        let (done, _) = tokio::sync::oneshot::channel();
        self.writes
            .send(Write {
                op: WriteOp::Step(step.clone()),
                done,
            })
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))
    }

    async fn put_allocations(&self, allocations: &[AllocationRecord]) -> StoreResult<()> {
        let sql = format!(
            "REPLACE INTO allocations ({ALLOCATION_COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        );
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for a in allocations {
            bind_allocation(query(AssertSqlSafe(sql.clone())), a)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        allocation_events(&mut tx, allocations)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }
});

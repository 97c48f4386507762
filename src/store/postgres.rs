//! The PostgreSQL store (`--store postgres://...`): the same tables and
//! migrations as SQLite, for deployments where several processes share one
//! database. Every committed transaction is durable before the engine
//! answers (PostgreSQL's default `synchronous_commit = on`).
//!
//! Connections come from a pool, so a lost connection is replaced when the
//! database is back; calls made meanwhile fail with `STORE_UNAVAILABLE`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};

use super::{
    AllocationRecord, Decide, EventCursor, EventRecord, EventWindow, ProcessRecord, ProjectQuery,
    ProjectRecord, RunExecutors, RunLease, RunQuery, RunRecord, SessionQuery, SessionRecord,
    StepRecord, Store, StoreError, StoreResult, StoredEvent, TaskRecord, TaskStats, TaskTicket,
    WaiterRecord, WorkflowRecord,
};

pub struct PostgresStore {
    pool: PgPool,
    /// The URL without its password, for status output.
    location: String,
    /// Run, step and task updates go through one writer that commits whatever
    /// is queued in a single transaction (group commit): one fsync for many.
    writes: tokio::sync::mpsc::Sender<Write>,
    /// What the writer committed.
    counts: std::sync::Arc<super::WriteCounts>,
    /// LISTEN/NOTIFY channel of this database and schema.
    channel: String,
    /// What other processes notified, from one listening connection.
    events: tokio::sync::broadcast::Sender<String>,
}

/// Most updates committed in one transaction.
const GROUP_COMMIT_MAX: usize = 512;

/// Rows per multi-row statement: 13 columns each stays far below PostgreSQL's
/// 65,535 bound parameters.
const STEP_ROWS_PER_STATEMENT: usize = 256;

/// Write step rows with as few statements as possible.
async fn write_steps(
    conn: &mut sqlx::PgConnection,
    upsert: bool,
    steps: &[&StepRecord],
) -> Result<(), sqlx::Error> {
    for chunk in steps.chunks(STEP_ROWS_PER_STATEMENT) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
            "INSERT INTO run_steps ({STEP_COLUMNS}) "
        ));
        qb.push_values(chunk.iter(), |mut b, s| {
            push_args(&mut b, super::rows::step_args(s))
        });
        if upsert {
            qb.push(
                " ON CONFLICT (run_id, name) DO UPDATE SET position = EXCLUDED.position, \
                 status = EXCLUDED.status, attempts = EXCLUDED.attempts, \
                 started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, \
                 output = EXCLUDED.output, error = EXCLUDED.error, input_hash = EXCLUDED.input_hash, \
                 reused = EXCLUDED.reused, prior_output = EXCLUDED.prior_output, \
                 prior_hash = EXCLUDED.prior_hash",
            );
        }
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// One call's task updates inside the writer's transaction, under a
/// savepoint: a moved version (another process wrote first) or a
/// refused row rolls back this call's rows alone; the batch goes on.
/// The outer error is the connection's: the whole batch fails.
async fn apply_task_updates(
    conn: &mut sqlx::PgConnection,
    tasks: &[TaskRecord],
) -> Result<StoreResult<()>, sqlx::Error> {
    let mut call = sqlx::Connection::begin(&mut *conn).await?;
    match update_fenced(&mut call, tasks).await {
        Ok(()) => {
            call.commit().await?;
            Ok(Ok(()))
        }
        Err(e) => {
            call.rollback().await?;
            Ok(Err(e))
        }
    }
}

/// What the task writes of a batch did, in the writer's transaction.
struct BatchTasks {
    /// Each write's answer, in order; every write other than a task
    /// write is part of the batch's commit.
    answers: Vec<StoreResult<()>>,
    /// The events of the task writes that landed, for the batch's insert.
    events: Vec<EventRecord>,
    /// False: the batch's only write was refused without a savepoint
    /// of its own; the transaction must be rolled back, not committed.
    commit: bool,
}

/// Apply a batch's task writes, each under its own savepoint, except a
/// batch's only write (one agent's call): the batch's transaction is
/// its savepoint then, two statements fewer. The stamps of every call
/// that landed move once per batch and session (in session order),
/// last: a stamp row is locked only until the commit. Their events are
/// inserted with the batch's others, in one statement.
async fn apply_batch_tasks(
    conn: &mut sqlx::PgConnection,
    batch: &[Write],
) -> Result<BatchTasks, sqlx::Error> {
    let alone = lone_task_call(batch);
    let mut out = BatchTasks {
        answers: Vec::with_capacity(batch.len()),
        events: Vec::new(),
        commit: true,
    };
    let mut landed: Vec<&TaskRecord> = Vec::new();
    for w in batch {
        out.answers.push(match &w.op {
            WriteOp::Tasks { tasks, events } => {
                let r = if alone {
                    update_fenced(&mut *conn, tasks).await
                } else {
                    apply_task_updates(&mut *conn, tasks).await?
                };
                match &r {
                    Ok(()) => {
                        landed.extend(tasks);
                        out.events.extend(events.iter().cloned());
                    }
                    Err(_) if alone => out.commit = false,
                    Err(_) => {}
                }
                r
            }
            _ => Ok(()),
        });
    }
    if out.commit {
        bump_stamps(&mut *conn, landed, false).await?;
    }
    Ok(out)
}

/// Commit a batch of the group-commit writer in one transaction: the
/// task writes (each answered on its own), then every event, run and
/// step of the batch. What each write answers.
async fn commit_batch(
    conn: &mut sqlx::PgConnection,
    batch: &[Write],
) -> Result<Vec<StoreResult<()>>, sqlx::Error> {
    use sqlx::Connection as _;
    if only_barriers(batch) {
        return Ok(batch.iter().map(|_| Ok(())).collect());
    }
    let (runs, steps) = latest(batch);
    let mut tx = conn.begin_with(BEGIN_WRITE).await?;
    let tasks = apply_batch_tasks(&mut tx, batch).await?;
    if !tasks.commit {
        tx.rollback().await?;
        return Ok(tasks.answers);
    }
    let mut events = tasks.events;
    events.extend(batch_events(batch));
    insert_events(&mut tx, &events).await?;
    let run_sql = upsert_run_sql();
    for r in runs {
        bind_run(query(AssertSqlSafe(run_sql.clone())), r)
            .execute(&mut *tx)
            .await?;
    }
    write_steps(&mut tx, true, &steps).await?;
    tx.commit().await?;
    Ok(tasks.answers)
}

/// The writer commits whatever is queued in one transaction on a pooled
/// connection (a lost connection is replaced by the pool).
async fn writer(
    pool: PgPool,
    mut rx: tokio::sync::mpsc::Receiver<Write>,
    counts: std::sync::Arc<super::WriteCounts>,
) {
    while let Some(first) = rx.recv().await {
        let batch = super::rows::gather(first, &mut rx, GROUP_COMMIT_MAX);
        let result = match pool.acquire().await {
            Ok(mut conn) => commit_batch(&mut conn, &batch).await,
            Err(e) => Err(e),
        }
        .map_err(db_err);
        answer_batch(batch, result, &counts);
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations");

super::rows::shared_rows!(sqlx::Postgres, PgRow, sqlx::postgres::PgArguments);

/// sqlx's `query`, with the shared SQL's `?N` placeholders written as
/// PostgreSQL's `$N` (SQL written for PostgreSQL only passes unchanged).
fn query<'a>(
    sql: impl sqlx::SqlSafeStr,
) -> sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let sql = sql.into_sql_str();
    let text = sql.as_str();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    sqlx::query(AssertSqlSafe(out))
}

impl PostgresStore {
    /// Connect (waiting up to 5 s), then apply pending migrations. A
    /// `schema=NAME` query parameter (myrmex's own) keeps every table in that
    /// schema, created when missing: several servers or test runs can share
    /// one database without sharing state.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let (url, schema) = split_schema(url)?;
        let url = url.as_str();
        let mut opts = PgConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("store '{}': {e}", redact(url)))?;
        // Processes opening one database (and schema) at the same moment take
        // turns until the tables are migrated: CREATE SCHEMA IF NOT EXISTS and
        // sqlx's own bookkeeping table race otherwise (a unique violation in
        // the catalog). A session advisory lock, on a connection of its own.
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL at {}: {e}", redact(url)))?;
        let mut turn = admin
            .acquire()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL at {}: {e}", redact(url)))?;
        let key = format!("myrmex open {}", schema.as_deref().unwrap_or("public"));
        query("SELECT pg_advisory_lock(hashtext(?1))")
            .bind(&key)
            .execute(&mut *turn)
            .await
            .map_err(|e| anyhow::anyhow!("cannot take the opening lock in {}: {e}", redact(url)))?;
        if let Some(schema) = &schema {
            query(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&mut *turn)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create schema {schema}: {e}"))?;
            opts = opts.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to PostgreSQL at {}: {e} (is it running, and does the database exist?)",
                    redact(url)
                )
            })?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("cannot migrate PostgreSQL store {}: {e}", redact(url)))?;
        event_defaults(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("cannot prepare the event log in {}: {e}", redact(url)))?;
        // Closing the connection ends the session and its lock.
        drop(turn);
        admin.close().await;
        let (tx, rx) = tokio::sync::mpsc::channel(4 * GROUP_COMMIT_MAX);
        let counts = std::sync::Arc::new(super::WriteCounts::default());
        tokio::spawn(writer(pool.clone(), rx, counts.clone()));
        let channel = format!("myrmex_{}", schema.as_deref().unwrap_or("public")).to_lowercase();
        let events = tokio::sync::broadcast::channel(1024).0;
        tokio::spawn(listen(pool.clone(), channel.clone(), events.clone()));
        Ok(Self {
            pool,
            location: redact(url),
            writes: tx,
            counts,
            channel,
            events,
        })
    }
}

/// Forward notifications on `channel` to `events`. After the connection was
/// lost (notifications may have been missed) subscribers get `*`.
async fn listen(pool: PgPool, channel: String, events: tokio::sync::broadcast::Sender<String>) {
    let mut listener: Option<sqlx::postgres::PgListener> = None;
    loop {
        let l = match listener.as_mut() {
            Some(l) => l,
            None => match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(mut l) => match l.listen(&channel).await {
                    Ok(()) => {
                        let _ = events.send("*".into());
                        listener.insert(l)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot LISTEN; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
                Err(e) => {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::debug!(error = %e, "cannot connect the listener; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        match l.try_recv().await {
            Ok(Some(n)) => {
                let _ = events.send(n.payload().to_string());
            }
            // The connection was lost: reconnect, and tell subscribers to look at everything.
            Ok(None) => {
                let _ = events.send("*".into());
            }
            Err(e) => {
                tracing::debug!(error = %e, "listener failed; reconnecting");
                listener = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Take myrmex's `schema=NAME` parameter out of a URL (letters, digits and `_`).
fn split_schema(url: &str) -> anyhow::Result<(String, Option<String>)> {
    let mut u =
        reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("store '{}': {e}", redact(url)))?;
    let mut schema = None;
    let rest: Vec<(String, String)> = u
        .query_pairs()
        .filter_map(|(k, v)| {
            if k == "schema" {
                schema = Some(v.into_owned());
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    if let Some(s) = &schema
        && (s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        anyhow::bail!("store: schema '{s}' must be letters, digits and '_'");
    }
    if rest.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok((u.to_string(), schema))
}

/// A database URL without its password.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Insert or replace one allocation.
async fn upsert_allocation(
    conn: &mut sqlx::PgConnection,
    a: &AllocationRecord,
) -> Result<(), sqlx::Error> {
    bind_allocation(
        query(AssertSqlSafe(format!(
            "INSERT INTO allocations ({ALLOCATION_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (id) DO UPDATE SET session_id = EXCLUDED.session_id, \
         principal = EXCLUDED.principal, holder = EXCLUDED.holder, \
         owner_kind = EXCLUDED.owner_kind, owner_ref = EXCLUDED.owner_ref, \
         requirements = EXCLUDED.requirements, priority = EXCLUDED.priority, \
         status = EXCLUDED.status, created_at = EXCLUDED.created_at, \
         expires_at = EXCLUDED.expires_at, released_at = EXCLUDED.released_at, \
         release_reason = EXCLUDED.release_reason"
        ))),
        a,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Sequence numbers come from the column default (`events_seq`).
async fn event_seq_base(_: &mut sqlx::PgConnection, _: usize) -> Result<Option<i64>, sqlx::Error> {
    Ok(None)
}

/// Row locks are taken as rows are written.
const BEGIN_WRITE: &str = "BEGIN";

/// Only events of transactions older than every running one: a transaction
/// still running may commit events that sort before the newest visible ones.
const EVENTS_VISIBLE: &str = "AND xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint";

/// Give `events` its sequence and transaction-id defaults (PostgreSQL only,
/// so not in the shared migrations). Idempotent; concurrent opens serialise
/// on the table lock.
async fn event_defaults(pool: &PgPool) -> Result<(), sqlx::Error> {
    const CHECK: &str = "SELECT column_default IS NOT NULL AS set FROM information_schema.columns \
        WHERE table_schema = current_schema() AND table_name = 'events' AND column_name = 'seq'";
    let set: bool = query(CHECK).fetch_one(pool).await?.try_get("set")?;
    if set {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let set: bool = query(CHECK).fetch_one(&mut *tx).await?.try_get("set")?;
    if !set {
        query("CREATE SEQUENCE IF NOT EXISTS events_seq")
            .execute(&mut *tx)
            .await?;
        query(
            "ALTER TABLE events ALTER COLUMN seq SET DEFAULT nextval('events_seq'), \
             ALTER COLUMN xid SET DEFAULT (pg_current_xact_id()::text::bigint)",
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Concurrent claims skip the rows another claim holds instead of waiting for them.
const CLAIM_LOCK: &str = "FOR UPDATE SKIP LOCKED";

/// Serialises one principal's quota counts across processes (released at commit).
const PRINCIPAL_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext(?1))";

/// One row lock serialises every process's allocation decisions.
const GUARD_LOCK: &str = "SELECT id FROM resource_guard WHERE id = 1 FOR UPDATE";

super::rows::sql_store!(PostgresStore, {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn insert_run(&self, run: &RunRecord, steps: &[StepRecord]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let sql = format!(
            "INSERT INTO runs ({RUN_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
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

    async fn session_tasks_stamp(&self, session_id: &str) -> StoreResult<(i64, i64)> {
        pooled_tasks_stamp(&self.pool, session_id).await
    }

    async fn queue_step(&self, step: &StepRecord) -> StoreResult<()> {
        // Not awaited: a later awaited write makes it durable.
        self.enqueue(WriteOp::Step(step.clone())).await.map(drop)
    }

    async fn notify(&self, topic: &str) -> StoreResult<()> {
        query("SELECT pg_notify(?1, ?2)")
            .bind(&self.channel)
            .bind(topic)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        Some(self.events.subscribe())
    }
});

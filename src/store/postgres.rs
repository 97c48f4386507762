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
use sqlx::{AssertSqlSafe, Row, query};

use super::{
    AllocationRecord, ProjectQuery, ProjectRecord, RunQuery, RunRecord, SessionQuery,
    SessionRecord, StepRecord, Store, StoreError, StoreResult, TaskRecord, TaskStats,
    WorkflowRecord,
};

pub struct PostgresStore {
    pool: PgPool,
    /// The URL without its password, for status output.
    location: String,
    /// Run and step updates go through one writer that commits whatever is
    /// queued in a single transaction (group commit): one fsync for many updates.
    writes: tokio::sync::mpsc::Sender<Write>,
}

// Step writes are the hot path and runs are few: boxing either side only adds an allocation.
#[allow(clippy::large_enum_variant)]
enum WriteOp {
    Run(RunRecord),
    Step(StepRecord),
}

struct Write {
    op: WriteOp,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Most updates committed in one transaction.
const GROUP_COMMIT_MAX: usize = 512;

fn replace_run_sql() -> String {
    format!(
        "INSERT INTO runs ({RUN_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24) \
         ON CONFLICT (id) DO UPDATE SET session_id = EXCLUDED.session_id, principal = EXCLUDED.principal, workflow_name = EXCLUDED.workflow_name, workflow_version = EXCLUDED.workflow_version, workflow_source = EXCLUDED.workflow_source, definition = EXCLUDED.definition, parameters = EXCLUDED.parameters, status = EXCLUDED.status, priority = EXCLUDED.priority, max_parallel = EXCLUDED.max_parallel, mode = EXCLUDED.mode, timeout_seconds = EXCLUDED.timeout_seconds, resources = EXCLUDED.resources, error = EXCLUDED.error, retry_of = EXCLUDED.retry_of, created_at = EXCLUDED.created_at, started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, updated_at = EXCLUDED.updated_at, parent_run_id = EXCLUDED.parent_run_id, parent_step = EXCLUDED.parent_step, project_id = EXCLUDED.project_id, project = EXCLUDED.project"
    )
}

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

async fn commit_batch(conn: &mut sqlx::PgConnection, batch: &[Write]) -> Result<(), sqlx::Error> {
    use sqlx::Connection as _;
    let run_sql = replace_run_sql();
    // Rows are replaced whole, and the batch commits atomically: only the last
    // write of each row in it needs to be applied, and the order between rows
    // does not matter.
    let mut seen = std::collections::HashSet::new();
    let (mut runs, mut steps) = (Vec::new(), Vec::new());
    for w in batch.iter().rev() {
        match &w.op {
            WriteOp::Run(r) if seen.insert((r.id.as_str(), "")) => runs.push(r),
            WriteOp::Step(s) if seen.insert((s.run_id.as_str(), s.name.as_str())) => steps.push(s),
            _ => {}
        }
    }
    let mut tx = conn.begin().await?;
    for r in runs {
        bind_run(query(AssertSqlSafe(run_sql.clone())), r)
            .execute(&mut *tx)
            .await?;
    }
    write_steps(&mut tx, true, &steps).await?;
    tx.commit().await
}

/// The writer commits whatever is queued in one transaction on a pooled
/// connection (a lost connection is replaced by the pool).
async fn writer(pool: PgPool, mut rx: tokio::sync::mpsc::Receiver<Write>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = match pool.acquire().await {
            Ok(mut conn) => commit_batch(&mut conn, &batch).await,
            Err(e) => Err(e),
        }
        .map_err(|e| e.to_string());
        for w in batch {
            let _ = w.done.send(result.clone());
        }
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations");

super::rows::shared_rows!(sqlx::Postgres, PgRow, sqlx::postgres::PgArguments);

fn task_placeholders() -> String {
    (1..=30)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
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
        if let Some(schema) = &schema {
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts.clone())
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot connect to PostgreSQL at {}: {e}", redact(url))
                })?;
            query(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&admin)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create schema {schema}: {e}"))?;
            admin.close().await;
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
        let (tx, rx) = tokio::sync::mpsc::channel(4 * GROUP_COMMIT_MAX);
        tokio::spawn(writer(pool.clone(), rx));
        Ok(Self {
            pool,
            location: redact(url),
            writes: tx,
        })
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

impl PostgresStore {
    /// Queue an update for the group-commit writer and wait until it is durable.
    async fn write(&self, op: WriteOp) -> StoreResult<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.writes
            .send(Write { op, done })
            .await
            .map_err(|_| StoreError::Unavailable("the PostgreSQL writer has stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Unavailable("the PostgreSQL writer has stopped".into()))?
            .map_err(StoreError::Unavailable)
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn insert_session(&self, s: &SessionRecord) -> StoreResult<()> {
        query(AssertSqlSafe(format!(
            "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
        )))
        .bind(&s.id)
        .bind(&s.principal)
        .bind(&s.name)
        .bind(&s.description)
        .bind(&s.mode)
        .bind(s.max_parallel_tasks as i64)
        .bind(s.max_parallel_workflows as i64)
        .bind(s.timeout_seconds.map(|v| v as i64))
        .bind(s.idle_ttl_seconds as i64)
        .bind(&s.metadata)
        .bind(&s.status)
        .bind(s.is_default)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(s.last_active_at)
        .bind(s.closed_at)
        .bind(&s.close_reason)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn get_session(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
        one(
            &self.pool,
            format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"),
            id,
            session_from_row,
        )
        .await
    }

    async fn default_session(&self, principal: &str) -> StoreResult<Option<SessionRecord>> {
        let row = query(AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions \
             WHERE principal = $1 AND is_default AND status = 'active'"
        )))
        .bind(principal)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| session_from_row(&r).map_err(db_err))
            .transpose()
    }

    async fn list_sessions(&self, q: &SessionQuery<'_>) -> StoreResult<Vec<SessionRecord>> {
        let (after_c, after_id) = q.after.clone().unwrap_or((i64::MIN, String::new()));
        let rows = query(AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions \
             WHERE principal = $1 AND ($2 IS NULL OR status = $2) \
               AND (created_at > $3 OR (created_at = $3 AND id > $4)) \
             ORDER BY created_at, id LIMIT $5"
        )))
        .bind(q.principal)
        .bind(q.status)
        .bind(after_c)
        .bind(after_id)
        .bind(q.limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        sessions_from_rows(rows)
    }

    async fn close_session(&self, id: &str, now: i64, reason: &str) -> StoreResult<bool> {
        let r = query(
            "UPDATE sessions SET status = 'closed', closed_at = $2, updated_at = $2, \
             close_reason = $3 WHERE id = $1 AND status = 'active'",
        )
        .bind(id)
        .bind(now)
        .bind(reason)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn touch_session(&self, id: &str, now: i64) -> StoreResult<()> {
        query(
            "UPDATE sessions SET last_active_at = $2 \
             WHERE id = $1 AND status = 'active' AND last_active_at < $2",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn expired_sessions(&self, now: i64, limit: u32) -> StoreResult<Vec<SessionRecord>> {
        let rows = query(AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE status = 'active' AND \
             (last_active_at + idle_ttl_seconds * 1000 <= $1 OR \
              (timeout_seconds IS NOT NULL AND created_at + timeout_seconds * 1000 <= $1)) \
             ORDER BY last_active_at LIMIT $2"
        )))
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        sessions_from_rows(rows)
    }

    async fn count_sessions_by_status(&self) -> StoreResult<Vec<(String, u64)>> {
        let rows =
            query("SELECT status, COUNT(*) AS n FROM sessions GROUP BY status ORDER BY status")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("status").map_err(db_err)?,
                    r.try_get::<i64, _>("n").map_err(db_err)? as u64,
                ))
            })
            .collect()
    }

    async fn count_active_sessions(&self, principal: &str) -> StoreResult<u64> {
        let n: i64 =
            query("SELECT COUNT(*) AS n FROM sessions WHERE principal = $1 AND status = 'active'")
                .bind(principal)
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?
                .try_get("n")
                .map_err(db_err)?;
        Ok(n as u64)
    }

    async fn put_workflow(&self, w: &WorkflowRecord) -> StoreResult<WorkflowRecord> {
        let row = query(AssertSqlSafe(format!(
            "INSERT INTO workflows ({WORKFLOW_COLUMNS}) VALUES ($1, $2, $3, $4, 1, $5, $6, $6) \
             ON CONFLICT (scope, owner, name) DO UPDATE SET version = workflows.version + 1, \
             definition = excluded.definition, principal = excluded.principal, updated_at = excluded.updated_at \
             RETURNING {WORKFLOW_COLUMNS}"
        )))
        .bind(&w.scope)
        .bind(&w.owner)
        .bind(&w.name)
        .bind(&w.principal)
        .bind(&w.definition)
        .bind(w.updated_at)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        workflow_from_row(&row).map_err(db_err)
    }

    async fn get_workflow(
        &self,
        scope: &str,
        owner: &str,
        name: &str,
    ) -> StoreResult<Option<WorkflowRecord>> {
        let row = query(AssertSqlSafe(format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE scope = $1 AND owner = $2 AND name = $3"
        )))
        .bind(scope)
        .bind(owner)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| workflow_from_row(&r).map_err(db_err))
            .transpose()
    }

    async fn list_workflows(
        &self,
        session_id: &str,
        principal: &str,
    ) -> StoreResult<Vec<WorkflowRecord>> {
        let r = query(AssertSqlSafe(format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE (scope = 'session' AND owner = $1) \
             OR (scope = 'global' AND owner = $2) ORDER BY name, scope"
        )))
        .bind(session_id)
        .bind(principal)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows(r, workflow_from_row)
    }

    async fn delete_workflow(&self, scope: &str, owner: &str, name: &str) -> StoreResult<bool> {
        let r = query("DELETE FROM workflows WHERE scope = $1 AND owner = $2 AND name = $3")
            .bind(scope)
            .bind(owner)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
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
        tx.commit().await.map_err(db_err)
    }

    async fn update_run(&self, run: &RunRecord) -> StoreResult<()> {
        self.write(WriteOp::Run(run.clone())).await
    }

    async fn update_step(&self, step: &StepRecord) -> StoreResult<()> {
        self.write(WriteOp::Step(step.clone())).await
    }

    async fn queue_step(&self, step: &StepRecord) -> StoreResult<()> {
        let (done, _) = tokio::sync::oneshot::channel();
        self.writes
            .send(Write {
                op: WriteOp::Step(step.clone()),
                done,
            })
            .await
            .map_err(|_| StoreError::Unavailable("the PostgreSQL writer has stopped".into()))
    }

    async fn get_run(&self, id: &str) -> StoreResult<Option<RunRecord>> {
        one(
            &self.pool,
            format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"),
            id,
            run_from_row,
        )
        .await
    }

    async fn run_steps(&self, run_id: &str) -> StoreResult<Vec<StepRecord>> {
        let r = query(AssertSqlSafe(format!(
            "SELECT {STEP_COLUMNS} FROM run_steps WHERE run_id = $1 ORDER BY position"
        )))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows(r, step_from_row)
    }

    async fn list_runs(&self, q: &RunQuery<'_>) -> StoreResult<Vec<RunRecord>> {
        let (after_c, after_id) = q.after.clone().unwrap_or((i64::MIN, String::new()));
        let r = query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE principal = $1 \
               AND ($2 IS NULL OR session_id = $2) AND ($3 IS NULL OR status = $3) \
               AND ($4 IS NULL OR workflow_name = $4) \
               AND (created_at > $5 OR (created_at = $5 AND id > $6)) \
               AND ($8 IS NULL OR parent_run_id = $8) \
               AND ($9 IS NULL OR project_id = $9) \
             ORDER BY created_at, id LIMIT $7"
        )))
        .bind(q.principal)
        .bind(q.session_id)
        .bind(q.status)
        .bind(q.workflow_name)
        .bind(after_c)
        .bind(after_id)
        .bind(q.limit as i64)
        .bind(q.parent_run_id)
        .bind(q.project_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows(r, run_from_row)
    }

    async fn unfinished_runs(&self) -> StoreResult<Vec<RunRecord>> {
        let r = query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE status IN ('pending', 'running') ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows(r, run_from_row)
    }

    async fn probe(&self, now: i64) -> StoreResult<()> {
        let v = now.to_string();
        query(
            "INSERT INTO meta (key, value) VALUES ('health_probe', $1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(&v)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        let back: String = query("SELECT value FROM meta WHERE key = 'health_probe'")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?
            .try_get("value")
            .map_err(db_err)?;
        if back != v {
            return Err(StoreError::Unavailable("probe read-back mismatch".into()));
        }
        Ok(())
    }

    async fn insert_tasks(&self, tasks: &[TaskRecord]) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({})",
            task_placeholders()
        );
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for t in tasks {
            bind_task(query(AssertSqlSafe(sql.clone())), t)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn update_tasks(&self, tasks: &[TaskRecord]) -> StoreResult<()> {
        let sql = format!(
            "UPDATE tasks SET ({TASK_COLUMNS}) = ({}) WHERE id = $31 AND version = $32",
            task_placeholders()
        );
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for t in tasks {
            let r = bind_task(query(AssertSqlSafe(sql.clone())), t)
                .bind(&t.id)
                .bind(t.version - 1)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            if r.rows_affected() != 1 {
                // Dropping the transaction rolls every row of the batch back.
                return Err(StoreError::Conflict(format!(
                    "task {} was changed by another call",
                    t.id
                )));
            }
        }
        tx.commit().await.map_err(db_err)
    }

    async fn get_task(&self, id: &str) -> StoreResult<Option<TaskRecord>> {
        one(
            &self.pool,
            format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"),
            id,
            task_from_row,
        )
        .await
    }

    async fn session_tasks_stamp(&self, session_id: &str) -> StoreResult<(i64, i64)> {
        let r = query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(version), 0) AS BIGINT) AS v \
             FROM tasks WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        Ok((
            r.try_get::<i64, _>("n").map_err(db_err)?,
            r.try_get::<i64, _>("v").map_err(db_err)?,
        ))
    }

    async fn session_tasks(&self, session_id: &str) -> StoreResult<Vec<TaskRecord>> {
        let r = query(AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE session_id = $1 ORDER BY seq"
        )))
        .bind(session_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows(r, task_from_row)
    }

    async fn sessions_with_open_tasks(&self) -> StoreResult<Vec<String>> {
        let r = query(
            "SELECT DISTINCT session_id FROM tasks WHERE status NOT IN \
             ('succeeded', 'failed', 'skipped', 'cancelled', 'timed_out') ORDER BY session_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        r.iter()
            .map(|row| row.try_get("session_id").map_err(db_err))
            .collect()
    }

    async fn task_stats(&self) -> StoreResult<TaskStats> {
        let r = query("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status ORDER BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        let by_status = r
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>("status")?,
                    row.try_get::<i64, _>("n")? as u64,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db_err)?;
        let avg: Option<f64> = query(
            "SELECT AVG(CAST(finished_at - started_at AS REAL)) AS a FROM tasks \
             WHERE started_at IS NOT NULL AND finished_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await
        .and_then(|row| row.try_get("a"))
        .map_err(db_err)?;
        Ok(TaskStats {
            by_status,
            average_execution_ms: avg,
        })
    }

    async fn put_allocations(&self, allocations: &[AllocationRecord]) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO allocations ({ALLOCATION_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (id) DO UPDATE SET session_id = EXCLUDED.session_id, \
             principal = EXCLUDED.principal, holder = EXCLUDED.holder, \
             owner_kind = EXCLUDED.owner_kind, owner_ref = EXCLUDED.owner_ref, \
             requirements = EXCLUDED.requirements, priority = EXCLUDED.priority, \
             status = EXCLUDED.status, created_at = EXCLUDED.created_at, \
             expires_at = EXCLUDED.expires_at, released_at = EXCLUDED.released_at, \
             release_reason = EXCLUDED.release_reason"
        );
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for a in allocations {
            query(AssertSqlSafe(sql.clone()))
                .bind(&a.id)
                .bind(&a.session_id)
                .bind(&a.principal)
                .bind(&a.holder)
                .bind(&a.owner_kind)
                .bind(&a.owner_ref)
                .bind(&a.requirements)
                .bind(&a.priority)
                .bind(&a.status)
                .bind(a.created_at)
                .bind(a.expires_at)
                .bind(a.released_at)
                .bind(&a.release_reason)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn active_allocations(&self) -> StoreResult<Vec<AllocationRecord>> {
        let r = query(AssertSqlSafe(format!(
            "SELECT {ALLOCATION_COLUMNS} FROM allocations WHERE status = 'active' ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows(r, allocation_from_row)
    }

    async fn insert_project(&self, p: &ProjectRecord) -> StoreResult<()> {
        bind_project(
            query(AssertSqlSafe(format!(
                "INSERT INTO projects ({PROJECT_COLUMNS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ))),
            p,
        )
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn update_project(&self, p: &ProjectRecord) -> StoreResult<()> {
        let r = bind_project(
            query(AssertSqlSafe(format!(
                "UPDATE projects SET ({PROJECT_COLUMNS}) = \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) WHERE id = $1"
            ))),
            p,
        )
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        if r.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!("project {} is gone", p.id)));
        }
        Ok(())
    }

    async fn get_project(&self, id: &str) -> StoreResult<Option<ProjectRecord>> {
        one(
            &self.pool,
            format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1"),
            id,
            project_from_row,
        )
        .await
    }

    async fn project_by_name(&self, name: &str) -> StoreResult<Option<ProjectRecord>> {
        one(
            &self.pool,
            format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE name = $1"),
            name,
            project_from_row,
        )
        .await
    }

    async fn list_projects(&self, q: &ProjectQuery<'_>) -> StoreResult<Vec<ProjectRecord>> {
        let (after_c, after_id) = q.after.clone().unwrap_or((i64::MIN, String::new()));
        let tag = q.tag.map(|t| format!("%{}%", serde_json::Value::from(t)));
        let r = query(AssertSqlSafe(format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE principal = $1 \
               AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR kind = $3) \
               AND ($4 IS NULL OR tags LIKE $4) \
               AND (created_at > $5 OR (created_at = $5 AND id > $6)) \
             ORDER BY created_at, id LIMIT $7"
        )))
        .bind(q.principal)
        .bind(q.status)
        .bind(q.kind)
        .bind(tag)
        .bind(after_c)
        .bind(after_id)
        .bind(q.limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows(r, project_from_row)
    }

    async fn delete_project(&self, id: &str) -> StoreResult<bool> {
        let r = query("DELETE FROM projects WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn list_allocations(
        &self,
        principal: &str,
        session_id: Option<&str>,
        status: Option<&str>,
        offset: usize,
        limit: u32,
    ) -> StoreResult<Vec<AllocationRecord>> {
        let r = query(AssertSqlSafe(format!(
            "SELECT {ALLOCATION_COLUMNS} FROM allocations WHERE principal = $1 \
             AND ($2 IS NULL OR session_id = $2) AND ($3 IS NULL OR status = $3) \
             ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5"
        )))
        .bind(principal)
        .bind(session_id)
        .bind(status)
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows(r, allocation_from_row)
    }
}

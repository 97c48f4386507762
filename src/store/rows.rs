//! What the SQL stores share: column lists, decoding rows into records,
//! binding records to statements, and every `Store` method whose SQL is the
//! same on SQLite and PostgreSQL. What differs (upserts, the group-commit
//! writer, opening) stays in each store's file.
//!
//! A page size is bound as `LIMIT (?N + 0)`, never `LIMIT ?N`: SQLite reads a
//! bare bound LIMIT while preparing, so every new value re-prepared the cached
//! statement (callgrind: 36% of a `list_sessions` call's instructions).

/// What a write that waited for the database's write lock in vain reports.
pub const BUSY: &str =
    "another process held the database's write lock for longer than sqlite_busy_timeout_ms";

use super::{EventRecord, RunRecord, StepRecord, TaskRecord};

/// One value bound to a statement, for either driver: the records' column
/// lists are written once (below), and sqlx's binders and the SQLite writer's
/// rusqlite statements both read them.
#[derive(Debug, Clone)]
pub enum Arg<'a> {
    Text(Option<&'a str>),
    Owned(String),
    Int(Option<i64>),
    Bool(bool),
}

fn text(s: &str) -> Arg<'_> {
    Arg::Text(Some(s))
}

fn opt_text(s: &Option<String>) -> Arg<'_> {
    Arg::Text(s.as_deref())
}

fn int(i: i64) -> Arg<'static> {
    Arg::Int(Some(i))
}

/// A task row in `TASK_COLUMNS` order.
pub fn task_args(t: &TaskRecord) -> [Arg<'_>; 30] {
    [
        text(&t.id),
        text(&t.session_id),
        text(&t.principal),
        int(t.seq),
        text(&t.name),
        opt_text(&t.description),
        opt_text(&t.module),
        opt_text(&t.action),
        text(&t.parameters),
        Arg::Owned(serde_json::to_string(&t.dependencies).unwrap_or_default()),
        text(t.priority.as_str()),
        Arg::Int(t.timeout_seconds.map(|v| v as i64)),
        int(t.max_retries as i64),
        opt_text(&t.retry),
        opt_text(&t.resources),
        Arg::Owned(serde_json::to_string(&t.tags).unwrap_or_default()),
        text(&t.metadata),
        text(t.status.as_str()),
        opt_text(&t.result),
        opt_text(&t.summary),
        opt_text(&t.error),
        int(t.attempts as i64),
        opt_text(&t.claimed_by),
        opt_text(&t.lease_id),
        Arg::Int(t.lease_expires_at),
        int(t.created_at),
        int(t.updated_at),
        Arg::Int(t.started_at),
        Arg::Int(t.finished_at),
        int(t.version),
    ]
}

/// A run row in `RUN_COLUMNS` order.
pub fn run_args(r: &RunRecord) -> [Arg<'_>; 24] {
    [
        text(&r.id),
        text(&r.session_id),
        text(&r.principal),
        text(&r.workflow_name),
        int(r.workflow_version as i64),
        text(&r.workflow_source),
        text(&r.definition),
        text(&r.parameters),
        text(r.status.as_str()),
        text(r.priority.as_str()),
        int(r.max_parallel as i64),
        text(r.mode.as_str()),
        Arg::Int(r.timeout_seconds.map(|v| v as i64)),
        opt_text(&r.resources),
        opt_text(&r.error),
        opt_text(&r.retry_of),
        int(r.created_at),
        Arg::Int(r.started_at),
        Arg::Int(r.finished_at),
        int(r.updated_at),
        opt_text(&r.parent_run_id),
        opt_text(&r.parent_step),
        opt_text(&r.project_id),
        opt_text(&r.project),
    ]
}

/// A step row in `STEP_COLUMNS` order.
pub fn step_args(s: &StepRecord) -> [Arg<'_>; 13] {
    [
        text(&s.run_id),
        text(&s.name),
        int(s.position as i64),
        text(s.status.as_str()),
        int(s.attempts as i64),
        Arg::Int(s.started_at),
        Arg::Int(s.finished_at),
        opt_text(&s.output),
        opt_text(&s.error),
        opt_text(&s.input_hash),
        Arg::Bool(s.reused),
        opt_text(&s.prior_output),
        opt_text(&s.prior_hash),
    ]
}

/// An event row in `EVENT_COLUMNS` order (without `seq`).
pub fn event_args(e: &EventRecord) -> [Arg<'_>; 8] {
    [
        int(e.at),
        opt_text(&e.principal),
        opt_text(&e.session_id),
        opt_text(&e.run_id),
        text(e.kind),
        text(&e.subject),
        text(&e.status),
        text(&e.data),
    ]
}

/// The (new tasks, version moves) each session's stamp takes from tasks just
/// inserted (`new`) or updated (each one version up), in session order.
pub fn stamp_moves<'t>(
    tasks: impl IntoIterator<Item = &'t TaskRecord>,
    new: bool,
) -> std::collections::BTreeMap<&'t str, (i64, i64)> {
    let mut by_session: std::collections::BTreeMap<&str, (i64, i64)> = Default::default();
    for t in tasks {
        let e = by_session.entry(t.session_id.as_str()).or_default();
        if new {
            e.0 += 1;
            e.1 += t.version;
        } else {
            e.1 += 1;
        }
    }
    by_session
}

/// Move one session's task stamp by (tasks, versions): ?1 session, ?2, ?3.
pub const STAMP_SQL: &str = "INSERT INTO task_stamps (session_id, tasks, versions) VALUES (?1, ?2, ?3) \
     ON CONFLICT (session_id) DO UPDATE SET tasks = task_stamps.tasks + excluded.tasks, \
     versions = task_stamps.versions + excluded.versions";

/// A session's task stamp: ?1 the session.
pub const STAMP_READ: &str = "SELECT tasks, versions FROM task_stamps WHERE session_id = ?1";

/// Tasks in the one order (by id) every process locks their rows in: two
/// writers' calls wait for each other instead of closing a cycle.
pub fn in_lock_order(tasks: &[TaskRecord]) -> Vec<&TaskRecord> {
    let mut sorted: Vec<&TaskRecord> = tasks.iter().collect();
    sorted.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    sorted
}

/// The queued writes a group commit takes: `first` and whatever else is
/// waiting, up to `max`.
pub fn gather<T>(first: T, rx: &mut tokio::sync::mpsc::Receiver<T>, max: usize) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(w) => batch.push(w),
            Err(_) => break,
        }
    }
    batch
}

/// Define the shared items for one sqlx database: `$db` (e.g. `sqlx::Sqlite`),
/// its row type and its arguments type.
macro_rules! shared_rows {
    ($db:ty, $row:ty, $args:ty) => {
        const SESSION_COLUMNS: &str = "id, principal, name, description, mode, max_parallel_tasks, \
            max_parallel_workflows, timeout_seconds, idle_ttl_seconds, metadata, status, is_default, \
            created_at, updated_at, last_active_at, closed_at, close_reason, user_id";

        fn db_err(e: sqlx::Error) -> StoreError {
            match &e {
                sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(d.to_string()),
                // SQLite's busy and locked codes (PostgreSQL's are SQLSTATEs, never these).
                sqlx::Error::Database(d)
                    if matches!(d.code().as_deref(), Some("5" | "6" | "261" | "262" | "517" | "773")) =>
                {
                    StoreError::Unavailable($crate::store::rows::BUSY.into())
                }
                sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                    StoreError::Corrupt(e.to_string())
                }
                _ => StoreError::Unavailable(e.to_string()),
            }
        }

        /// A stored spelling decoded into its type; an unknown one is corrupt data.
        fn spelled<T>(r: &$row, column: &str, parse: fn(&str) -> Option<T>) -> Result<T, sqlx::Error> {
            let s: String = r.try_get(column)?;
            parse(&s).ok_or_else(|| sqlx::Error::ColumnDecode {
                index: column.to_string(),
                source: format!("'{s}' is not a known {column}").into(),
            })
        }

        /// A JSON list of strings, stored as text.
        fn json_list(r: &$row, column: &str) -> Result<Vec<String>, sqlx::Error> {
            let s: String = r.try_get(column)?;
            serde_json::from_str(&s).map_err(|e| sqlx::Error::ColumnDecode {
                index: column.to_string(),
                source: Box::new(e),
            })
        }

        fn session_from_row(r: &$row) -> Result<SessionRecord, sqlx::Error> {
            Ok(SessionRecord {
                id: r.try_get("id")?,
                principal: r.try_get("principal")?,
                name: r.try_get("name")?,
                description: r.try_get("description")?,
                mode: spelled(r, "mode", crate::model::SessionMode::parse)?,
                max_parallel_tasks: r.try_get::<i64, _>("max_parallel_tasks")? as u32,
                max_parallel_workflows: r.try_get::<i64, _>("max_parallel_workflows")? as u32,
                timeout_seconds: r
                    .try_get::<Option<i64>, _>("timeout_seconds")?
                    .map(|v| v as u64),
                idle_ttl_seconds: r.try_get::<i64, _>("idle_ttl_seconds")? as u64,
                metadata: r.try_get("metadata")?,
                status: spelled(r, "status", crate::model::SessionStatus::parse)?,
                is_default: r.try_get("is_default")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
                last_active_at: r.try_get("last_active_at")?,
                closed_at: r.try_get("closed_at")?,
                close_reason: r.try_get("close_reason")?,
                user_id: r.try_get("user_id")?,
            })
        }

        const WORKFLOW_COLUMNS: &str =
            "scope, owner, name, principal, version, definition, created_at, updated_at";

        const RUN_COLUMNS: &str = "id, session_id, principal, workflow_name, workflow_version, \
            workflow_source, definition, parameters, status, priority, max_parallel, mode, timeout_seconds, \
            resources, error, retry_of, created_at, started_at, finished_at, updated_at, parent_run_id, \
            parent_step, project_id, project";

        const STEP_COLUMNS: &str = "run_id, name, position, status, attempts, started_at, finished_at, \
            output, error, input_hash, reused, prior_output, prior_hash";

        fn workflow_from_row(r: &$row) -> Result<WorkflowRecord, sqlx::Error> {
            Ok(WorkflowRecord {
                scope: r.try_get("scope")?,
                owner: r.try_get("owner")?,
                name: r.try_get("name")?,
                principal: r.try_get("principal")?,
                version: r.try_get::<i64, _>("version")? as u64,
                definition: r.try_get("definition")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        }

        fn run_from_row(r: &$row) -> Result<RunRecord, sqlx::Error> {
            Ok(RunRecord {
                id: r.try_get("id")?,
                session_id: r.try_get("session_id")?,
                principal: r.try_get("principal")?,
                workflow_name: r.try_get("workflow_name")?,
                workflow_version: r.try_get::<i64, _>("workflow_version")? as u64,
                workflow_source: r.try_get("workflow_source")?,
                definition: r.try_get("definition")?,
                parameters: r.try_get("parameters")?,
                status: spelled(r, "status", crate::model::RunStatus::parse)?,
                priority: spelled(r, "priority", crate::model::Priority::parse)?,
                max_parallel: r.try_get::<i64, _>("max_parallel")? as u32,
                mode: spelled(r, "mode", crate::model::SessionMode::parse)?,
                timeout_seconds: r
                    .try_get::<Option<i64>, _>("timeout_seconds")?
                    .map(|v| v as u64),
                resources: r.try_get("resources")?,
                error: r.try_get("error")?,
                retry_of: r.try_get("retry_of")?,
                created_at: r.try_get("created_at")?,
                started_at: r.try_get("started_at")?,
                finished_at: r.try_get("finished_at")?,
                updated_at: r.try_get("updated_at")?,
                parent_run_id: r.try_get("parent_run_id")?,
                parent_step: r.try_get("parent_step")?,
                project_id: r.try_get("project_id")?,
                project: r.try_get("project")?,
            })
        }

        fn lease_from_row(r: &$row) -> Result<RunLease, sqlx::Error> {
            Ok(RunLease {
                run_id: r.try_get("id")?,
                cancel_requested: r.try_get("cancel_requested")?,
            })
        }

        /// Unfinished runs whose lease is free or ended before ?2, most urgent then oldest first.
        const CLAIMABLE_RUNS: &str = "SELECT id FROM runs WHERE status IN ('pending', 'running') \
            AND (lease_owner IS NULL OR lease_expires_at < ?2) \
            ORDER BY CASE priority WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'normal' THEN 2 ELSE 3 END, \
            created_at, id LIMIT (?4 + 0)";

        /// Claim what `CLAIMABLE_RUNS` (with `lock`, e.g. `FOR UPDATE SKIP LOCKED`) selects.
        fn claim_runs_sql(lock: &str) -> String {
            format!(
                "UPDATE runs SET lease_owner = ?1, lease_expires_at = ?3 WHERE id IN ({CLAIMABLE_RUNS} {lock}) \
                 RETURNING id, cancel_requested <> 0 AS cancel_requested"
            )
        }

        /// Insert or update a run's own columns (lease columns are left alone).
        fn upsert_run_sql() -> String {
            let set: Vec<String> = RUN_COLUMNS
                .split(", ")
                .map(str::trim)
                .filter(|c| *c != "id")
                .map(|c| format!("{c} = excluded.{c}"))
                .collect();
            format!(
                "INSERT INTO runs ({RUN_COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24) \
                 ON CONFLICT (id) DO UPDATE SET {}",
                set.join(", ")
            )
        }

        const WAITER_COLUMNS: &str =
            "id, node, principal, session_id, holder, requirements, priority, since, seen_at";

        fn waiter_from_row(r: &$row) -> Result<WaiterRecord, sqlx::Error> {
            Ok(WaiterRecord {
                id: r.try_get("id")?,
                node: r.try_get("node")?,
                principal: r.try_get("principal")?,
                session_id: r.try_get("session_id")?,
                holder: r.try_get("holder")?,
                requirements: r.try_get("requirements")?,
                priority: r.try_get("priority")?,
                since: r.try_get("since")?,
                seen_at: r.try_get("seen_at")?,
            })
        }

        /// `(status, n)` rows of a counting query.
        /// `(status, n)` rows of a `GROUP BY status`, decoded.
        async fn status_counts<T>(
            pool: &sqlx::Pool<$db>,
            sql: &'static str,
            parse: fn(&str) -> Option<T>,
        ) -> StoreResult<Vec<(T, u64)>> {
            let r = query(sql).fetch_all(pool).await.map_err(db_err)?;
            r.iter()
                .map(|row| Ok((spelled(row, "status", parse)?, row.try_get::<i64, _>("n")? as u64)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(db_err)
        }

        const PROJECT_COLUMNS: &str =
            "id, principal, name, path, status, kind, template, tags, record, created_at, updated_at";

        fn project_from_row(r: &$row) -> Result<ProjectRecord, sqlx::Error> {
            Ok(ProjectRecord {
                id: r.try_get("id")?,
                principal: r.try_get("principal")?,
                name: r.try_get("name")?,
                path: r.try_get("path")?,
                status: spelled(r, "status", crate::model::ProjectStatus::parse)?,
                kind: r.try_get("kind")?,
                template: r.try_get("template")?,
                tags: r.try_get("tags")?,
                record: r.try_get("record")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        }

        fn bind_project<'q>(
            q: sqlx::query::Query<'q, $db, $args>,
            p: &'q ProjectRecord,
        ) -> sqlx::query::Query<'q, $db, $args> {
            q.bind(&p.id)
                .bind(&p.principal)
                .bind(&p.name)
                .bind(&p.path)
                .bind(p.status.as_str())
                .bind(&p.kind)
                .bind(&p.template)
                .bind(&p.tags)
                .bind(&p.record)
                .bind(p.created_at)
                .bind(p.updated_at)
        }

        fn step_from_row(r: &$row) -> Result<StepRecord, sqlx::Error> {
            Ok(StepRecord {
                run_id: r.try_get("run_id")?,
                name: r.try_get("name")?,
                position: r.try_get::<i64, _>("position")? as u32,
                status: spelled(r, "status", crate::model::StepStatus::parse)?,
                attempts: r.try_get::<i64, _>("attempts")? as u32,
                started_at: r.try_get("started_at")?,
                finished_at: r.try_get("finished_at")?,
                output: r.try_get("output")?,
                error: r.try_get("error")?,
                input_hash: r.try_get("input_hash")?,
                reused: r.try_get("reused")?,
                prior_output: r.try_get("prior_output")?,
                prior_hash: r.try_get("prior_hash")?,
            })
        }

        /// The row a single-key query finds, if any.
        async fn one<T>(
            pool: &sqlx::Pool<$db>,
            sql: String,
            key: &str,
            f: fn(&$row) -> Result<T, sqlx::Error>,
        ) -> StoreResult<Option<T>> {
            let row = query(AssertSqlSafe(sql))
                .bind(key)
                .fetch_optional(pool)
                .await
                .map_err(db_err)?;
            row.as_ref().map(f).transpose().map_err(db_err)
        }

        fn rows<T>(
            rows: Vec<$row>,
            f: fn(&$row) -> Result<T, sqlx::Error>,
        ) -> StoreResult<Vec<T>> {
            rows.iter().map(|r| f(r).map_err(db_err)).collect()
        }

        fn bind_allocation<'q>(
            q: sqlx::query::Query<'q, $db, $args>,
            a: &'q AllocationRecord,
        ) -> sqlx::query::Query<'q, $db, $args> {
            q.bind(&a.id)
                .bind(&a.session_id)
                .bind(&a.principal)
                .bind(&a.holder)
                .bind(a.owner_kind.as_str())
                .bind(&a.owner_ref)
                .bind(&a.requirements)
                .bind(a.priority.as_str())
                .bind(a.status.as_str())
                .bind(a.created_at)
                .bind(a.expires_at)
                .bind(a.released_at)
                .bind(&a.release_reason)
        }

        fn bind_run<'q>(
            q: sqlx::query::Query<'q, $db, $args>,
            r: &'q RunRecord,
        ) -> sqlx::query::Query<'q, $db, $args> {
            bind_args(q, $crate::store::rows::run_args(r))
        }

        /// Bind a row's values (see `super::rows::Arg`).
        fn bind_args<'q>(
            mut q: sqlx::query::Query<'q, $db, $args>,
            args: impl IntoIterator<Item = $crate::store::rows::Arg<'q>>,
        ) -> sqlx::query::Query<'q, $db, $args> {
            use $crate::store::rows::Arg;
            for a in args {
                q = match a {
                    Arg::Text(v) => q.bind(v),
                    Arg::Owned(v) => q.bind(v),
                    Arg::Int(v) => q.bind(v),
                    Arg::Bool(v) => q.bind(v),
                };
            }
            q
        }

        /// Push one row's values into a multi-row `VALUES` list.
        fn push_args<'a>(
            b: &mut sqlx::query_builder::Separated<'_, $db, &'static str>,
            args: impl IntoIterator<Item = $crate::store::rows::Arg<'a>>,
        ) {
            use $crate::store::rows::Arg;
            for a in args {
                match a {
                    Arg::Text(v) => b.push_bind(v),
                    Arg::Owned(v) => b.push_bind(v),
                    Arg::Int(v) => b.push_bind(v),
                    Arg::Bool(v) => b.push_bind(v),
                };
            }
        }

        const TASK_COLUMNS: &str = "id, session_id, principal, seq, name, description, module, action, \
            parameters, dependencies, priority, timeout_seconds, max_retries, retry, resources, tags, \
            metadata, status, result, summary, error, attempts, claimed_by, lease_id, lease_expires_at, \
            created_at, updated_at, started_at, finished_at, version";


        /// `?1, ..., ?30`: the placeholders of a whole task row.
        fn task_placeholders() -> String {
            (1..=30)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        }

        fn bind_task<'q>(
            q: sqlx::query::Query<'q, $db, $args>,
            t: &'q TaskRecord,
        ) -> sqlx::query::Query<'q, $db, $args> {
            bind_args(q, $crate::store::rows::task_args(t))
        }

        /// The fenced update of one task row: ?31 its id, ?32 the version it replaces.
        fn fenced_update_sql() -> String {
            format!(
                "UPDATE tasks SET ({TASK_COLUMNS}) = ({}) WHERE id = ?31 AND version = ?32",
                task_placeholders()
            )
        }

        /// What a fenced update that found its task moved answers.
        fn moved(id: &str) -> StoreError {
            StoreError::Conflict(format!("task {id} was changed by another call"))
        }

        fn task_from_row(r: &$row) -> Result<TaskRecord, sqlx::Error> {
            Ok(TaskRecord {
                id: r.try_get("id")?,
                session_id: r.try_get("session_id")?,
                principal: r.try_get("principal")?,
                seq: r.try_get("seq")?,
                name: r.try_get("name")?,
                description: r.try_get("description")?,
                module: r.try_get("module")?,
                action: r.try_get("action")?,
                parameters: r.try_get("parameters")?,
                dependencies: json_list(r, "dependencies")?,
                priority: spelled(r, "priority", crate::model::Priority::parse)?,
                timeout_seconds: r
                    .try_get::<Option<i64>, _>("timeout_seconds")?
                    .map(|v| v as u64),
                max_retries: r.try_get::<i64, _>("max_retries")? as u32,
                retry: r.try_get("retry")?,
                resources: r.try_get("resources")?,
                tags: json_list(r, "tags")?,
                metadata: r.try_get("metadata")?,
                status: spelled(r, "status", crate::model::TaskStatus::parse)?,
                result: r.try_get("result")?,
                summary: r.try_get("summary")?,
                error: r.try_get("error")?,
                attempts: r.try_get::<i64, _>("attempts")? as u32,
                claimed_by: r.try_get("claimed_by")?,
                lease_id: r.try_get("lease_id")?,
                lease_expires_at: r.try_get("lease_expires_at")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
                started_at: r.try_get("started_at")?,
                finished_at: r.try_get("finished_at")?,
                version: r.try_get("version")?,
            })
        }

        const ALLOCATION_COLUMNS: &str = "id, session_id, principal, holder, owner_kind, owner_ref, \
            requirements, priority, status, created_at, expires_at, released_at, release_reason";

        fn allocation_from_row(r: &$row) -> Result<AllocationRecord, sqlx::Error> {
            Ok(AllocationRecord {
                id: r.try_get("id")?,
                session_id: r.try_get("session_id")?,
                principal: r.try_get("principal")?,
                holder: r.try_get("holder")?,
                owner_kind: spelled(r, "owner_kind", crate::model::OwnerKind::parse)?,
                owner_ref: r.try_get("owner_ref")?,
                requirements: r.try_get("requirements")?,
                priority: spelled(r, "priority", crate::model::Priority::parse)?,
                status: spelled(r, "status", crate::model::AllocationStatus::parse)?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
                released_at: r.try_get("released_at")?,
                release_reason: r.try_get("release_reason")?,
            })
        }

        const EVENT_COLUMNS: &str = "at, principal, session_id, run_id, kind, subject, status, data";

        /// Rows per multi-row event insert (9 columns each).
        const EVENT_ROWS_PER_STATEMENT: usize = 256;

        /// Record `events` in the caller's transaction (see `super::events`).
        async fn insert_events(
            conn: &mut <$db as sqlx::Database>::Connection,
            events: &[EventRecord],
        ) -> Result<(), sqlx::Error> {
            if events.is_empty() {
                return Ok(());
            }
            // Numbered here when the store numbers them itself (SQLite).
            let mut next = event_seq_base(&mut *conn, events.len()).await?;
            let seq = if next.is_some() { "seq, " } else { "" };
            for chunk in events.chunks(EVENT_ROWS_PER_STATEMENT) {
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                    "INSERT INTO events ({seq}{EVENT_COLUMNS}) "
                ));
                qb.push_values(chunk.iter(), |mut b, e| {
                    if let Some(n) = next.as_mut() {
                        b.push_bind(*n);
                        *n += 1;
                    }
                    push_args(&mut b, $crate::store::rows::event_args(e));
                });
                qb.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        /// Record the events of stored allocations in the caller's transaction.
        async fn allocation_events(
            conn: &mut <$db as sqlx::Database>::Connection,
            allocations: &[AllocationRecord],
        ) -> Result<(), sqlx::Error> {
            let now = crate::model::now_ms();
            let events: Vec<EventRecord> = allocations
                .iter()
                .map(|a| EventRecord::allocation(a, now))
                .collect();
            insert_events(conn, &events).await
        }

        /// Replace tasks whose stored version is the one before theirs;
        /// Conflict (nothing written by this function is kept by the caller)
        /// when a version moved. The caller records the change's events and
        /// moves the sessions' stamps ([`bump_stamps`]).
        async fn update_fenced(
            conn: &mut <$db as sqlx::Database>::Connection,
            tasks: &[TaskRecord],
        ) -> StoreResult<()> {
            let sql = fenced_update_sql();
            for t in $crate::store::rows::in_lock_order(tasks) {
                let r = bind_task(query(AssertSqlSafe(sql.clone())), t)
                    .bind(&t.id)
                    .bind(t.version - 1)
                    .execute(&mut *conn)
                    .await
                    .map_err(fence_err)?;
                if r.rows_affected() != 1 {
                    return Err(moved(&t.id));
                }
            }
            Ok(())
        }

        /// A fenced task write that lost a lock cycle with another process's
        /// writer (PostgreSQL aborts one side: deadlock or serialization
        /// failure) changed nothing, as a moved version: Conflict, read again.
        fn fence_err(e: sqlx::Error) -> StoreError {
            match &e {
                sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")) => {
                    StoreError::Conflict(format!("tasks were written by another process at the same moment: {d}"))
                }
                _ => db_err(e),
            }
        }

        /// Move the stamps of the sessions of tasks just inserted (`new`) or
        /// updated (each one version up), in the caller's transaction.
        async fn bump_stamps<'t>(
            conn: &mut <$db as sqlx::Database>::Connection,
            tasks: impl IntoIterator<Item = &'t TaskRecord>,
            new: bool,
        ) -> Result<(), sqlx::Error> {
            for (session, (n, v)) in $crate::store::rows::stamp_moves(tasks, new) {
                query($crate::store::rows::STAMP_SQL)
                    .bind(session)
                    .bind(n)
                    .bind(v)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        }

        /// A batch of barriers only: what was queued before them is committed already.
        fn only_barriers(batch: &[Write]) -> bool {
            batch.iter().all(|w| matches!(w.op, WriteOp::Barrier))
        }

        /// A batch whose only write is one call's task updates (barriers
        /// aside): the batch's transaction is that call's savepoint.
        fn lone_task_call(batch: &[Write]) -> bool {
            let calls = batch
                .iter()
                .filter(|w| matches!(w.op, WriteOp::Tasks { .. }))
                .count();
            calls == 1
                && batch
                    .iter()
                    .all(|w| matches!(w.op, WriteOp::Tasks { .. } | WriteOp::Barrier))
        }

        /// Send each write of a batch its answer, and count what was committed.
        fn answer_batch(
            batch: Vec<Write>,
            result: Result<Vec<StoreResult<()>>, StoreError>,
            counts: &$crate::store::WriteCounts,
        ) {
            if let Ok(each) = &result {
                let written = batch
                    .iter()
                    .zip(each)
                    .filter(|(w, r)| !matches!(w.op, WriteOp::Barrier) && r.is_ok())
                    .count();
                counts.committed(written);
            }
            for (i, w) in batch.into_iter().enumerate() {
                let answer = match &result {
                    Ok(each) => each[i].clone(),
                    Err(e) => Err(e.clone()),
                };
                let _ = w.done.send(answer);
            }
        }

        /// A queued write's answer, or the writer's end.
        fn written(
            answer: Result<StoreResult<()>, tokio::sync::oneshot::error::RecvError>,
        ) -> StoreResult<()> {
            answer.map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?
        }

        /// The event of each write of a group commit, in the order made.
        fn batch_events(batch: &[Write]) -> Vec<EventRecord> {
            let now = crate::model::now_ms();
            batch
                .iter()
                .filter_map(|w| match &w.op {
                    WriteOp::Run(r) => Some(EventRecord::run(r)),
                    WriteOp::Step(s) => Some(EventRecord::step(s, now)),
                    WriteOp::Tasks { .. } | WriteOp::Barrier => None,
                })
                .collect()
        }

        /// The last write of each run and step in a batch: rows are replaced
        /// whole and the batch commits atomically, so only those need applying,
        /// and the order between rows does not matter.
        fn latest(batch: &[Write]) -> (Vec<&RunRecord>, Vec<&StepRecord>) {
            let mut seen = std::collections::HashSet::new();
            let (mut runs, mut steps) = (Vec::new(), Vec::new());
            for w in batch.iter().rev() {
                match &w.op {
                    WriteOp::Run(r) if seen.insert((r.id.as_str(), "")) => runs.push(r),
                    WriteOp::Step(s) if seen.insert((s.run_id.as_str(), s.name.as_str())) => {
                        steps.push(s)
                    }
                    _ => {}
                }
            }
            (runs, steps)
        }

        // Step writes are the hot path and runs are few: boxing either side only adds an allocation.
        #[allow(clippy::large_enum_variant)]
        enum WriteOp {
            Run(RunRecord),
            Step(StepRecord),
            /// One call's task updates (version-fenced) and their events.
            Tasks {
                tasks: Vec<TaskRecord>,
                events: Vec<EventRecord>,
            },
            /// Writes nothing: answered once everything queued before it is durable.
            Barrier,
        }

        /// One update queued for the group-commit writer.
        struct Write {
            op: WriteOp,
            done: tokio::sync::oneshot::Sender<StoreResult<()>>,
        }

        fn event_from_row(r: &$row) -> Result<StoredEvent, sqlx::Error> {
            Ok(StoredEvent {
                cursor: EventCursor {
                    xid: r.try_get("xid")?,
                    seq: r.try_get("seq")?,
                },
                at: r.try_get("at")?,
                principal: r.try_get("principal")?,
                session_id: r.try_get("session_id")?,
                run_id: r.try_get("run_id")?,
                kind: r.try_get("kind")?,
                subject: r.try_get("subject")?,
                status: r.try_get("status")?,
                data: r.try_get("data")?,
            })
        }

        /// A session's task stamp, read through the pool.
        async fn pooled_tasks_stamp(pool: &sqlx::Pool<$db>, session_id: &str) -> StoreResult<(i64, i64)> {
            let r = query($crate::store::rows::STAMP_READ)
                .bind(session_id)
                .fetch_optional(pool)
                .await
                .map_err(db_err)?;
            let Some(r) = r else {
                return Ok((0, 0));
            };
            Ok((
                r.try_get::<i64, _>("tasks").map_err(db_err)?,
                r.try_get::<i64, _>("versions").map_err(db_err)?,
            ))
        }

        fn sessions_from_rows(rows: Vec<$row>) -> StoreResult<Vec<SessionRecord>> {
            rows.iter()
                .map(|r| session_from_row(r).map_err(db_err))
                .collect()
        }
    };
}

pub(crate) use shared_rows;

/// `impl Store` for an SQL store: the methods whose SQL is the same on every
/// database (written with `?N` placeholders; each store's `query` turns them
/// into its own), plus the store's own items.
macro_rules! sql_store {
    ($store:ty, { $($own:tt)* }) => {
        impl $store {
            /// Queue a write for the group-commit writer; the answer comes once
            /// it is durable (or refused).
            async fn enqueue(
                &self,
                op: WriteOp,
            ) -> StoreResult<tokio::sync::oneshot::Receiver<StoreResult<()>>> {
                let (done, wait) = tokio::sync::oneshot::channel();
                self.writes
                    .send(Write { op, done })
                    .await
                    .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?;
                Ok(wait)
            }

            /// Queue a write and wait until it is durable.
            async fn write(&self, op: WriteOp) -> StoreResult<()> {
                written(self.enqueue(op).await?.await)
            }
        }

        #[async_trait]
        impl Store for $store {
            $($own)*

                fn group_commits(&self) -> Option<$crate::store::GroupCommits> {
                    Some(self.counts.read())
                }


                async fn insert_session(&self, s: &SessionRecord, max_active: Option<u64>) -> StoreResult<()> {
                    let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
                    if let Some(max) = max_active {
                        // Counted under the principal's lock (SQLite: the write lock).
                        if !PRINCIPAL_LOCK.is_empty() {
                            query(PRINCIPAL_LOCK).bind(&s.principal).execute(&mut *tx).await.map_err(db_err)?;
                        }
                        let n: i64 = query("SELECT COUNT(*) AS n FROM sessions WHERE principal = ?1 AND status = 'active'")
                            .bind(&s.principal)
                            .fetch_one(&mut *tx)
                            .await
                            .and_then(|r| r.try_get("n"))
                            .map_err(db_err)?;
                        if n as u64 >= max {
                            return Err(StoreError::Full(n as u64));
                        }
                    }
                    query(AssertSqlSafe(format!(
                        "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES \
                         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
                    )))
                    .bind(&s.id)
                    .bind(&s.principal)
                    .bind(&s.name)
                    .bind(&s.description)
                    .bind(s.mode.as_str())
                    .bind(s.max_parallel_tasks as i64)
                    .bind(s.max_parallel_workflows as i64)
                    .bind(s.timeout_seconds.map(|v| v as i64))
                    .bind(s.idle_ttl_seconds as i64)
                    .bind(&s.metadata)
                    .bind(s.status.as_str())
                    .bind(s.is_default)
                    .bind(s.created_at)
                    .bind(s.updated_at)
                    .bind(s.last_active_at)
                    .bind(s.closed_at)
                    .bind(&s.close_reason)
                    .bind(&s.user_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    insert_events(&mut tx, &[EventRecord::session(s, s.updated_at)])
                        .await
                        .map_err(db_err)?;
                    tx.commit().await.map_err(db_err)
                }


                async fn get_session(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
                    one(
                        &self.pool,
                        format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"),
                        id,
                        session_from_row,
                    )
                    .await
                }


                async fn default_session(&self, principal: &str) -> StoreResult<Option<SessionRecord>> {
                    let row = query(AssertSqlSafe(format!(
                        "SELECT {SESSION_COLUMNS} FROM sessions \
                         WHERE principal = ?1 AND is_default AND status = 'active'"
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
                         WHERE principal = ?1 AND (?2 IS NULL OR status = ?2) \
                           AND (created_at > ?3 OR (created_at = ?3 AND id > ?4)) \
                         ORDER BY created_at, id LIMIT (?5 + 0)"
                    )))
                    .bind(q.principal)
                    .bind(q.status.map(|s| s.as_str()))
                    .bind(after_c)
                    .bind(after_id)
                    .bind(q.limit as i64)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    sessions_from_rows(rows)
                }


                async fn close_session(&self, id: &str, now: i64, reason: &str) -> StoreResult<bool> {
                    let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
                    let closed = query(
                        "UPDATE sessions SET status = 'closed', closed_at = ?2, updated_at = ?2, \
                         close_reason = ?3 WHERE id = ?1 AND status = 'active' RETURNING principal",
                    )
                    .bind(id)
                    .bind(now)
                    .bind(reason)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    let Some(row) = closed else {
                        return Ok(false);
                    };
                    let principal: String = row.try_get("principal").map_err(db_err)?;
                    insert_events(&mut tx, &[EventRecord::session_closed(id, principal, now, reason)])
                        .await
                        .map_err(db_err)?;
                    tx.commit().await.map_err(db_err)?;
                    Ok(true)
                }


                async fn touch_session(&self, id: &str, now: i64) -> StoreResult<()> {
                    query(
                        "UPDATE sessions SET last_active_at = ?2 \
                         WHERE id = ?1 AND status = 'active' AND last_active_at < ?2",
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
                         (last_active_at + idle_ttl_seconds * 1000 <= ?1 OR \
                          (timeout_seconds IS NOT NULL AND created_at + timeout_seconds * 1000 <= ?1)) \
                         ORDER BY last_active_at LIMIT (?2 + 0)"
                    )))
                    .bind(now)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    sessions_from_rows(rows)
                }


                async fn count_sessions_by_status(&self) -> StoreResult<Vec<(crate::model::SessionStatus, u64)>> {
                    status_counts(
                        &self.pool,
                        "SELECT status, COUNT(*) AS n FROM sessions GROUP BY status ORDER BY status",
                        crate::model::SessionStatus::parse,
                    )
                    .await
                }


                async fn count_active_sessions(&self, principal: &str) -> StoreResult<u64> {
                    let n: i64 =
                        query("SELECT COUNT(*) AS n FROM sessions WHERE principal = ?1 AND status = 'active'")
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
                        "INSERT INTO workflows ({WORKFLOW_COLUMNS}) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?6) \
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
                        "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE scope = ?1 AND owner = ?2 AND name = ?3"
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
                        "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE (scope = 'session' AND owner = ?1) \
                         OR (scope = 'global' AND owner = ?2) ORDER BY name, scope"
                    )))
                    .bind(session_id)
                    .bind(principal)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    rows(r, workflow_from_row)
                }


                async fn delete_workflow(&self, scope: &str, owner: &str, name: &str) -> StoreResult<bool> {
                    let r = query("DELETE FROM workflows WHERE scope = ?1 AND owner = ?2 AND name = ?3")
                        .bind(scope)
                        .bind(owner)
                        .bind(name)
                        .execute(&self.pool)
                        .await
                        .map_err(db_err)?;
                    Ok(r.rows_affected() == 1)
                }


                async fn update_run(&self, run: &RunRecord) -> StoreResult<()> {
                    self.write(WriteOp::Run(run.clone())).await
                }


                async fn update_step(&self, step: &StepRecord) -> StoreResult<()> {
                    self.write(WriteOp::Step(step.clone())).await
                }


                async fn get_run(&self, id: &str) -> StoreResult<Option<RunRecord>> {
                    one(
                        &self.pool,
                        format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                        id,
                        run_from_row,
                    )
                    .await
                }


                async fn run_steps(&self, run_id: &str) -> StoreResult<Vec<StepRecord>> {
                    let r = query(AssertSqlSafe(format!(
                        "SELECT {STEP_COLUMNS} FROM run_steps WHERE run_id = ?1 ORDER BY position"
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
                        "SELECT {RUN_COLUMNS} FROM runs WHERE principal = ?1 \
                           AND (?2 IS NULL OR session_id = ?2) AND (?3 IS NULL OR status = ?3) \
                           AND (?4 IS NULL OR workflow_name = ?4) \
                           AND (created_at > ?5 OR (created_at = ?5 AND id > ?6)) \
                           AND (?8 IS NULL OR parent_run_id = ?8) \
                           AND (?9 IS NULL OR project_id = ?9) \
                         ORDER BY created_at, id LIMIT (?7 + 0)"
                    )))
                    .bind(q.principal)
                    .bind(q.session_id)
                    .bind(q.status.map(|s| s.as_str()))
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


                async fn probe(&self, now: i64) -> StoreResult<()> {
                    let v = now.to_string();
                    query(
                        "INSERT INTO meta (key, value) VALUES ('health_probe', ?1) \
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
                    let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
                    for t in tasks {
                        bind_task(query(AssertSqlSafe(sql.clone())), t)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err)?;
                    }
                    bump_stamps(&mut tx, tasks, true).await.map_err(db_err)?;
                    let events: Vec<EventRecord> = tasks.iter().map(EventRecord::task).collect();
                    insert_events(&mut tx, &events).await.map_err(db_err)?;
                    tx.commit().await.map_err(db_err)
                }


                async fn update_tasks(&self, tasks: &[TaskRecord]) -> StoreResult<()> {
                    // Reads first, then writes: on SQLite the transaction must hold the
                    // write lock from its start (a later upgrade can fail as busy).
                    let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
                    // What the tasks were, for the events of what changed.
                    let mut before = std::collections::HashMap::new();
                    for chunk in tasks.chunks(256) {
                        let marks = (1..=chunk.len()).map(|i| format!("?{i}")).collect::<Vec<_>>();
                        let mut q = query(AssertSqlSafe(format!(
                            "SELECT {TASK_COLUMNS} FROM tasks WHERE id IN ({})",
                            marks.join(", ")
                        )));
                        for t in chunk {
                            q = q.bind(&t.id);
                        }
                        let found = q.fetch_all(&mut *tx).await.map_err(db_err)?;
                        for t in rows(found, task_from_row)? {
                            before.insert(t.id.clone(), t);
                        }
                    }
                    let events: Vec<EventRecord> = tasks
                        .iter()
                        .filter_map(|t| EventRecord::task_change(before.get(&t.id), t))
                        .collect();
                    // A Conflict drops the transaction: every row of the batch rolls back.
                    update_fenced(&mut tx, tasks).await?;
                    insert_events(&mut tx, &events).await.map_err(db_err)?;
                    bump_stamps(&mut tx, tasks, false).await.map_err(fence_err)?;
                    tx.commit().await.map_err(db_err)
                }


                async fn queue_task_updates(
                    &self,
                    tasks: Vec<TaskRecord>,
                    events: Vec<EventRecord>,
                ) -> StoreResult<TaskTicket> {
                    let wait = self.enqueue(WriteOp::Tasks { tasks, events }).await?;
                    Ok(Box::pin(async move { written(wait.await) }))
                }


                async fn get_task(&self, id: &str) -> StoreResult<Option<TaskRecord>> {
                    one(
                        &self.pool,
                        format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
                        id,
                        task_from_row,
                    )
                    .await
                }


                async fn session_tasks(&self, session_id: &str) -> StoreResult<Vec<TaskRecord>> {
                    let r = query(AssertSqlSafe(format!(
                        "SELECT {TASK_COLUMNS} FROM tasks WHERE session_id = ?1 ORDER BY seq"
                    )))
                    .bind(session_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    rows(r, task_from_row)
                }


                async fn claim_runs(
                    &self,
                    owner: &str,
                    now: i64,
                    until: i64,
                    limit: u32,
                ) -> StoreResult<Vec<RunLease>> {
                    let r = query(AssertSqlSafe(claim_runs_sql(CLAIM_LOCK)))
                        .bind(owner)
                        .bind(now)
                        .bind(until)
                        .bind(limit as i64)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?;
                    rows(r, lease_from_row)
                }


                async fn lease_run(
                    &self,
                    run_id: &str,
                    owner: &str,
                    now: i64,
                    until: i64,
                ) -> StoreResult<Option<RunLease>> {
                    let r = query(
                        "UPDATE runs SET lease_owner = ?2, lease_expires_at = ?4 \
                         WHERE id = ?1 AND status IN ('pending', 'running') \
                           AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_expires_at < ?3) \
                         RETURNING id, cancel_requested <> 0 AS cancel_requested",
                    )
                    .bind(run_id)
                    .bind(owner)
                    .bind(now)
                    .bind(until)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    Ok(rows(r, lease_from_row)?.pop())
                }


                async fn renew_run_leases(
                    &self,
                    owner: &str,
                    run_ids: &[String],
                    until: i64,
                ) -> StoreResult<Vec<RunLease>> {
                    if run_ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    let list: Vec<String> = (0..run_ids.len()).map(|i| format!("?{}", i + 3)).collect();
                    let sql = format!(
                        "UPDATE runs SET lease_expires_at = ?2 WHERE lease_owner = ?1 AND id IN ({}) \
                         RETURNING id, cancel_requested <> 0 AS cancel_requested",
                        list.join(", ")
                    );
                    let mut q = query(AssertSqlSafe(sql)).bind(owner).bind(until);
                    for id in run_ids {
                        q = q.bind(id);
                    }
                    let r = q.fetch_all(&self.pool).await.map_err(db_err)?;
                    rows(r, lease_from_row)
                }


                async fn drop_run_lease(&self, run_id: &str, owner: &str) -> StoreResult<()> {
                    query("UPDATE runs SET lease_owner = NULL WHERE id = ?1 AND lease_owner = ?2")
                        .bind(run_id)
                        .bind(owner)
                        .execute(&self.pool)
                        .await
                        .map_err(db_err)?;
                    Ok(())
                }


                async fn request_run_cancel(&self, run_ids: &[String]) -> StoreResult<u64> {
                    let mut n = 0;
                    for id in run_ids {
                        n += query(
                            "UPDATE runs SET cancel_requested = 1 \
                             WHERE id = ?1 AND status IN ('pending', 'running')",
                        )
                        .bind(id)
                        .execute(&self.pool)
                        .await
                        .map_err(db_err)?
                        .rows_affected();
                    }
                    Ok(n)
                }


                async fn unfinished_session_runs(&self, session_id: &str) -> StoreResult<Vec<String>> {
                    let r = query(
                        "SELECT id FROM runs WHERE session_id = ?1 AND status IN ('pending', 'running') \
                         ORDER BY created_at, id",
                    )
                    .bind(session_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    r.iter().map(|row| row.try_get("id").map_err(db_err)).collect()
                }


                async fn sessions_with_auto_work(&self, now: i64) -> StoreResult<Vec<String>> {
                    let r = query(
                        "SELECT DISTINCT session_id FROM tasks WHERE module IS NOT NULL \
                           AND (status = 'ready' OR (status IN ('running', 'waiting_resources') \
                           AND lease_expires_at < ?1)) ORDER BY session_id",
                    )
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    r.iter()
                        .map(|row| row.try_get("session_id").map_err(db_err))
                        .collect()
                }


                async fn run_executors(&self, now: i64) -> StoreResult<RunExecutors> {
                    let r = query(
                        "SELECT lease_owner, COUNT(*) AS n FROM runs WHERE status IN ('pending', 'running') \
                           AND lease_owner IS NOT NULL AND lease_expires_at >= ?1 \
                         GROUP BY lease_owner ORDER BY lease_owner",
                    )
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    let by_executor = r
                        .iter()
                        .map(|row| Ok((row.try_get("lease_owner")?, row.try_get::<i64, _>("n")? as u64)))
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                        .map_err(db_err)?;
                    let row = query(
                        "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM runs \
                         WHERE status IN ('pending', 'running') \
                           AND (lease_owner IS NULL OR lease_expires_at < ?1)",
                    )
                    .bind(now)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err)?;
                    Ok(RunExecutors {
                        by_executor,
                        unclaimed: row.try_get::<i64, _>("n").map_err(db_err)? as u64,
                        oldest_unclaimed_at: row.try_get("oldest").map_err(db_err)?,
                    })
                }


                async fn overview(&self, now: i64) -> StoreResult<$crate::store::Overview> {
                    let r = query(
                        "SELECT 's' AS what, status AS k, COUNT(*) AS n, CAST(NULL AS REAL) AS x FROM sessions GROUP BY status \
                         UNION ALL SELECT 'r', status, COUNT(*), NULL FROM runs GROUP BY status \
                         UNION ALL SELECT 'l', s.status, COUNT(*), NULL FROM run_steps s JOIN runs r ON r.id = s.run_id \
                           WHERE r.status IN ('pending', 'running') GROUP BY s.status \
                         UNION ALL SELECT 't', status, COUNT(*), NULL FROM tasks GROUP BY status \
                         UNION ALL SELECT 'a', NULL, 0, AVG(CAST(finished_at - started_at AS REAL)) FROM tasks \
                           WHERE started_at IS NOT NULL AND finished_at IS NOT NULL \
                         UNION ALL SELECT 'u', NULL, COUNT(*), NULL FROM runs WHERE status IN ('pending', 'running') \
                           AND (lease_owner IS NULL OR lease_expires_at < ?1)",
                    )
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    let mut o = $crate::store::Overview::default();
                    for row in &r {
                        let n = row.try_get::<i64, _>("n").map_err(db_err)? as u64;
                        let what: String = row.try_get("what").map_err(db_err)?;
                        match what.as_str() {
                            "s" => o.sessions.push((spelled(row, "k", crate::model::SessionStatus::parse).map_err(db_err)?, n)),
                            "r" => o.runs.push((spelled(row, "k", crate::model::RunStatus::parse).map_err(db_err)?, n)),
                            "l" => o.live_steps.push((spelled(row, "k", crate::model::StepStatus::parse).map_err(db_err)?, n)),
                            "t" => o.tasks.by_status.push((spelled(row, "k", crate::model::TaskStatus::parse).map_err(db_err)?, n)),
                            "a" => o.tasks.average_execution_ms = row.try_get("x").map_err(db_err)?,
                            _ => o.unclaimed_runs = n,
                        }
                    }
                    Ok(o)
                }


                async fn put_waiter(&self, w: &WaiterRecord) -> StoreResult<()> {
                    query(AssertSqlSafe(format!(
                        "INSERT INTO allocation_waiters ({WAITER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                    )))
                    .bind(&w.id)
                    .bind(&w.node)
                    .bind(&w.principal)
                    .bind(&w.session_id)
                    .bind(&w.holder)
                    .bind(&w.requirements)
                    .bind(&w.priority)
                    .bind(w.since)
                    .bind(w.seen_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                    Ok(())
                }


                async fn drop_waiters(&self, ids: &[String]) -> StoreResult<()> {
                    for id in ids {
                        query("DELETE FROM allocation_waiters WHERE id = ?1")
                            .bind(id)
                            .execute(&self.pool)
                            .await
                            .map_err(db_err)?;
                    }
                    Ok(())
                }


                async fn waiters(&self) -> StoreResult<Vec<WaiterRecord>> {
                    let r = query(AssertSqlSafe(format!(
                        "SELECT {WAITER_COLUMNS} FROM allocation_waiters ORDER BY since, id"
                    )))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    rows(r, waiter_from_row)
                }


                async fn touch_waiters(&self, node: &str, now: i64, stale_before: i64) -> StoreResult<()> {
                    query("UPDATE allocation_waiters SET seen_at = ?2 WHERE node = ?1")
                        .bind(node)
                        .bind(now)
                        .execute(&self.pool)
                        .await
                        .map_err(db_err)?;
                    query("DELETE FROM allocation_waiters WHERE seen_at < ?1")
                        .bind(stale_before)
                        .execute(&self.pool)
                        .await
                        .map_err(db_err)?;
                    Ok(())
                }


                async fn count_runs_by_status(&self) -> StoreResult<Vec<(crate::model::RunStatus, u64)>> {
                    status_counts(
                        &self.pool,
                        "SELECT status, COUNT(*) AS n FROM runs GROUP BY status ORDER BY status",
                        crate::model::RunStatus::parse,
                    )
                    .await
                }


                async fn count_live_steps_by_status(&self) -> StoreResult<Vec<(crate::model::StepStatus, u64)>> {
                    status_counts(
                        &self.pool,
                        "SELECT s.status, COUNT(*) AS n FROM run_steps s JOIN runs r ON r.id = s.run_id \
                         WHERE r.status IN ('pending', 'running') GROUP BY s.status ORDER BY s.status",
                        crate::model::StepStatus::parse,
                    )
                    .await
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
                    let by_status = status_counts(
                        &self.pool,
                        "SELECT status, COUNT(*) AS n FROM tasks GROUP BY status ORDER BY status",
                        crate::model::TaskStatus::parse,
                    )
                    .await?;
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
                    let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
                    bind_project(
                        query(AssertSqlSafe(format!(
                            "INSERT INTO projects ({PROJECT_COLUMNS}) VALUES \
                             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                        ))),
                        p,
                    )
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    insert_events(&mut tx, &[EventRecord::project(p)]).await.map_err(db_err)?;
                    tx.commit().await.map_err(db_err)
                }


                async fn update_project(&self, p: &ProjectRecord) -> StoreResult<()> {
                    let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
                    let r = bind_project(
                        query(AssertSqlSafe(format!(
                            "UPDATE projects SET ({PROJECT_COLUMNS}) = \
                             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) WHERE id = ?1"
                        ))),
                        p,
                    )
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    if r.rows_affected() != 1 {
                        return Err(StoreError::Conflict(format!("project {} is gone", p.id)));
                    }
                    insert_events(&mut tx, &[EventRecord::project(p)]).await.map_err(db_err)?;
                    tx.commit().await.map_err(db_err)
                }


                async fn get_project(&self, id: &str) -> StoreResult<Option<ProjectRecord>> {
                    one(
                        &self.pool,
                        format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1"),
                        id,
                        project_from_row,
                    )
                    .await
                }


                async fn project_by_name(&self, name: &str) -> StoreResult<Option<ProjectRecord>> {
                    one(
                        &self.pool,
                        format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE name = ?1"),
                        name,
                        project_from_row,
                    )
                    .await
                }


                async fn list_projects(&self, q: &ProjectQuery<'_>) -> StoreResult<Vec<ProjectRecord>> {
                    let (after_c, after_id) = q.after.clone().unwrap_or((i64::MIN, String::new()));
                    let tag = q.tag.map(|t| format!("%{}%", serde_json::Value::from(t)));
                    let r = query(AssertSqlSafe(format!(
                        "SELECT {PROJECT_COLUMNS} FROM projects WHERE principal = ?1 \
                           AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR kind = ?3) \
                           AND (?4 IS NULL OR tags LIKE ?4) \
                           AND (created_at > ?5 OR (created_at = ?5 AND id > ?6)) \
                         ORDER BY created_at, id LIMIT (?7 + 0)"
                    )))
                    .bind(q.principal)
                    .bind(q.status.map(|s| s.as_str()))
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
                    let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
                    let gone = query("DELETE FROM projects WHERE id = ?1 RETURNING principal")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    let Some(row) = gone else {
                        return Ok(false);
                    };
                    let principal: String = row.try_get("principal").map_err(db_err)?;
                    let event = EventRecord::project_deleted(id, principal, crate::model::now_ms());
                    insert_events(&mut tx, &[event]).await.map_err(db_err)?;
                    tx.commit().await.map_err(db_err)?;
                    Ok(true)
                }


                async fn events(&self, w: &EventWindow) -> StoreResult<Vec<StoredEvent>> {
                    // Step events name their run only: principal and session come from it.
                    let r = query(AssertSqlSafe(format!(
                        "SELECT e.xid, e.seq, e.at, COALESCE(e.principal, r.principal) AS principal, \
                           COALESCE(e.session_id, r.session_id) AS session_id, e.run_id, e.kind, \
                           e.subject, e.status, e.data \
                         FROM (SELECT * FROM events WHERE (xid, seq) > (?1, ?2) {EVENTS_VISIBLE} \
                               ORDER BY xid, seq LIMIT (?3 + 0)) e \
                         LEFT JOIN runs r ON e.principal IS NULL AND r.id = e.run_id \
                         ORDER BY e.xid, e.seq"
                    )))
                    .bind(w.after.xid)
                    .bind(w.after.seq)
                    .bind(w.scan as i64)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    rows(r, event_from_row)
                }


                async fn prune_events(&self, before: i64) -> StoreResult<u64> {
                    let r = query("DELETE FROM events WHERE at < ?1")
                        .bind(before)
                        .execute(&self.pool)
                        .await
                        .map_err(db_err)?;
                    Ok(r.rows_affected())
                }


                async fn list_allocations(
                    &self,
                    principal: &str,
                    session_id: Option<&str>,
                    status: Option<crate::model::AllocationStatus>,
                    offset: usize,
                    limit: u32,
                ) -> StoreResult<Vec<AllocationRecord>> {
                    let r = query(AssertSqlSafe(format!(
                        "SELECT {ALLOCATION_COLUMNS} FROM allocations WHERE principal = ?1 \
                         AND (?2 IS NULL OR session_id = ?2) AND (?3 IS NULL OR status = ?3) \
                         ORDER BY created_at DESC, id DESC LIMIT (?4 + 0) OFFSET ?5"
                    )))
                    .bind(principal)
                    .bind(session_id)
                    .bind(status.map(|s| s.as_str()))
                    .bind(limit as i64)
                    .bind(offset as i64)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    rows(r, allocation_from_row)
                }

                fn shared(&self) -> bool {
                    true
                }

                async fn allocate(&self, decide: &mut Decide<'_>) -> StoreResult<Vec<AllocationRecord>> {
                    let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
                    if !GUARD_LOCK.is_empty() {
                        query(GUARD_LOCK).execute(&mut *tx).await.map_err(db_err)?;
                    }
                    let active = query(AssertSqlSafe(format!(
                        "SELECT {ALLOCATION_COLUMNS} FROM allocations WHERE status = 'active'"
                    )))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)
                    .and_then(|r| rows(r, allocation_from_row))?;
                    let waiters = query(AssertSqlSafe(format!(
                        "SELECT {WAITER_COLUMNS} FROM allocation_waiters ORDER BY since, id"
                    )))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)
                    .and_then(|r| rows(r, waiter_from_row))?;
                    let (grants, settled) = decide(active, waiters);
                    for a in &grants {
                        upsert_allocation(&mut tx, a).await.map_err(db_err)?;
                    }
                    allocation_events(&mut tx, &grants).await.map_err(db_err)?;
                    for id in &settled {
                        query("DELETE FROM allocation_waiters WHERE id = ?1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err)?;
                    }
                    tx.commit().await.map_err(db_err)?;
                    Ok(grants)
                }

                async fn put_allocations(&self, allocations: &[AllocationRecord]) -> StoreResult<()> {
                    let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
                    for a in allocations {
                        upsert_allocation(&mut tx, a).await.map_err(db_err)?;
                    }
                    allocation_events(&mut tx, allocations).await.map_err(db_err)?;
                    tx.commit().await.map_err(db_err)
                }

                async fn put_process(&self, p: &ProcessRecord) -> StoreResult<()> {
                    query(
                        "INSERT INTO processes (node, locality, pid, kind, version, started_at, heartbeat_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                         ON CONFLICT (node) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                    )
                    .bind(&p.node)
                    .bind(&p.locality)
                    .bind(p.pid)
                    .bind(&p.kind)
                    .bind(&p.version)
                    .bind(p.started_at)
                    .bind(p.heartbeat_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                    Ok(())
                }

                async fn processes(&self) -> StoreResult<Vec<ProcessRecord>> {
                    let r = query(
                        "SELECT node, locality, pid, kind, version, started_at, heartbeat_at \
                         FROM processes ORDER BY started_at, node",
                    )
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    rows(r, |r| {
                        Ok(ProcessRecord {
                            node: r.try_get("node")?,
                            locality: r.try_get("locality")?,
                            pid: r.try_get("pid")?,
                            kind: r.try_get("kind")?,
                            version: r.try_get("version")?,
                            started_at: r.try_get("started_at")?,
                            heartbeat_at: r.try_get("heartbeat_at")?,
                        })
                    })
                }

                async fn drop_process(&self, node: &str, clean: bool) -> StoreResult<()> {
                    let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
                    if !clean {
                        // Its leases end now: another executor takes its work over.
                        query(
                            "UPDATE runs SET lease_expires_at = 0 WHERE lease_owner = ?1 \
                             AND status IN ('pending', 'running')",
                        )
                        .bind(node)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                        // Auto tasks it ran (a new version: other processes reread them).
                        query(
                            "UPDATE task_stamps SET versions = versions + (SELECT COUNT(*) FROM tasks t \
                             WHERE t.session_id = task_stamps.session_id AND t.claimed_by = ?1 \
                             AND t.status = 'running') \
                             WHERE session_id IN (SELECT session_id FROM tasks \
                             WHERE claimed_by = ?1 AND status = 'running')",
                        )
                        .bind(node)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                        query(
                            "UPDATE tasks SET lease_expires_at = 0, version = version + 1 \
                             WHERE claimed_by = ?1 AND status = 'running'",
                        )
                        .bind(node)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                        query("DELETE FROM allocation_waiters WHERE node = ?1")
                            .bind(node)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err)?;
                    }
                    query("DELETE FROM processes WHERE node = ?1")
                        .bind(node)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    tx.commit().await.map_err(db_err)
                }

                async fn flush(&self) -> StoreResult<()> {
                    self.write(WriteOp::Barrier).await
                }
        }
    };
}

pub(crate) use sql_store;

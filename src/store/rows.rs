//! Row mapping shared by the SQL stores: column lists, decoding rows into
//! records and binding records to statements are the same for SQLite and
//! PostgreSQL; only the SQL text (placeholders, upserts) differs per store.

/// Define the shared items for one sqlx database: `$db` (e.g. `sqlx::Sqlite`),
/// its row type and its arguments type.
macro_rules! shared_rows {
    ($db:ty, $row:ty, $args:ty) => {
        const SESSION_COLUMNS: &str = "id, principal, name, description, mode, max_parallel_tasks, \
            max_parallel_workflows, timeout_seconds, idle_ttl_seconds, metadata, status, is_default, \
            created_at, updated_at, last_active_at, closed_at, close_reason";

        fn db_err(e: sqlx::Error) -> StoreError {
            match &e {
                sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(d.to_string()),
                sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                    StoreError::Corrupt(e.to_string())
                }
                _ => StoreError::Unavailable(e.to_string()),
            }
        }

        fn session_from_row(r: &$row) -> Result<SessionRecord, sqlx::Error> {
            Ok(SessionRecord {
                id: r.try_get("id")?,
                principal: r.try_get("principal")?,
                name: r.try_get("name")?,
                description: r.try_get("description")?,
                mode: r.try_get("mode")?,
                max_parallel_tasks: r.try_get::<i64, _>("max_parallel_tasks")? as u32,
                max_parallel_workflows: r.try_get::<i64, _>("max_parallel_workflows")? as u32,
                timeout_seconds: r
                    .try_get::<Option<i64>, _>("timeout_seconds")?
                    .map(|v| v as u64),
                idle_ttl_seconds: r.try_get::<i64, _>("idle_ttl_seconds")? as u64,
                metadata: r.try_get("metadata")?,
                status: r.try_get("status")?,
                is_default: r.try_get("is_default")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
                last_active_at: r.try_get("last_active_at")?,
                closed_at: r.try_get("closed_at")?,
                close_reason: r.try_get("close_reason")?,
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
                status: r.try_get("status")?,
                priority: r.try_get("priority")?,
                max_parallel: r.try_get::<i64, _>("max_parallel")? as u32,
                mode: r.try_get("mode")?,
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

        const PROJECT_COLUMNS: &str =
            "id, principal, name, path, status, kind, template, tags, record, created_at, updated_at";

        fn project_from_row(r: &$row) -> Result<ProjectRecord, sqlx::Error> {
            Ok(ProjectRecord {
                id: r.try_get("id")?,
                principal: r.try_get("principal")?,
                name: r.try_get("name")?,
                path: r.try_get("path")?,
                status: r.try_get("status")?,
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
                .bind(&p.status)
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
                status: r.try_get("status")?,
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

        fn bind_run<'q>(
            q: sqlx::query::Query<'q, $db, $args>,
            r: &'q RunRecord,
        ) -> sqlx::query::Query<'q, $db, $args> {
            q.bind(&r.id)
                .bind(&r.session_id)
                .bind(&r.principal)
                .bind(&r.workflow_name)
                .bind(r.workflow_version as i64)
                .bind(&r.workflow_source)
                .bind(&r.definition)
                .bind(&r.parameters)
                .bind(&r.status)
                .bind(&r.priority)
                .bind(r.max_parallel as i64)
                .bind(&r.mode)
                .bind(r.timeout_seconds.map(|v| v as i64))
                .bind(&r.resources)
                .bind(&r.error)
                .bind(&r.retry_of)
                .bind(r.created_at)
                .bind(r.started_at)
                .bind(r.finished_at)
                .bind(r.updated_at)
                .bind(&r.parent_run_id)
                .bind(&r.parent_step)
                .bind(&r.project_id)
                .bind(&r.project)
        }

        const TASK_COLUMNS: &str = "id, session_id, principal, seq, name, description, module, action, \
            parameters, dependencies, priority, timeout_seconds, max_retries, retry, resources, tags, \
            metadata, status, result, summary, error, attempts, claimed_by, lease_id, lease_expires_at, \
            created_at, updated_at, started_at, finished_at, version";


        fn bind_task<'q>(
            q: sqlx::query::Query<'q, $db, $args>,
            t: &'q TaskRecord,
        ) -> sqlx::query::Query<'q, $db, $args> {
            q.bind(&t.id)
                .bind(&t.session_id)
                .bind(&t.principal)
                .bind(t.seq)
                .bind(&t.name)
                .bind(&t.description)
                .bind(&t.module)
                .bind(&t.action)
                .bind(&t.parameters)
                .bind(&t.dependencies)
                .bind(&t.priority)
                .bind(t.timeout_seconds.map(|v| v as i64))
                .bind(t.max_retries as i64)
                .bind(&t.retry)
                .bind(&t.resources)
                .bind(&t.tags)
                .bind(&t.metadata)
                .bind(&t.status)
                .bind(&t.result)
                .bind(&t.summary)
                .bind(&t.error)
                .bind(t.attempts as i64)
                .bind(&t.claimed_by)
                .bind(&t.lease_id)
                .bind(t.lease_expires_at)
                .bind(t.created_at)
                .bind(t.updated_at)
                .bind(t.started_at)
                .bind(t.finished_at)
                .bind(t.version)
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
                dependencies: r.try_get("dependencies")?,
                priority: r.try_get("priority")?,
                timeout_seconds: r
                    .try_get::<Option<i64>, _>("timeout_seconds")?
                    .map(|v| v as u64),
                max_retries: r.try_get::<i64, _>("max_retries")? as u32,
                retry: r.try_get("retry")?,
                resources: r.try_get("resources")?,
                tags: r.try_get("tags")?,
                metadata: r.try_get("metadata")?,
                status: r.try_get("status")?,
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
                owner_kind: r.try_get("owner_kind")?,
                owner_ref: r.try_get("owner_ref")?,
                requirements: r.try_get("requirements")?,
                priority: r.try_get("priority")?,
                status: r.try_get("status")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
                released_at: r.try_get("released_at")?,
                release_reason: r.try_get("release_reason")?,
            })
        }

        fn sessions_from_rows(rows: Vec<$row>) -> StoreResult<Vec<SessionRecord>> {
            rows.iter()
                .map(|r| session_from_row(r).map_err(db_err))
                .collect()
        }
    };
}

pub(crate) use shared_rows;

//! Task graph tools: create tasks that myrmex runs or agents claim, follow,
//! change, cancel and retry them, and the claim protocol for agents
//! (next_task, complete_task, fail_task, renew_task_lease).

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::engine::tasks::{
    Claim, ExecuteTaskResult, NewTask, TaskBrief, TaskChanges, TaskFilter, TaskGraphView, TaskPage,
    TaskView,
};
use crate::engine::workflows::spec::{Priority, RetryPolicy};
use crate::error::Error;
use crate::server::{MyrmexServer, args::Args, principal};

/// Task statuses, for filters.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(inline)]
pub enum TaskStatus {
    Pending,
    Ready,
    Running,
    Claimed,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    TimedOut,
}

impl From<TaskStatus> for crate::model::TaskStatus {
    fn from(s: TaskStatus) -> Self {
        use crate::model::TaskStatus as T;
        match s {
            TaskStatus::Pending => T::Pending,
            TaskStatus::Ready => T::Ready,
            TaskStatus::Running => T::Running,
            TaskStatus::Claimed => T::Claimed,
            TaskStatus::Succeeded => T::Succeeded,
            TaskStatus::Failed => T::Failed,
            TaskStatus::Skipped => T::Skipped,
            TaskStatus::Cancelled => T::Cancelled,
            TaskStatus::TimedOut => T::TimedOut,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskArgs {
    /// The task.
    pub task: NewTask,
    /// Omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTasksArgs {
    /// The tasks, created all or none. Dependencies may name tasks of the batch by name.
    pub tasks: Vec<NewTask>,
    /// Omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteTaskArgs {
    /// Name of the task (unique in the session). `name` is accepted too.
    #[serde(alias = "name")]
    pub task_name: String,
    /// Module of the action to run.
    pub module: String,
    /// Action within the module.
    pub action: String,
    /// Parameters of the action; strings may reference other tasks' results ({{tasks.<name>.result}}).
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// Tasks (ids or names) that must succeed first.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// `low`, `normal` (default), `high` or `critical`.
    #[serde(default)]
    pub priority: Priority,
    /// Time limit of one attempt, in seconds.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Further attempts after a failure (default 0).
    #[serde(default)]
    pub retry_count: u32,
    /// Backoff between attempts.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Resources held while the task runs, e.g. {"cpu": 1}; it waits (waiting_resources) until they are granted.
    #[serde(default)]
    #[schemars(schema_with = "crate::engine::resources::optional_requirements_schema")]
    pub resource_requirements: Option<Value>,
    /// What the task is.
    #[serde(default)]
    pub description: Option<String>,
    /// Labels to filter by.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form JSON object.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Seconds to wait for the task to finish (default 5); a task still going answers with its status and id.
    #[serde(default)]
    pub wait_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskIdArgs {
    /// The task's id (`tsk_...`).
    pub task_id: String,
    /// If given, the task's session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetTaskArgs {
    /// The task's id (`tsk_...`).
    pub task_id: String,
    /// If given, the task's session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Wait up to this many seconds for the task to reach a final state (default 0: answer at once).
    #[serde(default)]
    pub wait_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListTasksArgs {
    /// Omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Only tasks in this status.
    #[serde(default)]
    pub status: Option<TaskStatus>,
    /// Only tasks with this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Only tasks of this priority.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Full task records instead of the compact form (id, name, status, priority, kind, dependency_count).
    #[serde(default)]
    pub detail: bool,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTaskArgs {
    /// The task's id (`tsk_...`); it must be pending or ready.
    pub task_id: String,
    /// The fields to change; the others stay.
    pub changes: TaskChanges,
    /// If given, the task's session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    /// Omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GraphArgs {
    /// Omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// next_cursor of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NextTaskArgs {
    /// Omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Your name as a worker, recorded as claimed_by (default: your principal).
    #[serde(default)]
    pub agent: Option<String>,
    /// Only tasks carrying every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// How long the claim holds without renew_task_lease (default 300 s).
    #[serde(default)]
    pub lease_seconds: Option<u64>,
    /// Seconds to wait for a claimable task (default 0).
    #[serde(default)]
    pub wait_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteTaskArgs {
    /// The claimed task.
    pub task_id: String,
    /// The lease_id next_task returned.
    pub lease_id: String,
    /// What the task produced (any JSON); dependents can reference it as {{tasks.<name>.result}}.
    #[serde(default)]
    #[schemars(schema_with = "crate::model::bounds::any_json")]
    pub result: Option<Value>,
    /// A line or two on what was done.
    #[serde(default)]
    pub summary: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailTaskArgs {
    /// The claimed task.
    pub task_id: String,
    /// The lease_id next_task returned.
    pub lease_id: String,
    /// What went wrong.
    pub error: String,
    /// True to put the task back for another attempt while its max_retries allow; false (default) fails it.
    #[serde(default)]
    pub retryable: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewLeaseArgs {
    /// The claimed task.
    pub task_id: String,
    /// The lease_id next_task returned.
    pub lease_id: String,
    /// New lease length from now (default 300 s).
    #[serde(default)]
    pub lease_seconds: Option<u64>,
}

/// Tasks as created.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct CreatedTasks {
    /// The new tasks in the order given, as many as fit the answer (get_task shows one in full).
    pub tasks: Vec<TaskBrief>,
    /// How many tasks were created.
    pub created: usize,
    /// Set when `tasks` does not list them all: how to see the rest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[tool_router(router = tasks_router, vis = "pub(crate)")]
impl MyrmexServer {
    #[tool(
        name = "create_task",
        description = "Add a task to the session's graph. With module and action myrmex runs it once its dependencies succeeded (by priority, within the session's parallelism); without, it is an agent task handed out by next_task. Parameters may reference {{tasks.<name>.result}} (a dependency).",
        annotations(
            title = "Create task",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn create_task(
        &self,
        Parameters(args): Parameters<Args<CreateTaskArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TaskView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let session = self
            .engine
            .sessions()
            .resolve(&p, a.session_id.as_deref())
            .await?;
        let mut v = self.engine.tasks().create(&session, vec![a.task]).await?;
        Ok(Json(v.remove(0)))
    }

    #[tool(
        name = "create_tasks",
        description = "Add several tasks at once, all or none; dependencies may name tasks of the same batch. A cycle is refused with the path.",
        annotations(
            title = "Create tasks",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn create_tasks(
        &self,
        Parameters(args): Parameters<Args<CreateTasksArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<CreatedTasks>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let session = self
            .engine
            .sessions()
            .resolve(&p, a.session_id.as_deref())
            .await?;
        let created = self.engine.tasks().create(&session, a.tasks).await?;
        let tasks: Vec<TaskBrief> = crate::engine::fitting(
            created.iter().map(TaskBrief::from),
            self.engine.config().limits.max_result_bytes * 4 / 5,
        );
        let note = (tasks.len() < created.len()).then(|| {
            format!(
                "All {} tasks were created; the first {} are listed. list_tasks (or get_task_graph) shows the rest.",
                created.len(),
                tasks.len()
            )
        });
        Ok(Json(CreatedTasks {
            created: created.len(),
            tasks,
            note,
        }))
    }

    #[tool(
        name = "execute_task",
        description = "Create a task that runs module.action and wait up to wait_seconds for it. Answers the original shape (status, task_id, result, execution_time, retry_attempts, error_message, ...); a task still going answers its status: follow it with get_task.",
        annotations(
            title = "Execute task",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn execute_task(
        &self,
        Parameters(args): Parameters<Args<ExecuteTaskArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<super::Answer<ExecuteTaskResult>>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let wait = self.engine.wait_for(a.wait_seconds)?;
        let session = self
            .engine
            .sessions()
            .resolve(&p, a.session_id.as_deref())
            .await?;
        let task = NewTask {
            name: a.task_name,
            description: a.description,
            module: Some(a.module),
            action: Some(a.action),
            parameters: a.parameters,
            dependencies: a.dependencies,
            priority: a.priority,
            timeout_seconds: a.timeout_seconds,
            max_retries: a.retry_count,
            retry: a.retry,
            resources: a.resource_requirements,
            tags: a.tags,
            metadata: a.metadata,
        };
        let done = self.engine.tasks().execute(&session, task, wait).await?;
        let status = done.status.clone();
        Ok(Json(super::Answer::ran(done, &status)))
    }

    #[tool(
        name = "get_task",
        description = "Read a task: status, result, error, attempts, claim and timestamps. With wait_seconds, waits for it to reach a final state first.",
        annotations(
            title = "Get task",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_task(
        &self,
        Parameters(args): Parameters<Args<GetTaskArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TaskView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let wait = match a.wait_seconds {
            None => std::time::Duration::ZERO,
            w => self.engine.wait_for(w)?,
        };
        let v = self
            .engine
            .tasks()
            .get(&self.engine, &p, &a.task_id, a.session_id.as_deref(), wait)
            .await?;
        Ok(Json(self.fitted(v)))
    }

    #[tool(
        name = "list_tasks",
        description = "List the session's tasks in creation order, compact by default (id, name, status, priority, kind, dependency_count); filter by status, tag or priority; `detail: true` for full records. Paginated.",
        annotations(
            title = "List tasks",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_tasks(
        &self,
        Parameters(args): Parameters<Args<ListTasksArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TaskPage>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let limit = crate::engine::sessions::page_limit(&self.engine.config().limits, a.limit)?;
        let session = self
            .engine
            .sessions()
            .resolve(&p, a.session_id.as_deref())
            .await?;
        let filter = TaskFilter {
            status: a.status.map(Into::into),
            tag: a.tag,
            priority: a.priority,
        };
        Ok(Json(
            self.engine
                .tasks()
                .list(&session, &filter, a.cursor.as_deref(), limit, a.detail)
                .await?,
        ))
    }

    #[tool(
        name = "update_task",
        description = "Change a pending or ready task: description, priority, parameters, dependencies, timeout_seconds, max_retries, retry, tags, metadata. A dependency that would close a cycle is refused.",
        annotations(
            title = "Update task",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn update_task(
        &self,
        Parameters(args): Parameters<Args<UpdateTaskArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TaskView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(
            self.engine
                .tasks()
                .update(
                    &self.engine,
                    &p,
                    &a.task_id,
                    a.session_id.as_deref(),
                    a.changes,
                )
                .await?,
        ))
    }

    #[tool(
        name = "cancel_task",
        description = "Cancel a task that has not finished: a running action is stopped, a claim is revoked, and dependents are skipped.",
        annotations(
            title = "Cancel task",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn cancel_task(
        &self,
        Parameters(args): Parameters<Args<TaskIdArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TaskView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(
            self.engine
                .tasks()
                .cancel(&self.engine, &p, &a.task_id, a.session_id.as_deref())
                .await?,
        ))
    }

    #[tool(
        name = "retry_task",
        description = "Run a failed, cancelled, timed-out or skipped task again; dependents that were skipped because of it come back too. The task gets a fresh round of attempts (max_retries + 1).",
        annotations(
            title = "Retry task",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn retry_task(
        &self,
        Parameters(args): Parameters<Args<TaskIdArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TaskView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(
            self.engine
                .tasks()
                .retry(&self.engine, &p, &a.task_id, a.session_id.as_deref())
                .await?,
        ))
    }

    #[tool(
        name = "get_task_graph",
        description = "The session's task graph, a page at a time: compact nodes, dependency edges, counts by status and a Mermaid diagram when it fits; next_cursor gives the rest.",
        annotations(
            title = "Get task graph",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_task_graph(
        &self,
        Parameters(args): Parameters<Args<GraphArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TaskGraphView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let session = self
            .engine
            .sessions()
            .resolve(&p, a.session_id.as_deref())
            .await?;
        let budget = self.engine.config().limits.max_result_bytes;
        Ok(Json(
            self.engine
                .tasks()
                .graph(&session, a.cursor.as_deref(), budget)
                .await?,
        ))
    }

    #[tool(
        name = "next_task",
        description = "Claim the most urgent ready agent task (priority, then age) with a lease; wait_seconds waits for one. Loop until state is graph_finished. Finish with complete_task or fail_task and the lease_id; renew_task_lease extends long work.",
        annotations(
            title = "Next task",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn next_task(
        &self,
        Parameters(args): Parameters<Args<NextTaskArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Claim>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(
            self.engine
                .next_task(
                    &p,
                    a.session_id.as_deref(),
                    a.agent,
                    &a.tags,
                    a.lease_seconds,
                    a.wait_seconds,
                )
                .await?,
        ))
    }

    #[tool(
        name = "complete_task",
        description = "Report a claimed task done with its result (and a summary). Only the holder of the current lease may; dependents become ready.",
        annotations(
            title = "Complete task",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn complete_task(
        &self,
        Parameters(args): Parameters<Args<CompleteTaskArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TaskView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(
            self.engine
                .tasks()
                .finish_claim(
                    &self.engine,
                    &p,
                    &a.task_id,
                    &a.lease_id,
                    Ok((a.result, a.summary)),
                )
                .await?,
        ))
    }

    #[tool(
        name = "fail_task",
        description = "Report a claimed task failed (lease holder only). retryable: true puts it back to ready while max_retries allow; otherwise its dependents are skipped.",
        annotations(
            title = "Fail task",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn fail_task(
        &self,
        Parameters(args): Parameters<Args<FailTaskArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TaskView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(
            self.engine
                .tasks()
                .finish_claim(
                    &self.engine,
                    &p,
                    &a.task_id,
                    &a.lease_id,
                    Err((a.error, a.retryable)),
                )
                .await?,
        ))
    }

    #[tool(
        name = "renew_task_lease",
        description = "Extend the lease of a task you claimed, from now. Only the holder of the current lease may; an expired lease cannot be renewed (the task went back to ready).",
        annotations(
            title = "Renew task lease",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn renew_task_lease(
        &self,
        Parameters(args): Parameters<Args<RenewLeaseArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TaskView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(
            self.engine
                .tasks()
                .renew(&self.engine, &p, &a.task_id, &a.lease_id, a.lease_seconds)
                .await?,
        ))
    }
}

//! A session's task graph: tasks with dependencies and priorities that myrmex
//! runs itself (tasks with a `module.action`, through the same attempt loop as
//! workflow steps) or that agents claim with a lease, work on and complete.
//!
//! Each session's graph lives in memory behind one async lock and is written
//! through to the store before any call is answered: every change (a claim, a
//! completion and the dependents it releases) is one atomic update whose rows
//! carry the version they were read at, so a concurrent writer in another
//! process is detected instead of overwritten.
//!
//! Claims, completions and renewals release the lock early: the change is
//! applied in memory and queued behind the store's group-commit writer under
//! the lock, the lock is released, and the call answers once the commit that
//! holds it is durable. Agents' changes made meanwhile share that commit (one
//! fsync for several calls); queued writes apply in order, so a later change
//! that read an earlier one is never durable without it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::attempts;
use super::resources::{Owner, Requirements, ResourceManager};
use super::sessions::Session;
use super::workflows::spec::RetryPolicy;
use super::workflows::template::{
    Budget, Ref, RenderError, Scope, render_value_within, templates_in,
};
use super::{Engine, Principal, iso, new_id};

pub mod graph;

use crate::actions::Registry;
use crate::config::TasksConfig;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{Clock, Priority, SystemClock, TaskStatus};
use crate::store::{EventRecord, Store, StoreError, TaskRecord, TaskTicket};
use graph::{TaskGraph, Txn, batch_cycle, batch_order, err_json, evaluate_deps, is_agent};

/// Task statuses, as typed constants (patterns and comparisons read as before).
pub mod status {
    use crate::model::TaskStatus;

    pub const PENDING: TaskStatus = TaskStatus::Pending;
    pub const READY: TaskStatus = TaskStatus::Ready;
    pub const RUNNING: TaskStatus = TaskStatus::Running;
    pub const WAITING_RESOURCES: TaskStatus = TaskStatus::WaitingResources;
    /// An agent task held under a lease.
    pub const CLAIMED: TaskStatus = TaskStatus::Claimed;
    pub const SUCCEEDED: TaskStatus = TaskStatus::Succeeded;
    pub const FAILED: TaskStatus = TaskStatus::Failed;
    pub const SKIPPED: TaskStatus = TaskStatus::Skipped;
    pub const CANCELLED: TaskStatus = TaskStatus::Cancelled;
    pub const TIMED_OUT: TaskStatus = TaskStatus::TimedOut;

    pub fn is_final(s: &TaskStatus) -> bool {
        s.is_final()
    }

    /// Being worked on by myrmex (its slot is taken).
    pub fn in_flight(s: &TaskStatus) -> bool {
        s.is_in_flight()
    }

    /// Ends that make dependents skipped.
    pub fn is_bad_end(s: &TaskStatus) -> bool {
        s.is_bad_end()
    }
}
use status::*;

use crate::model::bounds::{MAX_RETRIES, MAX_TASK_TIMEOUT_SECONDS as MAX_TIMEOUT_SECONDS};
const MAX_TAGS: usize = 32;
const MAX_TAG_CHARS: usize = 64;
const MAX_NAME_CHARS: usize = 64;

/// A task to create (input of `create_task`, and of each item of `create_tasks`).
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// Unique within the session (not starting with `tsk_`).
    pub name: String,
    /// What the task is.
    #[serde(default)]
    pub description: Option<String>,
    /// Module of the action myrmex runs (with `action`). Omit both for an agent task, claimed with next_task.
    #[serde(default)]
    pub module: Option<String>,
    /// Action within the module.
    #[serde(default)]
    pub action: Option<String>,
    /// Parameters of the action, or instructions for the agent. Strings may use `{{tasks.<name or id>.result.path}}` or `${<name>.result}` (adds a dependency).
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// Tasks (ids or names, also of this batch) that must succeed first.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Default `normal`; higher goes first, FIFO within a priority.
    #[serde(default)]
    pub priority: Priority,
    /// Time limit of one attempt, in seconds.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Further attempts after a failure (default 0; for agent tasks, fail_task retryable=true).
    #[serde(default)]
    pub max_retries: u32,
    /// Backoff between attempts.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Resources held while the task runs or is claimed.
    #[serde(default)]
    #[schemars(schema_with = "crate::engine::resources::optional_requirements_schema")]
    pub resources: Option<Value>,
    /// Labels to filter by (next_task, list_tasks).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form JSON object.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// Fields of a task that may change while it is pending or ready.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TaskChanges {
    /// New description.
    #[serde(default)]
    pub description: Option<String>,
    /// New priority: low, normal, high or critical.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Replaces the parameters (references add dependencies).
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    /// Replaces the explicit dependencies (ids or names); an edge that would close a cycle is refused.
    #[serde(default)]
    pub dependencies: Option<Vec<String>>,
    /// New time limit of one attempt, in seconds.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// New number of further attempts after a failure.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// New backoff between attempts.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Replaces the tags.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Replaces the metadata.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

/// An error as stored and shown: `{code, message}`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TaskError {
    pub code: String,
    pub message: String,
}

/// A task, in full.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TaskView {
    /// `tsk_...`
    pub task_id: String,
    pub name: String,
    pub description: Option<String>,
    /// `auto` (myrmex runs module.action) or `agent` (claimed with next_task).
    pub kind: String,
    pub module: Option<String>,
    pub action: Option<String>,
    pub parameters: Map<String, Value>,
    /// Ids of the tasks this one waits for (explicit and from references).
    pub dependencies: Vec<String>,
    pub priority: String,
    pub timeout_seconds: Option<u64>,
    pub max_retries: u32,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    /// Resource requirements, as given.
    pub resources: Option<Value>,
    /// pending, ready, running, claimed, succeeded, failed, skipped, cancelled or timed_out.
    pub status: String,
    /// What the action returned, or what the agent reported with complete_task.
    pub result: Option<Value>,
    pub summary: Option<String>,
    pub error: Option<TaskError>,
    /// Attempts made (runs of the action, or claims).
    pub attempts: u32,
    /// Who holds (or last held) the claim.
    pub claimed_by: Option<String>,
    /// When the current lease ends (claimed tasks).
    pub lease_expires_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// finished_at - started_at, in milliseconds.
    pub execution_time_ms: Option<i64>,
    pub session_id: String,
    /// Set when large fields were shortened to keep the answer small.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A task in a few fields (list_tasks without `detail`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TaskBrief {
    pub task_id: String,
    pub name: String,
    pub status: String,
    pub priority: String,
    /// `auto` or `agent`.
    pub kind: String,
    /// How many tasks this one waits for.
    pub dependency_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
}

/// A page of tasks.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TaskPage {
    /// Compact entries (or full ones with `detail: true`); fewer than `limit`
    /// when more would not fit the answer (`next_cursor` continues).
    pub tasks: Vec<Value>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
    /// Tasks matching the filters.
    pub total: usize,
}

/// Counts of a session's tasks that next_task reports when nothing is ready.
#[derive(Debug, Clone, Serialize, JsonSchema, Default)]
pub struct QueueCounts {
    /// Ready agent tasks that match the filter (0 when nothing was handed out).
    pub ready: usize,
    /// Ready agent tasks that do not match the tag filter.
    pub ready_other_tags: usize,
    /// Waiting for dependencies.
    pub blocked: usize,
    /// Tasks with an action that myrmex is running or is about to run.
    pub running: usize,
    /// Claimed by you (this principal and agent name).
    pub claimed_by_you: usize,
    /// Claimed by other agents.
    pub claimed_by_others: usize,
    /// In a final state.
    pub finished: usize,
    /// Ready agent tasks for you whose resources are held by others right now.
    pub waiting_resources: usize,
}

/// Which of the three answers of next_task this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClaimState {
    // A task was claimed for you: `task` and `lease_id` are set.
    Claimed,
    // Nothing is claimable for you now, but the graph is not finished:
    // `reason` and `counts` say what it waits on.
    NothingReadyYet,
    // The session has tasks and every one is final: an agent loop stops here.
    GraphFinished,
}

/// Answer of next_task.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Claim {
    /// claimed, nothing_ready_yet or graph_finished (every task is final).
    pub state: ClaimState,
    /// The claimed task, or null when nothing is ready for you.
    pub task: Option<TaskView>,
    /// Pass to complete_task, fail_task and renew_task_lease.
    pub lease_id: Option<String>,
    pub lease_expires_at: Option<String>,
    /// Why this task was chosen, or why nothing was.
    pub reason: String,
    pub counts: QueueCounts,
}

/// A graph edge: `from` must succeed before `to` starts.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Edge {
    pub from: String,
    pub to: String,
}

/// Answer of get_task_graph: one page of the graph, in creation order.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TaskGraphView {
    pub nodes: Vec<TaskBrief>,
    /// Dependency edges into this page's nodes.
    pub edges: Vec<Edge>,
    /// A Mermaid flowchart of this page; empty when it would not fit (see `note`).
    pub mermaid: String,
    /// True when the graph has more nodes than were returned.
    pub truncated: bool,
    /// Pass as `cursor` for the next nodes; null on the last page.
    pub next_cursor: Option<String>,
    /// Why the answer is shorter than the graph, and how to get the rest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub total_tasks: usize,
    pub counts: BTreeMap<String, usize>,
}

/// Why a running task's token was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancelled,
    /// The process stops, or another executor took the task over: record nothing.
    Shutdown,
}

struct Running {
    cancel: CancellationToken,
    stop: Arc<OnceLock<Stop>>,
}

/// One session's graph in memory: the pure graph, and what this process
/// does with it.
#[derive(Default)]
struct Graph {
    loaded: bool,
    closed: bool,
    max_parallel: usize,
    graph: TaskGraph,
    running: HashMap<String, Running>,
    /// Changes applied here and queued for the store, oldest first, until
    /// known durable: what the store's stamp of the session may still lack.
    pending: VecDeque<Pending>,
}

/// A queued change's state, set by the call that waits for it.
const QUEUED: u8 = 0;
const DURABLE: u8 = 1;
const REFUSED: u8 = 2;

struct Pending {
    state: Arc<AtomicU8>,
    /// How far the change moves the stamp's sum of versions.
    versions: i64,
}

impl Graph {
    /// Forget the changes known durable; a refused one means the graph in
    /// memory holds what the store does not: it is read again.
    fn settle_pending(&mut self) {
        while self
            .pending
            .front()
            .is_some_and(|p| p.state.load(Ordering::Acquire) == DURABLE)
        {
            self.pending.pop_front();
        }
        if self
            .pending
            .iter()
            .any(|p| p.state.load(Ordering::Acquire) == REFUSED)
        {
            self.loaded = false;
        }
    }

    /// Can the store's stamp be this graph's with only this process's queued
    /// changes missing? They commit in order, so the store holds a prefix.
    fn stamp_matches(&self, stored: (i64, i64)) -> bool {
        let (n, mut v) = self.stamp();
        if stored == (n, v) {
            return true;
        }
        for p in self.pending.iter().rev() {
            v -= p.versions;
            if stored == (n, v) {
                return true;
            }
        }
        false
    }
}

/// A change applied to the graph in memory and queued for the store: the
/// call answers once it is durable (after releasing the graph's lock).
#[must_use = "a staged change is acknowledged only once durable"]
struct Staged {
    ticket: Option<TaskTicket>,
    state: Arc<AtomicU8>,
}

impl Staged {
    async fn durable(mut self) -> Result<()> {
        let ticket = self.ticket.take().expect("awaited once");
        settle(ticket, &self.state).await.map_err(conflict_hint)
    }
}

/// Wait for a queued change and record how it ended.
async fn settle(ticket: TaskTicket, state: &AtomicU8) -> std::result::Result<(), StoreError> {
    let done = ticket.await;
    state.store(
        if done.is_ok() { DURABLE } else { REFUSED },
        Ordering::Release,
    );
    done
}

impl Drop for Staged {
    /// A call dropped before its change was durable (its client went away):
    /// the change still commits, and its end is still recorded, so the
    /// graph's queue of pending changes drains.
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let state = self.state.clone();
            tokio::spawn(async move {
                let _ = settle(ticket, &state).await;
            });
        }
    }
}

/// Queue a change's records behind the store's writer, with its events (each
/// changed record against the graph's).
async fn queue_changes(
    store: &dyn Store,
    g: &TaskGraph,
    changed: &[TaskRecord],
) -> Result<TaskTicket> {
    let events = changed
        .iter()
        .filter_map(|t| EventRecord::task_change(g.get(&t.id), t))
        .collect();
    store
        .queue_task_updates(changed.to_vec(), events)
        .await
        .map_err(conflict_hint)
}

type Locked = tokio::sync::OwnedMutexGuard<Graph>;

impl std::ops::Deref for Graph {
    type Target = TaskGraph;
    fn deref(&self) -> &TaskGraph {
        &self.graph
    }
}

impl std::ops::DerefMut for Graph {
    fn deref_mut(&mut self) -> &mut TaskGraph {
        &mut self.graph
    }
}

struct SessionGraph {
    session_id: String,
    graph: Arc<tokio::sync::Mutex<Graph>>,
    changed: watch::Sender<u64>,
}

impl SessionGraph {
    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// How often a call re-reads and tries again when another process changed
/// the same tasks between its read and its write.
const MAX_CONFLICT_TRIES: u32 = 8;

/// How an agent ends its claim: done (result, summary), or failed (error, retryable).
type ClaimOutcome = std::result::Result<(Option<Value>, Option<String>), (String, bool)>;

/// Every task graph this process has loaded.
pub struct TaskManager {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    resources: Arc<ResourceManager>,
    config: TasksConfig,
    limits: crate::config::LimitsConfig,
    /// Auto tasks run actions as steps do, within the steps' bounds
    /// (`[workflows]`: rendered parameters, output size and depth).
    action_limits: super::workflows::spec::Limits,
    shutdown: CancellationToken,
    graphs: Mutex<HashMap<String, Arc<SessionGraph>>>,
    /// Whose each task of a loaded graph is (it never changes once created):
    /// a change or read by task id finds its session without a store read.
    homes: Mutex<HashMap<String, Home>>,
    /// Other processes may write the same tasks (a shared database): every
    /// lock compares the store's stamp of the session and reloads when it moved.
    shared: bool,
    /// This process takes over other processes' auto tasks (not `myrmex run`).
    adopts: std::sync::atomic::AtomicBool,
    /// This process's name in auto tasks' executor leases.
    node: String,
    cluster: crate::config::ClusterConfig,
    /// Where "now" comes from: leases start and end by it.
    clock: Arc<dyn Clock>,
}

/// The principal and session a task belongs to.
#[derive(Clone)]
struct Home {
    principal: Arc<str>,
    session_id: Arc<str>,
}

impl Home {
    fn of(t: &TaskRecord) -> Self {
        Self {
            principal: t.principal.as_str().into(),
            session_id: t.session_id.as_str().into(),
        }
    }
}

fn deps_of(t: &TaskRecord) -> &[String] {
    &t.dependencies
}

impl Txn<'_> {
    /// Write the call's changes (behind whatever this process queued before)
    /// and wait until they are durable; the caller applies them to the graph.
    async fn commit(self, store: &dyn Store) -> Result<Vec<TaskRecord>> {
        let g = self.g;
        let changed = self.into_changed();
        if !changed.is_empty() {
            queue_changes(store, g, &changed)
                .await?
                .await
                .map_err(conflict_hint)?;
        }
        Ok(changed)
    }
}

fn conflict_hint(e: StoreError) -> Error {
    match e {
        StoreError::Conflict(m) => Error::new(
            ErrorCode::Conflict,
            m,
            "Another process changed the task at the same moment; read it again and retry.",
        ),
        e => e.into(),
    }
}

/// References to other tasks in parameters: (location, task name or id).
fn task_refs(params: &Map<String, Value>) -> Result<Vec<String>> {
    let mut found = Vec::new();
    templates_in(&Value::Object(params.clone()), "", &mut found);
    let mut out = Vec::new();
    for (at, t) in found {
        let t = t.map_err(|e| {
            Error::invalid(
                format!("parameters.{at}: {e}"),
                "Write references as {{tasks.<name or id>.result.path}} or ${<name>.result}; escape a literal '{{' as '\\{{'.",
            )
        })?;
        for r in t.refs() {
            match r {
                Ref::StepOutput { step, .. } | Ref::StepStatus { step } => out.push(step.clone()),
                Ref::Param { name, .. } => {
                    return Err(Error::invalid(
                        format!(
                            "parameters.{at}: tasks have no parameters to reference ('params.{name}')"
                        ),
                        "Put the value itself in the task's parameters, or reference another task's result with {{tasks.<name>.result}}.",
                    ));
                }
                Ref::Project { .. } => {
                    return Err(Error::invalid(
                        format!("parameters.{at}: tasks have no project to reference"),
                        "Put the value itself in the task's parameters; {{project...}} is for workflows run with a project.",
                    ));
                }
                Ref::RunId | Ref::SessionId => {}
            }
        }
    }
    Ok(out)
}

/// Lookups for task parameter templates.
struct TaskScope<'a> {
    g: &'a Graph,
    task_id: &'a str,
    session_id: &'a str,
    results: HashMap<String, Option<Value>>,
}

impl<'a> TaskScope<'a> {
    fn new(g: &'a Graph, task_id: &'a str, session_id: &'a str) -> Self {
        Self {
            g,
            task_id,
            session_id,
            results: HashMap::new(),
        }
    }
}

impl Scope for TaskScope<'_> {
    fn param(&self, _name: &str) -> Option<&Value> {
        None
    }
    fn step(&self, name: &str) -> Option<(String, Option<&Value>)> {
        let t = self.g.find(name)?;
        Some((
            t.status.to_string(),
            self.results.get(&t.id).and_then(Option::as_ref),
        ))
    }
    fn run_id(&self) -> &str {
        self.task_id
    }
    fn session_id(&self) -> &str {
        self.session_id
    }
}

fn parse_json<T: serde::de::DeserializeOwned + Default>(s: Option<&str>) -> T {
    s.and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

pub fn view(t: &TaskRecord) -> TaskView {
    TaskView {
        task_id: t.id.clone(),
        name: t.name.clone(),
        description: t.description.clone(),
        kind: kind(t).into(),
        module: t.module.clone(),
        action: t.action.clone(),
        parameters: parse_json(Some(&t.parameters)),
        dependencies: t.dependencies.clone(),
        priority: t.priority.to_string(),
        timeout_seconds: t.timeout_seconds,
        max_retries: t.max_retries,
        tags: t.tags.clone(),
        metadata: parse_json(Some(&t.metadata)),
        resources: t
            .resources
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
        status: t.status.to_string(),
        result: t
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
        summary: t.summary.clone(),
        error: t
            .error
            .as_deref()
            .and_then(|e| serde_json::from_str::<Value>(e).ok())
            .map(|e| TaskError {
                code: e["code"].as_str().unwrap_or_default().into(),
                message: e["message"].as_str().unwrap_or_default().into(),
            }),
        attempts: t.attempts,
        claimed_by: t.claimed_by.clone(),
        lease_expires_at: t.lease_expires_at.map(iso),
        created_at: iso(t.created_at),
        updated_at: iso(t.updated_at),
        started_at: t.started_at.map(iso),
        finished_at: t.finished_at.map(iso),
        execution_time_ms: match (t.started_at, t.finished_at) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        session_id: t.session_id.clone(),
        note: None,
    }
}

impl TaskView {
    /// Fit the view in `budget` bytes of JSON: the largest of result,
    /// parameters and metadata are replaced by previews until it fits.
    pub fn fit(&mut self, budget: usize) {
        let size = |v: &TaskView| serde_json::to_string(v).map_or(0, |s| s.len());
        let mut cut = Vec::new();
        for _ in 0..3 {
            if size(self) <= budget {
                break;
            }
            let sizes = [
                self.result.as_ref().map_or(0, |v| v.to_string().len()),
                Value::Object(self.parameters.clone()).to_string().len(),
                Value::Object(self.metadata.clone()).to_string().len(),
            ];
            let Some((which, _)) = sizes.iter().enumerate().max_by_key(|(_, n)| **n) else {
                break;
            };
            match which {
                0 => {
                    self.result = self.result.as_ref().map(super::workflows::shortened);
                    cut.push("result");
                }
                1 => {
                    let v = super::workflows::shortened(&Value::Object(std::mem::take(
                        &mut self.parameters,
                    )));
                    self.parameters.insert("_shortened".into(), v);
                    cut.push("parameters");
                }
                _ => {
                    let v = super::workflows::shortened(&Value::Object(std::mem::take(
                        &mut self.metadata,
                    )));
                    self.metadata.insert("_shortened".into(), v);
                    cut.push("metadata");
                }
            }
        }
        if !cut.is_empty() {
            self.note = Some(format!(
                "{} shortened to keep the answer under {budget} bytes (limits.max_result_bytes); the task keeps them whole.",
                cut.join(", ")
            ));
        }
    }
}

impl From<&TaskView> for TaskBrief {
    fn from(t: &TaskView) -> Self {
        TaskBrief {
            task_id: t.task_id.clone(),
            name: t.name.clone(),
            status: t.status.clone(),
            priority: t.priority.clone(),
            kind: t.kind.clone(),
            dependency_count: t.dependencies.len(),
            claimed_by: t
                .claimed_by
                .clone()
                .filter(|_| t.status == CLAIMED.as_str()),
        }
    }
}

fn kind(t: &TaskRecord) -> &'static str {
    if is_agent(t) { "agent" } else { "auto" }
}

pub fn brief(t: &TaskRecord) -> TaskBrief {
    TaskBrief {
        task_id: t.id.clone(),
        name: t.name.clone(),
        status: t.status.to_string(),
        priority: t.priority.to_string(),
        kind: kind(t).into(),
        dependency_count: deps_of(t).len(),
        claimed_by: t.claimed_by.clone().filter(|_| t.status == CLAIMED),
    }
}

fn not_found(id: &str) -> Error {
    Error::not_found(
        "task",
        id,
        "Check the task_id (and session_id, if given); list_tasks shows the session's tasks.",
    )
}

/// Filters of list_tasks.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub tag: Option<String>,
    pub priority: Option<Priority>,
}

/// Answer of execute_task, in the original specification's shape.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ExecuteTaskResult {
    /// The task's status: succeeded, failed, ... or running/pending/ready when the wait ended first.
    pub status: String,
    pub task_id: String,
    /// What the action returned.
    pub result: Option<Value>,
    /// Seconds the task ran (null until it finished).
    pub execution_time: Option<f64>,
    /// Attempts after the first.
    pub retry_attempts: u32,
    /// True when every dependency succeeded.
    pub dependencies_satisfied: bool,
    /// The resources the task holds while it runs, as requested.
    pub resource_allocation: Option<Value>,
    pub error_message: Option<String>,
    /// name, priority, attempts, created_at, session_id and the task's own metadata.
    pub metadata: Map<String, Value>,
}

impl TaskManager {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        resources: Arc<ResourceManager>,
        config: &crate::config::Config,
        shutdown: CancellationToken,
        node: String,
    ) -> Self {
        Self {
            shared: store.shared(),
            adopts: std::sync::atomic::AtomicBool::new(true),
            node,
            cluster: config.cluster.clone(),
            registry,
            resources,
            config: config.tasks.clone(),
            limits: config.limits.clone(),
            action_limits: super::workflows::spec::Limits::from_config(&config.workflows),
            shutdown,
            graphs: Mutex::new(HashMap::new()),
            homes: Mutex::new(HashMap::new()),
            store,
            clock: Arc::new(SystemClock),
        }
    }

    /// The same manager, reading time from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn session_graph(&self, session_id: &str) -> Arc<SessionGraph> {
        self.graphs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(session_id.to_string())
            .or_insert_with(|| {
                Arc::new(SessionGraph {
                    session_id: session_id.to_string(),
                    graph: Arc::new(tokio::sync::Mutex::new(Graph::default())),
                    changed: watch::channel(0).0,
                })
            })
            .clone()
    }

    /// The session's graph, locked and loaded.
    async fn lock(&self, sg: &SessionGraph, max_parallel: u32) -> Result<Locked> {
        let mut g = sg.graph.clone().lock_owned().await;
        g.max_parallel = max_parallel.max(1) as usize;
        g.settle_pending();
        if g.loaded && self.shared {
            let stored = self.store.session_tasks_stamp(&sg.session_id).await?;
            if !g.stamp_matches(stored) {
                // Another process changed the session's tasks: read them again
                // (what runs here keeps running).
                g.loaded = false;
            }
        }
        if !g.loaded {
            if !g.pending.is_empty() {
                // What this process queued lands first: the read sees it.
                self.store.flush().await?;
                g.pending.clear();
            }
            g.graph.clear();
            let tasks = self.store.session_tasks(&sg.session_id).await?;
            self.remember(&tasks);
            for t in tasks {
                g.graph.insert(t);
            }
            g.loaded = true;
        }
        Ok(g)
    }

    /// Note whose these tasks are (see `homes`).
    fn remember(&self, tasks: &[TaskRecord]) {
        let mut homes = self.homes.lock().unwrap_or_else(|p| p.into_inner());
        let mut last: Option<Home> = None;
        for t in tasks {
            let home = match &last {
                // A session's tasks share one principal and session: one allocation.
                Some(h) if *h.session_id == *t.session_id && *h.principal == *t.principal => {
                    h.clone()
                }
                _ => Home::of(t),
            };
            if !homes.contains_key(&t.id) {
                homes.insert(t.id.clone(), home.clone());
            }
            last = Some(home);
        }
    }

    /// Whose the task is: from memory, else from the store (a task another
    /// process created, or of a graph not loaded here).
    async fn home(&self, task_id: &str) -> Result<Option<Home>> {
        let known = self
            .homes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(task_id)
            .cloned();
        if known.is_some() {
            return Ok(known);
        }
        Ok(self.store.get_task(task_id).await?.as_ref().map(Home::of))
    }

    /// Every session graph this process holds.
    fn loaded_graphs(&self) -> Vec<Arc<SessionGraph>> {
        self.graphs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The session's graph locked, read again if another process changed it.
    async fn fresh(&self, sg: &SessionGraph) -> Result<Locked> {
        let max = sg.graph.lock().await.max_parallel as u32;
        self.lock(sg, max).await
    }

    /// Is this running task still this process's to record? (With a shared
    /// store another executor may have taken it over.)
    fn ours(&self, t: &TaskRecord) -> bool {
        in_flight(&t.status) && (!self.shared || t.claimed_by.as_deref() == Some(&self.node))
    }

    /// Apply a commit's records; with a shared store, a Conflict (another
    /// process changed these tasks first) instead marks the graph to be read
    /// again at its next lock. Whether the commit went through.
    fn apply_or_reload(&self, g: &mut Graph, committed: Result<Vec<TaskRecord>>) -> Result<bool> {
        match committed {
            Ok(changed) => {
                g.apply(changed);
                Ok(true)
            }
            Err(e) if self.shared && e.code == ErrorCode::Conflict => {
                g.loaded = false;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Apply a call's changes to the graph and queue them for the store; the
    /// caller releases the lock, then answers once [`Staged::durable`] says so.
    async fn stage(&self, g: &mut Graph, changed: Vec<TaskRecord>) -> Result<Staged> {
        let versions = changed
            .iter()
            .map(|t| t.version - g.get(&t.id).map_or(0, |o| o.version))
            .sum();
        let ticket = queue_changes(&*self.store, &g.graph, &changed).await?;
        g.apply(changed);
        let state = Arc::new(AtomicU8::new(QUEUED));
        g.pending.push_back(Pending {
            state: state.clone(),
            versions,
        });
        Ok(Staged {
            ticket: Some(ticket),
            state,
        })
    }

    // ---- creating -------------------------------------------------------

    fn check_new(&self, t: &NewTask) -> Result<()> {
        let name_ok = !t.name.is_empty()
            && t.name.chars().count() <= MAX_NAME_CHARS
            && t.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !t.name.starts_with("tsk_");
        if !name_ok {
            return Err(Error::invalid(
                format!("task name '{}' is not valid", t.name),
                format!(
                    "Use 1-{MAX_NAME_CHARS} letters, digits, '_' or '-' (not starting with 'tsk_'), e.g. \"build-docs\"."
                ),
            ));
        }
        if let Some(d) = &t.description
            && d.chars().count() > self.limits.max_description_chars
        {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "task '{}': description has {} characters; the limit is {}",
                    t.name,
                    d.chars().count(),
                    self.limits.max_description_chars
                ),
                "Shorten the description; put long material in metadata or parameters.",
            ));
        }
        match (&t.module, &t.action) {
            (None, None) => {}
            (Some(m), Some(a)) => {
                if self.registry.spec(m, a).is_none() {
                    let hint = match self.registry.actions_of(m) {
                        Some(acts) => format!("Module '{m}' has actions: {}.", acts.join(", ")),
                        None => format!("Known modules: {}.", self.registry.modules().join(", ")),
                    };
                    return Err(Error::new(
                        ErrorCode::ModuleNotFound,
                        format!("task '{}': no action '{m}.{a}'", t.name),
                        hint,
                    ));
                }
                if let Some(why) = self.registry.disabled(m) {
                    return Err(Error::new(
                        ErrorCode::ModuleNotFound,
                        format!("task '{}': module '{m}' is disabled", t.name),
                        format!("{why}. list_modules shows what is enabled."),
                    ));
                }
                if let Some(instead) = self.registry.steps_only(m) {
                    return Err(Error::invalid(
                        format!("task '{}': {m}.{a} runs only as a workflow step", t.name),
                        instead,
                    ));
                }
                let mut found = Vec::new();
                templates_in(&Value::Object(t.parameters.clone()), "", &mut found);
                let templated: Vec<String> = found
                    .iter()
                    .map(|(at, _)| at.split(['.', '[']).next().unwrap_or_default().to_string())
                    .collect();
                let problems = self.registry.check_params(
                    m,
                    a,
                    &Value::Object(t.parameters.clone()),
                    &templated,
                );
                if !problems.is_empty() {
                    return Err(Error::invalid(
                        format!(
                            "task '{}': parameters of {m}.{a}: {}",
                            t.name,
                            problems.join("; ")
                        ),
                        "Fix the parameters to match the action's schema (list_modules shows every action's parameter schema).",
                    ));
                }
            }
            _ => {
                return Err(Error::invalid(
                    format!("task '{}': give both module and action, or neither", t.name),
                    "A task with module and action is run by myrmex; a task without them is an agent task claimed with next_task.",
                ));
            }
        }
        if t.max_retries > MAX_RETRIES {
            return Err(Error::invalid(
                format!(
                    "task '{}': max_retries {} is above {MAX_RETRIES}",
                    t.name, t.max_retries
                ),
                format!("Use max_retries between 0 and {MAX_RETRIES}."),
            ));
        }
        if let Some(why) = t.retry.as_ref().and_then(RetryPolicy::problem) {
            return Err(Error::invalid(
                format!("task '{}': {why}", t.name),
                "Use 1 <= multiplier <= 10 and delays of at most an hour (3600000 ms).",
            )
            .with_details(json!({"field": "retry"})));
        }
        if let Some(s) = t.timeout_seconds
            && (s == 0 || s > MAX_TIMEOUT_SECONDS)
        {
            return Err(Error::invalid(
                format!(
                    "task '{}': timeout_seconds {s} is outside 1..={MAX_TIMEOUT_SECONDS}",
                    t.name
                ),
                "Give the time limit of one attempt in seconds, at least 1.",
            ));
        }
        self.check_tags(&t.tags)?;
        self.check_payload(&t.name, "parameters", &Value::Object(t.parameters.clone()))?;
        self.check_payload(&t.name, "metadata", &Value::Object(t.metadata.clone()))?;
        if let Some(r) = &t.resources {
            self.check_payload(&t.name, "resources", r)?;
        }
        task_refs(&t.parameters)?;
        Ok(())
    }

    fn check_tags(&self, tags: &[String]) -> Result<()> {
        if tags.len() > MAX_TAGS
            || tags
                .iter()
                .any(|t| t.is_empty() || t.chars().count() > MAX_TAG_CHARS)
        {
            return Err(Error::invalid(
                format!("tags: at most {MAX_TAGS} tags of 1-{MAX_TAG_CHARS} characters each"),
                "Use a few short labels such as \"backend\" or \"review\".",
            ));
        }
        Ok(())
    }

    /// A value nests at most `workflows.max_value_depth` levels.
    fn check_value_depth(&self, v: &Value, what: &str) -> Result<()> {
        let max = self.action_limits.max_value_depth;
        if crate::model::bounds::value_depth(v, max) > max {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("{what} nest deeper than {max} levels (workflows.max_value_depth)"),
                "Flatten the value, or store it elsewhere and pass a reference.",
            ));
        }
        Ok(())
    }

    /// An auto task's result is at most `workflows.max_step_output_bytes`.
    fn check_output(&self, v: &Value) -> Result<()> {
        let n = crate::model::bounds::json_size(v);
        let max = self.action_limits.max_step_output_bytes;
        if n > max {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "the result is {n} bytes; the limit is {max} (workflows.max_step_output_bytes); it was not stored"
                ),
                "Have the action return less (max_output_bytes, max_response_bytes), or write large data to a file.",
            ));
        }
        Ok(())
    }

    fn check_payload(&self, task: &str, field: &str, v: &Value) -> Result<()> {
        let n = v.to_string().len();
        if n > self.config.max_payload_bytes {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "task '{}': {field} is {n} bytes; the limit is {} bytes (tasks.max_payload_bytes)",
                    crate::error::excerpt(task),
                    self.config.max_payload_bytes
                ),
                "Store large data elsewhere (a file, an object store) and pass a reference to it.",
            ));
        }
        Ok(())
    }

    /// Create tasks, all or none. Dependencies name existing tasks (id or
    /// name) or tasks of the batch (name).
    pub async fn create(
        self: &Arc<Self>,
        session: &Session,
        batch: Vec<NewTask>,
    ) -> Result<Vec<TaskView>> {
        if batch.is_empty() {
            return Err(Error::invalid("no tasks given", "Pass at least one task."));
        }
        if batch.len() > self.config.max_batch {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{} tasks in one batch; the limit is {}",
                    batch.len(),
                    self.config.max_batch
                ),
                "Split the batch; dependencies may name tasks created earlier.",
            ));
        }
        for t in &batch {
            self.check_new(t)?;
            if let Some(r) = &t.resources {
                let req = Requirements::parse(r)?;
                self.resources
                    .check_possible(&req, &format!("the resources of task '{}'", t.name))
                    .await?;
            }
        }
        let sg = self.session_graph(&session.session_id);
        let mut g = self.lock(&sg, session.max_parallel_tasks).await?;
        if g.tasks().len() + batch.len() > self.config.max_tasks_per_session {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "the session has {} tasks; {} more would pass the limit of {}",
                    g.tasks().len(),
                    batch.len(),
                    self.config.max_tasks_per_session
                ),
                "Use a new session for further work (create_session), or raise [tasks] max_tasks_per_session.",
            ));
        }
        // Ids and names of the batch.
        let mut batch_ids: HashMap<String, String> = HashMap::new();
        for t in &batch {
            if g.find_name(&t.name).is_some() || batch_ids.contains_key(&t.name) {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!("a task named '{}' exists in this session", t.name),
                    "Task names are unique within a session; pick another name, or refer to the existing task.",
                ));
            }
            batch_ids.insert(t.name.clone(), new_id("tsk"));
        }
        let resolve = |key: &str, of: &str| -> Result<String> {
            match batch_ids.get(key) {
                Some(id) => Ok(id.clone()),
                None => g.resolve(key, of, "this session or batch"),
            }
        };
        let now = self.now();
        let mut records: Vec<TaskRecord> = Vec::with_capacity(batch.len());
        let mut batch_deps: HashMap<String, Vec<String>> = HashMap::new();
        for (i, t) in batch.into_iter().enumerate() {
            let id = batch_ids[&t.name].clone();
            let mut deps: Vec<String> = Vec::new();
            for key in t
                .dependencies
                .iter()
                .chain(task_refs(&t.parameters)?.iter())
            {
                let d = resolve(key, &t.name)?;
                if d == id {
                    return Err(Error::new(
                        ErrorCode::CycleDetected,
                        format!("task '{}' depends on itself", t.name),
                        "Remove the task from its own dependencies and references.",
                    ));
                }
                if !deps.contains(&d) {
                    deps.push(d);
                }
            }
            batch_deps.insert(id.clone(), deps.clone());
            records.push(TaskRecord {
                id,
                session_id: session.session_id.clone(),
                principal: session.principal.clone(),
                seq: g.next_seq + i as i64,
                name: t.name,
                description: t.description,
                module: t.module,
                action: t.action,
                parameters: Value::Object(t.parameters).to_string(),
                dependencies: deps.clone(),
                priority: t.priority,
                timeout_seconds: t.timeout_seconds,
                max_retries: t.max_retries,
                retry: t.retry.map(|r| serde_json::to_string(&r).expect("policy")),
                resources: t.resources.map(|r| r.to_string()),
                tags: t.tags.clone(),
                metadata: Value::Object(t.metadata).to_string(),
                status: PENDING,
                result: None,
                summary: None,
                error: None,
                attempts: 0,
                claimed_by: None,
                lease_id: None,
                lease_expires_at: None,
                created_at: now,
                updated_at: now,
                started_at: None,
                finished_at: None,
                version: 1,
            });
        }
        if let Some(cycle) = batch_cycle(&records, &batch_deps) {
            return Err(Error::new(
                ErrorCode::CycleDetected,
                format!("the batch's dependencies form a cycle: {cycle}"),
                "Remove one dependency of the cycle.",
            ));
        }
        // Initial status, in dependency order within the batch.
        let by_id: HashMap<String, usize> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        for i in batch_order(&records, &batch_deps, &by_id) {
            let deps = batch_deps[&records[i].id].clone();
            let verdict = evaluate_deps(&deps, |d| match by_id.get(d) {
                Some(&j) => Some(&records[j]),
                None => g.get(d),
            });
            let r = &mut records[i];
            match verdict {
                Some((SKIPPED, error)) => {
                    r.status = SKIPPED;
                    r.error = error;
                    r.finished_at = Some(now);
                }
                Some((st, _)) => r.status = st,
                None => {}
            }
        }
        if !g.pending.is_empty() {
            // Queued changes the new tasks were judged by land first.
            self.store.flush().await?;
        }
        self.store
            .insert_tasks(&records)
            .await
            .map_err(conflict_hint)?;
        self.remember(&records);
        for r in &records {
            g.graph.insert(r.clone());
        }
        self.dispatch(&sg, &mut g).await?;
        sg.bump();
        Ok(records
            .iter()
            .map(|r| view(g.get(&r.id).unwrap_or(r)))
            .collect())
    }

    // ---- running auto tasks -------------------------------------------

    /// Start ready auto tasks, most urgent first, up to the session's parallelism.
    async fn dispatch(self: &Arc<Self>, sg: &Arc<SessionGraph>, g: &mut Graph) -> Result<()> {
        if g.closed || self.shutdown.is_cancelled() {
            return Ok(());
        }
        if !self.cluster.execute {
            // Workers run auto tasks: tell them when there is something to run.
            if g.ready_auto().next().is_some()
                && let Err(e) = self.store.notify("tasks").await
            {
                tracing::warn!(error = %e, "cannot notify workers; they find the tasks at their next poll");
            }
            return Ok(());
        }
        let free = g.max_parallel.saturating_sub(g.running.len());
        if free == 0 {
            return Ok(());
        }
        // Most urgent first (then oldest).
        let picked: Vec<String> = g
            .ready_auto()
            .filter(|t| !g.running.contains_key(&t.id))
            .take(free)
            .map(|t| t.id.clone())
            .collect();
        if picked.is_empty() {
            return Ok(());
        }
        let mut txn = Txn::new(g, self.now());
        let now = txn.now;
        let mut plans = Vec::new();
        for id in &picked {
            // Resolve the parameters now: every dependency has succeeded.
            let t = txn.get(id).expect("picked").clone();
            let mut scope = TaskScope::new(g, &t.id, &t.session_id);
            for d in deps_of(&t).to_vec() {
                let r = g
                    .tasks()
                    .get(&d)
                    .and_then(|d| d.result.as_deref())
                    .and_then(|r| serde_json::from_str(r).ok());
                scope.results.insert(d, r);
            }
            let params: Map<String, Value> = parse_json(Some(&t.parameters));
            let mut budget = Budget::new(
                self.action_limits.max_rendered_bytes,
                "workflows.max_rendered_bytes",
            );
            let rendered = render_value_within(&Value::Object(params), &scope, &mut budget)
                .map_err(RenderError::into_message)
                .and_then(|p| {
                    self.check_value_depth(&p, "the rendered parameters")
                        .map(|()| p)
                        .map_err(|e| e.message)
                });
            match rendered {
                Ok(p) => {
                    let lease_end = now + self.cluster.lease_ttl_ms as i64;
                    let shared = self.shared;
                    let rec = txn.edit(id);
                    rec.status = RUNNING;
                    rec.started_at.get_or_insert(now);
                    if shared {
                        // The executor's lease: renewed by its heartbeat, taken over when it ends.
                        rec.claimed_by = Some(self.node.clone());
                        rec.lease_expires_at = Some(lease_end);
                    }
                    plans.push((t, p));
                }
                Err(e) => {
                    let rec = txn.edit(id);
                    rec.status = FAILED;
                    rec.error = err_json(
                        ErrorCode::InvalidParameters.as_str(),
                        format!("cannot resolve parameters: {e}"),
                    );
                    rec.started_at.get_or_insert(now);
                    rec.finished_at = Some(now);
                    txn.settle_dependents(id);
                }
            }
        }
        // Another process changed these tasks first (it may be running them).
        let committed = txn.commit(&*self.store).await;
        if !self.apply_or_reload(g, committed)? {
            return Ok(());
        }
        for (t, params) in plans {
            let cancel = self.shutdown.child_token();
            let stop = Arc::new(OnceLock::new());
            g.running.insert(
                t.id.clone(),
                Running {
                    cancel: cancel.clone(),
                    stop: stop.clone(),
                },
            );
            let plan = attempts::Plan {
                module: t.module.clone().unwrap_or_default(),
                action: t.action.clone().unwrap_or_default(),
                params,
                timeout_seconds: t.timeout_seconds,
                max_retries: t.max_retries,
                retry: t
                    .retry
                    .as_deref()
                    .and_then(|r| serde_json::from_str(r).ok())
                    .unwrap_or_default(),
                prior_attempts: t.attempts,
                run_id: t.id.clone(),
                step: t.name.clone(),
                session_id: t.session_id.clone(),
                principal: t.principal.clone(),
                caller: crate::actions::Caller::Task,
                workdir: None,
            };
            let resources = task_requirements(&t).ok().flatten().map(|req| {
                (
                    task_owner(&t, crate::model::OwnerKind::Task),
                    req,
                    t.priority,
                )
            });
            let job = Job {
                mgr: self.clone(),
                sg: sg.clone(),
                id: t.id.clone(),
                resources,
            };
            tokio::spawn(job.run(plan, cancel, stop));
        }
        Ok(())
    }

    // ---- reading ---------------------------------------------------------

    /// A task visible to the caller, with its session's graph loaded.
    async fn find(
        &self,
        engine: &Engine,
        p: &Principal,
        task_id: &str,
        session_id: Option<&str>,
        change: bool,
    ) -> Result<(Session, Arc<SessionGraph>)> {
        let home = self.home(task_id).await?;
        let Some(home) = home.filter(|h| {
            *h.principal == *p.name() && session_id.is_none_or(|s| s == &*h.session_id)
        }) else {
            return Err(not_found(task_id));
        };
        // A change needs an active session and counts as activity in it
        // (`resolve` checks and records both); reading does neither.
        let sessions = engine.sessions();
        let session = if change {
            sessions.resolve(p, Some(&home.session_id)).await
        } else {
            sessions.get(p, &home.session_id).await
        };
        let session = match session {
            Ok(s) => s,
            Err(e) if e.code == ErrorCode::SessionClosed => {
                let name = self.store.get_task(task_id).await?.map(|t| t.name);
                return Err(Error::new(
                    ErrorCode::SessionClosed,
                    format!(
                        "task '{}' belongs to session {}, which is closed",
                        name.as_deref().unwrap_or(task_id),
                        home.session_id
                    ),
                    "Tasks of a closed session cannot change; create a new session (create_session) for further work.",
                ));
            }
            Err(e) if e.code == ErrorCode::NotFound => return Err(not_found(task_id)),
            Err(e) => return Err(e),
        };
        Ok((session, self.session_graph(&home.session_id)))
    }

    pub async fn get(
        &self,
        engine: &Engine,
        p: &Principal,
        task_id: &str,
        session_id: Option<&str>,
        wait: Duration,
    ) -> Result<TaskView> {
        let (session, _) = self.find(engine, p, task_id, session_id, false).await?;
        Ok(view(&self.wait_final(&session, task_id, wait).await?))
    }

    pub async fn list(
        &self,
        session: &Session,
        filter: &TaskFilter,
        cursor: Option<&str>,
        limit: u32,
        detail: bool,
    ) -> Result<TaskPage> {
        let sg = self.session_graph(&session.session_id);
        let g = self.lock(&sg, session.max_parallel_tasks).await?;
        let matching: Vec<&TaskRecord> = g
            .order()
            .iter()
            .filter_map(|id| g.get(id))
            .filter(|t| filter.status.is_none_or(|s| t.status == s))
            .filter(|t| filter.priority.is_none_or(|p| t.priority == p))
            .filter(|t| {
                filter
                    .tag
                    .as_deref()
                    .is_none_or(|tag| t.tags.clone().iter().any(|x| x == tag))
            })
            .collect();
        let start = match cursor {
            Some(c) => super::workflows::decode_offset(c)?,
            None => 0,
        };
        // As many as `limit` allows and fit the answer (at least one).
        let budget = self.limits.max_result_bytes * 4 / 5;
        let page: Vec<Value> = super::fitting(
            matching.iter().skip(start).take(limit as usize).map(|t| {
                if detail {
                    let mut v = view(t);
                    v.fit(budget);
                    serde_json::to_value(v)
                } else {
                    serde_json::to_value(brief(t))
                }
                .expect("serializable")
            }),
            budget,
        );
        let end = start + page.len();
        Ok(TaskPage {
            next_cursor: (end < matching.len()).then(|| super::workflows::encode_offset(end)),
            total: matching.len(),
            tasks: page,
        })
    }

    /// A page of the session's graph from `cursor`, at most `max_graph_nodes`
    /// nodes and `budget` bytes of JSON (the Mermaid diagram only when it fits too).
    pub async fn graph(
        &self,
        session: &Session,
        cursor: Option<&str>,
        budget: usize,
    ) -> Result<TaskGraphView> {
        let sg = self.session_graph(&session.session_id);
        let g = self.lock(&sg, session.max_parallel_tasks).await?;
        let from = match cursor {
            Some(c) => super::workflows::decode_offset(c)?,
            None => 0,
        };
        // Nodes and their incoming edges, while they fit in most of the budget.
        let mut nodes = Vec::new();
        let mut edges = Vec::new();
        let mut used = 512;
        for t in g.order().iter().skip(from).filter_map(|id| g.get(id)) {
            if nodes.len() >= self.config.max_graph_nodes {
                break;
            }
            let b = brief(t);
            let in_edges: Vec<Edge> = deps_of(t)
                .iter()
                .map(|d| Edge {
                    from: d.clone(),
                    to: t.id.clone(),
                })
                .collect();
            let size = serde_json::to_string(&b).map_or(0, |s| s.len())
                + serde_json::to_string(&in_edges).map_or(0, |s| s.len());
            if used + size > budget * 4 / 5 && !nodes.is_empty() {
                break;
            }
            used += size;
            nodes.push(b);
            edges.extend(in_edges);
        }
        let end = from + nodes.len();
        let mut mermaid = String::from("flowchart TD\n");
        for t in &nodes {
            mermaid.push_str(&format!(
                "    {}[\"{} ({})\"]\n",
                t.task_id, t.name, t.status
            ));
        }
        for e in &edges {
            mermaid.push_str(&format!("    {} --> {}\n", e.from, e.to));
        }
        let mut note = None;
        if used + mermaid.len() > budget {
            mermaid.clear();
            note = Some(
                "The Mermaid diagram was left out to keep the answer small; nodes and edges are complete for this page.".to_string(),
            );
        }
        let more = end < g.order().len();
        if more {
            note = Some(format!(
                "{}Nodes {}-{} of {}: pass next_cursor as cursor for the next ones, or use list_tasks with filters.",
                note.map(|n| format!("{n} ")).unwrap_or_default(),
                from + 1,
                end,
                g.order().len()
            ));
        }
        let mut counts = BTreeMap::new();
        for t in g.tasks().values() {
            *counts.entry(t.status.to_string()).or_insert(0) += 1;
        }
        Ok(TaskGraphView {
            truncated: more || from > 0,
            next_cursor: more.then(|| super::workflows::encode_offset(end)),
            note,
            total_tasks: g.tasks().len(),
            nodes,
            edges,
            mermaid,
            counts,
        })
    }

    // ---- changing ---------------------------------------------------------

    pub async fn update(
        self: &Arc<Self>,
        engine: &Engine,
        p: &Principal,
        task_id: &str,
        session_id: Option<&str>,
        ch: TaskChanges,
    ) -> Result<TaskView> {
        let (sg, mut g, cur) = self.open_task(engine, p, task_id, session_id).await?;
        if !matches!(cur.status, PENDING | READY) {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "task '{}' is {}; only pending or ready tasks can be changed",
                    cur.name, cur.status
                ),
                "Cancel it and create a new task, or retry_task a finished one.",
            ));
        }
        // Validate the result as a whole, as a new task would be.
        let mut probe = NewTask {
            name: cur.name.clone(),
            description: ch.description.clone().or(cur.description.clone()),
            module: cur.module.clone(),
            action: cur.action.clone(),
            parameters: ch
                .parameters
                .clone()
                .unwrap_or_else(|| parse_json(Some(&cur.parameters))),
            dependencies: Vec::new(),
            priority: Priority::Normal,
            timeout_seconds: ch.timeout_seconds.or(cur.timeout_seconds),
            max_retries: ch.max_retries.unwrap_or(cur.max_retries),
            retry: ch.retry.clone(),
            resources: None,
            tags: ch.tags.clone().unwrap_or_else(|| cur.tags.clone()),
            metadata: ch
                .metadata
                .clone()
                .unwrap_or_else(|| parse_json(Some(&cur.metadata))),
        };
        self.check_new(&probe)?;
        // New dependency set: explicit ones (changed or kept) plus references.
        let mut deps: Vec<String> = match &ch.dependencies {
            Some(keys) => {
                let mut v = Vec::new();
                for k in keys {
                    v.push(g.resolve(k, &cur.name, "this session")?);
                }
                v
            }
            None => {
                // Keep the current explicit dependencies (those not from references).
                let old_refs: Vec<String> = task_refs(&parse_json(Some(&cur.parameters)))?
                    .iter()
                    .filter_map(|k| g.resolve(k, &cur.name, "this session").ok())
                    .collect();
                deps_of(&cur)
                    .iter()
                    .filter(|d| !old_refs.contains(d))
                    .cloned()
                    .collect()
            }
        };
        for k in task_refs(&probe.parameters)? {
            let d = g.resolve(&k, &cur.name, "this session")?;
            if !deps.contains(&d) {
                deps.push(d);
            }
        }
        deps.dedup();
        for d in &deps {
            if d == task_id || g.reaches(task_id, d) {
                let other = g.get(d).map(|t| t.name.clone()).unwrap_or_default();
                return Err(Error::new(
                    ErrorCode::CycleDetected,
                    format!(
                        "'{}' cannot depend on '{other}': '{other}' already depends on '{}' (directly or through other tasks)",
                        cur.name, cur.name
                    ),
                    "Remove that dependency; get_task_graph shows the edges.",
                ));
            }
        }
        let mut txn = Txn::new(&g, self.now());
        {
            let t = txn.edit(task_id);
            if let Some(d) = ch.description {
                t.description = Some(d);
            }
            if let Some(pr) = ch.priority {
                t.priority = pr;
            }
            t.parameters = Value::Object(std::mem::take(&mut probe.parameters)).to_string();
            t.timeout_seconds = probe.timeout_seconds;
            t.max_retries = probe.max_retries;
            if let Some(r) = ch.retry {
                t.retry = Some(serde_json::to_string(&r).expect("policy"));
            }
            t.tags = std::mem::take(&mut probe.tags);
            t.metadata = Value::Object(std::mem::take(&mut probe.metadata)).to_string();
            t.dependencies = deps.clone();
            t.status = PENDING;
        }
        let verdict = txn.evaluate(task_id);
        match verdict {
            Some((SKIPPED, error)) => {
                let now = txn.now;
                let t = txn.edit(task_id);
                t.status = SKIPPED;
                t.error = error;
                t.finished_at = Some(now);
                txn.settle_dependents(task_id);
            }
            Some((st, _)) => txn.edit(task_id).status = st,
            None => {}
        }
        let changed = txn.commit(&*self.store).await?;
        g.apply(changed);
        self.changed(&sg, &mut g, task_id).await
    }

    /// A task the caller may change, its graph locked and loaded.
    async fn open_task(
        &self,
        engine: &Engine,
        p: &Principal,
        task_id: &str,
        session_id: Option<&str>,
    ) -> Result<(Arc<SessionGraph>, Locked, TaskRecord)> {
        let (session, sg) = self.find(engine, p, task_id, session_id, true).await?;
        let g = self.lock(&sg, session.max_parallel_tasks).await?;
        let cur = g
            .tasks()
            .get(task_id)
            .cloned()
            .ok_or_else(|| not_found(task_id))?;
        Ok((sg, g, cur))
    }

    /// After a change: start what became ready, wake waiters, answer the task.
    async fn changed(
        self: &Arc<Self>,
        sg: &Arc<SessionGraph>,
        g: &mut Graph,
        task_id: &str,
    ) -> Result<TaskView> {
        self.dispatch(sg, g).await?;
        sg.bump();
        Ok(view(&g.tasks()[task_id]))
    }

    pub async fn cancel(
        self: &Arc<Self>,
        engine: &Engine,
        p: &Principal,
        task_id: &str,
        session_id: Option<&str>,
    ) -> Result<TaskView> {
        let (sg, mut g, cur) = self.open_task(engine, p, task_id, session_id).await?;
        if is_final(&cur.status) {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("task '{}' is already {}", cur.name, cur.status),
                "Nothing to cancel; retry_task runs a finished task again.",
            ));
        }
        let mut txn = Txn::new(&g, self.now());
        txn.cancel(task_id, ErrorCode::Cancelled, "the task was cancelled");
        let changed = txn.commit(&*self.store).await?;
        g.apply(changed);
        if cur.status == CLAIMED {
            self.release_claim(&cur).await;
        }
        if let Some(r) = g.running.get(task_id) {
            let _ = r.stop.set(Stop::Cancelled);
            r.cancel.cancel();
        }
        self.changed(&sg, &mut g, task_id).await
    }

    pub async fn retry(
        self: &Arc<Self>,
        engine: &Engine,
        p: &Principal,
        task_id: &str,
        session_id: Option<&str>,
    ) -> Result<TaskView> {
        let (sg, mut g, cur) = self.open_task(engine, p, task_id, session_id).await?;
        if !matches!(cur.status, FAILED | CANCELLED | TIMED_OUT | SKIPPED) {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "task '{}' is {}; only failed, cancelled, timed-out or skipped tasks can be retried",
                    cur.name, cur.status
                ),
                "Wait for the task to finish (get_task with wait_seconds), or cancel it first.",
            ));
        }
        if let Some(bad) = deps_of(&cur)
            .iter()
            .filter_map(|d| g.get(d))
            .find(|d| is_bad_end(&d.status))
        {
            return Err(Error::new(
                ErrorCode::DependencyFailed,
                format!("dependency '{}' ({}) is {}", bad.name, bad.id, bad.status),
                format!(
                    "Retry '{}' first ({}); its dependents that were skipped come back with it.",
                    bad.name, bad.id
                ),
            ));
        }
        let mut txn = Txn::new(&g, self.now());
        // The task and its dependents that were skipped because of it go again.
        let mut queue = vec![task_id.to_string()];
        let mut seen = HashSet::new();
        while let Some(id) = queue.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let t = txn.edit(&id);
            t.status = PENDING;
            t.attempts = 0;
            t.error = None;
            t.result = None;
            t.summary = None;
            t.started_at = None;
            t.finished_at = None;
            t.claimed_by = None;
            t.lease_id = None;
            t.lease_expires_at = None;
            for d in g.dependents(&id).to_vec() {
                if txn.get(&d).is_some_and(|x| x.status == SKIPPED) {
                    queue.push(d);
                }
            }
        }
        if let Some((st, _)) = txn.evaluate(task_id) {
            txn.edit(task_id).status = st;
        }
        let changed = txn.commit(&*self.store).await?;
        g.apply(changed);
        self.changed(&sg, &mut g, task_id).await
    }

    // ---- agents -----------------------------------------------------------

    /// Return expired leases to `ready` (the attempt stays counted).
    async fn expire_leases(&self, g: &mut Graph) -> Result<usize> {
        let now = self.now();
        let mut expired: Vec<String> = Vec::new();
        // Auto tasks whose executor (another process) stopped renewing its lease.
        let mut orphans: Vec<String> = Vec::new();
        for t in g.leases_ended(now) {
            if t.status == CLAIMED {
                expired.push(t.id.clone());
            } else if self.shared && !is_agent(t) && !g.running.contains_key(&t.id) {
                orphans.push(t.id.clone());
            }
        }
        if !orphans.is_empty() {
            let mut txn = Txn::new(g, self.now());
            for id in &orphans {
                txn.ready_again(id, |who, attempt| {
                    format!(
                        "executor '{who}' stopped during attempt {attempt}; the task runs again"
                    )
                });
                txn.edit(id).claimed_by = None;
            }
            let committed = txn.commit(&*self.store).await;
            self.apply_or_reload(g, committed)?;
            for id in &orphans {
                self.resources
                    .release_owner(
                        crate::model::OwnerKind::Task,
                        id,
                        "the task's executor stopped; it acquires again",
                    )
                    .await?;
            }
            tracing::warn!(
                tasks = orphans.len(),
                "auto tasks of a stopped executor are ready again"
            );
        }
        if expired.is_empty() {
            return Ok(orphans.len());
        }
        let mut txn = Txn::new(g, self.now());
        for id in &expired {
            txn.ready_again(id, |who, attempt| {
                format!("the lease of '{who}' expired (attempt {attempt}); the task is ready again")
            });
        }
        let changed = txn.commit(&*self.store).await?;
        g.apply(changed);
        for id in &expired {
            if let Some(t) = g.get(id) {
                self.release_claim(t).await;
            }
        }
        Ok(expired.len())
    }

    /// Resolves when another process may have changed a shared store: its
    /// change stamp moved (SQLite's, read every `cluster.signal_poll_ms`), or,
    /// on a store without one, `cluster.signal_poll_ms` passed.
    async fn store_moved(&self, stamp: &mut Option<tokio::sync::watch::Receiver<u64>>) {
        match stamp {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await
                }
            }
            None => tokio::time::sleep(self.signal_poll()).await,
        }
    }

    fn signal_poll(&self) -> Duration {
        Duration::from_millis(self.cluster.signal_poll_ms)
    }

    /// `next`, waiting up to `wait` while nothing is claimable but the graph
    /// is not finished. It looks again when this process changes the graph,
    /// when a lease ends, when another process on the store commits
    /// ([`Self::store_moved`]), and every `cluster.signal_poll_ms` while
    /// tasks wait for resources.
    pub async fn next_within(
        &self,
        session: &Session,
        agent: &str,
        tags: &[String],
        lease_seconds: Option<u64>,
        wait: Duration,
    ) -> Result<Claim> {
        let sg = self.session_graph(&session.session_id);
        let deadline = crate::model::bounds::deadline_after(wait);
        loop {
            let mut rx = sg.changed.subscribe();
            let mut stamp = self.store.changes().filter(|_| self.shared);
            let claim = self.next(session, agent, tags, lease_seconds).await?;
            if claim.state != ClaimState::NothingReadyYet || tokio::time::Instant::now() >= deadline
            {
                return Ok(claim);
            }
            let lease_end = sg.graph.lock().await.next_lease_end().map(|end| {
                let ms = (end - self.now()).clamp(0, wait.as_millis() as i64) as u64;
                tokio::time::Instant::now() + Duration::from_millis(ms + 1)
            });
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = tokio::time::sleep_until(lease_end.unwrap_or(deadline)), if lease_end.is_some() => {}
                _ = self.store_moved(&mut stamp), if self.shared => {}
                _ = tokio::time::sleep(self.signal_poll()), if claim.counts.waiting_resources > 0 => {}
                _ = self.shutdown.cancelled() => return Ok(claim),
            }
        }
    }

    pub async fn next(
        &self,
        session: &Session,
        agent: &str,
        tags: &[String],
        lease_seconds: Option<u64>,
    ) -> Result<Claim> {
        // A claim another process made first fails the version check; the
        // graph is read again and the next task is tried. Agents that lost a
        // race spread over the most urgent tasks instead of all trying the same
        // one again, and back off a little: some claim wins every round.
        let mut tries = 0;
        loop {
            match self
                .next_once(session, agent, tags, lease_seconds, tries)
                .await
            {
                Err(e) if e.code == ErrorCode::Conflict && self.shared && tries < 64 => {
                    tries += 1;
                    let pause = rand::random_range(0..=(2 * tries.min(10)) as u64);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                other => return other,
            }
        }
    }

    async fn next_once(
        &self,
        session: &Session,
        agent: &str,
        tags: &[String],
        lease_seconds: Option<u64>,
        lost: usize,
    ) -> Result<Claim> {
        let lease = self.lease_seconds(lease_seconds)?;
        let sg = self.session_graph(&session.session_id);
        let mut g = self.lock(&sg, session.max_parallel_tasks).await?;
        self.expire_leases(&mut g).await?;
        let matches = |t: &&TaskRecord| tags.iter().all(|x| t.tags.contains(x));
        let ready_agents = g.ready_agent_count();
        let matching = if tags.is_empty() {
            ready_agents
        } else {
            g.ready_agents().filter(matches).count()
        };
        let claimed = g.count(CLAIMED);
        let claimed_by_you = g.claimed_by(agent);
        let not_final = g.count(READY)
            + g.count(RUNNING)
            + g.count(WAITING_RESOURCES)
            + g.count(PENDING)
            + claimed;
        let mut counts = QueueCounts {
            ready_other_tags: ready_agents - matching,
            running: g.count(READY) - ready_agents + g.count(RUNNING) + g.count(WAITING_RESOURCES),
            blocked: g.count(PENDING),
            claimed_by_you,
            claimed_by_others: claimed - claimed_by_you,
            finished: g.tasks().len() - not_final,
            ..QueueCounts::default()
        };
        // Ready agent tasks with the tags, most urgent first (then oldest).
        let mut candidates = g.ready_agents().filter(matches);
        let mut first: Vec<&TaskRecord> = Vec::new();
        if lost > 0 && matching > 1 {
            // After lost races: one of the first few of the most urgent class.
            let mut top: Vec<&TaskRecord> = Vec::new();
            let mut rest = None;
            for t in candidates.by_ref() {
                if top.first().is_none_or(|f| f.priority == t.priority) {
                    top.push(t);
                } else {
                    rest = Some(t);
                    break;
                }
            }
            let pick = rand::random_range(0..top.len().min(lost + 1));
            top.rotate_left(pick);
            first = top;
            first.extend(rest);
        }
        let candidates = first.into_iter().chain(candidates);
        // The most urgent candidate whose resources (if any) can be held now.
        let mut best = None;
        for t in candidates {
            match task_requirements(t)? {
                None => {
                    best = Some(t.id.clone());
                    break;
                }
                Some(req) => {
                    let owner = task_owner(t, crate::model::OwnerKind::Claim);
                    let prio = t.priority;
                    if self
                        .resources
                        .try_acquire(owner, req, prio)
                        .await?
                        .is_some()
                    {
                        best = Some(t.id.clone());
                        break;
                    }
                    counts.waiting_resources += 1;
                }
            }
        }
        let candidates = matching;
        let Some(best) = best else {
            let open = counts.blocked
                + counts.running
                + counts.claimed_by_others
                + counts.claimed_by_you
                + counts.ready_other_tags
                + counts.waiting_resources;
            let (state, reason) = if open == 0 && counts.finished > 0 {
                (
                    ClaimState::GraphFinished,
                    "the graph is finished: every task of the session is final".to_string(),
                )
            } else if open == 0 {
                (
                    ClaimState::NothingReadyYet,
                    "nothing is ready: the session has no tasks yet".to_string(),
                )
            } else {
                (
                    ClaimState::NothingReadyYet,
                    format!(
                        "nothing is ready for you: {} blocked on dependencies, {} run by myrmex, {} claimed by others, {} claimed by you, {} ready with other tags, {} waiting for resources",
                        counts.blocked,
                        counts.running,
                        counts.claimed_by_others,
                        counts.claimed_by_you,
                        counts.ready_other_tags,
                        counts.waiting_resources
                    ),
                )
            };
            return Ok(Claim {
                state,
                task: None,
                lease_id: None,
                lease_expires_at: None,
                reason,
                counts,
            });
        };
        let mut txn = Txn::new(&g, self.now());
        let now = txn.now;
        let lease_id = new_id("lse");
        let t = txn.edit(&best);
        t.status = CLAIMED;
        t.claimed_by = Some(agent.to_string());
        t.lease_id = Some(lease_id.clone());
        t.lease_expires_at = Some(now + lease as i64 * 1000);
        t.attempts += 1;
        t.started_at.get_or_insert(now);
        let reason = format!(
            "the most urgent ready agent task: priority {}, waiting since {}{}; {} other ready task(s) for you",
            t.priority,
            iso(t.created_at),
            if t.attempts > 1 {
                format!(", attempt {}", t.attempts)
            } else {
                String::new()
            },
            candidates - 1
        );
        let changed = txn.into_changed();
        let declares = g.tasks()[&best].resources.is_some();
        let staged = match self.stage(&mut g, changed).await {
            Ok(s) => s,
            Err(e) => {
                self.release_claim_of(&best, declares).await;
                return Err(e);
            }
        };
        counts.ready = candidates - 1;
        counts.claimed_by_you += 1;
        sg.bump();
        let t = &g.tasks()[&best];
        let claim = Claim {
            state: ClaimState::Claimed,
            task: Some(view(t)),
            lease_id: Some(lease_id),
            lease_expires_at: t.lease_expires_at.map(iso),
            reason,
            counts,
        };
        // Early lock release: other agents claim while this one's commit
        // becomes durable, and share it.
        drop(g);
        if let Err(e) = staged.durable().await {
            self.release_claim_of(&best, declares).await;
            return Err(e);
        }
        Ok(claim)
    }

    /// A claim of `t` ended (completed, failed, expired, cancelled): its
    /// resources go back. Only a task that declares resources holds any (they are set at creation): the others skip the
    /// resource manager and its read of the allocations.
    async fn release_claim(&self, t: &TaskRecord) {
        self.release_claim_of(&t.id, t.resources.is_some()).await;
    }

    /// [`Self::release_claim`] by id, for a task that `declares` resources or not.
    async fn release_claim_of(&self, task_id: &str, declares: bool) {
        if !declares {
            return;
        }
        if let Err(e) = self
            .resources
            .release_owner(crate::model::OwnerKind::Claim, task_id, "the claim ended")
            .await
        {
            tracing::error!(task = %task_id, error = %e, "cannot release the claim's resources");
        }
    }

    fn lease_seconds(&self, s: Option<u64>) -> Result<u64> {
        super::sessions::bounded(
            "lease_seconds",
            s,
            self.config.default_lease_seconds,
            self.config.max_lease_seconds,
            "Ask for a lease you can finish within, and renew it with renew_task_lease.",
        )
    }

    /// The claimed task under `lease_id`, or LEASE_NOT_HELD.
    fn held<'g>(g: &'g Graph, task_id: &str, lease_id: &str) -> Result<&'g TaskRecord> {
        let t = g.get(task_id).ok_or_else(|| not_found(task_id))?;
        if t.status == CLAIMED && t.lease_id.as_deref() == Some(lease_id) {
            return Ok(t);
        }
        let why = if t.status == CLAIMED {
            format!(
                "the task is claimed under another lease (by '{}')",
                t.claimed_by.clone().unwrap_or_default()
            )
        } else if is_final(&t.status) {
            format!("the task is already {}", t.status)
        } else {
            format!(
                "the task is {} (a lease that expired returns it to ready)",
                t.status
            )
        };
        Err(Error::new(
            ErrorCode::LeaseNotHeld,
            format!("lease {lease_id} does not hold task '{}': {why}", t.name),
            "Only the agent holding the current lease may complete, fail or renew a task. Call next_task for new work.",
        )
        .with_details(json!({"task_id": t.id, "status": t.status.as_str()})))
    }

    /// complete_task (`Ok(result)`) or fail_task (`Err((error, retryable))`).
    pub async fn finish_claim(
        self: &Arc<Self>,
        engine: &Engine,
        p: &Principal,
        task_id: &str,
        lease_id: &str,
        outcome: ClaimOutcome,
    ) -> Result<TaskView> {
        // Another process may settle the same dependents at the same moment:
        // the later commit conflicts, reads the graph again and settles them.
        let mut tries = 0;
        loop {
            let (sg, mut g, cur) = self.open_task(engine, p, task_id, None).await?;
            let changed = self
                .finish_claim_once(&mut g, task_id, lease_id, &outcome)
                .await?;
            let staged = self.stage(&mut g, changed).await?;
            let answer = self.changed(&sg, &mut g, task_id).await;
            // Early lock release, as for a claim.
            drop(g);
            match staged.durable().await.and(answer) {
                Ok(view) => {
                    self.release_claim(&cur).await;
                    return Ok(view);
                }
                Err(e) if self.shared && e.code == ErrorCode::Conflict => {}
                Err(e) => return Err(e),
            }
            tries += 1;
            if tries >= MAX_CONFLICT_TRIES {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!("task {task_id} kept changing in another process; {tries} tries"),
                    "Call again: the claim is still yours until its lease ends.",
                ));
            }
        }
    }

    async fn finish_claim_once(
        &self,
        g: &mut Graph,
        task_id: &str,
        lease_id: &str,
        outcome: &ClaimOutcome,
    ) -> Result<Vec<TaskRecord>> {
        let outcome = outcome.clone();
        self.expire_leases(g).await?;
        let cur = Self::held(g, task_id, lease_id)?.clone();
        if let Ok((Some(r), _)) = &outcome {
            self.check_payload(&cur.name, "result", r)?;
        }
        let mut txn = Txn::new(g, self.now());
        let now = txn.now;
        let t = txn.edit(task_id);
        t.lease_id = None;
        t.lease_expires_at = None;
        let settled = match outcome {
            Ok((result, summary)) => {
                t.status = SUCCEEDED;
                t.result = Some(result.unwrap_or(Value::Null).to_string());
                t.summary = summary;
                t.error = None;
                t.finished_at = Some(now);
                true
            }
            Err((error, retryable)) => {
                t.error = err_json(ErrorCode::ActionFailed.as_str(), error);
                if retryable && t.attempts <= t.max_retries {
                    t.status = READY;
                    false
                } else {
                    t.status = FAILED;
                    t.finished_at = Some(now);
                    true
                }
            }
        };
        if settled {
            txn.settle_dependents(task_id);
        }
        Ok(txn.into_changed())
    }

    pub async fn renew(
        &self,
        engine: &Engine,
        p: &Principal,
        task_id: &str,
        lease_id: &str,
        lease_seconds: Option<u64>,
    ) -> Result<TaskView> {
        let lease = self.lease_seconds(lease_seconds)?;
        let (sg, mut g, _) = self.open_task(engine, p, task_id, None).await?;
        self.expire_leases(&mut g).await?;
        Self::held(&g, task_id, lease_id)?;
        let mut txn = Txn::new(&g, self.now());
        let now = txn.now;
        txn.edit(task_id).lease_expires_at = Some(now + lease as i64 * 1000);
        let changed = txn.into_changed();
        let staged = self.stage(&mut g, changed).await?;
        sg.bump();
        let answer = view(&g.tasks()[task_id]);
        drop(g);
        staged.durable().await?;
        Ok(answer)
    }

    /// execute_task: create an auto task and wait up to `wait` for it.
    pub async fn execute(
        self: &Arc<Self>,
        session: &Session,
        task: NewTask,
        wait: Duration,
    ) -> Result<ExecuteTaskResult> {
        let created = self.create(session, vec![task]).await?;
        self.outcome(session, &created[0].task_id, wait).await
    }

    /// Wait up to `wait` for a task to reach a final state, and answer in
    /// execute_task's shape.
    pub async fn outcome(
        self: &Arc<Self>,
        session: &Session,
        id: &str,
        wait: Duration,
    ) -> Result<ExecuteTaskResult> {
        let t = self.wait_final(session, id, wait).await?;
        let sg = self.session_graph(&session.session_id);
        let dependencies_satisfied = {
            let g = self.lock(&sg, session.max_parallel_tasks).await?;
            deps_of(&t)
                .iter()
                .all(|d| g.get(d).is_some_and(|d| d.status == SUCCEEDED))
        };
        let v = view(&t);
        let mut metadata = v.metadata.clone();
        metadata.insert("name".into(), json!(v.name));
        metadata.insert("priority".into(), json!(v.priority));
        metadata.insert("attempts".into(), json!(v.attempts));
        metadata.insert("created_at".into(), json!(v.created_at));
        metadata.insert("session_id".into(), json!(v.session_id));
        Ok(ExecuteTaskResult {
            status: v.status,
            task_id: v.task_id,
            result: v.result,
            execution_time: v.execution_time_ms.map(|ms| ms as f64 / 1000.0),
            retry_attempts: v.attempts.saturating_sub(1),
            dependencies_satisfied,
            resource_allocation: v.resources,
            error_message: v.error.map(|e| e.message),
            metadata,
        })
    }

    /// The newest task of a session whose metadata has `key` equal to `value`.
    pub async fn find_by_metadata(
        &self,
        session: &Session,
        key: &str,
        value: &Value,
    ) -> Result<Option<TaskRecord>> {
        let sg = self.session_graph(&session.session_id);
        let g = self.lock(&sg, session.max_parallel_tasks).await?;
        Ok(g.order()
            .iter()
            .rev()
            .filter_map(|id| g.get(id))
            .find(|t| {
                serde_json::from_str::<Value>(&t.metadata)
                    .ok()
                    .is_some_and(|m| m.get(key) == Some(value))
            })
            .cloned())
    }

    /// Wait up to `wait` for a task to reach a final state.
    pub async fn wait_final(
        &self,
        session: &Session,
        task_id: &str,
        wait: Duration,
    ) -> Result<TaskRecord> {
        let sg = self.session_graph(&session.session_id);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut rx = sg.changed.subscribe();
            let mut stamp = self.store.changes().filter(|_| self.shared);
            let t = {
                let g = self.lock(&sg, session.max_parallel_tasks).await?;
                g.tasks()
                    .get(task_id)
                    .cloned()
                    .ok_or_else(|| not_found(task_id))?
            };
            if is_final(&t.status) || tokio::time::Instant::now() >= deadline {
                return Ok(t);
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                // Another process may be running it: look at the store again.
                _ = self.store_moved(&mut stamp), if self.shared => {}
            }
        }
    }

    // ---- lifecycle -------------------------------------------------------

    /// The session was closed: cancel its unfinished tasks.
    pub async fn close_session(self: &Arc<Self>, session_id: &str) -> Result<usize> {
        let sg = self.session_graph(session_id);
        let mut g = self.lock(&sg, 1).await?;
        g.closed = true;
        let open: Vec<String> = g
            .order()
            .iter()
            .filter(|id| g.get(id).is_some_and(|t| !is_final(&t.status)))
            .cloned()
            .collect();
        let mut txn = Txn::new(&g, self.now());
        for id in &open {
            txn.cancel(id, ErrorCode::SessionClosed, "the session was closed");
        }
        let changed = txn.commit(&*self.store).await?;
        g.apply(changed);
        for r in g.running.values() {
            let _ = r.stop.set(Stop::Cancelled);
            r.cancel.cancel();
        }
        sg.bump();
        {
            let mut homes = self.homes.lock().unwrap_or_else(|p| p.into_inner());
            for id in g.order() {
                homes.remove(id);
            }
        }
        drop(g);
        self.graphs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(session_id);
        Ok(open.len())
    }

    /// After a restart: load graphs with unfinished tasks, run interrupted
    /// auto tasks again (their attempt stays counted), keep claims and leases.
    /// Run only the auto tasks of graphs this process works on: take nothing over.
    pub fn adopt_nothing(&self) {
        self.adopts
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    pub async fn resume_all(self: &Arc<Self>) -> Result<usize> {
        if !self.adopts.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(0);
        }
        if self.shared {
            // Others may be running tasks: only those whose executor's lease ended go again.
            return self.claim_work().await;
        }
        let sessions = self.store.sessions_with_open_tasks().await?;
        for sid in &sessions {
            let session = match self.store.get_session(sid).await? {
                Some(s) if s.status == crate::model::SessionStatus::Active => s,
                _ => {
                    self.close_session(sid).await?;
                    continue;
                }
            };
            let sg = self.session_graph(sid);
            let mut g = self.lock(&sg, session.max_parallel_tasks).await?;
            let interrupted: Vec<String> = g
                .tasks()
                .values()
                .filter(|t| in_flight(&t.status) && !g.running.contains_key(&t.id))
                .map(|t| t.id.clone())
                .collect();
            if !interrupted.is_empty() {
                tracing::info!(session = %sid, tasks = interrupted.len(), "running tasks attempted again after restart");
                let mut txn = Txn::new(&g, self.now());
                for id in &interrupted {
                    txn.edit(id).status = READY;
                }
                let changed = txn.commit(&*self.store).await?;
                g.apply(changed);
            }
            self.dispatch(&sg, &mut g).await?;
        }
        Ok(sessions.len())
    }

    /// Sessions with ready auto tasks, or auto tasks of a stopped executor:
    /// load them and run what is ready here (another process may win a task;
    /// then it is its). Returns the sessions looked at.
    pub async fn claim_work(self: &Arc<Self>) -> Result<usize> {
        if !self.cluster.execute
            || !self.adopts.load(std::sync::atomic::Ordering::Relaxed)
            || self.shutdown.is_cancelled()
        {
            return Ok(0);
        }
        let sessions = self.store.sessions_with_auto_work(self.now()).await?;
        for sid in &sessions {
            let Some(session) = self.store.get_session(sid).await? else {
                continue;
            };
            if session.status != crate::model::SessionStatus::Active {
                continue;
            }
            let sg = self.session_graph(sid);
            let mut g = self.lock(&sg, session.max_parallel_tasks).await?;
            self.expire_leases(&mut g).await?;
            self.dispatch(&sg, &mut g).await?;
            drop(g);
            sg.bump();
        }
        Ok(sessions.len())
    }

    /// Renew the executor leases of the auto tasks running here; stop those
    /// cancelled or taken over elsewhere.
    pub async fn heartbeat(&self) -> Result<()> {
        if !self.shared {
            return Ok(());
        }
        let graphs = self.loaded_graphs();
        for sg in graphs {
            if sg.graph.lock().await.running.is_empty() {
                continue;
            }
            let mut g = self.fresh(&sg).await?;
            let now = self.now();
            let lease_end = now + self.cluster.lease_ttl_ms as i64;
            let mut renew = Vec::new();
            for (id, r) in &g.running {
                match g.get(id) {
                    Some(t) if self.ours(t) => renew.push(id.clone()),
                    Some(t) => {
                        // Cancelled elsewhere (recorded there), or another executor has it.
                        let why = if in_flight(&t.status) {
                            Stop::Shutdown
                        } else {
                            Stop::Cancelled
                        };
                        let _ = r.stop.set(why);
                        r.cancel.cancel();
                    }
                    None => r.cancel.cancel(),
                }
            }
            if renew.is_empty() {
                continue;
            }
            let mut txn = Txn::new(&g, self.now());
            for id in &renew {
                txn.edit(id).lease_expires_at = Some(lease_end);
            }
            // Changed meanwhile: the next heartbeat (well within the TTL) renews.
            let committed = txn.commit(&*self.store).await;
            self.apply_or_reload(&mut g, committed)?;
        }
        Ok(())
    }

    /// Periodic: expire leases of every loaded graph.
    pub async fn sweep_leases(&self) -> Result<()> {
        let graphs = self.loaded_graphs();
        for sg in graphs {
            let mut g = sg.graph.lock().await;
            if !g.loaded {
                continue;
            }
            if self.expire_leases(&mut g).await? > 0 {
                sg.bump();
            }
        }
        Ok(())
    }
}

/// Who holds a task's resources (`task`: an auto task; `claim`: an agent's claim).
fn task_owner(t: &TaskRecord, kind: crate::model::OwnerKind) -> Owner {
    Owner {
        session_id: t.session_id.clone(),
        principal: t.principal.clone(),
        holder: format!("task {}", t.name),
        kind,
        reference: Some(t.id.clone()),
    }
}

/// A task's resources, parsed (None when it has none).
fn task_requirements(t: &TaskRecord) -> Result<Option<Requirements>> {
    let Some(r) = t.resources.as_deref() else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(r).map_err(|e| Error::internal(e.to_string()))?;
    let req = Requirements::parse(&v)?;
    Ok((!req.is_empty()).then_some(req))
}

/// One running auto task.
struct Job {
    mgr: Arc<TaskManager>,
    sg: Arc<SessionGraph>,
    id: String,
    /// The task's resources and who holds them.
    resources: Option<(Owner, Requirements, Priority)>,
}

impl Job {
    /// Boxed with an explicit `Send` type: finishing a job dispatches the
    /// next ones, and that recursion hides `Send` from inference otherwise.
    fn run(
        mut self,
        plan: attempts::Plan,
        cancel: CancellationToken,
        stop: Arc<OnceLock<Stop>>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let registry = self.mgr.registry.clone();
            let prior = plan.prior_attempts;
            let result = match self.acquire(&cancel).await {
                Ok(true) => attempts::run(&registry, plan, &cancel, &mut self).await,
                Ok(false) => Ok((
                    prior,
                    attempts::Ending::Stopped {
                        during_retry_wait: false,
                        abandoned: false,
                    },
                )),
                Err(e) => Err(e),
            };
            if let Err(e) = self.finish(result, &stop).await {
                tracing::error!(task = %self.id, error = %e, "cannot record the end of a task");
            }
            if self.resources.is_some()
                && let Err(e) = self
                    .mgr
                    .resources
                    .release_owner(crate::model::OwnerKind::Task, &self.id, "the task ended")
                    .await
            {
                tracing::error!(task = %self.id, error = %e, "cannot release the task's resources");
            }
        })
    }

    /// Wait for the task's resources (state `waiting_resources`); false when
    /// the task was stopped meanwhile.
    async fn acquire(&self, cancel: &CancellationToken) -> Result<bool> {
        let Some((owner, req, priority)) = self.resources.clone() else {
            return Ok(true);
        };
        self.record(|t| t.status = WAITING_RESOURCES).await?;
        match self
            .mgr
            .resources
            .acquire(owner, req, priority, None, None, cancel)
            .await
        {
            Ok(_) => {
                self.record(|t| t.status = RUNNING).await?;
                Ok(true)
            }
            Err(_) if cancel.is_cancelled() => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn finish(
        &self,
        result: Result<(u32, attempts::Ending)>,
        stop: &OnceLock<Stop>,
    ) -> Result<()> {
        // As in finish_claim: a conflict with another process's settling reads again.
        for _ in 1..MAX_CONFLICT_TRIES {
            match self.finish_once(&result, stop).await {
                Err(e) if self.mgr.shared && e.code == ErrorCode::Conflict => continue,
                done => return done,
            }
        }
        self.finish_once(&result, stop).await
    }

    async fn finish_once(
        &self,
        result: &Result<(u32, attempts::Ending)>,
        stop: &OnceLock<Stop>,
    ) -> Result<()> {
        let result = result.clone();
        let mut g = self.mgr.fresh(&self.sg).await?;
        g.running.remove(&self.id);
        let stopped_for_shutdown = matches!(result, Ok((_, attempts::Ending::Stopped { .. })))
            && stop.get().copied().unwrap_or(Stop::Shutdown) == Stop::Shutdown;
        let still_running = g.get(&self.id).is_some_and(|t| self.mgr.ours(t));
        if stopped_for_shutdown || !still_running {
            // Shutdown: stays `running` and goes again at the next start.
            // Cancelled: cancel_task already recorded it.
            drop(g);
            self.sg.bump();
            return Ok(());
        }
        let mut txn = Txn::new(&g, self.mgr.now());
        let now = txn.now;
        let t = txn.edit(&self.id);
        match result {
            Ok((attempt, ending)) => {
                t.attempts = attempt;
                match ending {
                    attempts::Ending::Succeeded(out) => {
                        // Bounded like a step's output; nothing past the bound is stored.
                        match self
                            .mgr
                            .check_output(&out)
                            .and_then(|()| self.mgr.check_value_depth(&out, "the result"))
                        {
                            Ok(()) => {
                                t.status = SUCCEEDED;
                                t.result = Some(out.to_string());
                                t.error = None;
                            }
                            Err(e) => {
                                t.status = FAILED;
                                t.error = err_json(e.code.as_str(), e.message);
                            }
                        }
                    }
                    attempts::Ending::Failed {
                        code,
                        message,
                        timed_out,
                    } => {
                        t.status = if timed_out { TIMED_OUT } else { FAILED };
                        t.error = err_json(code.as_str(), message);
                    }
                    attempts::Ending::Stopped { abandoned, .. } => {
                        t.status = CANCELLED;
                        t.error = err_json(
                            ErrorCode::Cancelled.as_str(),
                            attempts::abandon_note("the task was cancelled", abandoned),
                        );
                    }
                }
            }
            Err(e) => {
                t.status = FAILED;
                t.error = err_json(e.code.as_str(), e.message);
            }
        }
        t.finished_at = Some(now);
        txn.settle_dependents(&self.id);
        let committed = txn.commit(&*self.mgr.store).await;
        if let Err(e) = &committed
            && e.code == ErrorCode::Conflict
        {
            g.loaded = false;
            return Err(e.clone());
        }
        g.apply(committed?);
        self.mgr.dispatch(&self.sg, &mut g).await?;
        drop(g);
        self.sg.bump();
        Ok(())
    }

    async fn record(&self, f: impl FnOnce(&mut TaskRecord)) -> Result<()> {
        let mut g = self.mgr.fresh(&self.sg).await?;
        if g.get(&self.id).is_none_or(|t| !self.mgr.ours(t)) {
            return Ok(());
        }
        let mut txn = Txn::new(&g, self.mgr.now());
        f(txn.edit(&self.id));
        let changed = txn.commit(&*self.mgr.store).await?;
        g.apply(changed);
        drop(g);
        self.sg.bump();
        Ok(())
    }
}

impl attempts::Sink for Job {
    async fn started(&mut self, attempt: u32) -> Result<()> {
        self.record(|t| {
            t.attempts = attempt;
            t.status = RUNNING;
        })
        .await
    }

    async fn retrying(&mut self, attempt: u32, code: ErrorCode, message: &str) -> Result<()> {
        let error = err_json(
            code.as_str(),
            format!("attempt {attempt}: {message}; retrying"),
        );
        self.record(|t| t.error = error).await
    }
}

impl Engine {
    /// next_task: the caller's most urgent ready agent task, claimed under a
    /// lease for `agent` (default: the principal's name).
    pub async fn next_task(
        &self,
        p: &Principal,
        session_id: Option<&str>,
        agent: Option<String>,
        tags: &[String],
        lease_seconds: Option<u64>,
        wait_seconds: Option<u64>,
    ) -> Result<Claim> {
        let wait = self.wait_if_asked(wait_seconds)?;
        let session = self.sessions().resolve(p, session_id).await?;
        let agent = agent.unwrap_or_else(|| p.name().to_string());
        if agent.is_empty() || agent.chars().count() > 128 {
            return Err(Error::invalid(
                "agent must be 1-128 characters",
                "Name yourself briefly, e.g. \"worker-1\".",
            ));
        }
        self.tasks()
            .next_within(&session, &agent, tags, lease_seconds, wait)
            .await
    }
}

#[cfg(test)]
mod pending_tests {
    use super::*;

    fn graph_with_pending(states: &[u8]) -> Graph {
        let mut g = Graph {
            loaded: true,
            ..Graph::default()
        };
        let mut t = graph::tests::task("a", &[], READY, true);
        t.version = 1;
        g.graph.insert(t.clone());
        for s in states {
            // Each queued change moves the task one version up.
            t.version += 1;
            g.graph.apply(vec![t.clone()]);
            g.pending.push_back(Pending {
                state: Arc::new(AtomicU8::new(*s)),
                versions: 1,
            });
        }
        g
    }

    #[test]
    fn the_store_may_lack_a_suffix_of_the_queued_changes_and_nothing_else() {
        let g = graph_with_pending(&[QUEUED, QUEUED]);
        assert_eq!(g.stamp(), (1, 3));
        // None, the newest, or both of the queued changes not yet committed.
        for stored in [(1, 3), (1, 2), (1, 1)] {
            assert!(g.stamp_matches(stored), "{stored:?}");
        }
        // Another process's write: a version or a task the graph lacks.
        for stored in [(1, 0), (1, 4), (2, 3), (2, 1)] {
            assert!(!g.stamp_matches(stored), "{stored:?}");
        }
        assert!(!graph_with_pending(&[]).stamp_matches((1, 2)));
    }

    #[test]
    fn durable_changes_leave_the_queue_in_order_and_a_refused_one_forces_a_read() {
        let mut g = graph_with_pending(&[DURABLE, QUEUED, DURABLE]);
        g.settle_pending();
        // The second is not known durable yet: the third waits behind it.
        assert_eq!(g.pending.len(), 2);
        assert!(g.loaded);
        g.pending[0].state.store(DURABLE, Ordering::Release);
        g.settle_pending();
        assert!(g.pending.is_empty());
        let mut g = graph_with_pending(&[DURABLE, REFUSED, QUEUED]);
        g.settle_pending();
        assert!(!g.loaded, "the graph holds a change the store refused");
    }

    #[tokio::test]
    async fn a_dropped_call_still_records_how_its_change_ended() {
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let staged = Staged {
            ticket: Some(Box::pin(async move {
                let _ = rx.await;
                Err(StoreError::Conflict("moved".into()))
            })),
            state: state.clone(),
        };
        drop(staged);
        tx.send(()).unwrap();
        for _ in 0..100 {
            if state.load(Ordering::Acquire) == REFUSED {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the dropped change's end was never recorded");
    }
}

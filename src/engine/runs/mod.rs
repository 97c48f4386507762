//! The run executor: one driver task per run (`drive`) asks the pure
//! [`scheduler`] which steps are settled and which start next (trigger rules,
//! fail_fast, priorities, parallelism), evaluates `when` conditions, starts
//! steps (retries with backoff, step and run timeouts, cancellation) and
//! writes every state change through the store.
//!
//! After a restart, [`RunManager::resume_all`] picks unfinished runs up from
//! the store: succeeded steps are kept, steps that were running are attempted
//! again (the interrupted attempt stays counted).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub mod scheduler;

/// Test-only fault injection: a step name listed here makes the run's driver
/// (or the step's own task, outside its action) panic at that step, to test
/// what a bug in myrmex itself leaves behind.
#[cfg(test)]
pub(crate) mod fault {
    use std::sync::Mutex;
    pub static DRIVER: Mutex<Vec<String>> = Mutex::new(Vec::new());
    pub static STEP_TASK: Mutex<Vec<String>> = Mutex::new(Vec::new());

    pub fn hit(list: &Mutex<Vec<String>>, step: &str) {
        if list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|s| s == step)
        {
            panic!("injected fault at step '{step}'");
        }
    }
}

use super::attempts::{self, abandon_note, sleep_until};
use super::resources::{Owner, Requirements, ResourceManager};
use super::workflows::condition;
use super::workflows::spec::{OnFailure, StepSpec, WorkflowSpec};
use super::workflows::template::{Budget, RenderError, Scope, render_value_within};
use super::{new_id, now_ms};
use crate::actions::Registry;
use crate::config::ClusterConfig;
use crate::error::{ErrorCode, Result};
use crate::model::{RunStatus, SessionMode, StepStatus};
use crate::store::{RunLease, RunRecord, StepRecord, Store};
use scheduler::{Policy, Scheduler, Seen, Verdict};

/// Is a run view's status (as answers spell it) final?
pub fn view_final(status: &str) -> bool {
    RunStatus::parse(status).is_some_and(RunStatus::is_final)
}

/// Why a run's token was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `cancel_workflow_run` or the session was closed.
    Cancelled,
    /// The run's time limit passed.
    TimedOut,
    /// The server is shutting down: leave the state for the next start.
    Shutdown,
    /// Another executor took the run over (this process missed its heartbeats):
    /// leave the state to it.
    LeaseLost,
}

impl Stop {
    /// The run goes on elsewhere or later: record nothing.
    fn leaves_state(self) -> bool {
        matches!(self, Stop::Shutdown | Stop::LeaseLost)
    }
}

struct Active {
    cancel: CancellationToken,
    stop: OnceLock<Stop>,
    changed: watch::Sender<u64>,
    progress: Mutex<Progress>,
    /// Bytes of step outputs the run has stored (`workflows.max_run_output_bytes`).
    output_bytes: std::sync::atomic::AtomicUsize,
    /// The step the driver works on now (named if the driver fails).
    at_step: Mutex<Option<String>>,
}

/// How far a run is, kept in memory so waiting callers need not read every step.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Steps in a final state.
    pub done: usize,
    pub total: usize,
    /// The step that reached a final state last, and how.
    pub last: String,
    /// The latest step ends (at most [`RECENT_ENDS`]), each with the count of
    /// steps done after it: a waiter that wakes after several ends reports each.
    pub recent: std::collections::VecDeque<(usize, String)>,
    /// Step ends recorded so far (the position of `recent`'s last entry).
    pub ends: u64,
}

/// Step ends a run keeps for waiters.
const RECENT_ENDS: usize = 256;

impl Progress {
    /// The ends after the first `seen` ones (as many as are still kept).
    pub fn ends_since(&self, seen: u64) -> impl Iterator<Item = &(usize, String)> {
        let new = self.ends.saturating_sub(seen).min(self.recent.len() as u64) as usize;
        self.recent.iter().skip(self.recent.len() - new)
    }
}

impl Active {
    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// The driver works on this step now.
    fn at(&self, step: &str) {
        let mut at = self.at_step.lock().unwrap_or_else(|p| p.into_inner());
        if at.as_deref() != Some(step) {
            *at = Some(step.to_string());
        }
    }

    fn step_done(&self, rec: &StepRecord) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        p.done += 1;
        p.last = format!("step '{}' {}", rec.name, rec.status);
        let entry = (p.done, p.last.clone());
        p.recent.push_back(entry);
        if p.recent.len() > RECENT_ENDS {
            p.recent.pop_front();
        }
        p.ends += 1;
    }
}

/// Runs in progress in this process, and how to start and stop them.
pub struct RunManager {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    resources: Arc<ResourceManager>,
    active: Mutex<HashMap<String, Arc<Active>>>,
    session_slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    shutdown: CancellationToken,
    /// This process, as named in run leases.
    node: String,
    cluster: ClusterConfig,
    /// Other processes share the store (SQLite file, PostgreSQL): leases are
    /// renewed and unclaimed runs looked for.
    shared: bool,
    /// This process takes over unclaimed runs (not `myrmex run`).
    adopts: std::sync::atomic::AtomicBool,
    /// When the leases were last renewed (ms; 0: not yet).
    renewed_at: std::sync::atomic::AtomicI64,
    /// One renewal at a time for the drivers that find it stale.
    renewing: tokio::sync::Mutex<()>,
    /// Bounds of conditions, rendered parameters and outputs (`[workflows]`).
    limits: super::workflows::spec::Limits,
}

fn err_json(code: ErrorCode, message: impl Into<String>) -> Option<String> {
    err_json_code(code.as_str(), message)
}

fn err_json_code(code: &str, message: impl Into<String>) -> Option<String> {
    Some(json!({"code": code, "message": message.into()}).to_string())
}

impl RunManager {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        resources: Arc<ResourceManager>,
        shutdown: CancellationToken,
        node: String,
        cluster: &ClusterConfig,
        limits: super::workflows::spec::Limits,
    ) -> Self {
        Self {
            limits,
            shared: store.shared(),
            adopts: std::sync::atomic::AtomicBool::new(true),
            store,
            registry,
            resources,
            active: Mutex::new(HashMap::new()),
            session_slots: Mutex::new(HashMap::new()),
            shutdown,
            node,
            cluster: cluster.clone(),
            renewed_at: std::sync::atomic::AtomicI64::new(0),
            renewing: tokio::sync::Mutex::new(()),
        }
    }

    /// This process's name in leases.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn lease_end(&self, now: i64) -> i64 {
        now + self.cluster.lease_ttl_ms as i64
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Insert a new run with its steps and start driving it.
    pub async fn start(
        self: &Arc<Self>,
        run: RunRecord,
        steps: Vec<StepRecord>,
        max_workflows: u32,
    ) -> Result<()> {
        self.store.insert_run(&run, &steps).await?;
        if !self.cluster.execute {
            // A worker claims it.
            if let Err(e) = self.store.notify("runs").await {
                tracing::warn!(error = %e, "cannot notify workers; they find the run at their next poll");
            }
            return Ok(());
        }
        let now = now_ms();
        if let Some(lease) = self
            .store
            .lease_run(&run.id, &self.node, now, self.lease_end(now))
            .await?
        {
            self.spawn(
                run.id,
                run.session_id,
                max_workflows,
                lease.cancel_requested,
            );
        }
        Ok(())
    }

    /// Progress of a run driven by this process (None when it is not active here).
    pub fn progress(&self, run_id: &str) -> Option<Progress> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .map(|a| a.progress.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Subscribe to changes of a run driven by this process (None when it is not active here).
    pub fn watch(&self, run_id: &str) -> Option<watch::Receiver<u64>> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .map(|a| a.changed.subscribe())
    }

    pub fn is_active(&self, run_id: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(run_id)
    }

    /// Cancel a run driven by this process. Returns false when it is not active here.
    pub fn cancel(&self, run_id: &str) -> bool {
        self.stop_local(run_id, Stop::Cancelled)
    }

    fn stop_local(&self, run_id: &str, why: Stop) -> bool {
        let a = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .cloned();
        match a {
            Some(a) => {
                let _ = a.stop.set(why);
                a.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Was this run stopped here because another executor took it over?
    pub fn taken_over(&self, run_id: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .is_some_and(|a| a.stop.get() == Some(&Stop::LeaseLost))
    }

    /// Cancel a run wherever it executes: here at once; elsewhere the request
    /// is recorded for its executor (told by a notification, or at its next
    /// heartbeat); a run nobody executes right now is taken here to be ended.
    /// Returns whether the run was still unfinished.
    pub async fn request_cancel(self: &Arc<Self>, run_id: &str) -> Result<bool> {
        if self.cancel(run_id) {
            return Ok(true);
        }
        if self.store.request_run_cancel(&[run_id.to_string()]).await? == 0 {
            return Ok(false);
        }
        if self.shared
            && let Err(e) = self.store.notify("cancel").await
        {
            tracing::warn!(error = %e, "cannot notify the run's executor; it sees the cancel at its next heartbeat");
        }
        let now = now_ms();
        if let Some(lease) = self
            .store
            .lease_run(run_id, &self.node, now, self.lease_end(now))
            .await?
        {
            self.adopt(lease).await?;
        }
        Ok(true)
    }

    /// Cancel every unfinished run of a session (the session was closed),
    /// wherever it executes. Returns how many.
    pub async fn cancel_session(self: &Arc<Self>, session_id: &str) -> Result<usize> {
        let mut n = 0;
        for id in self.store.unfinished_session_runs(session_id).await? {
            if self.request_cancel(&id).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Runs driven by this process right now.
    pub fn active_count(&self) -> usize {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Execute only the runs started here (`myrmex run`): take nothing over.
    pub fn adopt_nothing(&self) {
        self.adopts
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    fn adopts(&self) -> bool {
        self.adopts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Pick up unfinished runs after a start. A store only this process uses:
    /// every one of them (whoever held it before was this process). A shared
    /// store: those whose executor's lease ended.
    pub async fn resume_all(self: &Arc<Self>) -> Result<usize> {
        if !self.adopts() {
            return Ok(0);
        }
        if self.shared {
            return self.claim_work().await;
        }
        self.claim_and_adopt(i64::MAX, u32::MAX).await
    }

    /// Claim up to `limit` runs whose lease is free or ended before `ended_before`, and execute them.
    async fn claim_and_adopt(self: &Arc<Self>, ended_before: i64, limit: u32) -> Result<usize> {
        let leases = self
            .store
            .claim_runs(&self.node, ended_before, self.lease_end(now_ms()), limit)
            .await?;
        let n = leases.len();
        for lease in leases {
            self.adopt(lease).await?;
        }
        Ok(n)
    }

    /// Claim unfinished runs nobody executes (new ones from servers that do not
    /// execute, or ones whose executor died), up to this process's capacity.
    pub async fn claim_work(self: &Arc<Self>) -> Result<usize> {
        if !self.cluster.execute || !self.adopts() || self.shutdown.is_cancelled() {
            return Ok(0);
        }
        let free = (self.cluster.max_active_runs as usize).saturating_sub(self.active_count());
        if free == 0 {
            return Ok(0);
        }
        self.claim_and_adopt(now_ms(), free as u32).await
    }

    /// Has this process lost the run's lease (it is stopped here)? Asked
    /// before anything another executor could also do: a step's attempt, a
    /// step's or the run's state written. While the last renewal is younger
    /// than half the lease TTL the lease holds for at least that long again
    /// and nothing is read; an older one (the process was stopped, or its
    /// heartbeats were late) is renewed first, so a process that wakes up
    /// after another took its run over does nothing more of it.
    async fn lease_lapsed(&self, run_id: &str) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.shared {
            return false;
        }
        let ttl = self.cluster.lease_ttl_ms as i64;
        if now_ms() - self.renewed_at.load(Relaxed) >= ttl / 2 {
            let _one = self.renewing.lock().await;
            // A renewal that fails past a TTL stops the runs here (`heartbeat`).
            if now_ms() - self.renewed_at.load(Relaxed) >= ttl / 2
                && let Err(e) = self.heartbeat().await
            {
                tracing::warn!(error = %e, "cannot renew the run leases");
            }
        }
        self.taken_over(run_id)
    }

    /// Renew this process's leases; stop runs whose cancel was requested
    /// elsewhere, and runs another executor took over.
    pub async fn heartbeat(&self) -> Result<()> {
        let ids: Vec<String> = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let held = match self
            .store
            .renew_run_leases(&self.node, &ids, self.lease_end(now))
            .await
        {
            Ok(h) => h,
            Err(e) => {
                // Cut off from the store for longer than a lease: others may
                // have taken these runs over. Stop them here.
                let last = self.renewed_at.load(std::sync::atomic::Ordering::Relaxed);
                if last > 0 && now - last > self.cluster.lease_ttl_ms as i64 {
                    for id in &ids {
                        self.stop_local(id, Stop::LeaseLost);
                    }
                    tracing::warn!(
                        runs = ids.len(),
                        "leases could not be renewed for longer than their TTL; runs stopped here"
                    );
                }
                return Err(e.into());
            }
        };
        for id in &ids {
            match held.iter().find(|l| &l.run_id == id) {
                Some(l) if l.cancel_requested => {
                    self.cancel(id);
                }
                Some(_) => {}
                None => {
                    if self.stop_local(id, Stop::LeaseLost) {
                        tracing::warn!(run = %id, "another executor took the run over; stopped here");
                    }
                }
            }
        }
        // Stamped once the lost runs are stopped: a fresh stamp means every
        // run still here holds its lease (`lease_lapsed`).
        self.renewed_at
            .store(now, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Execute a run this process holds the lease of (a closed session's run is cancelled).
    async fn adopt(self: &Arc<Self>, lease: RunLease) -> Result<()> {
        if self.is_active(&lease.run_id) {
            return Ok(());
        }
        let Some(run) = self.store.get_run(&lease.run_id).await? else {
            return Ok(());
        };
        let max_workflows = match self.store.get_session(&run.session_id).await? {
            Some(s) if s.status == crate::model::SessionStatus::Active => s.max_parallel_workflows,
            _ => {
                // The session is gone or closed: the run is cancelled.
                let mut run = run;
                let mut steps = self.store.run_steps(&run.id).await?;
                self.end_run(
                    &mut run,
                    &mut steps,
                    RunStatus::Cancelled,
                    ErrorCode::SessionClosed,
                    "the session was closed",
                )
                .await?;
                self.store.drop_run_lease(&run.id, &self.node).await?;
                return Ok(());
            }
        };
        if run.status == RunStatus::Running {
            // Taken over (or resumed): whatever an earlier executor's steps held is released.
            self.resources
                .release_run(&run.id, "the run's executor stopped; it acquires again")
                .await?;
        }
        tracing::info!(run = %run.id, workflow = %run.workflow_name, "executing run");
        self.spawn(
            run.id,
            run.session_id,
            max_workflows,
            lease.cancel_requested,
        );
        Ok(())
    }

    fn spawn(
        self: &Arc<Self>,
        run_id: String,
        session_id: String,
        max_workflows: u32,
        cancel_requested: bool,
    ) {
        // The lease was just taken: that counts as renewed.
        let _ = self.renewed_at.compare_exchange(
            0,
            now_ms(),
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
        let (tx, _) = watch::channel(0u64);
        let active = Arc::new(Active {
            cancel: self.shutdown.child_token(),
            stop: OnceLock::new(),
            changed: tx,
            progress: Mutex::new(Progress::default()),
            output_bytes: std::sync::atomic::AtomicUsize::new(0),
            at_step: Mutex::new(None),
        });
        if cancel_requested {
            let _ = active.stop.set(Stop::Cancelled);
            active.cancel.cancel();
        }
        {
            // One driver per run: the lease taken by `start` and a claim of the
            // same run by this process's work poll may meet here.
            let mut act = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if act.contains_key(&run_id) {
                return;
            }
            act.insert(run_id.clone(), active.clone());
        }
        let slot = {
            let mut slots = self.session_slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .entry(session_id)
                .or_insert_with(|| Arc::new(Semaphore::new(max_workflows.max(1) as usize)))
                .clone()
        };
        let mgr = self.clone();
        tokio::spawn(async move {
            use futures::FutureExt as _;
            let driven = std::panic::AssertUnwindSafe(mgr.drive(&run_id, &active, slot))
                .catch_unwind()
                .await;
            let failure = match driven {
                Ok(Ok(())) => None,
                // The store is unreachable: the run stays for the next start or executor.
                Ok(Err(e)) if e.code == ErrorCode::StoreUnavailable => {
                    tracing::error!(run = %run_id, error = %e, "run driver stopped: the store is unavailable");
                    None
                }
                Ok(Err(e)) => Some(e.message),
                Err(panic) => Some(
                    attempts::panicked(&format!("the driver of run {run_id}"), panic.as_ref())
                        .message,
                ),
            };
            if let Some(why) = failure
                && !active.stop.get().is_some_and(|s| s.leaves_state())
            {
                tracing::error!(run = %run_id, error = %why, "run driver failed; the run ends failed");
                if let Err(e) = mgr.driver_failed(&run_id, &active, &why).await {
                    tracing::error!(run = %run_id, error = %e, "cannot record the run's failure");
                }
            }
            // Taken over: what the run holds now is its new executor's.
            if active.stop.get() != Some(&Stop::LeaseLost) {
                // Whatever the run and its steps still hold is released, however it ended.
                if let Err(e) = mgr.resources.release_run(&run_id, "the run ended").await {
                    tracing::error!(run = %run_id, error = %e, "cannot release the run's resources");
                }
                if let Err(e) = mgr.store.drop_run_lease(&run_id, &mgr.node).await {
                    tracing::warn!(run = %run_id, error = %e, "cannot give the run's lease up; it ends with its TTL");
                }
            }
            mgr.active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&run_id);
            active.bump();
        });
    }

    async fn drive(
        self: &Arc<Self>,
        run_id: &str,
        active: &Arc<Active>,
        slot: Arc<Semaphore>,
    ) -> Result<()> {
        let store = &self.store;
        let mut run = store
            .get_run(run_id)
            .await?
            .ok_or_else(|| crate::error::Error::internal("run vanished"))?;
        let spec: WorkflowSpec = serde_json::from_str(&run.definition).map_err(|e| {
            crate::error::Error::internal(format!("run {run_id} has a corrupt definition: {e}"))
        })?;
        let params: Map<String, Value> = serde_json::from_str(&run.parameters).unwrap_or_default();
        let project: Option<Arc<Value>> = run
            .project
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .map(Arc::new);
        let mut steps = store.run_steps(run_id).await?;
        active.output_bytes.store(
            steps
                .iter()
                .filter_map(|s| s.output.as_ref().map(String::len))
                .sum(),
            std::sync::atomic::Ordering::Relaxed,
        );
        {
            let mut p = active.progress.lock().unwrap_or_else(|p| p.into_inner());
            p.total = steps.len();
            p.done = steps.iter().filter(|s| s.status.is_final()).count();
        }

        // Wait for a workflow slot of the session. A child run uses its
        // parent's slot (taking another could wait forever on the parent).
        let _permit = if run.parent_run_id.is_some() {
            None
        } else {
            tokio::select! {
                p = slot.acquire_owned() => Some(p.map_err(|_| crate::error::Error::internal("slot semaphore closed"))?),
                _ = active.cancel.cancelled() => {
                    return self.finish_stopped(&mut run, &mut steps, active).await;
                }
            }
        };
        // The run's own resource_requirements hold for the whole run.
        if let Some(r) = run.resources.as_deref() {
            let req = serde_json::from_str(r)
                .map_err(|e| crate::error::Error::internal(format!("stored requirements: {e}")))
                .and_then(|v| Requirements::parse(&v))?;
            let owner = Owner {
                session_id: run.session_id.clone(),
                principal: run.principal.clone(),
                holder: format!("run {}", run.id),
                kind: crate::model::OwnerKind::Run,
                reference: Some(run.id.clone()),
            };
            let priority = run.priority;
            if let Err(e) = self
                .resources
                .acquire(owner, req, priority, None, None, &active.cancel)
                .await
            {
                if active.cancel.is_cancelled() {
                    return self.finish_stopped(&mut run, &mut steps, active).await;
                }
                return Err(e);
            }
        }
        let now = now_ms();
        if run.started_at.is_none() {
            run.started_at = Some(now);
        }
        run.status = RunStatus::Running;
        run.updated_at = now;
        store.update_run(&run).await?;
        active.bump();

        // Steps that were in flight when the last process stopped go again.
        for st in steps.iter_mut() {
            if matches!(
                st.status,
                StepStatus::Running
                    | StepStatus::Retrying
                    | StepStatus::Ready
                    | StepStatus::WaitingResources
                    | StepStatus::WaitingAgent
            ) {
                st.status = StepStatus::Pending;
                store.update_step(st).await?;
            }
        }

        let policy = Policy {
            limit: match run.mode {
                SessionMode::Sequential => 1,
                _ => run.max_parallel.max(1) as usize,
            },
            by_priority: matches!(run.mode, SessionMode::Priority | SessionMode::ResourceAware),
            fail_fast: spec.on_failure == OnFailure::FailFast,
        };
        let deadline = run.timeout_seconds.map(|t| {
            let end = run
                .started_at
                .unwrap_or(now)
                .saturating_add(crate::model::bounds::secs_to_ms(t));
            crate::model::bounds::deadline_after(Duration::from_millis(
                end.saturating_sub(now).max(0) as u64,
            ))
        });

        // What templates and conditions can see.
        let shared = Arc::new(RwLock::new(StepTable::default()));
        {
            let mut t = shared.write().unwrap_or_else(|p| p.into_inner());
            for st in &steps {
                t.set(st);
            }
        }
        let params = Arc::new(params);
        let mut plan = Scheduler::new(
            scheduler::nodes_of(&spec),
            steps.iter().map(seen).collect(),
            policy,
        );
        let mut running: JoinSet<(usize, StepRecord)> = JoinSet::new();
        // Which step each task runs, to name the step of a task that panicked.
        let mut task_step: HashMap<tokio::task::Id, usize> = HashMap::new();
        let resource_aware = run.mode == SessionMode::ResourceAware;
        // resource_aware: steps aside wait for the next release.
        let mut released = self.resources.watch();
        // Step ends are queued, numbered; `flushed` is the last number known
        // durable. The writer commits in queue order, so the store holds a
        // prefix of the run's history: a dependent's start is never durable
        // ahead of its dependencies' ends, and a dependent starts without
        // waiting for their commit (a chain goes at the writer's pace, not one
        // fsync per link). A crash before that commit runs the lost steps
        // again, as it would an interrupted one. A step whose action writes
        // the store on another connection, outside that order (a child run,
        // an agent task), waits until its dependencies' ends are durable: what
        // it creates never refers to a result a crash could lose.
        let mut end_seq: Vec<u64> = vec![0; steps.len()];
        let (mut queued_ends, mut flushed) = (0u64, 0u64);
        loop {
            // Nothing more is decided here once another executor holds the run.
            if self.lease_lapsed(&run.id).await {
                break;
            }
            // Settle steps whose dependencies are all final: skip, cancel, fail or make ready.
            while let Some((i, verdict)) = plan.next_settled() {
                let s = &spec.steps[i];
                active.at(&s.name);
                #[cfg(test)]
                fault::hit(&fault::DRIVER, &s.name);
                let decision = match verdict {
                    Verdict::DependencyFailed(d) => Some((
                        StepStatus::Skipped,
                        err_json(
                            ErrorCode::DependencyFailed,
                            format!("dependency '{}' {}", spec.steps[d].name, steps[d].status),
                        ),
                    )),
                    Verdict::Halted => Some((
                        StepStatus::Cancelled,
                        err_json(
                            ErrorCode::Cancelled,
                            "not started: an earlier step failed and on_failure is fail_fast",
                        ),
                    )),
                    Verdict::Admissible => match &s.when {
                        None => None,
                        Some(w) => {
                            let table = shared.read().unwrap_or_else(|p| p.into_inner());
                            let scope = RunScope {
                                params: &params,
                                table: &table,
                                run_id: &run.id,
                                session_id: &run.session_id,
                                project: project.as_deref(),
                            };
                            match condition::parse(w, self.limits.condition())
                                .and_then(|e| e.eval(&scope))
                            {
                                Ok(v) if condition::truthy(&v) => None,
                                Ok(_) => Some((
                                    StepStatus::Skipped,
                                    err_json_code(
                                        CONDITION_FALSE,
                                        format!("when '{}' is false", crate::error::excerpt(w)),
                                    ),
                                )),
                                Err(e) => Some((
                                    StepStatus::Failed,
                                    err_json(
                                        ErrorCode::InvalidParameters,
                                        format!("when '{}': {e}", crate::error::excerpt(w)),
                                    ),
                                )),
                            }
                        }
                    },
                };
                match decision {
                    Some((st, error)) => {
                        let rec = &mut steps[i];
                        rec.status = st;
                        rec.error = error;
                        rec.finished_at = Some(now_ms());
                        store.queue_step(rec).await?;
                        queued_ends += 1;
                        end_seq[i] = queued_ends;
                        shared.write().unwrap_or_else(|p| p.into_inner()).set(rec);
                        active.step_done(rec);
                        active.bump();
                        plan.end(i, seen(rec));
                    }
                    None => plan.admit(i),
                }
            }
            // Start ready steps, most urgent first, up to the limit.
            while let Some(i) = plan.next_to_start() {
                // resource_aware: a step whose resources are not free now
                // does not take a slot; it waits aside for the next release.
                let mut pre_acquired = false;
                if resource_aware && let Some(r) = &spec.steps[i].resources {
                    let req = Requirements::parse(r)?;
                    let owner = step_owner(
                        &run.session_id,
                        &run.principal,
                        &run.id,
                        &spec.steps[i].name,
                    );
                    match self
                        .resources
                        .try_acquire(owner, req, spec.steps[i].priority)
                        .await?
                    {
                        Some(_) => pre_acquired = true,
                        None => {
                            if steps[i].status != StepStatus::WaitingResources {
                                steps[i].status = StepStatus::WaitingResources;
                                store.queue_step(&steps[i]).await?;
                                active.bump();
                            }
                            plan.set_aside(i);
                            continue;
                        }
                    }
                }
                if writes_elsewhere(&spec.steps[i])
                    && plan.deps(i).iter().any(|&d| end_seq[d] > flushed)
                {
                    store.flush().await?;
                    flushed = queued_ends;
                }
                steps[i].status = StepStatus::Running;
                plan.start(i);
                let task = StepTask {
                    mgr: self.clone(),
                    spec: spec.steps[i].clone(),
                    rec: steps[i].clone(),
                    params: params.clone(),
                    table: shared.clone(),
                    run_id: run.id.clone(),
                    session_id: run.session_id.clone(),
                    principal: run.principal.clone(),
                    pre_acquired,
                    active: active.clone(),
                    project: project.clone(),
                };
                let handle = running.spawn(async move { (i, task.run().await) });
                task_step.insert(handle.id(), i);
            }
            if plan.has_settled() {
                continue;
            }
            // Steps that wait for a slot are `ready` (written together: one group commit).
            let newly_ready: Vec<usize> = plan
                .take_admitted()
                .into_iter()
                .filter(|&i| steps[i].status == StepStatus::Pending)
                .collect();
            if !newly_ready.is_empty() {
                for &i in &newly_ready {
                    steps[i].status = StepStatus::Ready;
                    store.queue_step(&steps[i]).await?;
                }
                active.bump();
            }
            if plan.idle() {
                break;
            }
            let stopped = tokio::select! {
                _ = released.changed(), if plan.has_aside() => {
                    plan.resources_released();
                    false
                }
                joined = running.join_next_with_id(), if plan.in_flight() > 0 => {
                    let joined = match joined {
                        Some(Ok((id, done))) => {
                            task_step.remove(&id);
                            Some(Ok(done))
                        }
                        Some(Err(e)) if e.is_panic() => {
                            // A bug while running the step: the step fails, the run goes on.
                            let i = task_step.remove(&e.id()).ok_or_else(|| crate::error::Error::internal("a step task of an unknown step panicked"))?;
                            let why = attempts::panicked(&format!("step '{}'", steps[i].name), e.into_panic().as_ref()).message;
                            Some(Ok((i, self.step_panicked(&run.id, &steps[i], why).await)))
                        }
                        Some(Err(e)) => Some(Err(e)),
                        None => None,
                    };
                    match joined {
                        Some(Ok((i, mut rec))) => {
                            if !rec.status.is_final() && !active.cancel.is_cancelled() {
                                // The step's own bookkeeping failed (the store is in trouble).
                                rec.status = StepStatus::Failed;
                                rec.error = err_json(ErrorCode::StoreUnavailable, "the step's state could not be saved");
                                rec.finished_at = Some(now_ms());
                                if let Err(e) = store.update_step(&rec).await {
                                    tracing::error!(run = %run.id, step = %rec.name, error = %e, "cannot record step failure");
                                }
                            }
                            shared.write().unwrap_or_else(|p| p.into_inner()).set(&rec);
                            if rec.status.is_final() {
                                active.step_done(&rec);
                                queued_ends += 1;
                                end_seq[i] = queued_ends;
                            }
                            // A stop that arrives with this step's end wins: the
                            // dependents are cancelled with the run, not skipped.
                            plan.returned(i, seen(&rec), !active.cancel.is_cancelled());
                            steps[i] = rec;
                        }
                        Some(Err(e)) => return Err(crate::error::Error::internal(format!("step task panicked: {e}"))),
                        None => {}
                    }
                    active.cancel.is_cancelled()
                }
                _ = active.cancel.cancelled() => true,
                _ = sleep_until(deadline) => {
                    let _ = active.stop.set(Stop::TimedOut);
                    active.cancel.cancel();
                    true
                }
            };
            if stopped {
                break;
            }
        }
        // Let the running steps observe a stop and record it.
        if active.cancel.is_cancelled() {
            while let Some(joined) = running.join_next().await {
                if let Ok((i, rec)) = joined {
                    steps[i] = rec;
                }
            }
        }
        // Every step is final, or the run was stopped (a stop that raced with
        // the last step still counts).
        if active.cancel.is_cancelled() || self.lease_lapsed(&run.id).await {
            return self.finish_stopped(&mut run, &mut steps, active).await;
        }
        let failed = steps.iter().find(|s| s.status.is_failure());
        let now = now_ms();
        run.status = if failed.is_some() {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        run.error = failed.and_then(|s| {
            let msg = error_message(s.error.as_deref()).unwrap_or_default();
            err_json(
                ErrorCode::DependencyFailed,
                format!("step '{}' {}: {msg}", s.name, s.status),
            )
        });
        run.finished_at = Some(now);
        run.updated_at = now;
        store.update_run(&run).await?;
        tracing::info!(run = %run.id, status = %run.status, "run finished");
        Ok(())
    }

    /// A step's task panicked: the step is recorded failed with INTERNAL_ERROR
    /// (what it held is released); the run goes on as after any failure.
    async fn step_panicked(&self, run_id: &str, rec: &StepRecord, message: String) -> StepRecord {
        let mut rec = rec.clone();
        rec.status = StepStatus::Failed;
        rec.error = err_json(ErrorCode::InternalError, message);
        rec.finished_at = Some(now_ms());
        if let Err(e) = self.store.update_step(&rec).await {
            tracing::error!(run = %run_id, step = %rec.name, error = %e, "cannot record the step's failure");
        }
        let key = format!("{run_id}/{}", rec.name);
        if let Err(e) = self
            .resources
            .release_owner(crate::model::OwnerKind::Step, &key, "the step failed")
            .await
        {
            tracing::error!(run = %run_id, step = %rec.name, error = %e, "cannot release the step's resources");
        }
        rec
    }

    /// The driver of a run failed (a panic, or an error that is not the
    /// store's): the run ends `failed` with INTERNAL_ERROR naming the step it
    /// was at, so that no later start runs into the same failure again.
    async fn driver_failed(&self, run_id: &str, active: &Active, why: &str) -> Result<()> {
        let Some(mut run) = self.store.get_run(run_id).await? else {
            return Ok(());
        };
        if run.status.is_final() {
            return Ok(());
        }
        let mut steps = self.store.run_steps(run_id).await?;
        let at = active
            .at_step
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = now_ms();
        if let Some(st) = at
            .as_deref()
            .and_then(|n| steps.iter_mut().find(|s| s.name == n))
            .filter(|s| !s.status.is_final())
        {
            st.status = StepStatus::Failed;
            st.error = err_json(
                ErrorCode::InternalError,
                format!("the run's driver failed here: {why}"),
            );
            st.finished_at = Some(now);
            self.store.queue_step(st).await?;
        }
        let msg = match &at {
            Some(step) => {
                format!("the run's driver failed at step '{step}': {why}; this is a bug in myrmex")
            }
            None => format!("the run's driver failed: {why}; this is a bug in myrmex"),
        };
        self.end_run(
            &mut run,
            &mut steps,
            RunStatus::Failed,
            ErrorCode::InternalError,
            &msg,
        )
        .await
    }

    /// The run's token was cancelled: record why, unless the server is stopping.
    async fn finish_stopped(
        &self,
        run: &mut RunRecord,
        steps: &mut [StepRecord],
        active: &Active,
    ) -> Result<()> {
        let stop = active.stop.get().copied().unwrap_or(Stop::Shutdown);
        if stop.leaves_state() {
            tracing::info!(run = %run.id, ?stop, "the run goes on elsewhere or at the next start");
            return Ok(());
        }
        let (status, code, msg) = match stop {
            Stop::TimedOut => (
                RunStatus::TimedOut,
                ErrorCode::TimeoutExceeded,
                "the workflow's time limit passed",
            ),
            _ => (
                RunStatus::Cancelled,
                ErrorCode::Cancelled,
                "the run was cancelled",
            ),
        };
        self.end_run(run, steps, status, code, msg).await
    }

    /// End a run that did not complete: steps not yet final are cancelled with
    /// `code`/`msg`, the run gets `status`.
    async fn end_run(
        &self,
        run: &mut RunRecord,
        steps: &mut [StepRecord],
        status: RunStatus,
        code: ErrorCode,
        msg: &str,
    ) -> Result<()> {
        let now = now_ms();
        for st in steps.iter_mut() {
            if !st.status.is_final() {
                st.status = StepStatus::Cancelled;
                st.error = err_json(code, msg);
                st.finished_at = Some(now);
                self.store.queue_step(st).await?;
            }
        }
        run.status = status;
        run.error = err_json(code, msg);
        if run.started_at.is_none() {
            run.started_at = Some(now);
        }
        run.finished_at = Some(now);
        run.updated_at = now;
        self.store.update_run(run).await?;
        tracing::info!(run = %run.id, status = %status, "run stopped");
        Ok(())
    }
}

/// A step's record as the scheduler sees it.
fn seen(s: &StepRecord) -> Seen {
    Seen {
        status: s.status,
        // Skipped by its own `when` (not because of its dependencies).
        own_skip: s.status == StepStatus::Skipped
            && error_code(s.error.as_deref()).as_deref() == Some(CONDITION_FALSE),
    }
}

/// The code of a skip by a step's own `when` (not by a failed dependency).
pub const CONDITION_FALSE: &str = "CONDITION_FALSE";

/// Status and output of every step, for templates and conditions.
#[derive(Default)]
struct StepTable {
    steps: HashMap<String, (StepStatus, Option<Value>)>,
}

impl StepTable {
    fn set(&mut self, r: &StepRecord) {
        let out = if r.status == StepStatus::Succeeded {
            r.output
                .as_deref()
                .and_then(|o| serde_json::from_str(o).ok())
        } else {
            None
        };
        self.steps.insert(r.name.clone(), (r.status, out));
    }
}

struct RunScope<'a> {
    params: &'a Map<String, Value>,
    table: &'a StepTable,
    run_id: &'a str,
    session_id: &'a str,
    project: Option<&'a Value>,
}

impl Scope for RunScope<'_> {
    fn param(&self, name: &str) -> Option<&Value> {
        self.params.get(name)
    }
    fn step(&self, name: &str) -> Option<(String, Option<&Value>)> {
        self.table
            .steps
            .get(name)
            .map(|(s, o)| (s.as_str().to_string(), o.as_ref()))
    }
    fn run_id(&self) -> &str {
        self.run_id
    }
    fn session_id(&self) -> &str {
        self.session_id
    }
    fn project(&self) -> Option<&Value> {
        self.project
    }
}

/// Hash of resolved inputs: equal inputs, equal hash.
pub fn input_hash(module: &str, action: &str, params: &Value) -> String {
    let mut h = Sha256::new();
    h.update(module.as_bytes());
    h.update(b".");
    h.update(action.as_bytes());
    h.update(b"\0");
    h.update(params.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// Whether a step's action writes the store itself, on a connection of its
/// own (not through the writer that orders step states): `workflow.run`
/// inserts a child run, `agent.*` a task.
fn writes_elsewhere(step: &crate::engine::workflows::spec::StepSpec) -> bool {
    matches!(step.module.as_str(), "workflow" | "agent")
}

struct StepTask {
    mgr: Arc<RunManager>,
    spec: StepSpec,
    rec: StepRecord,
    params: Arc<Map<String, Value>>,
    table: Arc<RwLock<StepTable>>,
    run_id: String,
    session_id: String,
    principal: String,
    /// resource_aware runs acquire before starting the step.
    pre_acquired: bool,
    active: Arc<Active>,
    /// The run's project context, if it has one.
    project: Option<Arc<Value>>,
}

/// Who holds a step's resources: `run_id/step`.
fn step_owner(session_id: &str, principal: &str, run_id: &str, step: &str) -> Owner {
    let key = format!("{run_id}/{step}");
    Owner {
        session_id: session_id.to_string(),
        principal: principal.to_string(),
        holder: key.clone(),
        kind: crate::model::OwnerKind::Step,
        reference: Some(key),
    }
}

impl StepTask {
    /// Run the step to a final state (or until the run is stopped) and return its record.
    async fn run(mut self) -> StepRecord {
        #[cfg(test)]
        fault::hit(&fault::STEP_TASK, &self.rec.name);
        let key = format!("{}/{}", self.run_id, self.spec.name);
        let result = match self.acquire().await {
            Ok(true) => self.attempts().await,
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::error!(run = %self.run_id, step = %self.rec.name, error = %e, "step bookkeeping failed");
        }
        if self.spec.resources.is_some()
            && self.active.stop.get() != Some(&Stop::LeaseLost)
            && let Err(e) = self
                .mgr
                .resources
                .release_owner(crate::model::OwnerKind::Step, &key, "the step ended")
                .await
        {
            tracing::error!(run = %self.run_id, step = %self.rec.name, error = %e, "cannot release the step's resources");
        }
        self.rec
    }

    /// Wait for the step's resources (state `waiting_resources`). False when
    /// the run was stopped meanwhile (and the step recorded as such).
    async fn acquire(&mut self) -> Result<bool> {
        let Some(r) = self.spec.resources.clone().filter(|_| !self.pre_acquired) else {
            return Ok(true);
        };
        let req = Requirements::parse(&r)?;
        self.rec.status = StepStatus::WaitingResources;
        self.save().await?;
        let owner = step_owner(
            &self.session_id,
            &self.principal,
            &self.run_id,
            &self.spec.name,
        );
        let cancel = self.active.cancel.clone();
        match self
            .mgr
            .resources
            .acquire(owner, req, self.spec.priority, None, None, &cancel)
            .await
        {
            Ok(_) => Ok(true),
            Err(_) if cancel.is_cancelled() => {
                self.stopped("while the step waited for resources", false)
                    .await?;
                Ok(false)
            }
            Err(e) => {
                self.rec.status = StepStatus::Failed;
                self.rec.error = err_json(e.code, e.message);
                self.rec.finished_at = Some(now_ms());
                self.save().await?;
                Ok(false)
            }
        }
    }

    async fn save(&self) -> Result<()> {
        // The step's state is its new executor's once the run was taken over.
        if self.mgr.lease_lapsed(&self.run_id).await {
            return Ok(());
        }
        // Queued, in order: the run's final (awaited) update makes every step
        // state before it durable, and the store never shows a step's
        // dependents ahead of the step itself.
        self.mgr.store.queue_step(&self.rec).await?;
        self.active.bump();
        Ok(())
    }

    /// The run was stopped during this step: record how, unless the server is
    /// stopping (then the record stays `running` and the next start attempts it again).
    async fn stopped(&mut self, when: &str, abandoned: bool) -> Result<()> {
        let (status, code, why) = match self.active.stop.get().copied().unwrap_or(Stop::Shutdown) {
            Stop::Shutdown | Stop::LeaseLost => return Ok(()),
            Stop::TimedOut => (
                StepStatus::TimedOut,
                ErrorCode::TimeoutExceeded,
                "the workflow's time limit passed",
            ),
            Stop::Cancelled => (
                StepStatus::Cancelled,
                ErrorCode::Cancelled,
                "the run was cancelled",
            ),
        };
        self.rec.status = status;
        self.rec.error = err_json(code, abandon_note(&format!("{why} {when}"), abandoned));
        self.rec.finished_at = Some(now_ms());
        self.save().await
    }

    async fn attempts(&mut self) -> Result<()> {
        // Resolve inputs once all upstream steps are final.
        let resolved = {
            let table = self.table.read().unwrap_or_else(|p| p.into_inner());
            let scope = RunScope {
                params: &self.params,
                table: &table,
                run_id: &self.run_id,
                session_id: &self.session_id,
                project: self.project.as_deref(),
            };
            let mut budget = Budget::new(
                self.mgr.limits.max_rendered_bytes,
                "workflows.max_rendered_bytes",
            );
            render_value_within(
                &Value::Object(self.spec.parameters.clone()),
                &scope,
                &mut budget,
            )
        };
        let now = now_ms();
        let max_depth = self.mgr.limits.max_value_depth;
        let resolved = resolved.and_then(|p| {
            if crate::model::bounds::value_depth(&p, max_depth) > max_depth {
                return Err(RenderError::TooLarge(format!(
                    "the rendered parameters nest deeper than {max_depth} levels (workflows.max_value_depth)"
                )));
            }
            Ok(p)
        });
        let params = match resolved {
            Ok(p) => p,
            Err(e) => {
                let (code, message) = match e {
                    RenderError::Invalid(m) => (
                        ErrorCode::InvalidParameters,
                        format!("cannot resolve parameters: {m}"),
                    ),
                    RenderError::TooLarge(m) => (ErrorCode::LimitExceeded, m),
                };
                self.rec.status = StepStatus::Failed;
                self.rec.error = err_json(code, message);
                self.rec.started_at.get_or_insert(now);
                self.rec.finished_at = Some(now);
                return self.save().await;
            }
        };
        let hash = input_hash(&self.spec.module, &self.spec.action, &params);
        if self.rec.prior_hash.as_deref() == Some(hash.as_str()) && self.rec.prior_output.is_some()
        {
            self.rec.status = StepStatus::Succeeded;
            self.rec.output = self.rec.prior_output.clone();
            self.rec.input_hash = Some(hash);
            self.rec.reused = true;
            self.rec.started_at = Some(now);
            self.rec.finished_at = Some(now);
            return self.save().await;
        }
        self.rec.input_hash = Some(hash);
        let plan = attempts::Plan {
            module: self.spec.module.clone(),
            action: self.spec.action.clone(),
            params,
            timeout_seconds: self.spec.timeout_seconds,
            max_retries: self.spec.max_retries,
            retry: self.spec.retry.clone().unwrap_or_default(),
            prior_attempts: self.rec.attempts,
            run_id: self.run_id.clone(),
            step: self.spec.name.clone(),
            session_id: self.session_id.clone(),
            principal: self.principal.clone(),
            caller: crate::actions::Caller::Step,
            workdir: self
                .project
                .as_ref()
                .and_then(|p| p.get("path"))
                .and_then(Value::as_str)
                .map(std::path::PathBuf::from),
        };
        let registry = self.mgr.registry.clone();
        let stop = self.active.cancel.clone();
        let (attempt, ending) = attempts::run(&registry, plan, &stop, self).await?;
        self.rec.attempts = attempt;
        match ending {
            attempts::Ending::Succeeded(out) => {
                match self.admit_output(&out) {
                    Ok(text) => {
                        self.rec.status = StepStatus::Succeeded;
                        self.rec.output = Some(text);
                        self.rec.error = None;
                    }
                    Err(why) => {
                        // Nothing past the bound is stored.
                        self.rec.status = StepStatus::Failed;
                        self.rec.output = None;
                        self.rec.error = err_json(ErrorCode::LimitExceeded, why);
                    }
                }
                self.rec.finished_at = Some(now_ms());
                self.save().await
            }
            attempts::Ending::Failed {
                code,
                message,
                timed_out,
            } => {
                self.rec.status = if timed_out {
                    StepStatus::TimedOut
                } else {
                    StepStatus::Failed
                };
                self.rec.error = err_json(code, message);
                self.rec.finished_at = Some(now_ms());
                self.save().await
            }
            attempts::Ending::Stopped {
                during_retry_wait,
                abandoned,
            } => {
                let when = if during_retry_wait {
                    "while the step waited to retry"
                } else {
                    "while the step ran"
                };
                self.stopped(when, abandoned).await
            }
        }
    }
}

impl StepTask {
    /// The output as it is stored, once it fits its bounds: its depth
    /// (`workflows.max_value_depth`), its size (`workflows.max_step_output_bytes`)
    /// and what the run has stored so far (`workflows.max_run_output_bytes`).
    fn admit_output(&self, out: &Value) -> std::result::Result<String, String> {
        use std::sync::atomic::Ordering::Relaxed;
        let l = &self.mgr.limits;
        if crate::model::bounds::value_depth(out, l.max_value_depth) > l.max_value_depth {
            return Err(format!(
                "the step's output nests deeper than {} levels (workflows.max_value_depth); it was not stored",
                l.max_value_depth
            ));
        }
        let size = crate::model::bounds::json_size(out);
        if size > l.max_step_output_bytes {
            return Err(format!(
                "the step's output is {size} bytes; the limit is {} (workflows.max_step_output_bytes); it was not stored",
                l.max_step_output_bytes
            ));
        }
        let before = self.active.output_bytes.fetch_add(size, Relaxed);
        if before + size > l.max_run_output_bytes {
            self.active.output_bytes.fetch_sub(size, Relaxed);
            return Err(format!(
                "the run has stored {before} bytes of step outputs; this step's {size} would pass the limit of {} (workflows.max_run_output_bytes); it was not stored",
                l.max_run_output_bytes
            ));
        }
        Ok(out.to_string())
    }
}

impl attempts::Sink for StepTask {
    async fn started(&mut self, attempt: u32) -> Result<()> {
        // Taken over meanwhile: the attempt is not made (the run is stopped).
        if self.mgr.lease_lapsed(&self.run_id).await {
            return Ok(());
        }
        self.rec.attempts = attempt;
        self.rec.status = StepStatus::Running;
        self.rec.error = None;
        self.rec.started_at.get_or_insert(now_ms());
        // Not awaited to durability: a lost `running` mark only means the
        // attempt is not counted; the step is attempted again either way.
        self.mgr.store.queue_step(&self.rec).await?;
        self.active.bump();
        Ok(())
    }

    async fn retrying(&mut self, _attempt: u32, code: ErrorCode, message: &str) -> Result<()> {
        self.rec.status = StepStatus::Retrying;
        self.rec.error = err_json(code, message);
        self.save().await
    }

    fn phase_hook(&self) -> Option<crate::actions::PhaseHook> {
        // The record as the current attempt left it, with the reported state.
        let store = self.mgr.store.clone();
        let rec = self.rec.clone();
        let active = self.active.clone();
        Some(std::sync::Arc::new(move |state: StepStatus| {
            let store = store.clone();
            let mut rec = rec.clone();
            let active = active.clone();
            Box::pin(async move {
                rec.status = state;
                if let Err(e) = store.queue_step(&rec).await {
                    tracing::error!(run = %rec.run_id, step = %rec.name, error = %e, "cannot record the step's state");
                }
                active.bump();
            })
        }))
    }
}

/// The message of a stored `{code, message}` error.
pub fn error_message(e: Option<&str>) -> Option<String> {
    e.and_then(|e| serde_json::from_str::<Value>(e).ok())
        .and_then(|v| v["message"].as_str().map(String::from))
}

/// The code of a stored `{code, message}` error.
pub fn error_code(e: Option<&str>) -> Option<String> {
    e.and_then(|e| serde_json::from_str::<Value>(e).ok())
        .and_then(|v| v["code"].as_str().map(String::from))
}

/// A fresh run id.
pub fn new_run_id() -> String {
    new_id("run")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::{ActionCtx, ActionError, ActionSpec, Module};
    use crate::config::Config;
    use crate::engine::workflows::{ExecuteRequest, Scope};
    use crate::engine::{Engine, Principal};

    /// A module with a bug: its action panics.
    struct Buggy;

    #[async_trait::async_trait]
    impl Module for Buggy {
        fn name(&self) -> &'static str {
            "buggy"
        }
        fn description(&self) -> &'static str {
            "An action that panics."
        }
        fn actions(&self) -> Vec<ActionSpec> {
            vec![ActionSpec {
                module: "buggy",
                action: "panic",
                description: "Panics.",
                params_schema: json!({"type": "object"}),
                output_schema: json!({}),
            }]
        }
        async fn call(&self, _: &str, _: Value, _: ActionCtx) -> Result<Value, ActionError> {
            panic!("index out of bounds: a bug in an action");
        }
    }

    async fn engine(store: Arc<dyn Store>, dir: &std::path::Path) -> Engine {
        let config = Config {
            data_dir: Some(dir.to_path_buf()),
            store: "memory".into(),
            ..Config::default()
        };
        let mut registry = Registry::new(&config);
        registry.register(Arc::new(Buggy));
        let e = Engine::with_registry(config, store, registry);
        e.start_background(
            CancellationToken::new(),
            crate::engine::observe::peers::Role::Serve,
        )
        .await
        .unwrap();
        e
    }

    fn spec(v: Value) -> WorkflowSpec {
        serde_json::from_value(v).unwrap()
    }

    async fn execute(e: &Engine, name: &str, wait: u64) -> super::super::workflows::RunView {
        let req = ExecuteRequest {
            workflow_name: name.into(),
            parameters: Map::new(),
            session_id: None,
            mode: None,
            timeout_seconds: None,
            priority: None,
            resource_requirements: None,
            max_parallel: None,
            parent: None,
            project: None,
        };
        e.execute_workflow(
            &Principal::local(),
            req,
            Duration::from_secs(wait),
            &mut |_, _, _| {},
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_panicking_action_fails_its_step_and_the_run_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::default());
        let e = engine(store, dir.path()).await;
        let wf = spec(json!({"name": "w", "on_failure": "continue", "steps": [
            {"name": "bad", "module": "buggy", "action": "panic", "max_retries": 3},
            {"name": "after", "module": "core", "action": "echo", "dependencies": ["bad"]},
            {"name": "other", "module": "core", "action": "echo"}
        ]}));
        e.create_workflow(&Principal::local(), None, wf, Scope::Session)
            .await
            .unwrap();
        let run = execute(&e, "w", 20).await;
        assert_eq!(run.status, "failed");
        let by: HashMap<&str, &super::super::workflows::StepView> =
            run.steps.iter().map(|s| (s.name.as_str(), s)).collect();
        assert_eq!(by["bad"].status, "failed");
        let err = serde_json::to_value(&by["bad"].error).unwrap();
        assert_eq!(err["code"], "INTERNAL_ERROR", "{err}");
        assert!(
            err["message"].as_str().unwrap().contains("buggy.panic"),
            "{err}"
        );
        // A bug is not retried.
        assert_eq!(by["bad"].attempts, 1);
        assert_eq!(by["after"].status, "skipped");
        assert_eq!(by["other"].status, "succeeded");
    }

    #[tokio::test]
    async fn a_run_whose_driver_fails_ends_failed_and_is_not_resumed_again() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::default());
        let e = engine(store.clone(), dir.path()).await;
        let wf = spec(json!({"name": "slow", "steps": [
            {"name": "wait", "module": "core", "action": "sleep", "parameters": {"ms": 60000}}
        ]}));
        e.create_workflow(&Principal::local(), None, wf, Scope::Session)
            .await
            .unwrap();
        let run = execute(&e, "slow", 0).await;
        // The server stops with the run in flight; its record is damaged meanwhile.
        e.stop();
        e.wait_idle(Duration::from_secs(5)).await;
        let mut rec = store.get_run(&run.run_id).await.unwrap().unwrap();
        assert!(!rec.status.is_final(), "{}", rec.status);
        rec.definition = "{not a definition".into();
        store.update_run(&rec).await.unwrap();
        // The next start resumes it: its driver fails, the run ends failed.
        let e2 = engine(store.clone(), dir.path()).await;
        let mut rec = store.get_run(&run.run_id).await.unwrap().unwrap();
        for _ in 0..200 {
            if rec.status.is_final() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            rec = store.get_run(&run.run_id).await.unwrap().unwrap();
        }
        assert_eq!(rec.status, RunStatus::Failed);
        let err: Value = serde_json::from_str(rec.error.as_deref().unwrap()).unwrap();
        assert_eq!(err["code"], "INTERNAL_ERROR", "{err}");
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("corrupt definition"),
            "{err}"
        );
        let steps = store.run_steps(&run.run_id).await.unwrap();
        assert!(steps.iter().all(|s| s.status.is_final()), "{steps:?}");
        e2.stop();
        e2.wait_idle(Duration::from_secs(5)).await;
        // And a later start has nothing to resume.
        let e3 = engine(store.clone(), dir.path()).await;
        assert_eq!(e3.runs().active_count(), 0);
        assert_eq!(e3.runs().resume_all().await.unwrap(), 0);
    }

    /// A panic in the driver itself (a bug in myrmex, not in an action) ends
    /// the run failed with INTERNAL_ERROR naming the step it was at; the step
    /// is failed too, and no later start runs into the same panic again.
    #[tokio::test]
    async fn a_panicking_driver_fails_its_run_at_the_step_and_is_not_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::default());
        let e = engine(store.clone(), dir.path()).await;
        fault::DRIVER
            .lock()
            .unwrap()
            .push("driver-doomed-step".into());
        let wf = spec(json!({"name": "doomed", "steps": [
            {"name": "first", "module": "core", "action": "echo"},
            {"name": "driver-doomed-step", "module": "core", "action": "echo", "dependencies": ["first"]}
        ]}));
        e.create_workflow(&Principal::local(), None, wf, Scope::Session)
            .await
            .unwrap();
        let run = execute(&e, "doomed", 20).await;
        assert_eq!(run.status, "failed", "{run:?}");
        let rec = store.get_run(&run.run_id).await.unwrap().unwrap();
        let err: Value = serde_json::from_str(rec.error.as_deref().unwrap()).unwrap();
        assert_eq!(err["code"], "INTERNAL_ERROR", "{err}");
        let msg = err["message"].as_str().unwrap();
        assert!(msg.contains("at step 'driver-doomed-step'"), "{msg}");
        assert!(msg.contains("injected fault"), "{msg}");
        let steps = store.run_steps(&run.run_id).await.unwrap();
        let by: HashMap<&str, &StepRecord> = steps.iter().map(|s| (s.name.as_str(), s)).collect();
        assert_eq!(by["first"].status, StepStatus::Succeeded);
        assert_eq!(by["driver-doomed-step"].status, StepStatus::Failed);
        e.stop();
        e.wait_idle(Duration::from_secs(5)).await;
        let e2 = engine(store.clone(), dir.path()).await;
        assert_eq!(e2.runs().resume_all().await.unwrap(), 0);
        assert_eq!(e2.runs().active_count(), 0);
        e2.stop();
    }

    /// A panic in a step's own task (outside its action) fails that step with
    /// INTERNAL_ERROR; the run goes on with the others.
    #[tokio::test]
    async fn a_panicking_step_task_fails_its_step_and_the_run_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::default());
        let e = engine(store.clone(), dir.path()).await;
        fault::STEP_TASK
            .lock()
            .unwrap()
            .push("task-doomed-step".into());
        let wf = spec(json!({"name": "half", "on_failure": "continue", "steps": [
            {"name": "task-doomed-step", "module": "core", "action": "echo"},
            {"name": "fine", "module": "core", "action": "echo"}
        ]}));
        e.create_workflow(&Principal::local(), None, wf, Scope::Session)
            .await
            .unwrap();
        let run = execute(&e, "half", 20).await;
        assert_eq!(run.status, "failed", "{run:?}");
        let by: HashMap<&str, &super::super::workflows::StepView> =
            run.steps.iter().map(|s| (s.name.as_str(), s)).collect();
        assert_eq!(by["fine"].status, "succeeded");
        assert_eq!(by["task-doomed-step"].status, "failed");
        let err = serde_json::to_value(&by["task-doomed-step"].error).unwrap();
        assert_eq!(err["code"], "INTERNAL_ERROR", "{err}");
        assert!(
            err["message"].as_str().unwrap().contains("injected fault"),
            "{err}"
        );
        e.stop();
    }

    /// An action that waits until the test opens its gate (counting entries).
    struct Gate {
        open: Arc<tokio::sync::Notify>,
        entered: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl Module for Gate {
        fn name(&self) -> &'static str {
            "gate"
        }
        fn description(&self) -> &'static str {
            "Waits for the test."
        }
        fn actions(&self) -> Vec<ActionSpec> {
            vec![ActionSpec {
                module: "gate",
                action: "wait",
                description: "Waits until the test opens the gate.",
                params_schema: json!({"type": "object"}),
                output_schema: json!({}),
            }]
        }
        async fn call(&self, _: &str, _: Value, _: ActionCtx) -> Result<Value, ActionError> {
            self.entered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.open.notified().await;
            Ok(json!({"passed": true}))
        }
    }

    /// A process that was stopped (its lease renewal is older than half the
    /// TTL) and whose run another executor took over meanwhile does nothing
    /// more of it when it wakes up, even before its heartbeat runs: the step
    /// that returns is not recorded, its dependent never starts, the run is
    /// not ended here.
    #[tokio::test]
    async fn a_driver_that_wakes_after_a_takeover_does_nothing_more() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            crate::store::sqlite::SqliteStore::open(&dir.path().join("t.db"))
                .await
                .unwrap(),
        );
        let config = Config {
            data_dir: Some(dir.path().to_path_buf()),
            ..Config::default()
        };
        let gate = Arc::new(Gate {
            open: Arc::new(tokio::sync::Notify::new()),
            entered: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        });
        let mut registry = Registry::new(&config);
        registry.register(gate.clone());
        let e = Engine::with_registry(config, store.clone(), registry);
        e.start_background(
            CancellationToken::new(),
            crate::engine::observe::peers::Role::Serve,
        )
        .await
        .unwrap();
        let wf = spec(json!({"name": "w", "steps": [
            {"name": "b", "module": "gate", "action": "wait"},
            {"name": "c", "module": "core", "action": "echo", "dependencies": ["b"]}
        ]}));
        e.create_workflow(&Principal::local(), None, wf, Scope::Session)
            .await
            .unwrap();
        let run = execute(&e, "w", 0).await;
        for _ in 0..400 {
            if gate.entered.load(SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(gate.entered.load(SeqCst), 1);
        // Meanwhile (this process stopped, its lease ran out), another
        // executor took the run over.
        let far = now_ms() + 3_600_000;
        let taken = store.claim_runs("other", far, far, 10).await.unwrap();
        assert_eq!(taken.len(), 1, "{taken:?}");
        let mgr = e.runs();
        mgr.renewed_at
            .store(now_ms() - mgr.cluster.lease_ttl_ms as i64, SeqCst);
        // The step returns as the process wakes up.
        gate.open.notify_one();
        for _ in 0..400 {
            if !mgr.is_active(&run.run_id) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!mgr.is_active(&run.run_id), "stopped here");
        store.flush().await.unwrap();
        let steps = store.run_steps(&run.run_id).await.unwrap();
        let by: HashMap<&str, &StepRecord> = steps.iter().map(|s| (s.name.as_str(), s)).collect();
        assert_eq!(by["b"].status, StepStatus::Running, "{steps:?}");
        assert!(by["c"].started_at.is_none(), "{steps:?}");
        assert!(!by["c"].status.is_final(), "{steps:?}");
        let rec = store.get_run(&run.run_id).await.unwrap().unwrap();
        assert!(!rec.status.is_final(), "{}", rec.status);
        e.stop();
    }
}

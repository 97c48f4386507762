//! The in-memory store: the same contract as SQLite, gone when the process ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    AllocationRecord, EventCursor, EventRecord, EventWindow, ProjectQuery, ProjectRecord,
    RunExecutors, RunLease, RunQuery, RunRecord, SessionQuery, SessionRecord, StepRecord, Store,
    StoreError, StoreResult, StoredEvent, TaskRecord, TaskStats, WaiterRecord, WorkflowRecord,
};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, SessionRecord>,
    workflows: BTreeMap<(String, String, String), WorkflowRecord>,
    runs: HashMap<String, RunRecord>,
    /// Steps by run, in definition order.
    steps: HashMap<String, Vec<StepRecord>>,
    meta: BTreeMap<String, String>,
    tasks: HashMap<String, TaskRecord>,
    allocations: BTreeMap<String, AllocationRecord>,
    projects: HashMap<String, ProjectRecord>,
    /// Run id -> (lease owner, lease end, cancel requested).
    leases: HashMap<String, (Option<String>, i64, bool)>,
    waiters: BTreeMap<String, WaiterRecord>,
    events: Vec<StoredEvent>,
    last_seq: i64,
}

impl Inner {
    /// Record an event (a step's principal and session come from its run).
    fn record(&mut self, e: EventRecord) {
        self.last_seq += 1;
        let run = e.run_id.as_ref().and_then(|id| self.runs.get(id));
        self.events.push(StoredEvent {
            cursor: EventCursor {
                xid: 0,
                seq: self.last_seq,
            },
            at: e.at,
            principal: e.principal.or_else(|| run.map(|r| r.principal.clone())),
            session_id: e.session_id.or_else(|| run.map(|r| r.session_id.clone())),
            run_id: e.run_id,
            kind: e.kind.to_string(),
            subject: e.subject,
            status: e.status,
            data: e.data,
        });
    }
}

impl MemoryStore {
    fn lock(&self) -> StoreResult<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn location(&self) -> String {
        "memory".into()
    }

    async fn insert_session(&self, s: &SessionRecord, max_active: Option<u64>) -> StoreResult<()> {
        let mut g = self.lock()?;
        if let Some(max) = max_active {
            let n = g
                .sessions
                .values()
                .filter(|o| {
                    o.principal == s.principal && o.status == crate::model::SessionStatus::Active
                })
                .count() as u64;
            if n >= max {
                return Err(StoreError::Full(n));
            }
        }
        if g.sessions.contains_key(&s.id) {
            return Err(StoreError::Conflict(format!("session {} exists", s.id)));
        }
        if s.is_default
            && s.status == crate::model::SessionStatus::Active
            && g.sessions.values().any(|o| {
                o.principal == s.principal
                    && o.is_default
                    && o.status == crate::model::SessionStatus::Active
            })
        {
            return Err(StoreError::Conflict(format!(
                "principal {} already has an active default session",
                s.principal
            )));
        }
        g.sessions.insert(s.id.clone(), s.clone());
        g.record(EventRecord::session(s, s.updated_at));
        Ok(())
    }

    async fn get_session(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
        Ok(self.lock()?.sessions.get(id).cloned())
    }

    async fn default_session(&self, principal: &str) -> StoreResult<Option<SessionRecord>> {
        Ok(self
            .lock()?
            .sessions
            .values()
            .find(|s| {
                s.principal == principal
                    && s.is_default
                    && s.status == crate::model::SessionStatus::Active
            })
            .cloned())
    }

    async fn list_sessions(&self, q: &SessionQuery<'_>) -> StoreResult<Vec<SessionRecord>> {
        let g = self.lock()?;
        let mut v: Vec<SessionRecord> = g
            .sessions
            .values()
            .filter(|s| s.principal == q.principal)
            .filter(|s| q.status.is_none_or(|st| s.status == st))
            .filter(|s| {
                q.after
                    .as_ref()
                    .is_none_or(|(c, id)| (s.created_at, &s.id) > (*c, id))
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        v.truncate(q.limit as usize);
        Ok(v)
    }

    async fn close_session(&self, id: &str, now: i64, reason: &str) -> StoreResult<bool> {
        let mut g = self.lock()?;
        match g.sessions.get_mut(id) {
            Some(s) if s.status == crate::model::SessionStatus::Active => {
                s.status = crate::model::SessionStatus::Closed;
                s.closed_at = Some(now);
                s.updated_at = now;
                s.close_reason = Some(reason.into());
                let event = EventRecord::session_closed(id, s.principal.clone(), now, reason);
                g.record(event);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn touch_session(&self, id: &str, now: i64) -> StoreResult<()> {
        let mut g = self.lock()?;
        if let Some(s) = g
            .sessions
            .get_mut(id)
            .filter(|s| s.status == crate::model::SessionStatus::Active)
        {
            s.last_active_at = s.last_active_at.max(now);
        }
        Ok(())
    }

    async fn expired_sessions(&self, now: i64, limit: u32) -> StoreResult<Vec<SessionRecord>> {
        let g = self.lock()?;
        let mut v: Vec<SessionRecord> = g
            .sessions
            .values()
            .filter(|s| s.status == crate::model::SessionStatus::Active && s.expiry().0 <= now)
            .cloned()
            .collect();
        v.sort_by_key(|s| s.expiry().0);
        v.truncate(limit as usize);
        Ok(v)
    }

    async fn count_sessions_by_status(
        &self,
    ) -> StoreResult<Vec<(crate::model::SessionStatus, u64)>> {
        let g = self.lock()?;
        Ok(by_status(
            g.sessions.values().map(|s| s.status),
            crate::model::SessionStatus::as_str,
        ))
    }

    async fn count_active_sessions(&self, principal: &str) -> StoreResult<u64> {
        Ok(self
            .lock()?
            .sessions
            .values()
            .filter(|s| s.principal == principal && s.status == crate::model::SessionStatus::Active)
            .count() as u64)
    }

    async fn put_workflow(&self, w: &WorkflowRecord) -> StoreResult<WorkflowRecord> {
        let mut g = self.lock()?;
        let key = (w.scope.clone(), w.owner.clone(), w.name.clone());
        let stored = match g.workflows.get(&key) {
            Some(old) => WorkflowRecord {
                version: old.version + 1,
                created_at: old.created_at,
                ..w.clone()
            },
            None => WorkflowRecord {
                version: 1,
                ..w.clone()
            },
        };
        g.workflows.insert(key, stored.clone());
        Ok(stored)
    }

    async fn get_workflow(
        &self,
        scope: &str,
        owner: &str,
        name: &str,
    ) -> StoreResult<Option<WorkflowRecord>> {
        Ok(self
            .lock()?
            .workflows
            .get(&(scope.into(), owner.into(), name.into()))
            .cloned())
    }

    async fn list_workflows(
        &self,
        session_id: &str,
        principal: &str,
    ) -> StoreResult<Vec<WorkflowRecord>> {
        Ok(self
            .lock()?
            .workflows
            .values()
            .filter(|w| {
                (w.scope == "session" && w.owner == session_id)
                    || (w.scope == "global" && w.owner == principal)
            })
            .cloned()
            .collect())
    }

    async fn delete_workflow(&self, scope: &str, owner: &str, name: &str) -> StoreResult<bool> {
        Ok(self
            .lock()?
            .workflows
            .remove(&(scope.into(), owner.into(), name.into()))
            .is_some())
    }

    async fn insert_run(&self, run: &RunRecord, steps: &[StepRecord]) -> StoreResult<()> {
        let mut g = self.lock()?;
        if g.runs.contains_key(&run.id) {
            return Err(StoreError::Conflict(format!("run {} exists", run.id)));
        }
        g.runs.insert(run.id.clone(), run.clone());
        g.steps.insert(run.id.clone(), steps.to_vec());
        g.record(EventRecord::run(run));
        Ok(())
    }

    async fn update_run(&self, run: &RunRecord) -> StoreResult<()> {
        let mut g = self.lock()?;
        match g.runs.get_mut(&run.id) {
            Some(r) => {
                *r = run.clone();
                g.record(EventRecord::run(run));
                Ok(())
            }
            None => Err(StoreError::Corrupt(format!(
                "run {} does not exist",
                run.id
            ))),
        }
    }

    async fn update_step(&self, step: &StepRecord) -> StoreResult<()> {
        let mut g = self.lock()?;
        let slot = g
            .steps
            .get_mut(&step.run_id)
            .and_then(|v| v.get_mut(step.position as usize))
            .filter(|s| s.name == step.name)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("step {}/{} does not exist", step.run_id, step.name))
            })?;
        *slot = step.clone();
        g.record(EventRecord::step(step, crate::model::now_ms()));
        Ok(())
    }

    async fn get_run(&self, id: &str) -> StoreResult<Option<RunRecord>> {
        Ok(self.lock()?.runs.get(id).cloned())
    }

    async fn run_steps(&self, run_id: &str) -> StoreResult<Vec<StepRecord>> {
        Ok(self.lock()?.steps.get(run_id).cloned().unwrap_or_default())
    }

    async fn list_runs(&self, q: &RunQuery<'_>) -> StoreResult<Vec<RunRecord>> {
        let g = self.lock()?;
        let mut v: Vec<RunRecord> = g
            .runs
            .values()
            .filter(|r| r.principal == q.principal)
            .filter(|r| q.session_id.is_none_or(|s| r.session_id == s))
            .filter(|r| q.status.is_none_or(|s| r.status == s))
            .filter(|r| q.workflow_name.is_none_or(|w| r.workflow_name == w))
            .filter(|r| {
                q.parent_run_id
                    .is_none_or(|p| r.parent_run_id.as_deref() == Some(p))
            })
            .filter(|r| {
                q.project_id
                    .is_none_or(|p| r.project_id.as_deref() == Some(p))
            })
            .filter(|r| {
                q.after
                    .as_ref()
                    .is_none_or(|(c, id)| (r.created_at, &r.id) > (*c, id))
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        v.truncate(q.limit as usize);
        Ok(v)
    }

    async fn probe(&self, now: i64) -> StoreResult<()> {
        let mut g = self.lock()?;
        g.meta.insert("health_probe".into(), now.to_string());
        match g.meta.get("health_probe") {
            Some(v) if *v == now.to_string() => Ok(()),
            _ => Err(StoreError::Unavailable("probe read-back mismatch".into())),
        }
    }

    async fn insert_tasks(&self, tasks: &[TaskRecord]) -> StoreResult<()> {
        let mut g = self.lock()?;
        for (i, t) in tasks.iter().enumerate() {
            let clash = g.tasks.contains_key(&t.id)
                || g.tasks
                    .values()
                    .any(|o| o.session_id == t.session_id && o.name == t.name)
                || tasks[..i]
                    .iter()
                    .any(|o| o.id == t.id || (o.session_id == t.session_id && o.name == t.name));
            if clash {
                return Err(StoreError::Conflict(format!(
                    "task {} ('{}') exists",
                    t.id, t.name
                )));
            }
        }
        for t in tasks {
            g.tasks.insert(t.id.clone(), t.clone());
            g.record(EventRecord::task(t));
        }
        Ok(())
    }

    async fn update_tasks(&self, tasks: &[TaskRecord]) -> StoreResult<()> {
        let mut g = self.lock()?;
        for t in tasks {
            match g.tasks.get(&t.id) {
                Some(old) if old.version == t.version - 1 => {}
                _ => {
                    return Err(StoreError::Conflict(format!(
                        "task {} was changed by another call",
                        t.id
                    )));
                }
            }
        }
        for t in tasks {
            if let Some(e) = EventRecord::task_change(g.tasks.get(&t.id), t) {
                g.record(e);
            }
            g.tasks.insert(t.id.clone(), t.clone());
        }
        Ok(())
    }

    async fn get_task(&self, id: &str) -> StoreResult<Option<TaskRecord>> {
        Ok(self.lock()?.tasks.get(id).cloned())
    }

    async fn session_tasks_stamp(&self, session_id: &str) -> StoreResult<(i64, i64)> {
        let g = self.lock()?;
        let mine = g.tasks.values().filter(|t| t.session_id == session_id);
        Ok(mine.fold((0, 0), |(n, v), t| (n + 1, v + t.version)))
    }

    async fn session_tasks(&self, session_id: &str) -> StoreResult<Vec<TaskRecord>> {
        let mut v: Vec<TaskRecord> = self
            .lock()?
            .tasks
            .values()
            .filter(|t| t.session_id == session_id)
            .cloned()
            .collect();
        v.sort_by_key(|t| t.seq);
        Ok(v)
    }

    async fn claim_runs(
        &self,
        owner: &str,
        now: i64,
        until: i64,
        limit: u32,
    ) -> StoreResult<Vec<RunLease>> {
        let mut g = self.lock()?;
        let mut free: Vec<(std::cmp::Reverse<crate::model::Priority>, i64, String)> = g
            .runs
            .values()
            .filter(|r| !r.status.is_final())
            .filter(|r| {
                g.leases
                    .get(&r.id)
                    .is_none_or(|(o, e, _)| o.is_none() || *e < now)
            })
            .map(|r| (std::cmp::Reverse(r.priority), r.created_at, r.id.clone()))
            .collect();
        free.sort();
        let mut out = Vec::new();
        for (_, _, id) in free.into_iter().take(limit as usize) {
            let l = g.leases.entry(id.clone()).or_insert((None, 0, false));
            *l = (Some(owner.to_string()), until, l.2);
            out.push(RunLease {
                run_id: id,
                cancel_requested: l.2,
            });
        }
        Ok(out)
    }

    async fn lease_run(
        &self,
        run_id: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> StoreResult<Option<RunLease>> {
        let mut g = self.lock()?;
        if g.runs.get(run_id).is_none_or(|r| r.status.is_final()) {
            return Ok(None);
        }
        let l = g
            .leases
            .entry(run_id.to_string())
            .or_insert((None, 0, false));
        if l.0.as_deref().is_some_and(|o| o != owner) && l.1 >= now {
            return Ok(None);
        }
        *l = (Some(owner.to_string()), until, l.2);
        Ok(Some(RunLease {
            run_id: run_id.to_string(),
            cancel_requested: l.2,
        }))
    }

    async fn renew_run_leases(
        &self,
        owner: &str,
        run_ids: &[String],
        until: i64,
    ) -> StoreResult<Vec<RunLease>> {
        let mut g = self.lock()?;
        let mut out = Vec::new();
        for id in run_ids {
            if let Some(l) = g.leases.get_mut(id)
                && l.0.as_deref() == Some(owner)
            {
                l.1 = until;
                out.push(RunLease {
                    run_id: id.clone(),
                    cancel_requested: l.2,
                });
            }
        }
        Ok(out)
    }

    async fn drop_run_lease(&self, run_id: &str, owner: &str) -> StoreResult<()> {
        let mut g = self.lock()?;
        if let Some(l) = g.leases.get_mut(run_id)
            && l.0.as_deref() == Some(owner)
        {
            l.0 = None;
        }
        Ok(())
    }

    async fn request_run_cancel(&self, run_ids: &[String]) -> StoreResult<u64> {
        let mut g = self.lock()?;
        let mut n = 0;
        for id in run_ids {
            if g.runs.get(id).is_some_and(|r| !r.status.is_final()) {
                g.leases.entry(id.clone()).or_insert((None, 0, false)).2 = true;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn unfinished_session_runs(&self, session_id: &str) -> StoreResult<Vec<String>> {
        let g = self.lock()?;
        let mut v: Vec<(i64, String)> = g
            .runs
            .values()
            .filter(|r| r.session_id == session_id && !r.status.is_final())
            .map(|r| (r.created_at, r.id.clone()))
            .collect();
        v.sort();
        Ok(v.into_iter().map(|(_, id)| id).collect())
    }

    async fn sessions_with_auto_work(&self, now: i64) -> StoreResult<Vec<String>> {
        let mut v: Vec<String> = self
            .lock()?
            .tasks
            .values()
            .filter(|t| t.module.is_some())
            .filter(|t| {
                t.status == crate::model::TaskStatus::Ready
                    || (t.status.is_in_flight() && t.lease_expires_at.is_some_and(|e| e < now))
            })
            .map(|t| t.session_id.clone())
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    async fn run_executors(&self, now: i64) -> StoreResult<RunExecutors> {
        let g = self.lock()?;
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        let mut out = RunExecutors::default();
        for r in g.runs.values() {
            if r.status.is_final() {
                continue;
            }
            match g.leases.get(&r.id) {
                Some((Some(o), e, _)) if *e >= now => *by.entry(o.clone()).or_default() += 1,
                _ => {
                    out.unclaimed += 1;
                    out.oldest_unclaimed_at = Some(
                        out.oldest_unclaimed_at
                            .map_or(r.created_at, |o| o.min(r.created_at)),
                    );
                }
            }
        }
        out.by_executor = by.into_iter().collect();
        Ok(out)
    }

    async fn put_waiter(&self, w: &WaiterRecord) -> StoreResult<()> {
        self.lock()?.waiters.insert(w.id.clone(), w.clone());
        Ok(())
    }

    async fn drop_waiters(&self, ids: &[String]) -> StoreResult<()> {
        let mut g = self.lock()?;
        for id in ids {
            g.waiters.remove(id);
        }
        Ok(())
    }

    async fn waiters(&self) -> StoreResult<Vec<WaiterRecord>> {
        let mut v: Vec<WaiterRecord> = self.lock()?.waiters.values().cloned().collect();
        v.sort_by(|a, b| (a.since, &a.id).cmp(&(b.since, &b.id)));
        Ok(v)
    }

    async fn touch_waiters(&self, node: &str, now: i64, stale_before: i64) -> StoreResult<()> {
        let mut g = self.lock()?;
        for w in g.waiters.values_mut() {
            if w.node == node {
                w.seen_at = now;
            }
        }
        g.waiters.retain(|_, w| w.seen_at >= stale_before);
        Ok(())
    }

    async fn count_runs_by_status(&self) -> StoreResult<Vec<(crate::model::RunStatus, u64)>> {
        let g = self.lock()?;
        Ok(by_status(
            g.runs.values().map(|r| r.status),
            crate::model::RunStatus::as_str,
        ))
    }

    async fn count_live_steps_by_status(
        &self,
    ) -> StoreResult<Vec<(crate::model::StepStatus, u64)>> {
        let g = self.lock()?;
        let live = g
            .runs
            .values()
            .filter(|r| !r.status.is_final())
            .flat_map(|r| g.steps.get(&r.id).into_iter().flatten());
        Ok(by_status(
            live.map(|s| s.status),
            crate::model::StepStatus::as_str,
        ))
    }

    async fn sessions_with_open_tasks(&self) -> StoreResult<Vec<String>> {
        let mut v: Vec<String> = self
            .lock()?
            .tasks
            .values()
            .filter(|t| !t.status.is_final())
            .map(|t| t.session_id.clone())
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    async fn task_stats(&self) -> StoreResult<TaskStats> {
        let g = self.lock()?;
        let (mut sum, mut n) = (0i64, 0i64);
        for t in g.tasks.values() {
            if let (Some(a), Some(b)) = (t.started_at, t.finished_at) {
                sum += b - a;
                n += 1;
            }
        }
        Ok(TaskStats {
            by_status: by_status(
                g.tasks.values().map(|t| t.status),
                crate::model::TaskStatus::as_str,
            ),
            average_execution_ms: (n > 0).then(|| sum as f64 / n as f64),
        })
    }

    async fn put_allocations(&self, allocations: &[AllocationRecord]) -> StoreResult<()> {
        let mut g = self.lock()?;
        let now = crate::model::now_ms();
        for a in allocations {
            g.allocations.insert(a.id.clone(), a.clone());
            g.record(EventRecord::allocation(a, now));
        }
        Ok(())
    }

    async fn active_allocations(&self) -> StoreResult<Vec<AllocationRecord>> {
        Ok(self
            .lock()?
            .allocations
            .values()
            .filter(|a| a.status == crate::model::AllocationStatus::Active)
            .cloned()
            .collect())
    }

    async fn insert_project(&self, p: &ProjectRecord) -> StoreResult<()> {
        let mut g = self.lock()?;
        if g.projects.contains_key(&p.id) || g.projects.values().any(|x| x.name == p.name) {
            return Err(StoreError::Conflict(format!("project '{}' exists", p.name)));
        }
        g.projects.insert(p.id.clone(), p.clone());
        g.record(EventRecord::project(p));
        Ok(())
    }

    async fn update_project(&self, p: &ProjectRecord) -> StoreResult<()> {
        let mut g = self.lock()?;
        match g.projects.get_mut(&p.id) {
            Some(x) => {
                *x = p.clone();
                g.record(EventRecord::project(p));
                Ok(())
            }
            None => Err(StoreError::Conflict(format!("project {} is gone", p.id))),
        }
    }

    async fn get_project(&self, id: &str) -> StoreResult<Option<ProjectRecord>> {
        Ok(self.lock()?.projects.get(id).cloned())
    }

    async fn project_by_name(&self, name: &str) -> StoreResult<Option<ProjectRecord>> {
        Ok(self
            .lock()?
            .projects
            .values()
            .find(|p| p.name == name)
            .cloned())
    }

    async fn list_projects(&self, q: &ProjectQuery<'_>) -> StoreResult<Vec<ProjectRecord>> {
        let g = self.lock()?;
        let mut v: Vec<ProjectRecord> = g
            .projects
            .values()
            .filter(|p| p.principal == q.principal)
            .filter(|p| q.status.is_none_or(|s| p.status == s))
            .filter(|p| q.kind.is_none_or(|k| p.kind == k))
            .filter(|p| {
                q.tag.is_none_or(|t| {
                    serde_json::from_str::<Vec<String>>(&p.tags)
                        .is_ok_and(|tags| tags.iter().any(|x| x == t))
                })
            })
            .filter(|p| {
                q.after
                    .as_ref()
                    .is_none_or(|(c, id)| (p.created_at, &p.id) > (*c, id))
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        v.truncate(q.limit as usize);
        Ok(v)
    }

    async fn delete_project(&self, id: &str) -> StoreResult<bool> {
        let mut g = self.lock()?;
        match g.projects.remove(id) {
            Some(p) => {
                g.record(EventRecord::project_deleted(
                    id,
                    p.principal,
                    crate::model::now_ms(),
                ));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn events(&self, w: &EventWindow) -> StoreResult<Vec<StoredEvent>> {
        let g = self.lock()?;
        let from = g.events.partition_point(|e| e.cursor <= w.after);
        Ok(g.events[from..]
            .iter()
            .take(w.scan as usize)
            .cloned()
            .collect())
    }

    async fn prune_events(&self, before: i64) -> StoreResult<u64> {
        let mut g = self.lock()?;
        let n = g.events.len();
        g.events.retain(|e| e.at >= before);
        Ok((n - g.events.len()) as u64)
    }

    async fn list_allocations(
        &self,
        principal: &str,
        session_id: Option<&str>,
        status: Option<crate::model::AllocationStatus>,
        offset: usize,
        limit: u32,
    ) -> StoreResult<Vec<AllocationRecord>> {
        let mut v: Vec<AllocationRecord> = self
            .lock()?
            .allocations
            .values()
            .filter(|a| a.principal == principal)
            .filter(|a| session_id.is_none_or(|s| a.session_id == s))
            .filter(|a| status.is_none_or(|s| a.status == s))
            .cloned()
            .collect();
        v.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(v.into_iter().skip(offset).take(limit as usize).collect())
    }
}

/// Counts of `statuses`, ordered by their spelling as the SQL stores'
/// `GROUP BY status ORDER BY status` orders them.
fn by_status<T: Copy>(
    statuses: impl Iterator<Item = T>,
    spell: fn(T) -> &'static str,
) -> Vec<(T, u64)> {
    let mut by: BTreeMap<&'static str, (T, u64)> = BTreeMap::new();
    for s in statuses {
        by.entry(spell(s)).or_insert((s, 0)).1 += 1;
    }
    by.into_values().collect()
}

//! Resource management: counted pools (cpu, memory_mb, disk_mb, gpu and
//! custom ones) and named locks (read / write / exclusive), granted all or
//! nothing, under per-principal and per-session quotas, with leases.
//!
//! Lock modes: `read` is shared with other readers and with one writer;
//! `write` admits readers but no other writer; `exclusive` admits nobody.
//!
//! Waiters are served in order of (effective priority, arrival). A request
//! that cannot be granted reserves what it needs: later requests may not take
//! it from under it, so a big request is never overtaken forever by small
//! ones, and waiting requests gain a priority level per `aging_seconds`.
//! Every grant is checked against the whole request at once, so two requests
//! never hold parts of each other's needs (no deadlock).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::workflows::spec::Priority;
use super::{iso, new_id};
use crate::config::ResourcesConfig;
use crate::error::{Error, ErrorCode, Result};
use crate::store::{AllocationRecord, Store, WaiterRecord};

pub mod ledger;

pub use crate::model::LockMode;
use crate::model::{AllocationStatus, Clock, OwnerKind, SystemClock};
use ledger::{Held, Ledger, Queued, Usage, held_from, parse_stored};
pub use ledger::{
    LockReq, OTHER_PRINCIPAL, Owner, Requirements, Shortage, allocation_schema,
    optional_requirements_schema, requirements_schema,
};

/// An allocation as shown.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AllocationView {
    /// `alc_...`
    pub allocation_id: String,
    pub session_id: String,
    pub holder: String,
    /// `api` (allocate_resources), `step`, `task`, `claim` (an agent task's claim) or `run`.
    pub owner_kind: String,
    pub owner_ref: Option<String>,
    /// Granted pool amounts, e.g. {"cpu": 2, "memory_mb": 4096}.
    pub granted: BTreeMap<String, u64>,
    /// Granted locks.
    pub locks: Vec<LockReq>,
    pub priority: String,
    /// `active`, `released` or `expired`.
    pub status: String,
    pub created_at: String,
    /// When the lease ends unless renewed (null: held by its step, task or run until it ends).
    pub expires_at: Option<String>,
    pub released_at: Option<String>,
    pub release_reason: Option<String>,
}

fn view(a: &AllocationRecord) -> AllocationView {
    let req = parse_stored(&a.requirements);
    AllocationView {
        allocation_id: a.id.clone(),
        session_id: a.session_id.clone(),
        holder: a.holder.clone(),
        owner_kind: a.owner_kind.to_string(),
        owner_ref: a.owner_ref.clone(),
        granted: req.pools,
        locks: req.locks,
        priority: a.priority.to_string(),
        status: a.status.to_string(),
        created_at: iso(a.created_at),
        expires_at: a.expires_at.map(iso),
        released_at: a.released_at.map(iso),
        release_reason: a.release_reason.clone(),
    }
}

struct Waiter {
    id: u64,
    /// Its row among every process's waiters (a shared store, once it waits).
    key: Option<String>,
    owner: Owner,
    req: Requirements,
    priority: Priority,
    since: i64,
    ttl: Option<u64>,
    grant: oneshot::Sender<AllocationRecord>,
}

/// The allocator's state: the ledger, and who waits.
#[derive(Default)]
struct State {
    ledger: Ledger,
    waiters: Vec<Waiter>,
    next_waiter: u64,
    /// Other processes' waiters (a shared store), as last read: served
    /// there, but what those ahead need is kept free for them here.
    foreign: Vec<(WaiterRecord, Requirements)>,
}

impl std::ops::Deref for State {
    type Target = Ledger;
    fn deref(&self) -> &Ledger {
        &self.ledger
    }
}

impl std::ops::DerefMut for State {
    fn deref_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }
}

impl State {
    /// What keeps `req` from being granted now: beside what is held, and
    /// the requests waiting for the same resources.
    fn shortage(&self, cfg: &ResourcesConfig, owner: &Owner, req: &Requirements) -> Shortage {
        let usage = self.usage();
        let mut s = self.check(
            cfg,
            &usage,
            &usage,
            &owner.principal,
            &owner.session_id,
            req,
        );
        s.waiting_ahead = self.waiting_for(req);
        s
    }

    /// Forget the waiters whose caller stopped waiting; the keys of their
    /// rows among every process's waiters (to remove).
    fn drop_closed(&mut self) -> Vec<String> {
        let gone = self
            .waiters
            .iter()
            .filter(|w| w.grant.is_closed())
            .filter_map(|w| w.key.clone())
            .collect();
        self.waiters.retain(|w| !w.grant.is_closed());
        gone
    }

    /// Waiting requests that want any of the same pools or locks.
    fn waiting_for(&self, req: &Requirements) -> usize {
        let overlaps = |w: &Requirements| {
            w.pools.keys().any(|p| req.pools.contains_key(p))
                || w.locks
                    .iter()
                    .any(|l| req.locks.iter().any(|m| m.key == l.key))
        };
        self.waiters
            .iter()
            .filter(|w| !w.grant.is_closed() && overlaps(&w.req))
            .count()
            + self.foreign.iter().filter(|(_, r)| overlaps(r)).count()
    }
}

/// Capacity, use and waiters of one pool.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PoolStatus {
    pub capacity: u64,
    pub allocated: u64,
    pub available: u64,
    /// allocated / capacity (0 for an empty pool).
    pub utilization: f64,
    /// Requests waiting for this pool.
    pub waiters: usize,
}

/// Holders of one lock.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LockStatus {
    /// The strongest mode held.
    pub mode: LockMode,
    /// Your holders' labels with their mode (every holder's for an administrator).
    pub holders: Vec<Value>,
    /// Holders of other principals, counted, not named.
    pub other_holders: usize,
    pub waiters: usize,
}

/// The caller's quota use.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QuotaUse {
    pub allocations: usize,
    pub max_allocations: u32,
    /// Pool -> {held, limit}.
    pub pools: BTreeMap<String, Value>,
}

/// Answer of get_resource_status.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ResourceStatus {
    pub pools: BTreeMap<String, PoolStatus>,
    /// Locks your principal holds (every held lock for an administrator, `auth.admin_principals`).
    pub locks: BTreeMap<String, LockStatus>,
    /// Locks held only by other principals: counted, their keys not shown.
    pub locks_held_by_others: usize,
    pub active_allocations: usize,
    pub waiting_requests: usize,
    /// The caller's principal.
    pub principal_quota: QuotaUse,
    /// The session asked about (or the default session).
    pub session_quota: QuotaUse,
}

/// The allocator of this process.
pub struct ResourceManager {
    store: Arc<dyn Store>,
    /// Other processes allocate from the same store (PostgreSQL).
    shared: bool,
    /// This process's name on its waiter rows, and how long a row lives without a heartbeat.
    node: String,
    lease_ttl_ms: i64,
    config: ResourcesConfig,
    state: tokio::sync::Mutex<State>,
    /// Bumped on every release: waiters outside the queue (steps) look again.
    changed: watch::Sender<u64>,
    /// Where "now" comes from: leases (`ttl_seconds`) and waiting age by it.
    clock: Arc<dyn Clock>,
}

fn host_cores() -> u64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
}

fn host_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .map(|kb| kb / 1024)
        .unwrap_or(4096)
}

impl ResourceManager {
    pub fn new(
        store: Arc<dyn Store>,
        config: &ResourcesConfig,
        node: String,
        lease_ttl_ms: u64,
    ) -> Self {
        let mut capacity = BTreeMap::new();
        capacity.insert("cpu".to_string(), config.cpu.unwrap_or_else(host_cores));
        capacity.insert(
            "memory_mb".to_string(),
            config.memory_mb.unwrap_or_else(host_memory_mb),
        );
        capacity.insert("disk_mb".to_string(), config.disk_mb);
        capacity.insert("gpu".to_string(), config.gpu);
        for (k, v) in &config.pools {
            capacity.insert(k.clone(), *v);
        }
        Self {
            shared: store.shared(),
            node,
            lease_ttl_ms: lease_ttl_ms as i64,
            store,
            config: config.clone(),
            state: tokio::sync::Mutex::new(State {
                ledger: Ledger {
                    capacity,
                    ..Default::default()
                },
                ..Default::default()
            }),
            changed: watch::channel(0).0,
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

    /// Load the active allocations after a start. Allocations of steps, auto
    /// tasks and runs are released: that work starts again and acquires anew.
    pub async fn load(&self) -> Result<usize> {
        let mut st = self.state.lock().await;
        let now = self.now();
        let mut stale = Vec::new();
        for rec in self.store.active_allocations().await? {
            // With a shared store another process may be running that work:
            // what a dead executor's work held is released when it is taken over.
            if !self.shared && rec.owner_kind.is_work() {
                stale.push(AllocationRecord {
                    status: AllocationStatus::Released,
                    released_at: Some(now),
                    release_reason: Some("restart: the work acquires again when it resumes".into()),
                    ..rec
                });
                continue;
            }
            let req = parse_stored(&rec.requirements);
            st.held.insert(rec.id.clone(), Held { rec, req });
        }
        if !stale.is_empty() {
            self.store.put_allocations(&stale).await?;
        }
        Ok(st.held.len())
    }

    fn refuse(&self, message: String, shortage: Option<&Shortage>) -> Error {
        let e = Error::new(
            ErrorCode::ResourceUnavailable,
            message,
            "Ask for less, wait for the holders to release (wait_seconds), or raise the pool's capacity or the quota in [resources].",
        );
        match shortage {
            Some(s) => e.with_details(serde_json::to_value(s).unwrap_or_default()),
            None => e,
        }
    }

    /// Grant what the queue allows, in order; returns the grants to persist.
    fn pump(&self, st: &mut State) -> Vec<(Waiter, AllocationRecord)> {
        let now = self.now();
        // The caller stopped waiting: it leaves the queue.
        let mut waiters: Vec<Option<Waiter>> = std::mem::take(&mut st.waiters)
            .into_iter()
            .filter(|w| !w.grant.is_closed())
            .map(Some)
            .collect();
        let decided = {
            let mut queue: Vec<Queued<'_>> = waiters
                .iter()
                .flatten()
                .map(|w| Queued {
                    principal: &w.owner.principal,
                    session_id: &w.owner.session_id,
                    holder: &w.owner.holder,
                    req: &w.req,
                    priority: w.priority,
                    since: w.since,
                    seq: w.id,
                    here: true,
                })
                .collect();
            queue.extend(st.foreign.iter().map(|(w, req)| Queued {
                principal: &w.principal,
                session_id: &w.session_id,
                holder: &w.holder,
                req,
                priority: Priority::stored(&w.priority),
                since: w.since,
                seq: u64::MAX,
                here: false,
            }));
            ledger::serve(
                &st.ledger,
                &self.config,
                &queue,
                now,
                self.config.aging_seconds.max(1) as i64 * 1000,
            )
        };
        let mut grants = Vec::new();
        let mut keep = Vec::new();
        for (k, granted) in decided {
            let Some(w) = waiters.get_mut(k).and_then(Option::take) else {
                continue; // Another process's waiter.
            };
            if granted {
                let rec = self.record(&w.owner, &w.req, w.priority, w.ttl, now);
                grants.push((w, rec));
            } else {
                keep.push(w);
            }
        }
        st.waiters = keep;
        grants
    }

    fn record(
        &self,
        owner: &Owner,
        req: &Requirements,
        priority: Priority,
        ttl: Option<u64>,
        now: i64,
    ) -> AllocationRecord {
        AllocationRecord {
            id: new_id("alc"),
            session_id: owner.session_id.clone(),
            principal: owner.principal.clone(),
            holder: owner.holder.clone(),
            owner_kind: owner.kind,
            owner_ref: owner.reference.clone(),
            requirements: req.to_value().to_string(),
            priority,
            status: AllocationStatus::Active,
            created_at: now,
            expires_at: ttl.map(|t| now + t as i64 * 1000),
            released_at: None,
            release_reason: None,
        }
    }

    /// Grant what the queue allows and hand the grants over. With a shared
    /// store the decision is made inside the store's allocation lock, against
    /// every process's active allocations.
    async fn serve(&self, st: &mut State) -> Result<()> {
        if !self.shared {
            let grants = self.pump(st);
            if grants.is_empty() {
                return Ok(());
            }
            let recs: Vec<AllocationRecord> = grants.iter().map(|(_, r)| r.clone()).collect();
            if let Err(e) = self.store.put_allocations(&recs).await {
                // Nothing was granted: the waiters go back to the queue.
                st.waiters.extend(grants.into_iter().map(|(w, _)| w));
                return Err(e.into());
            }
            return self.hand_over(st, grants).await;
        }
        // Waiters whose caller left: their rows go.
        let gone = st.drop_closed();
        if st.waiters.is_empty() {
            if !gone.is_empty() {
                self.store.drop_waiters(&gone).await?;
            }
            return Ok(());
        }
        let mut picked = Vec::new();
        let fresh_after = self.now() - self.lease_ttl_ms;
        let result = self
            .store
            .allocate(&mut |active, waiters| {
                st.held = held_from(active);
                st.foreign = waiters
                    .into_iter()
                    .filter(|w| w.node != self.node && w.seen_at >= fresh_after)
                    .map(|w| {
                        let req = parse_stored(&w.requirements);
                        (w, req)
                    })
                    .collect();
                picked = self.pump(st);
                let settled = picked
                    .iter()
                    .filter_map(|(w, _)| w.key.clone())
                    .chain(gone.iter().cloned())
                    .collect();
                (picked.iter().map(|(_, r)| r.clone()).collect(), settled)
            })
            .await;
        if let Err(e) = result {
            st.waiters.extend(picked.into_iter().map(|(w, _)| w));
            return Err(e.into());
        }
        self.hand_over(st, picked).await
    }

    /// Hand stored grants to their waiters.
    async fn hand_over(
        &self,
        st: &mut State,
        grants: Vec<(Waiter, AllocationRecord)>,
    ) -> Result<()> {
        for (w, rec) in grants {
            let req = w.req.clone();
            st.held.insert(
                rec.id.clone(),
                Held {
                    rec: rec.clone(),
                    req,
                },
            );
            if let Err(rec) = w.grant.send(rec) {
                // The caller gave up at this very moment: release at once.
                if let Some(h) = st.held.remove(&rec.id) {
                    let mut r = h.rec;
                    r.status = AllocationStatus::Released;
                    r.released_at = Some(self.now());
                    r.release_reason = Some("the requester stopped waiting".into());
                    self.store.put_allocations(&[r]).await?;
                    self.released().await;
                }
            }
        }
        Ok(())
    }

    /// With a shared store: read what every process holds now.
    async fn refresh(&self, st: &mut State) -> Result<()> {
        if self.shared {
            st.held = held_from(self.store.active_allocations().await?);
        }
        Ok(())
    }

    /// Something was released: local waiters outside the queue look again,
    /// and so do other processes.
    async fn released(&self) {
        self.changed.send_modify(|v| *v += 1);
        if self.shared
            && let Err(e) = self.store.notify("resources").await
        {
            tracing::warn!(error = %e, "cannot notify other processes of a release; they look at their next poll");
        }
    }

    /// Heartbeat: renew this process's waiter rows and remove those of
    /// processes that died.
    pub async fn heartbeat(&self) -> Result<()> {
        if self.shared {
            let now = self.now();
            self.store
                .touch_waiters(&self.node, now, now - 3 * self.lease_ttl_ms)
                .await?;
        }
        Ok(())
    }

    /// Another process released something: serve the waiters here again.
    pub async fn poke(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        self.serve(&mut st).await?;
        drop(st);
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Refuse at once what can never be granted (above capacity or quota).
    pub async fn check_possible(&self, req: &Requirements, what: &str) -> Result<()> {
        let st = self.state.lock().await;
        match st.impossible(&self.config, req) {
            Some(why) => Err(self.refuse(format!("{what} can never be granted: {why}"), None)),
            None => Ok(()),
        }
    }

    /// Acquire now or not at all (None when something is short).
    pub async fn try_acquire(
        &self,
        owner: Owner,
        req: Requirements,
        priority: Priority,
    ) -> Result<Option<AllocationView>> {
        match self
            .acquire(
                owner,
                req,
                priority,
                None,
                Some(Duration::ZERO),
                &CancellationToken::new(),
            )
            .await
        {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.code == ErrorCode::ResourceUnavailable => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Acquire all of `req` for `owner`, waiting up to `wait` (None: until
    /// `cancel`). A requirement that can never be met is refused at once.
    pub async fn acquire(
        &self,
        owner: Owner,
        req: Requirements,
        priority: Priority,
        ttl: Option<u64>,
        wait: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Result<AllocationView> {
        let rx = {
            let mut st = self.state.lock().await;
            if let Some(why) = st.impossible(&self.config, &req) {
                return Err(self.refuse(format!("the request can never be granted: {why}"), None));
            }
            let (tx, rx) = oneshot::channel();
            let id = st.next_waiter;
            st.next_waiter += 1;
            st.waiters.push(Waiter {
                id,
                key: None,
                owner: owner.clone(),
                req: req.clone(),
                priority,
                since: self.now(),
                ttl,
                grant: tx,
            });
            self.serve(&mut st).await?;
            let mut rx = rx;
            if let Ok(rec) = rx.try_recv() {
                return Ok(view(&rec));
            }
            if wait == Some(Duration::ZERO) {
                // Not granted now and the caller does not wait.
                st.waiters.retain(|w| w.id != id);
                let s = st.shortage(&self.config, &owner, &req);
                let msg = if s.pools.is_empty() && s.locks.is_empty() && s.quotas.is_empty() {
                    format!(
                        "{} earlier request(s) wait for these resources",
                        s.waiting_ahead
                    )
                } else {
                    s.describe()
                };
                return Err(self.refuse(format!("resources unavailable: {msg}"), Some(&s)));
            }
            if self.shared {
                // Other processes keep what this request needs free while it is ahead.
                let now = self.now();
                let row = WaiterRecord {
                    id: new_id("wtr"),
                    node: self.node.clone(),
                    principal: owner.principal.clone(),
                    session_id: owner.session_id.clone(),
                    holder: owner.holder.clone(),
                    requirements: req.to_value().to_string(),
                    priority: priority.as_str().into(),
                    since: now,
                    seen_at: now,
                };
                if let Some(w) = st.waiters.iter_mut().find(|w| w.id == id) {
                    self.store.put_waiter(&row).await?;
                    w.since = now;
                    w.key = Some(row.id);
                }
            }
            rx
        };
        let mut rx = rx;
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        tokio::select! {
            r = &mut rx => r.map(|rec| view(&rec)).map_err(|_| Error::internal("allocation waiter dropped")),
            _ = super::attempts::sleep_until(deadline) => self.give_up(rx, &owner, &req, "the wait ended").await,
            _ = cancel.cancelled() => self.give_up(rx, &owner, &req, "the request was cancelled").await,
        }
    }

    async fn give_up(
        &self,
        mut rx: oneshot::Receiver<AllocationRecord>,
        owner: &Owner,
        req: &Requirements,
        why: &str,
    ) -> Result<AllocationView> {
        let mut st = self.state.lock().await;
        rx.close();
        if let Ok(rec) = rx.try_recv() {
            // Granted just before we gave up: keep it.
            return Ok(view(&rec));
        }
        let gone = st.drop_closed();
        if !gone.is_empty() {
            self.store.drop_waiters(&gone).await?;
        }
        let s = st.shortage(&self.config, owner, req);
        // Our leaving may let others through.
        self.serve(&mut st).await?;
        Err(self.refuse(
            format!("resources unavailable ({why}): {}", s.describe()),
            Some(&s),
        ))
    }

    /// Release allocations (`reason` recorded), then serve the waiters.
    async fn release_where(
        &self,
        reason: &str,
        status: AllocationStatus,
        pred: impl Fn(&AllocationRecord) -> bool,
    ) -> Result<Vec<AllocationRecord>> {
        let mut st = self.state.lock().await;
        self.refresh(&mut st).await?;
        let ids: Vec<String> = st
            .held
            .values()
            .filter(|h| pred(&h.rec))
            .map(|h| h.rec.id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now();
        let recs: Vec<AllocationRecord> = ids
            .iter()
            .map(|id| AllocationRecord {
                status,
                released_at: Some(now),
                release_reason: Some(reason.into()),
                ..st.held[id].rec.clone()
            })
            .collect();
        self.store.put_allocations(&recs).await?;
        for id in &ids {
            st.held.remove(id);
        }
        self.serve(&mut st).await?;
        drop(st);
        self.released().await;
        Ok(recs)
    }

    /// Release one allocation of the principal.
    pub async fn release(&self, principal: &str, id: &str, reason: &str) -> Result<AllocationView> {
        let r = self
            .release_where(reason, AllocationStatus::Released, |a| {
                a.id == id && a.principal == principal
            })
            .await?;
        match r.first() {
            Some(a) => Ok(view(a)),
            None => Err(self.not_held(principal, id).await),
        }
    }

    async fn not_held(&self, principal: &str, id: &str) -> Error {
        // Released or expired earlier, or never the caller's.
        let older = self
            .store
            .list_allocations(principal, None, None, 0, u32::MAX)
            .await
            .ok()
            .and_then(|v| v.into_iter().find(|a| a.id == id));
        match older {
            Some(a) => Error::new(
                ErrorCode::Conflict,
                format!("allocation {id} is already {}", a.status),
                "Nothing to do; list_allocations shows what you hold.",
            ),
            None => Error::not_found("allocation", id, "list_allocations shows your allocations."),
        }
    }

    /// Release every allocation of a session (closed, or asked to).
    pub async fn release_session(&self, session_id: &str, reason: &str) -> Result<usize> {
        Ok(self
            .release_where(reason, AllocationStatus::Released, |a| {
                a.session_id == session_id
            })
            .await?
            .len())
    }

    /// Release what a step, task or run holds (it ended).
    pub async fn release_owner(
        &self,
        kind: OwnerKind,
        reference: &str,
        reason: &str,
    ) -> Result<usize> {
        Ok(self
            .release_where(reason, AllocationStatus::Released, |a| {
                a.owner_kind == kind && a.owner_ref.as_deref() == Some(reference)
            })
            .await?
            .len())
    }

    /// Release what a run and its steps hold (the run ended, however).
    pub async fn release_run(&self, run_id: &str, reason: &str) -> Result<usize> {
        let prefix = format!("{run_id}/");
        Ok(self
            .release_where(reason, AllocationStatus::Released, |a| match a.owner_kind {
                OwnerKind::Run => a.owner_ref.as_deref() == Some(run_id),
                OwnerKind::Step => a
                    .owner_ref
                    .as_deref()
                    .is_some_and(|r| r.starts_with(&prefix)),
                _ => false,
            })
            .await?
            .len())
    }

    /// Reclaim allocations whose lease ended.
    pub async fn expire(&self) -> Result<usize> {
        let now = self.now();
        Ok(self
            .release_where("the lease expired", AllocationStatus::Expired, |a| {
                a.expires_at.is_some_and(|e| e <= now)
            })
            .await?
            .len())
    }

    /// Extend an allocation's lease from now.
    pub async fn renew(&self, principal: &str, id: &str, ttl: u64) -> Result<AllocationView> {
        let mut st = self.state.lock().await;
        self.refresh(&mut st).await?;
        let Some(h) = st.held.get(id).filter(|h| h.rec.principal == principal) else {
            drop(st);
            return Err(self.not_held(principal, id).await);
        };
        if h.rec.expires_at.is_none() {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "allocation {id} is held by its {} and has no lease",
                    h.rec.owner_kind
                ),
                "It is released when its step, task or run ends.",
            ));
        }
        let mut rec = h.rec.clone();
        rec.expires_at = Some(self.now() + ttl as i64 * 1000);
        self.store
            .put_allocations(std::slice::from_ref(&rec))
            .await?;
        let v = view(&rec);
        st.held.get_mut(id).expect("held").rec = rec;
        Ok(v)
    }

    pub fn ttl(&self, ttl: Option<u64>) -> Result<u64> {
        super::sessions::bounded(
            "ttl_seconds",
            ttl,
            self.config.default_ttl_seconds,
            self.config.max_ttl_seconds,
            "Ask for a lease you will renew (renew_allocation) before it ends.",
        )
    }

    /// A page of the principal's allocations.
    pub async fn list(
        &self,
        principal: &str,
        session_id: Option<&str>,
        status: Option<AllocationStatus>,
        offset: usize,
        limit: u32,
    ) -> Result<Vec<AllocationView>> {
        Ok(self
            .store
            .list_allocations(principal, session_id, status, offset, limit)
            .await?
            .iter()
            .map(view)
            .collect())
    }

    /// Every pool's capacity, use and waiters, and how many requests wait in this process.
    pub async fn pools(&self) -> (BTreeMap<String, PoolStatus>, usize) {
        let mut st = self.state.lock().await;
        if let Err(e) = self.refresh(&mut st).await {
            tracing::warn!(error = %e, "cannot read the allocations; showing this process's last view");
        }
        (Self::pool_status(&st, &st.usage()), st.waiters.len())
    }

    fn pool_status(st: &State, usage: &Usage) -> BTreeMap<String, PoolStatus> {
        let mut pools = BTreeMap::new();
        for (p, cap) in &st.capacity {
            let used = usage.pools.get(p).copied().unwrap_or(0);
            pools.insert(
                p.clone(),
                PoolStatus {
                    capacity: *cap,
                    allocated: used,
                    available: cap.saturating_sub(used),
                    utilization: if *cap == 0 {
                        0.0
                    } else {
                        used as f64 / *cap as f64
                    },
                    waiters: st
                        .waiters
                        .iter()
                        .filter(|w| w.req.pools.contains_key(p))
                        .count(),
                },
            );
        }
        pools
    }

    /// What `principal` may see of the allocations: pools in full; its own
    /// locks with their holders, others' holders as counts and others' lock
    /// keys not at all, unless `admin` (`auth.admin_principals`).
    pub async fn status(&self, principal: &str, session_id: &str, admin: bool) -> ResourceStatus {
        let mut st = self.state.lock().await;
        if let Err(e) = self.refresh(&mut st).await {
            tracing::warn!(error = %e, "cannot read the allocations; showing this process's last view");
        }
        let usage = st.usage();
        let pools = Self::pool_status(&st, &usage);
        let mut locks = BTreeMap::new();
        let mut locks_held_by_others = 0;
        for (k, hs) in &usage.locks {
            let visible = |owner: &str| admin || owner == principal;
            if !hs.iter().any(|(_, _, o)| visible(o)) {
                locks_held_by_others += 1;
                continue;
            }
            locks.insert(
                k.clone(),
                LockStatus {
                    mode: hs
                        .iter()
                        .map(|(m, _, _)| *m)
                        .max()
                        .unwrap_or(LockMode::Read),
                    holders: hs
                        .iter()
                        .filter(|(_, _, o)| visible(o))
                        .map(|(m, h, _)| json!({"holder": h, "mode": m}))
                        .collect(),
                    other_holders: hs.iter().filter(|(_, _, o)| !visible(o)).count(),
                    waiters: st
                        .waiters
                        .iter()
                        .filter(|w| w.req.locks.iter().any(|l| &l.key == k))
                        .count(),
                },
            );
        }
        let quota = |entry: Option<&(usize, BTreeMap<String, u64>)>,
                     max: u32,
                     per: &BTreeMap<String, u64>| {
            let (n, held) = entry.cloned().unwrap_or_default();
            QuotaUse {
                allocations: n,
                max_allocations: max,
                pools: per
                    .iter()
                    .map(|(p, l)| {
                        (
                            p.clone(),
                            json!({"held": held.get(p).copied().unwrap_or(0), "limit": l}),
                        )
                    })
                    .collect(),
            }
        };
        let q = &self.config.quotas;
        ResourceStatus {
            pools,
            locks,
            locks_held_by_others,
            active_allocations: st.held.len(),
            waiting_requests: st.waiters.len(),
            principal_quota: quota(
                usage.by_principal.get(principal),
                q.max_allocations_per_principal,
                &q.per_principal,
            ),
            session_quota: quota(
                usage.by_session.get(session_id),
                q.max_allocations_per_session,
                &q.per_session,
            ),
        }
    }

    /// Pool utilization and impossible states, for health.
    pub async fn health(&self) -> (Vec<(String, f64)>, Vec<String>) {
        let mut st = self.state.lock().await;
        if let Err(e) = self.refresh(&mut st).await {
            tracing::warn!(error = %e, "cannot read the allocations; showing this process's last view");
        }
        let usage = st.usage();
        let mut util = Vec::new();
        let mut broken = Vec::new();
        for (p, cap) in &st.capacity {
            let used = usage.pools.get(p).copied().unwrap_or(0);
            if used > *cap {
                broken.push(format!(
                    "pool {p} is over capacity: {used} of {cap} allocated"
                ));
            }
            if *cap > 0 {
                util.push((p.clone(), used as f64 / *cap as f64));
            }
        }
        for (k, hs) in &usage.locks {
            for (i, (a, _, _)) in hs.iter().enumerate() {
                if hs.iter().skip(i + 1).any(|(b, _, _)| !a.compatible(*b)) {
                    broken.push(format!("lock {k} is held in incompatible modes"));
                    break;
                }
            }
        }
        (util, broken)
    }

    /// Subscribe to releases (steps waiting outside the queue look again).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// An allocation asked for by a caller (allocate_resources).
#[derive(Debug, Clone)]
pub struct AllocateRequest {
    /// Flat or nested requirements, as given.
    pub requirements: Value,
    /// The holder's label (default: the principal).
    pub user_id: Option<String>,
    /// The owning session (default: the caller's default session).
    pub session_id: Option<String>,
    pub ttl_seconds: Option<u64>,
    /// 0 or none: answer at once.
    pub wait_seconds: Option<u64>,
    pub priority: Priority,
}

/// A page of allocations, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AllocationPage {
    pub allocations: Vec<AllocationView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl super::Engine {
    /// Allocate for a caller: the request is checked (requirements, lease,
    /// wait, holder label), then granted all or nothing, waiting up to
    /// `wait_seconds` unless `cancel` fires first.
    pub async fn allocate(
        &self,
        p: &super::Principal,
        r: AllocateRequest,
        cancel: &CancellationToken,
    ) -> Result<AllocationView> {
        let req = Requirements::parse(&r.requirements)?;
        if req.is_empty() {
            return Err(Error::invalid(
                "the requirements ask for nothing",
                "Name at least one pool amount above 0 or one lock.",
            ));
        }
        let ttl = self.resources().ttl(r.ttl_seconds)?;
        let wait = self.wait_if_asked(r.wait_seconds)?;
        let session = self.sessions().resolve(p, r.session_id.as_deref()).await?;
        let holder = r.user_id.unwrap_or_else(|| p.name().to_string());
        if holder.is_empty() || holder.chars().count() > 128 {
            return Err(Error::invalid(
                "user_id must have 1-128 characters",
                "Use a short label such as an agent's name.",
            ));
        }
        let owner = Owner {
            session_id: session.session_id.clone(),
            principal: p.name().to_string(),
            holder,
            kind: OwnerKind::Api,
            reference: None,
        };
        self.resources()
            .acquire(owner, req, r.priority, Some(ttl), Some(wait), cancel)
            .await
    }

    /// The caller's allocations, newest first, a page at a time.
    pub async fn list_allocations(
        &self,
        p: &super::Principal,
        session_id: Option<&str>,
        status: Option<AllocationStatus>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<AllocationPage> {
        let limit = crate::model::page::page_limit(&self.config().limits, limit)?;
        let offset = match cursor {
            Some(c) => super::workflows::decode_offset(c)?,
            None => 0,
        };
        let mut page = self
            .resources()
            .list(p.name(), session_id, status, offset, limit + 1)
            .await?;
        let more = page.len() > limit as usize;
        page.truncate(limit as usize);
        Ok(AllocationPage {
            next_cursor: more.then(|| super::workflows::encode_offset(offset + limit as usize)),
            allocations: page,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Allocate {
            slots: u64,
            cpu: u64,
            lock: Option<(usize, LockMode)>,
            wait_ms: u64,
            lease: bool,
        },
        ReleaseOldest,
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        let mode = prop_oneof![
            Just(LockMode::Read),
            Just(LockMode::Write),
            Just(LockMode::Exclusive)
        ];
        prop_oneof![
            4 => (0u64..4, 0u64..3, proptest::option::of((0usize..2, mode)), 0u64..30, any::<bool>())
                .prop_map(|(slots, cpu, lock, wait_ms, lease)| Op::Allocate { slots, cpu, lock, wait_ms, lease }),
            2 => Just(Op::ReleaseOldest),
            1 => Just(Op::Expire),
        ]
    }

    fn config() -> ResourcesConfig {
        let mut c = ResourcesConfig {
            cpu: Some(4),
            memory_mb: Some(1024),
            ..Default::default()
        };
        c.pools.insert("slots".into(), 5);
        c.quotas.max_allocations_per_session = 6;
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Under random concurrent allocate / release / expire sequences no pool
        /// is over capacity, no incompatible lock modes are held together, and
        /// releasing everything adds back up exactly.
        #[test]
        fn never_over_capacity_and_everything_adds_back(workers in proptest::collection::vec(proptest::collection::vec(op(), 1..12), 2..6)) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let mgr = Arc::new(ResourceManager::new(Arc::new(crate::store::memory::MemoryStore::default()), &config(), "test".into(), 15_000));
                let mut handles = Vec::new();
                for (w, ops) in workers.into_iter().enumerate() {
                    let mgr = mgr.clone();
                    handles.push(tokio::spawn(async move {
                        let mut mine: Vec<String> = Vec::new();
                        for op in ops {
                            match op {
                                Op::Allocate { slots, cpu, lock, wait_ms, lease } => {
                                    let mut req = Requirements::default();
                                    if slots > 0 { req.pools.insert("slots".into(), slots); }
                                    if cpu > 0 { req.pools.insert("cpu".into(), cpu); }
                                    if let Some((k, mode)) = lock {
                                        req.locks.push(LockReq { key: format!("k{k}"), mode });
                                    }
                                    if req.is_empty() { continue; }
                                    let owner = Owner {
                                        session_id: format!("ses_{}", w % 2),
                                        principal: "p".into(),
                                        holder: format!("w{w}"),
                                        kind: crate::model::OwnerKind::Api,
                                        reference: None,
                                    };
                                    let ttl = if lease { Some(0) } else { Some(3600) };
                                    match mgr.acquire(owner, req, Priority::Normal, ttl, Some(Duration::from_millis(wait_ms)), &CancellationToken::new()).await {
                                        Ok(a) => mine.push(a.allocation_id),
                                        Err(e) => assert_eq!(e.code, ErrorCode::ResourceUnavailable, "{e}"),
                                    }
                                }
                                Op::ReleaseOldest => {
                                    if !mine.is_empty() {
                                        let id = mine.remove(0);
                                        // It may have expired meanwhile.
                                        let _ = mgr.release("p", &id, "test").await;
                                    }
                                }
                                Op::Expire => { mgr.expire().await.unwrap(); }
                            }
                            let (_, broken) = mgr.health().await;
                            assert!(broken.is_empty(), "{broken:?}");
                        }
                        mine
                    }));
                }
                for h in handles {
                    for id in h.await.unwrap() {
                        let _ = mgr.release("p", &id, "done").await;
                    }
                }
                let s = mgr.status("p", "ses_0", false).await;
                for (name, p) in &s.pools {
                    assert_eq!(p.allocated, 0, "pool {name} does not add back up");
                    assert_eq!(p.available, p.capacity);
                }
                assert!(s.locks.is_empty());
                assert_eq!(s.active_allocations, 0);
            });
        }
    }

    #[test]
    fn nested_and_flat_requirements() {
        let r = Requirements::parse(&json!({"cpu": {"cores": 2}, "memory": {"gb": 0.5}, "disk": {"mb": 10}, "gpu": {"count": 1}, "db": 3})).unwrap();
        assert_eq!(
            r.to_value(),
            json!({"cpu": 2, "memory_mb": 512, "disk_mb": 10, "gpu": 1, "db": 3})
        );
        let r = Requirements::parse(&json!({"cpu": 1, "locks": [{"key": "a", "mode": "read"}]}))
            .unwrap();
        assert_eq!(Requirements::parse(&r.to_value()).unwrap(), r);
        assert!(
            Requirements::parse(
                &json!({"locks": [{"key": "a", "mode": "read"}, {"key": "a", "mode": "write"}]})
            )
            .is_err()
        );
        assert!(Requirements::parse(&json!({"cpu": {"cores": 0.5}})).is_err());
    }
}

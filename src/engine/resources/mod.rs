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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::workflows::spec::Priority;
use super::{iso, new_id, now_ms};
use crate::config::ResourcesConfig;
use crate::error::{Error, ErrorCode, Result};
use crate::store::{AllocationRecord, Store, WaiterRecord};

pub use crate::model::LockMode;
use crate::model::{AllocationStatus, OwnerKind};

/// One lock in a requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockReq {
    /// Any string, e.g. `repo:main` or `file:/data/x.csv`.
    pub key: String,
    /// `read` (shared), `write` (one writer, readers allowed) or `exclusive` (nobody else).
    pub mode: LockMode,
}

/// Requirements in canonical form: amounts per pool, and locks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    pub pools: BTreeMap<String, u64>,
    pub locks: Vec<LockReq>,
}

impl Requirements {
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty() && self.locks.is_empty()
    }

    /// The canonical flat JSON: `{"cpu": 2, "memory_mb": 4096, "locks": [...]}`.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in &self.pools {
            m.insert(k.clone(), json!(v));
        }
        if !self.locks.is_empty() {
            m.insert("locks".into(), json!(self.locks));
        }
        Value::Object(m)
    }

    /// Parse the flat form or the original nested form
    /// (`{"cpu": {"cores": 2}, "memory": {"gb": 4}, "disk": {"gb": 10}, "gpu": {"count": 1}}`).
    pub fn parse(v: &Value) -> Result<Requirements> {
        let bad = |m: String| {
            Error::invalid(
                m,
                "Give requirements as {\"cpu\": 2, \"memory_mb\": 4096, \"locks\": [{\"key\": \"repo:main\", \"mode\": \"write\"}]} (whole units), or the nested form {\"cpu\": {\"cores\": 2}, \"memory\": {\"gb\": 4}}.",
            )
        };
        let Some(obj) = v.as_object() else {
            return Err(bad(format!("requirements must be an object, got {v}")));
        };
        let mut r = Requirements::default();
        let whole = |what: &str, x: &Value, scale: f64| -> Result<u64> {
            let f = x
                .as_f64()
                .ok_or_else(|| bad(format!("{what} must be a number, got {x}")))?;
            let n = f * scale;
            if n < 0.0 || n.fract() != 0.0 || !n.is_finite() {
                return Err(bad(format!(
                    "{what} must be a whole, non-negative amount, got {x}"
                )));
            }
            Ok(n as u64)
        };
        for (k, x) in obj {
            let (pool, amount) = match (k.as_str(), x) {
                ("locks", Value::Array(items)) => {
                    for item in items {
                        let l: LockReq = serde_json::from_value(item.clone())
                            .map_err(|e| bad(format!("locks: {e} in {item}")))?;
                        if l.key.is_empty() || l.key.chars().count() > 256 {
                            return Err(bad("a lock key must have 1-256 characters".into()));
                        }
                        if r.locks.iter().any(|o| o.key == l.key) {
                            return Err(bad(format!("lock '{}' is named twice", l.key)));
                        }
                        r.locks.push(l);
                    }
                    continue;
                }
                ("locks", _) => return Err(bad("locks must be a list".into())),
                ("cpu", Value::Object(o)) => (
                    "cpu",
                    whole("cpu.cores", o.get("cores").unwrap_or(&json!(0)), 1.0)?,
                ),
                ("memory" | "disk", Value::Object(o)) => {
                    let pool = if k == "memory" {
                        "memory_mb"
                    } else {
                        "disk_mb"
                    };
                    let mb = match (o.get("gb"), o.get("mb")) {
                        (Some(g), None) => whole(&format!("{k}.gb"), g, 1024.0)?,
                        (None, Some(m)) => whole(&format!("{k}.mb"), m, 1.0)?,
                        _ => return Err(bad(format!("{k} must give gb or mb"))),
                    };
                    (pool, mb)
                }
                ("gpu", Value::Object(o)) => (
                    "gpu",
                    whole("gpu.count", o.get("count").unwrap_or(&json!(0)), 1.0)?,
                ),
                (pool, x) => (pool, whole(pool, x, 1.0)?),
            };
            if amount > 0 {
                *r.pools.entry(pool.to_string()).or_insert(0) += amount;
            }
        }
        Ok(r)
    }
}

/// Who an allocation is for.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub session_id: String,
    pub principal: String,
    /// A label shown to others (the original `user_id`, or `run/step`).
    pub holder: String,
    /// What holds it.
    pub kind: OwnerKind,
    pub reference: Option<String>,
}

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

/// A holder label as `viewer` may see it: its own by name, another
/// principal's only as such (labels and lock keys can carry private names).
fn shown_holder<'a>(holder: &'a str, owner: &str, viewer: &str) -> &'a str {
    if owner == viewer {
        holder
    } else {
        OTHER_PRINCIPAL
    }
}

/// What another principal's holder is shown as.
pub const OTHER_PRINCIPAL: &str = "(another principal)";

/// What keeps a request from being granted now.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct Shortage {
    /// Pools short: pool -> {requested, available, capacity}.
    pub pools: BTreeMap<String, Value>,
    /// Locks held in a conflicting mode: key -> holders (holder label and mode;
    /// another principal's holder is not named).
    pub locks: BTreeMap<String, Vec<Value>>,
    /// Quotas that would be exceeded.
    pub quotas: Vec<String>,
    /// Requests waiting ahead of this one for the same resources.
    pub waiting_ahead: usize,
}

impl Shortage {
    fn is_empty(&self) -> bool {
        self.pools.is_empty()
            && self.locks.is_empty()
            && self.quotas.is_empty()
            && self.waiting_ahead == 0
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (p, v) in &self.pools {
            parts.push(format!(
                "{p}: {} requested, {} available of {}",
                v["requested"], v["available"], v["capacity"]
            ));
        }
        for (k, hs) in &self.locks {
            let who: Vec<String> = hs
                .iter()
                .map(|h| {
                    format!(
                        "{} ({})",
                        h["holder"].as_str().unwrap_or("?"),
                        h["mode"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            parts.push(format!("lock '{k}' held by {}", who.join(", ")));
        }
        parts.extend(self.quotas.iter().cloned());
        if self.waiting_ahead > 0 {
            parts.push(format!(
                "{} earlier request(s) wait for the same resources",
                self.waiting_ahead
            ));
        }
        parts.join("; ")
    }
}

struct Held {
    rec: AllocationRecord,
    req: Requirements,
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

/// The allocator's state: capacities, what is held, who waits.
#[derive(Default)]
struct State {
    capacity: BTreeMap<String, u64>,
    held: BTreeMap<String, Held>,
    waiters: Vec<Waiter>,
    next_waiter: u64,
    /// Other processes' waiters (a shared store), as last read: served
    /// there, but what those ahead need is kept free for them here.
    foreign: Vec<(WaiterRecord, Requirements)>,
}

/// Pool usage and lock holders derived from the held allocations.
#[derive(Default)]
struct Usage {
    pools: BTreeMap<String, u64>,
    /// Lock key -> (mode, holder label, holder's principal).
    locks: HashMap<String, Vec<(LockMode, String, String)>>,
    by_principal: HashMap<String, (usize, BTreeMap<String, u64>)>,
    by_session: HashMap<String, (usize, BTreeMap<String, u64>)>,
}

impl Usage {
    fn add(
        &mut self,
        owner_principal: &str,
        owner_session: &str,
        holder: &str,
        req: &Requirements,
    ) {
        for (p, n) in &req.pools {
            *self.pools.entry(p.clone()).or_insert(0) += n;
        }
        for l in &req.locks {
            self.locks.entry(l.key.clone()).or_default().push((
                l.mode,
                holder.to_string(),
                owner_principal.to_string(),
            ));
        }
        for (map, key) in [
            (&mut self.by_principal, owner_principal),
            (&mut self.by_session, owner_session),
        ] {
            let e = map.entry(key.to_string()).or_default();
            e.0 += 1;
            for (p, n) in &req.pools {
                *e.1.entry(p.clone()).or_insert(0) += n;
            }
        }
    }
}

impl State {
    fn usage(&self) -> Usage {
        let mut u = Usage::default();
        for h in self.held.values() {
            u.add(&h.rec.principal, &h.rec.session_id, &h.rec.holder, &h.req);
        }
        u
    }

    /// Why `req` cannot be granted on top of `usage` (empty: it can).
    /// `usage` gives the pool amounts and lock holders to fit beside (held,
    /// plus what waiters ahead reserve); `held` the allocations quotas count.
    fn check(
        &self,
        cfg: &ResourcesConfig,
        usage: &Usage,
        held: &Usage,
        owner: &Owner,
        req: &Requirements,
    ) -> Shortage {
        let mut s = Shortage::default();
        for (p, n) in &req.pools {
            let cap = self.capacity.get(p).copied().unwrap_or(0);
            let used = usage.pools.get(p).copied().unwrap_or(0);
            if used + n > cap {
                s.pools.insert(
                    p.clone(),
                    json!({"requested": n, "available": cap.saturating_sub(used), "capacity": cap}),
                );
            }
        }
        for l in &req.locks {
            if let Some(hs) = usage.locks.get(&l.key) {
                let bad: Vec<Value> = hs
                    .iter()
                    .filter(|(m, _, _)| !l.mode.compatible(*m))
                    .map(|(m, h, p)| json!({"holder": shown_holder(h, p, &owner.principal), "mode": m}))
                    .collect();
                if !bad.is_empty() {
                    s.locks.insert(l.key.clone(), bad);
                }
            }
        }
        let q = &cfg.quotas;
        for (what, map, key, max_n, per_pool) in [
            (
                "principal",
                &held.by_principal,
                owner.principal.as_str(),
                q.max_allocations_per_principal,
                &q.per_principal,
            ),
            (
                "session",
                &held.by_session,
                owner.session_id.as_str(),
                q.max_allocations_per_session,
                &q.per_session,
            ),
        ] {
            let (n, pools) = map.get(key).cloned().unwrap_or_default();
            if n + 1 > max_n as usize {
                s.quotas.push(format!(
                    "the {what} holds {n} allocations; its quota is {max_n}"
                ));
            }
            for (p, amount) in &req.pools {
                if let Some(limit) = per_pool.get(p) {
                    let held = pools.get(p).copied().unwrap_or(0);
                    if held + amount > *limit {
                        s.quotas
                            .push(format!("the {what} holds {held} {p}; its quota is {limit}"));
                    }
                }
            }
        }
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

    /// Requirements that can never be met: above capacity or quota.
    fn impossible(&self, cfg: &ResourcesConfig, req: &Requirements) -> Option<String> {
        for (p, n) in &req.pools {
            let Some(cap) = self.capacity.get(p) else {
                return Some(format!(
                    "there is no pool '{p}' (pools: {})",
                    self.capacity.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            };
            if n > cap {
                return Some(format!("{n} {p} requested; the pool's capacity is {cap}"));
            }
            for (what, per) in [
                ("principal", &cfg.quotas.per_principal),
                ("session", &cfg.quotas.per_session),
            ] {
                if let Some(limit) = per.get(p)
                    && n > limit
                {
                    return Some(format!(
                        "{n} {p} requested; the per-{what} quota is {limit}"
                    ));
                }
            }
        }
        None
    }
}

/// Active allocations by id.
fn held_from(active: Vec<AllocationRecord>) -> BTreeMap<String, Held> {
    active
        .into_iter()
        .map(|rec| {
            let req = parse_stored(&rec.requirements);
            (rec.id.clone(), Held { rec, req })
        })
        .collect()
}

/// Requirements as stored (they were valid when stored).
fn parse_stored(json_text: &str) -> Requirements {
    Requirements::parse(&serde_json::from_str(json_text).unwrap_or(json!({}))).unwrap_or_default()
}

fn rank(p: Priority) -> i64 {
    match p {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
        Priority::Critical => 3,
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
                capacity,
                ..Default::default()
            }),
            changed: watch::channel(0).0,
        }
    }

    /// Load the active allocations after a start. Allocations of steps, auto
    /// tasks and runs are released: that work starts again and acquires anew.
    pub async fn load(&self) -> Result<usize> {
        let mut st = self.state.lock().await;
        let now = now_ms();
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
        let now = now_ms();
        let aging = self.config.aging_seconds.max(1) as i64 * 1000;
        let urgency = |p: Priority, since: i64| std::cmp::Reverse(rank(p) + (now - since) / aging);
        /// Whose turn: a waiter of this process, or another process's (by index in `foreign`).
        enum Turn {
            Here(Box<Waiter>),
            There(usize),
        }
        // Everyone waiting, in service order (urgency, then arrival).
        let mut order: Vec<(std::cmp::Reverse<i64>, i64, u64, Turn)> =
            std::mem::take(&mut st.waiters)
                .into_iter()
                .filter(|w| !w.grant.is_closed()) // The caller stopped waiting.
                .map(|w| {
                    (
                        urgency(w.priority, w.since),
                        w.since,
                        w.id,
                        Turn::Here(Box::new(w)),
                    )
                })
                .collect();
        for (i, (w, _)) in st.foreign.iter().enumerate() {
            let p = super::runs::priority_from_str(&w.priority);
            order.push((urgency(p, w.since), w.since, u64::MAX, Turn::There(i)));
        }
        order.sort_by_key(|(u, since, id, _)| (*u, *since, *id));
        // Quotas count what is held (and granted in this pass); pools and locks
        // also count what blocked waiters ahead reserve.
        let mut held = st.usage();
        let mut taken = st.usage();
        let mut grants = Vec::new();
        let mut keep = Vec::new();
        for (_, _, _, turn) in order {
            let w = match turn {
                Turn::Here(w) => *w,
                Turn::There(i) => {
                    // Granted by its own process: keep it free here.
                    let (w, req) = &st.foreign[i];
                    taken.add(&w.principal, &w.session_id, &w.holder, req);
                    continue;
                }
            };
            let (o, req) = (&w.owner, &w.req);
            let fits = st.check(&self.config, &taken, &held, o, req).is_empty();
            taken.add(&o.principal, &o.session_id, &o.holder, req);
            if fits {
                held.add(&o.principal, &o.session_id, &o.holder, req);
                let rec = self.record(o, req, w.priority, w.ttl, now);
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
        let fresh_after = now_ms() - self.lease_ttl_ms;
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
                    r.released_at = Some(now_ms());
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
            let now = now_ms();
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
                since: now_ms(),
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
                let usage = st.usage();
                let mut s = st.check(&self.config, &usage, &usage, &owner, &req);
                s.waiting_ahead = st.waiting_for(&req);
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
                let now = now_ms();
                let row = WaiterRecord {
                    id: new_id("wtr"),
                    node: self.node.clone(),
                    principal: owner.principal.clone(),
                    session_id: owner.session_id.clone(),
                    holder: owner.holder.clone(),
                    requirements: req.to_value().to_string(),
                    priority: super::runs::priority_str(priority).into(),
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
        let usage = st.usage();
        let mut s = st.check(&self.config, &usage, &usage, owner, req);
        s.waiting_ahead = st.waiting_for(req);
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
        let now = now_ms();
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
        let now = now_ms();
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
        rec.expires_at = Some(now_ms() + ttl as i64 * 1000);
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
        status: Option<&str>,
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

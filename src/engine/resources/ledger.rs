//! The allocator's ledger, pure: pool capacities, the active allocations
//! and what they hold, whether a request fits beside them (pools, lock
//! modes, quotas), and in which order a queue of waiters is served. No I/O
//! and no clock: `ResourceManager` keeps the ledger behind its lock, asks it,
//! and writes what it decides through the store.

use std::collections::{BTreeMap, HashMap};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::ResourcesConfig;
use crate::error::{Error, Result};
use crate::model::{LockMode, OwnerKind, Priority};
use crate::store::AllocationRecord;

/// One lock in a requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockReq {
    /// Any string, e.g. `repo:main` or `file:/data/x.csv`.
    pub key: String,
    /// `read` (shared), `write` (one writer, readers allowed) or `exclusive` (nobody else).
    pub mode: LockMode,
}

/// The published shape of requirements: whole amounts per pool (or the
/// original's nested form, `"cpu": {"cores": 2}`, `"memory": {"gb": 4}`), and locks.
pub fn requirements_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let max = crate::model::bounds::MAX_AMOUNT;
    schemars::json_schema!({
        "type": "object",
        "properties": {
            "locks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["key", "mode"],
                    "properties": {
                        "key": {"type": "string", "minLength": 1, "maxLength": MAX_LOCK_KEY_CHARS},
                        "mode": {"type": "string", "enum": ["read", "write", "exclusive"]}
                    }
                }
            }
        },
        "additionalProperties": {"anyOf": [
            {"type": "integer", "minimum": 0, "maximum": max},
            {"type": "object", "minProperties": 1, "maxProperties": 1,
             "additionalProperties": {"type": "number", "minimum": 0, "maximum": max}}
        ]}
    })
}

/// [`requirements_schema`] for an allocation, which must ask for something:
/// at least one pool amount of 1 or more, or a lock.
pub fn allocation_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut v = requirements_schema(g).to_value();
    v["minProperties"] = json!(1);
    v["properties"]["locks"]["minItems"] = json!(1);
    v["additionalProperties"]["anyOf"][0]["minimum"] = json!(1);
    schemars::Schema::try_from(v).unwrap_or_default()
}

/// [`requirements_schema`] for an optional field.
pub fn optional_requirements_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut s = requirements_schema(g);
    s.insert("type".into(), json!(["object", "null"]));
    s
}

const MAX_LOCK_KEY_CHARS: usize = 256;

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
            if n < 0.0
                || n.fract() != 0.0
                || !n.is_finite()
                || n > crate::model::bounds::MAX_AMOUNT as f64
            {
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
                        if l.key.is_empty() || l.key.chars().count() > MAX_LOCK_KEY_CHARS {
                            return Err(bad(format!(
                                "a lock key must have 1-{MAX_LOCK_KEY_CHARS} characters"
                            )));
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
                // Any other pool in the nested form: its one amount, whatever
                // its unit is called (`"network": {"mbps": 100}`).
                (pool, Value::Object(o)) if o.len() == 1 => {
                    let (unit, x) = o.iter().next().expect("one entry");
                    (pool, whole(&format!("{pool}.{unit}"), x, 1.0)?)
                }
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

/// A holder label as `viewer` may see it: its own by name, another
/// principal's only as such (labels and lock keys can carry private names).
pub fn shown_holder<'a>(holder: &'a str, owner: &str, viewer: &str) -> &'a str {
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
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
            && self.locks.is_empty()
            && self.quotas.is_empty()
            && self.waiting_ahead == 0
    }

    pub fn describe(&self) -> String {
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

/// An active allocation and what it holds.
pub struct Held {
    pub rec: AllocationRecord,
    pub req: Requirements,
}

/// Capacities and the active allocations by id.
#[derive(Default)]
pub struct Ledger {
    pub capacity: BTreeMap<String, u64>,
    pub held: BTreeMap<String, Held>,
}

/// Pool usage and lock holders derived from the held allocations.
#[derive(Default)]
pub struct Usage {
    pub pools: BTreeMap<String, u64>,
    /// Lock key -> (mode, holder label, holder's principal).
    pub locks: HashMap<String, Vec<(LockMode, String, String)>>,
    pub by_principal: HashMap<String, (usize, BTreeMap<String, u64>)>,
    pub by_session: HashMap<String, (usize, BTreeMap<String, u64>)>,
}

impl Usage {
    pub fn add(
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

impl Ledger {
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        for h in self.held.values() {
            u.add(&h.rec.principal, &h.rec.session_id, &h.rec.holder, &h.req);
        }
        u
    }

    /// Why `req` cannot be granted on top of `usage` (empty: it can).
    /// `usage` gives the pool amounts and lock holders to fit beside (held,
    /// plus what waiters ahead reserve); `held` the allocations quotas count.
    pub fn check(
        &self,
        cfg: &ResourcesConfig,
        usage: &Usage,
        held: &Usage,
        principal: &str,
        session_id: &str,
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
                    .map(|(m, h, p)| json!({"holder": shown_holder(h, p, principal), "mode": m}))
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
                principal,
                q.max_allocations_per_principal,
                &q.per_principal,
            ),
            (
                "session",
                &held.by_session,
                session_id,
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

    /// Requirements that can never be met: above capacity or quota.
    pub fn impossible(&self, cfg: &ResourcesConfig, req: &Requirements) -> Option<String> {
        for (p, n) in &req.pools {
            let Some(cap) = self.capacity.get(p) else {
                return Some(format!(
                    "there is no pool '{p}' (pools: {}); a server adds one under [resources.pools], e.g. {p} = 100",
                    self.capacity.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            };
            if n > cap {
                let key = if matches!(p.as_str(), "cpu" | "memory_mb" | "disk_mb" | "gpu") {
                    format!("resources.{p}")
                } else {
                    format!("resources.pools.{p}")
                };
                return Some(format!(
                    "{n} {p} requested; the pool's capacity is {cap} ({key})"
                ));
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
pub fn held_from(active: Vec<AllocationRecord>) -> BTreeMap<String, Held> {
    active
        .into_iter()
        .map(|rec| {
            let req = parse_stored(&rec.requirements);
            (rec.id.clone(), Held { rec, req })
        })
        .collect()
}

/// Requirements as stored (they were valid when stored).
pub fn parse_stored(json_text: &str) -> Requirements {
    Requirements::parse(&serde_json::from_str(json_text).unwrap_or(json!({}))).unwrap_or_default()
}

/// One request in the service queue.
pub struct Queued<'a> {
    pub principal: &'a str,
    pub session_id: &'a str,
    pub holder: &'a str,
    pub req: &'a Requirements,
    pub priority: Priority,
    /// When it started waiting (ms).
    pub since: i64,
    /// Arrival order among requests with the same `since`.
    pub seq: u64,
    /// Decided by this process (else another process's waiter: served there,
    /// but what it needs is kept free for it here).
    pub here: bool,
}

/// Serve a queue of waiters: in order of urgency (priority, plus one level
/// per `aging_ms` waited), then arrival. Each request is granted if it fits
/// beside what is held, what was granted in this pass and what every
/// request ahead of it needs (so a big request is never overtaken forever);
/// quotas count only what is held and granted. Returns the queue's indices
/// in service order, each with whether it is granted (another process's
/// requests are never granted here).
pub fn serve(
    ledger: &Ledger,
    cfg: &ResourcesConfig,
    queue: &[Queued<'_>],
    now: i64,
    aging_ms: i64,
) -> Vec<(usize, bool)> {
    let aging = aging_ms.max(1);
    let mut order: Vec<usize> = (0..queue.len()).collect();
    order.sort_by_key(|&k| {
        let q = &queue[k];
        (
            std::cmp::Reverse(q.priority.rank() + (now - q.since) / aging),
            q.since,
            q.seq,
        )
    });
    let mut held = ledger.usage();
    let mut taken = ledger.usage();
    let mut out = Vec::with_capacity(order.len());
    for k in order {
        let q = &queue[k];
        let fits = q.here
            && ledger
                .check(cfg, &taken, &held, q.principal, q.session_id, q.req)
                .is_empty();
        taken.add(q.principal, q.session_id, q.holder, q.req);
        if fits {
            held.add(q.principal, q.session_id, q.holder, q.req);
        }
        out.push((k, fits));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AllocationStatus;
    use proptest::prelude::*;

    fn config() -> ResourcesConfig {
        let mut c = ResourcesConfig::default();
        c.quotas.max_allocations_per_principal = 4;
        c.quotas.max_allocations_per_session = 3;
        c.quotas.per_principal.insert("gpu".into(), 2);
        c
    }

    fn ledger() -> Ledger {
        let mut l = Ledger::default();
        l.capacity.insert("cpu".into(), 4);
        l.capacity.insert("gpu".into(), 3);
        l
    }

    fn req(cpu: u64, gpu: u64, lock: Option<(u8, LockMode)>) -> Requirements {
        let mut r = Requirements::default();
        if cpu > 0 {
            r.pools.insert("cpu".into(), cpu);
        }
        if gpu > 0 {
            r.pools.insert("gpu".into(), gpu);
        }
        if let Some((k, mode)) = lock {
            r.locks.push(LockReq {
                key: format!("k{k}"),
                mode,
            });
        }
        r
    }

    fn hold(l: &mut Ledger, id: &str, principal: &str, session: &str, r: Requirements) {
        let rec = AllocationRecord {
            id: id.into(),
            session_id: session.into(),
            principal: principal.into(),
            holder: format!("{principal}-holder"),
            owner_kind: OwnerKind::Api,
            owner_ref: None,
            requirements: r.to_value().to_string(),
            priority: Priority::Normal,
            status: AllocationStatus::Active,
            created_at: 0,
            expires_at: None,
            released_at: None,
            release_reason: None,
        };
        l.held.insert(id.into(), Held { rec, req: r });
    }

    struct Ask {
        principal: String,
        session: String,
        req: Requirements,
        priority: Priority,
        since: i64,
        here: bool,
    }

    fn queued(asks: &[Ask]) -> Vec<Queued<'_>> {
        asks.iter()
            .enumerate()
            .map(|(i, a)| Queued {
                principal: &a.principal,
                session_id: &a.session,
                holder: &a.principal,
                req: &a.req,
                priority: a.priority,
                since: a.since,
                seq: i as u64,
                here: a.here,
            })
            .collect()
    }

    fn ask(p: &str, r: Requirements, priority: Priority, since: i64) -> Ask {
        Ask {
            principal: p.into(),
            session: format!("ses_{p}"),
            req: r,
            priority,
            since,
            here: true,
        }
    }

    #[test]
    fn a_lock_is_held_in_compatible_modes_only() {
        let mut l = ledger();
        hold(&mut l, "a", "p", "s", req(0, 0, Some((1, LockMode::Write))));
        let u = l.usage();
        let c = config();
        assert!(
            l.check(&c, &u, &u, "q", "t", &req(0, 0, Some((1, LockMode::Read))))
                .is_empty()
        );
        let s = l.check(&c, &u, &u, "q", "t", &req(0, 0, Some((1, LockMode::Write))));
        // Another principal's holder is not named.
        assert_eq!(s.locks["k1"][0]["holder"], OTHER_PRINCIPAL);
        let s = l.check(
            &c,
            &u,
            &u,
            "p",
            "s",
            &req(0, 0, Some((1, LockMode::Exclusive))),
        );
        assert_eq!(s.locks["k1"][0]["holder"], "p-holder");
    }

    #[test]
    fn quotas_count_what_is_held_and_impossible_requests_are_named() {
        let mut l = ledger();
        hold(&mut l, "a", "p", "s", req(0, 2, None));
        let u = l.usage();
        let c = config();
        let s = l.check(&c, &u, &u, "p", "s2", &req(0, 1, None));
        assert_eq!(s.quotas, vec!["the principal holds 2 gpu; its quota is 2"]);
        assert!(
            l.impossible(&c, &req(0, 3, None))
                .unwrap()
                .contains("per-principal quota is 2")
        );
        assert!(
            l.impossible(&c, &req(5, 0, None))
                .unwrap()
                .contains("capacity is 4")
        );
        let mut r = Requirements::default();
        r.pools.insert("tpu".into(), 1);
        assert!(
            l.impossible(&c, &r)
                .unwrap()
                .starts_with("there is no pool 'tpu'")
        );
    }

    #[test]
    fn a_big_request_ahead_is_not_overtaken_and_waiting_ages() {
        let l = ledger();
        let c = config();
        // First in line wants all 4 cpu: granted; the next does not fit beside it.
        let asks = vec![
            ask("a", req(4, 0, None), Priority::Normal, 0),
            ask("b", req(1, 0, None), Priority::Normal, 1),
        ];
        assert_eq!(
            serve(&l, &c, &queued(&asks), 10, 1000),
            vec![(0, true), (1, false)]
        );
        // A low request that waited 3 aging periods goes before a fresh high one.
        let asks = vec![
            ask("a", req(4, 0, None), Priority::High, 9_000),
            ask("b", req(4, 0, None), Priority::Low, 0),
        ];
        assert_eq!(
            serve(&l, &c, &queued(&asks), 9_000, 3_000),
            vec![(1, true), (0, false)]
        );
        // Another process's waiter ahead is never granted here, but keeps its share.
        let mut asks = vec![
            ask("a", req(3, 0, None), Priority::Critical, 0),
            ask("b", req(0, 1, None), Priority::Normal, 1),
            ask("c", req(2, 0, None), Priority::Normal, 2),
        ];
        asks[0].here = false;
        assert_eq!(
            serve(&l, &c, &queued(&asks), 5, 1000),
            vec![(0, false), (1, true), (2, false)]
        );
    }

    /// principal, session, cpu, gpu, lock (key, mode), priority, since, here.
    type RawAsk = (u8, u8, u64, u64, Option<(u8, u8)>, u8, i64, bool);

    fn any_ask() -> impl Strategy<Value = RawAsk> {
        (
            0u8..3,
            0u8..3,
            0u64..4,
            0u64..3,
            proptest::option::of((0u8..3, 0u8..3)),
            0u8..4,
            0i64..5_000,
            proptest::bool::weighted(0.8),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Whatever is held and whoever waits: the grants of one pass never
        /// put a pool over capacity, never hold a lock in incompatible modes,
        /// never exceed a quota, and each grant fits beside everything ahead
        /// of it in service order (granted or not): nobody is overtaken.
        #[test]
        fn grants_fit_capacity_locks_quotas_and_the_queue_ahead(
            held in proptest::collection::vec(any_ask(), 0..4),
            asks in proptest::collection::vec(any_ask(), 0..10),
        ) {
            let modes = [LockMode::Read, LockMode::Write, LockMode::Exclusive];
            let prios = [Priority::Low, Priority::Normal, Priority::High, Priority::Critical];
            let to_ask = |(p, s, cpu, gpu, lock, prio, since, here): RawAsk| Ask {
                principal: format!("p{p}"),
                session: format!("s{s}"),
                req: req(cpu, gpu, lock.map(|(k, m)| (k, modes[m as usize]))),
                priority: prios[prio as usize],
                since,
                here,
            };
            let c = config();
            let mut l = ledger();
            // What is held is itself consistent: hold only what fits.
            for (i, h) in held.into_iter().enumerate() {
                let a = to_ask(h);
                let u = l.usage();
                if l.check(&c, &u, &u, &a.principal, &a.session, &a.req).is_empty() {
                    hold(&mut l, &format!("h{i}"), &a.principal, &a.session, a.req);
                }
            }
            let asks: Vec<Ask> = asks.into_iter().map(to_ask).collect();
            let out = serve(&l, &c, &queued(&asks), 5_000, 1_000);
            prop_assert_eq!(out.len(), asks.len());
            // Brute force: pools and locks of `held + everything ahead + this`.
            let mut granted = ledger();
            for (id, h) in &l.held {
                hold(&mut granted, id, &h.rec.principal, &h.rec.session_id, h.req.clone());
            }
            let mut ahead: Vec<&Ask> = Vec::new();
            for (k, ok) in out {
                let a = &asks[k];
                if ok {
                    prop_assert!(a.here, "another process's request was granted here");
                    for (pool, n) in &a.req.pools {
                        let used: u64 = granted.held.values().filter_map(|h| h.req.pools.get(pool)).sum::<u64>()
                            + ahead.iter().filter_map(|b| b.req.pools.get(pool)).sum::<u64>();
                        prop_assert!(used + n <= l.capacity[pool], "{pool} over capacity");
                    }
                    for lk in &a.req.locks {
                        let others = granted.held.values().flat_map(|h| h.req.locks.iter())
                            .chain(ahead.iter().flat_map(|b| b.req.locks.iter()));
                        for o in others.filter(|o| o.key == lk.key) {
                            prop_assert!(lk.mode.compatible(o.mode), "lock {} in {:?} beside {:?}", lk.key, lk.mode, o.mode);
                        }
                    }
                    let n = granted.held.values().filter(|h| h.rec.principal == a.principal).count();
                    prop_assert!(n < c.quotas.max_allocations_per_principal as usize);
                    let n = granted.held.values().filter(|h| h.rec.session_id == a.session).count();
                    prop_assert!(n < c.quotas.max_allocations_per_session as usize);
                    let gpu: u64 = granted.held.values().filter(|h| h.rec.principal == a.principal)
                        .filter_map(|h| h.req.pools.get("gpu")).sum();
                    prop_assert!(gpu + a.req.pools.get("gpu").copied().unwrap_or(0) <= 2);
                    let id = format!("g{k}");
                    hold(&mut granted, &id, &a.principal, &a.session, a.req.clone());
                } else {
                    ahead.push(a);
                }
            }
        }
    }
}

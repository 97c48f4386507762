//! A session's task graph in memory, pure: the records, who depends on whom,
//! what a task's dependencies make of it (ready, skipped, still pending),
//! settling dependents transitively, and the indexes a claim needs without
//! walking the graph: ready agent tasks by (priority, age), ready auto
//! tasks likewise, leases by expiry, and counts by status and by holder.
//! No I/O and no clock: `TaskManager` locks a graph, edits it through a
//! [`Txn`], writes the changes to the store and only then applies them here.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::json;

use crate::error::{Error, ErrorCode, Result};
use crate::model::{Priority, TaskStatus};
use crate::store::TaskRecord;

/// A stored `{code, message}` error.
pub fn err_json(code: &str, message: impl Into<String>) -> Option<String> {
    Some(json!({"code": code, "message": message.into()}).to_string())
}

/// An agent task (claimed by agents), not one myrmex runs itself.
pub fn is_agent(t: &TaskRecord) -> bool {
    t.action.is_none()
}

/// Order of ready tasks: most urgent first, then oldest.
type Urgency = (Reverse<Priority>, i64, String);

fn urgency(t: &TaskRecord) -> Urgency {
    (Reverse(t.priority), t.seq, t.id.clone())
}

/// Does this task hold a lease that can end (a claim, or an auto task's
/// executor lease), so that its expiry must be watched?
fn leased(t: &TaskRecord) -> Option<i64> {
    if t.status.is_final() {
        return None;
    }
    let watched = t.status == TaskStatus::Claimed || (!is_agent(t) && t.status.is_in_flight());
    t.lease_expires_at.filter(|_| watched)
}

/// Indexes kept in step with the records.
#[derive(Default)]
struct Index {
    ready_agents: BTreeSet<Urgency>,
    ready_auto: BTreeSet<Urgency>,
    leases: BTreeSet<(i64, String)>,
    by_status: HashMap<TaskStatus, usize>,
    claims: HashMap<String, usize>,
}

impl Index {
    fn add(&mut self, t: &TaskRecord) {
        self.update(t, true);
    }

    fn remove(&mut self, t: &TaskRecord) {
        self.update(t, false);
    }

    fn update(&mut self, t: &TaskRecord, add: bool) {
        fn bump<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: K, add: bool) {
            let n = m.entry(k).or_insert(0);
            if add {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
        }
        bump(&mut self.by_status, t.status, add);
        if t.status == TaskStatus::Claimed
            && let Some(who) = &t.claimed_by
        {
            bump(&mut self.claims, who.clone(), add);
        }
        if t.status == TaskStatus::Ready {
            let set = if is_agent(t) {
                &mut self.ready_agents
            } else {
                &mut self.ready_auto
            };
            if add {
                set.insert(urgency(t));
            } else {
                set.remove(&urgency(t));
            }
        }
        if let Some(end) = leased(t) {
            if add {
                self.leases.insert((end, t.id.clone()));
            } else {
                self.leases.remove(&(end, t.id.clone()));
            }
        }
    }
}

/// One session's tasks.
#[derive(Default)]
pub struct TaskGraph {
    tasks: HashMap<String, TaskRecord>,
    /// Ids in creation order.
    order: Vec<String>,
    by_name: HashMap<String, String>,
    dependents: HashMap<String, Vec<String>>,
    /// The `seq` the next created task gets.
    pub next_seq: i64,
    /// `(count, sum of versions)` of the tasks as loaded and changed here.
    stamp: (i64, i64),
    index: Index,
}

impl TaskGraph {
    /// Forget every task (before reading them again).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    pub fn tasks(&self) -> &HashMap<String, TaskRecord> {
        &self.tasks
    }

    pub fn get(&self, id: &str) -> Option<&TaskRecord> {
        self.tasks.get(id)
    }

    /// A task by id or by name.
    pub fn find(&self, key: &str) -> Option<&TaskRecord> {
        self.tasks
            .get(key)
            .or_else(|| self.by_name.get(key).and_then(|id| self.tasks.get(id)))
    }

    /// A task by name only.
    pub fn find_name(&self, name: &str) -> Option<&TaskRecord> {
        self.by_name.get(name).and_then(|id| self.tasks.get(id))
    }

    /// Ids in creation order.
    pub fn order(&self) -> &[String] {
        &self.order
    }

    /// The tasks that depend on `id`.
    pub fn dependents(&self, id: &str) -> &[String] {
        self.dependents.get(id).map_or(&[], Vec::as_slice)
    }

    /// `(count, sum of versions)`: what the store's stamp of the session is
    /// compared with to notice another process's writes.
    pub fn stamp(&self) -> (i64, i64) {
        self.stamp
    }

    /// A task new to the graph (read from the store, or just created).
    pub fn insert(&mut self, t: TaskRecord) {
        if self.tasks.contains_key(&t.id) {
            // Known already: this is a change.
            self.apply(vec![t]);
            return;
        }
        self.next_seq = self.next_seq.max(t.seq + 1);
        self.order.push(t.id.clone());
        self.by_name.insert(t.name.clone(), t.id.clone());
        for d in &t.dependencies {
            self.dependents
                .entry(d.clone())
                .or_default()
                .push(t.id.clone());
        }
        self.stamp.0 += 1;
        self.stamp.1 += t.version;
        self.index.add(&t);
        self.tasks.insert(t.id.clone(), t);
    }

    /// Committed records (changed tasks, by id) replace the graph's.
    pub fn apply(&mut self, changed: Vec<TaskRecord>) {
        for t in changed {
            match self.tasks.get(&t.id) {
                Some(old) => {
                    self.stamp.1 += t.version - old.version;
                    self.index.remove(old);
                    if old.dependencies != t.dependencies {
                        for d in &old.dependencies {
                            if let Some(v) = self.dependents.get_mut(d) {
                                v.retain(|x| *x != t.id);
                            }
                        }
                        for d in &t.dependencies {
                            self.dependents
                                .entry(d.clone())
                                .or_default()
                                .push(t.id.clone());
                        }
                    }
                    if old.name != t.name {
                        self.by_name.remove(&old.name);
                        self.by_name.insert(t.name.clone(), t.id.clone());
                    }
                }
                None => {
                    self.stamp.0 += 1;
                    self.stamp.1 += t.version;
                }
            }
            self.index.add(&t);
            self.tasks.insert(t.id.clone(), t);
        }
    }

    /// Ready agent tasks, most urgent first (then oldest).
    pub fn ready_agents(&self) -> impl Iterator<Item = &TaskRecord> {
        self.index
            .ready_agents
            .iter()
            .filter_map(|(_, _, id)| self.tasks.get(id))
    }

    pub fn ready_agent_count(&self) -> usize {
        self.index.ready_agents.len()
    }

    /// Ready auto tasks (myrmex runs them), most urgent first (then oldest).
    pub fn ready_auto(&self) -> impl Iterator<Item = &TaskRecord> {
        self.index
            .ready_auto
            .iter()
            .filter_map(|(_, _, id)| self.tasks.get(id))
    }

    /// Tasks not final whose lease (a claim, or an auto task's executor
    /// lease) ended at or before `now`.
    pub fn leases_ended(&self, now: i64) -> impl Iterator<Item = &TaskRecord> {
        self.index
            .leases
            .range(..=(now, String::from("\u{10FFFF}")))
            .filter_map(|(_, id)| self.tasks.get(id))
    }

    /// When the first lease still running ends (ms), if any.
    pub fn next_lease_end(&self) -> Option<i64> {
        self.index.leases.first().map(|(end, _)| *end)
    }

    /// Tasks with this status.
    pub fn count(&self, status: TaskStatus) -> usize {
        self.index.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Tasks claimed by this agent.
    pub fn claimed_by(&self, agent: &str) -> usize {
        self.index.claims.get(agent).copied().unwrap_or(0)
    }

    /// Does `from` reach `to` through dependents (is `to` downstream of `from`)?
    pub fn reaches(&self, from: &str, to: &str) -> bool {
        let mut stack = vec![from];
        let mut seen = HashSet::new();
        while let Some(x) = stack.pop() {
            if x == to {
                return true;
            }
            if seen.insert(x) {
                stack.extend(self.dependents(x).iter().map(String::as_str));
            }
        }
        false
    }

    /// Resolve a dependency key against the session's existing tasks.
    /// `within` says where the caller could have named a task (for the message).
    pub fn resolve(&self, key: &str, of: &str, within: &str) -> Result<String> {
        self.find(key).map(|t| t.id.clone()).ok_or_else(|| {
            Error::new(
                ErrorCode::NotFound,
                format!("task '{of}' depends on '{key}', which is no task of {within}"),
                "Name an existing task by id or name (or a task of the same batch); list_tasks shows the session's tasks.",
            )
        })
    }
}

/// What a pending task's dependencies make it: ready (all succeeded),
/// skipped (one ended badly, with the reason) or still pending (None).
pub fn evaluate_deps<'a>(
    deps: &[String],
    get: impl Fn(&str) -> Option<&'a TaskRecord>,
) -> Option<(TaskStatus, Option<String>)> {
    let mut all_done = true;
    for d in deps {
        match get(d) {
            Some(t) if t.status.is_bad_end() => {
                return Some((
                    TaskStatus::Skipped,
                    err_json(
                        ErrorCode::DependencyFailed.as_str(),
                        format!("dependency '{}' ({}) {}", t.name, t.id, t.status),
                    ),
                ));
            }
            Some(t) if t.status == TaskStatus::Succeeded => {}
            _ => all_done = false,
        }
    }
    all_done.then_some((TaskStatus::Ready, None))
}

/// Changes of one call, applied to the graph only after the store took them.
pub struct Txn<'g> {
    pub g: &'g TaskGraph,
    changed: BTreeMap<String, TaskRecord>,
    /// The call's time (ms), stamped on every changed task.
    pub now: i64,
}

impl<'g> Txn<'g> {
    pub fn new(g: &'g TaskGraph, now: i64) -> Self {
        Self {
            g,
            changed: BTreeMap::new(),
            now,
        }
    }

    pub fn get(&self, id: &str) -> Option<&TaskRecord> {
        self.changed.get(id).or_else(|| self.g.get(id))
    }

    /// A copy of the task to change; its version is bumped once per call.
    pub fn edit(&mut self, id: &str) -> &mut TaskRecord {
        if !self.changed.contains_key(id) {
            let mut t = self.g.tasks[id].clone();
            t.version += 1;
            self.changed.insert(id.to_string(), t);
        }
        let now = self.now;
        let t = self.changed.get_mut(id).expect("just inserted");
        t.updated_at = now;
        t
    }

    /// The task reached a final state: settle its dependents (ready, or
    /// skipped when a dependency ended badly), transitively.
    pub fn settle_dependents(&mut self, id: &str) {
        let mut queue = vec![id.to_string()];
        while let Some(done) = queue.pop() {
            for d in self.g.dependents(&done).to_vec() {
                if self.get(&d).is_none_or(|t| t.status != TaskStatus::Pending) {
                    continue;
                }
                match self.evaluate(&d) {
                    Some((TaskStatus::Skipped, error)) => {
                        let now = self.now;
                        let t = self.edit(&d);
                        t.status = TaskStatus::Skipped;
                        t.error = error;
                        t.finished_at = Some(now);
                        queue.push(d);
                    }
                    Some((TaskStatus::Ready, _)) => self.edit(&d).status = TaskStatus::Ready,
                    // Still waiting: written all the same (its version moves),
                    // so that a sibling finished at the same moment by another
                    // process conflicts, and the later writer reads both ends
                    // and settles the dependent (no write skew).
                    _ => {
                        self.edit(&d);
                    }
                }
            }
        }
    }

    /// What a pending task's dependencies make it (see [`evaluate_deps`]).
    pub fn evaluate(&self, id: &str) -> Option<(TaskStatus, Option<String>)> {
        evaluate_deps(&self.get(id)?.dependencies, |d| self.get(d))
    }

    /// The changed records, to write.
    pub fn into_changed(self) -> Vec<TaskRecord> {
        self.changed.into_values().collect()
    }

    /// A task whose holder's lease ended is ready again; `why(holder, attempt)` says so.
    pub fn ready_again(&mut self, id: &str, why: impl Fn(&str, u32) -> String) {
        let t = self.edit(id);
        let who = t.claimed_by.clone().unwrap_or_default();
        t.status = TaskStatus::Ready;
        t.error = err_json(ErrorCode::TimeoutExceeded.as_str(), why(&who, t.attempts));
        t.lease_id = None;
        t.lease_expires_at = None;
    }

    /// Cancel a task that is not final and skip what depends on it.
    pub fn cancel(&mut self, id: &str, code: ErrorCode, message: &str) {
        let now = self.now;
        let t = self.edit(id);
        t.status = TaskStatus::Cancelled;
        t.error = err_json(code.as_str(), message);
        t.finished_at = Some(now);
        t.lease_id = None;
        t.lease_expires_at = None;
        self.settle_dependents(id);
    }
}

/// A cycle among a batch's dependencies, as `a -> b -> a`.
pub fn batch_cycle(records: &[TaskRecord], deps: &HashMap<String, Vec<String>>) -> Option<String> {
    let mut graph = petgraph::graphmap::DiGraphMap::<&str, ()>::new();
    for r in records {
        graph.add_node(r.id.as_str());
    }
    for r in records {
        for d in &deps[&r.id] {
            if graph.contains_node(d.as_str()) {
                graph.add_edge(d.as_str(), r.id.as_str(), ());
            }
        }
    }
    let name: HashMap<&str, &str> = records
        .iter()
        .map(|r| (r.id.as_str(), r.name.as_str()))
        .collect();
    // Kosaraju's walk is iterative: a batch of any size cannot exhaust the stack.
    petgraph::algo::kosaraju_scc(&graph)
        .into_iter()
        .find(|c| c.len() > 1)
        .map(|c| {
            super::super::workflows::spec::cycle_in(&c, |n| graph.neighbors(n), |n| name[n])
                .iter()
                .map(|id| name[id])
                .collect::<Vec<_>>()
                .join(" -> ")
        })
}

/// A batch's records in an order where dependencies come first (the batch
/// is acyclic). Iterative: a long chain cannot exhaust the stack.
pub fn batch_order(
    records: &[TaskRecord],
    deps: &HashMap<String, Vec<String>>,
    by_id: &HashMap<String, usize>,
) -> Vec<usize> {
    let mut order = Vec::with_capacity(records.len());
    let mut state = vec![0u8; records.len()];
    for root in 0..records.len() {
        if state[root] != 0 {
            continue;
        }
        // (record, index of its next dependency to visit)
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some(&mut (i, ref mut next)) = stack.last_mut() {
            let ds = &deps[&records[i].id];
            if let Some(d) = ds.get(*next) {
                *next += 1;
                if let Some(&j) = by_id.get(d)
                    && state[j] == 0
                {
                    state[j] = 1;
                    stack.push((j, 0));
                }
            } else {
                state[i] = 2;
                order.push(i);
                stack.pop();
            }
        }
    }
    order
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(in crate::engine::tasks) fn task(
        id: &str,
        deps: &[&str],
        status: TaskStatus,
        agent: bool,
    ) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            session_id: "ses_1".into(),
            principal: "p".into(),
            seq: 0,
            name: format!("n-{id}"),
            description: None,
            module: (!agent).then(|| "core".into()),
            action: (!agent).then(|| "echo".into()),
            parameters: "{}".into(),
            dependencies: deps.iter().map(|d| d.to_string()).collect(),
            priority: Priority::Normal,
            timeout_seconds: None,
            max_retries: 0,
            retry: None,
            resources: None,
            tags: Vec::new(),
            metadata: "{}".into(),
            status,
            result: None,
            summary: None,
            error: None,
            attempts: 0,
            claimed_by: None,
            lease_id: None,
            lease_expires_at: None,
            created_at: 0,
            updated_at: 0,
            started_at: None,
            finished_at: None,
            version: 0,
        }
    }

    #[test]
    fn a_success_readies_dependents_and_a_failure_skips_them_transitively() {
        let mut g = TaskGraph::default();
        g.insert(task("a", &[], TaskStatus::Claimed, true));
        g.insert(task("b", &["a"], TaskStatus::Pending, true));
        g.insert(task("c", &["b"], TaskStatus::Pending, true));
        g.insert(task("d", &["a", "x"], TaskStatus::Pending, true));
        g.insert(task("x", &[], TaskStatus::Ready, true));

        let mut txn = Txn::new(&g, 7);
        txn.edit("a").status = TaskStatus::Succeeded;
        txn.settle_dependents("a");
        let changed = txn.into_changed();
        let by: HashMap<_, _> = changed.iter().map(|t| (t.id.as_str(), t)).collect();
        assert_eq!(by["b"].status, TaskStatus::Ready);
        // d still waits for x, and is written all the same (its version
        // moves), so a concurrent settling of x by another process conflicts.
        assert_eq!(by["d"].status, TaskStatus::Pending);
        assert!(!by.contains_key("c"), "c waits for b, which did not end");
        assert!(by.values().all(|t| t.updated_at == 7 && t.version == 1));

        let mut txn = Txn::new(&g, 8);
        txn.edit("a").status = TaskStatus::Failed;
        txn.settle_dependents("a");
        let changed = txn.into_changed();
        let by: HashMap<_, _> = changed.iter().map(|t| (t.id.as_str(), t)).collect();
        for id in ["b", "c", "d"] {
            assert_eq!(by[id].status, TaskStatus::Skipped, "{id}");
            assert_eq!(by[id].finished_at, Some(8));
        }
        assert!(
            by["c"]
                .error
                .as_deref()
                .unwrap()
                .contains("DEPENDENCY_FAILED")
        );
    }

    #[test]
    fn the_indexes_follow_every_change() {
        let mut g = TaskGraph::default();
        let mut low = task("low", &[], TaskStatus::Ready, true);
        low.priority = Priority::Low;
        low.seq = 0;
        let mut hi = task("hi", &[], TaskStatus::Ready, true);
        hi.priority = Priority::High;
        hi.seq = 1;
        let mut old = task("old", &[], TaskStatus::Ready, true);
        old.priority = Priority::High;
        old.seq = 0;
        g.insert(low);
        g.insert(hi);
        g.insert(old);
        g.insert(task("auto", &[], TaskStatus::Ready, false));
        let ids: Vec<&str> = g.ready_agents().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, vec!["old", "hi", "low"]);
        assert_eq!(g.ready_auto().count(), 1);
        assert_eq!(g.count(TaskStatus::Ready), 4);

        let mut claimed = g.get("old").unwrap().clone();
        claimed.status = TaskStatus::Claimed;
        claimed.claimed_by = Some("agent-1".into());
        claimed.lease_expires_at = Some(100);
        claimed.version = 1;
        g.apply(vec![claimed]);
        assert_eq!(g.ready_agent_count(), 2);
        assert_eq!(g.claimed_by("agent-1"), 1);
        assert_eq!(g.leases_ended(99).count(), 0);
        assert_eq!(
            g.leases_ended(100)
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>(),
            vec!["old"]
        );
        assert_eq!(g.stamp(), (4, 1));

        let mut done = g.get("old").unwrap().clone();
        done.status = TaskStatus::Succeeded;
        done.lease_expires_at = None;
        done.version = 2;
        g.apply(vec![done]);
        assert_eq!(g.claimed_by("agent-1"), 0);
        assert_eq!(g.leases_ended(i64::MAX).count(), 0);
        assert_eq!(g.count(TaskStatus::Succeeded), 1);
        assert_eq!(g.count(TaskStatus::Claimed), 0);
    }

    #[test]
    fn a_long_chain_is_ordered_without_recursion() {
        let n = 200_000;
        let records: Vec<TaskRecord> = (0..n)
            .map(|i| task(&format!("t{i}"), &[], TaskStatus::Pending, true))
            .collect();
        // t0 depends on t1, which depends on t2, ...
        let deps: HashMap<String, Vec<String>> = (0..n)
            .map(|i| {
                let d = if i + 1 < n {
                    vec![format!("t{}", i + 1)]
                } else {
                    vec![]
                };
                (format!("t{i}"), d)
            })
            .collect();
        let by_id: HashMap<String, usize> = (0..n).map(|i| (format!("t{i}"), i)).collect();
        let order = batch_order(&records, &deps, &by_id);
        assert_eq!(order.len(), n);
        assert_eq!(order[0], n - 1);
        assert_eq!(order[n - 1], 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// After any sequence of changes, the indexes say what a full scan says.
        #[test]
        fn indexes_match_a_full_scan(changes in proptest::collection::vec((0usize..12, 0u8..10, 0u8..3, 0u8..4, proptest::option::of(0i64..50)), 1..60)) {
            let statuses = [
                TaskStatus::Pending, TaskStatus::Ready, TaskStatus::Running, TaskStatus::WaitingResources,
                TaskStatus::Claimed, TaskStatus::Succeeded, TaskStatus::Failed, TaskStatus::Skipped,
                TaskStatus::Cancelled, TaskStatus::TimedOut,
            ];
            let prios = [Priority::Low, Priority::Normal, Priority::High, Priority::Critical];
            let mut g = TaskGraph::default();
            for (k, (i, s, who, p, lease)) in changes.into_iter().enumerate() {
                let id = format!("t{i}");
                let mut t = g.get(&id).cloned().unwrap_or_else(|| {
                    let mut t = task(&id, &[], TaskStatus::Pending, i % 3 != 0);
                    t.seq = i as i64;
                    t
                });
                t.status = statuses[s as usize];
                t.claimed_by = Some(format!("agent{who}"));
                t.priority = prios[p as usize];
                t.lease_expires_at = lease;
                t.version = k as i64;
                if g.get(&id).is_some() { g.apply(vec![t]) } else { g.insert(t) }
            }
            let all: Vec<&TaskRecord> = g.tasks().values().collect();
            let mut ready: Vec<&TaskRecord> = all.iter().copied().filter(|t| t.status == TaskStatus::Ready && is_agent(t)).collect();
            ready.sort_by_key(|t| (Reverse(t.priority), t.seq, t.id.clone()));
            prop_assert_eq!(g.ready_agents().map(|t| &t.id).collect::<Vec<_>>(), ready.iter().map(|t| &t.id).collect::<Vec<_>>());
            prop_assert_eq!(g.ready_auto().count(), all.iter().filter(|t| t.status == TaskStatus::Ready && !is_agent(t)).count());
            for s in statuses {
                prop_assert_eq!(g.count(s), all.iter().filter(|t| t.status == s).count());
            }
            for who in 0..3 {
                let a = format!("agent{who}");
                prop_assert_eq!(g.claimed_by(&a), all.iter().filter(|t| t.status == TaskStatus::Claimed && t.claimed_by.as_deref() == Some(a.as_str())).count());
            }
            for now in [0, 25, 49, i64::MAX] {
                let mut due: Vec<&str> = g.leases_ended(now).map(|t| t.id.as_str()).collect();
                due.sort_unstable();
                let mut scan: Vec<&str> = all.iter().filter(|t| leased(t).is_some_and(|e| e <= now)).map(|t| t.id.as_str()).collect();
                scan.sort_unstable();
                prop_assert_eq!(due, scan);
            }
            let versions: i64 = all.iter().map(|t| t.version).sum();
            prop_assert_eq!(g.stamp(), (all.len() as i64, versions));
        }
    }
}

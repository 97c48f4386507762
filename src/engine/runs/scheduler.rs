//! The pure scheduler of one run: which steps are settled (their dependencies
//! all final), what their trigger rules make of them, which ready step starts
//! next (most urgent first, then plan order) and when the run has no more to
//! do. No I/O and no clock: the driver (`RunManager::drive`) asks it what to
//! do, does it (evaluates a `when`, writes records, starts tasks) and tells
//! it what happened.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::model::{Priority, StepStatus};

use super::super::workflows::spec::{TriggerRule, WorkflowSpec};

/// A step as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Node {
    /// Indices of the steps it depends on.
    pub deps: Vec<usize>,
    pub priority: Priority,
    pub rule: TriggerRule,
}

/// A step's state as the scheduler sees it: its status, and whether a skip
/// was by its own `when` (such a skip does not skip `all_success` dependents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub status: StepStatus,
    pub own_skip: bool,
}

impl Seen {
    pub fn new(status: StepStatus) -> Self {
        Self {
            status,
            own_skip: false,
        }
    }

    /// Does this end skip dependents that want all their dependencies to succeed?
    fn fails_dependents(self) -> bool {
        match self.status {
            StepStatus::Failed | StepStatus::TimedOut | StepStatus::Cancelled => true,
            StepStatus::Skipped => !self.own_skip,
            _ => false,
        }
    }
}

/// How the run treats its steps.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Steps running at once (at least 1).
    pub limit: usize,
    /// Ready steps start by priority (else in plan order only).
    pub by_priority: bool,
    /// A failure stops new starts (steps with `all_done` still run).
    pub fail_fast: bool,
}

/// What a settled step's trigger rule and the run's state make of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `all_success` and this dependency did not succeed: skip it.
    DependencyFailed(usize),
    /// The run halted (fail_fast) before it started: cancel it.
    Halted,
    /// It may run: evaluate its `when` (if any), then `admit` or `end` it.
    Admissible,
}

/// The scheduler's state of one run.
pub struct Scheduler {
    nodes: Vec<Node>,
    dependents: Vec<Vec<usize>>,
    position: Vec<usize>,
    policy: Policy,
    seen: Vec<Seen>,
    /// Dependencies not yet final, per step.
    waiting_on: Vec<usize>,
    settle: VecDeque<usize>,
    ready: BinaryHeap<(Priority, Reverse<usize>, usize)>,
    /// Admitted since the last `take_admitted`.
    admitted: Vec<usize>,
    /// Waiting for resources to be released (resource_aware).
    aside: Vec<usize>,
    in_flight: usize,
    halted: bool,
}

/// The scheduler's nodes of a workflow (dependencies by index).
pub fn nodes_of(spec: &WorkflowSpec) -> Vec<Node> {
    let index: std::collections::HashMap<&str, usize> = spec
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    spec.steps
        .iter()
        .map(|s| Node {
            deps: s
                .dependencies
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect(),
            priority: s.priority,
            rule: s.trigger_rule,
        })
        .collect()
}

/// Kahn's order (a validated definition is acyclic; steps on a cycle are left out).
pub fn topo_order(deps: &[Vec<usize>], dependents: &[Vec<usize>]) -> Vec<usize> {
    let mut indeg: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut queue: VecDeque<usize> = (0..deps.len()).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some(i) = queue.pop_front() {
        order.push(i);
        for &j in &dependents[i] {
            indeg[j] -= 1;
            if indeg[j] == 0 {
                queue.push_back(j);
            }
        }
    }
    order
}

impl Scheduler {
    /// A run's scheduler, from its steps as stored (final steps stay final).
    pub fn new(nodes: Vec<Node>, seen: Vec<Seen>, policy: Policy) -> Self {
        assert_eq!(nodes.len(), seen.len(), "one state per step");
        let deps: Vec<Vec<usize>> = nodes.iter().map(|n| n.deps.clone()).collect();
        let mut dependents = vec![Vec::new(); nodes.len()];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(i);
            }
        }
        let order = topo_order(&deps, &dependents);
        let mut position = vec![0; nodes.len()];
        for (p, &i) in order.iter().enumerate() {
            position[i] = p;
        }
        let waiting_on = deps
            .iter()
            .map(|ds| ds.iter().filter(|&&d| !seen[d].status.is_final()).count())
            .collect::<Vec<_>>();
        let settle = order
            .iter()
            .copied()
            .filter(|&i| !seen[i].status.is_final() && waiting_on[i] == 0)
            .collect();
        let halted = policy.fail_fast && seen.iter().any(|s| s.status.is_failure());
        Self {
            nodes,
            dependents,
            position,
            policy: Policy {
                limit: policy.limit.max(1),
                ..policy
            },
            seen,
            waiting_on,
            settle,
            ready: BinaryHeap::new(),
            admitted: Vec::new(),
            aside: Vec::new(),
            in_flight: 0,
            halted,
        }
    }

    /// The next step whose dependencies are all final, and what to do with it.
    pub fn next_settled(&mut self) -> Option<(usize, Verdict)> {
        let i = self.settle.pop_front()?;
        let node = &self.nodes[i];
        let bad = node
            .deps
            .iter()
            .copied()
            .find(|&d| self.seen[d].fails_dependents());
        let verdict = match (node.rule, bad) {
            (TriggerRule::AllSuccess, Some(d)) => Verdict::DependencyFailed(d),
            _ if self.halted && node.rule != TriggerRule::AllDone => Verdict::Halted,
            _ => Verdict::Admissible,
        };
        Some((i, verdict))
    }

    /// Is any step waiting to be settled?
    pub fn has_settled(&self) -> bool {
        !self.settle.is_empty()
    }

    /// A settled step may run: it waits for a slot.
    pub fn admit(&mut self, i: usize) {
        self.push_ready(i);
        self.admitted.push(i);
    }

    fn push_ready(&mut self, i: usize) {
        let urgency = if self.policy.by_priority {
            self.nodes[i].priority
        } else {
            Priority::Normal
        };
        self.ready.push((urgency, Reverse(self.position[i]), i));
    }

    /// Steps admitted since the last call (to mark `ready` together).
    pub fn take_admitted(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.admitted)
    }

    /// The most urgent ready step, when a slot is free. A step that became
    /// ready before the run halted goes back to be settled (and cancelled).
    /// The caller `start`s it or puts it `aside`.
    pub fn next_to_start(&mut self) -> Option<usize> {
        while self.in_flight < self.policy.limit {
            let (_, _, i) = self.ready.pop()?;
            if self.halted && self.nodes[i].rule != TriggerRule::AllDone {
                self.settle.push_back(i);
                continue;
            }
            return Some(i);
        }
        None
    }

    /// The step was started: it holds a slot until it `returned`.
    pub fn start(&mut self, i: usize) {
        self.seen[i].status = StepStatus::Running;
        self.in_flight += 1;
    }

    /// The step's resources are not free: it waits for a release, without a slot.
    pub fn set_aside(&mut self, i: usize) {
        self.aside.push(i);
    }

    /// Is any step waiting for resources?
    pub fn has_aside(&self) -> bool {
        !self.aside.is_empty()
    }

    /// Resources were released: the steps aside are ready again.
    pub fn resources_released(&mut self) {
        for i in std::mem::take(&mut self.aside) {
            self.push_ready(i);
        }
    }

    /// A settled step ended without running (skipped, cancelled or failed by
    /// its `when`): its dependents wait on one step less.
    pub fn end(&mut self, i: usize, seen: Seen) {
        debug_assert!(seen.status.is_final());
        self.record_end(i, seen, true);
    }

    /// A started step's task came back with its record's status. Its
    /// dependents are settled only if `release` (a stop that arrived with this
    /// end wins: they are cancelled with the run, not skipped).
    pub fn returned(&mut self, i: usize, seen: Seen, release: bool) {
        self.in_flight -= 1;
        if seen.status.is_final() {
            self.record_end(i, seen, release);
        } else {
            self.seen[i] = seen;
        }
    }

    fn record_end(&mut self, i: usize, seen: Seen, release: bool) {
        self.seen[i] = seen;
        if seen.status.is_failure() && self.policy.fail_fast {
            self.halted = true;
        }
        if release {
            for k in 0..self.dependents[i].len() {
                let j = self.dependents[i][k];
                self.waiting_on[j] -= 1;
                if self.waiting_on[j] == 0 {
                    self.settle.push_back(j);
                }
            }
        }
    }

    /// Nothing runs and nothing waits for resources: once nothing is left to
    /// settle or start either, the run is over.
    pub fn idle(&self) -> bool {
        self.in_flight == 0 && self.aside.is_empty()
    }

    /// Steps running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The steps step `i` depends on.
    pub fn deps(&self, i: usize) -> &[usize] {
        &self.nodes[i].deps
    }

    /// Has a failure stopped new starts?
    pub fn halted(&self) -> bool {
        self.halted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(deps: &[usize]) -> Node {
        Node {
            deps: deps.to_vec(),
            priority: Priority::Normal,
            rule: TriggerRule::AllSuccess,
        }
    }

    fn fresh(n: usize) -> Vec<Seen> {
        vec![Seen::new(StepStatus::Pending); n]
    }

    /// Drive a scheduler to the end: `outcome(i)` is how step i ends when it
    /// runs. Returns the start order and every step's final state.
    fn drive(s: &mut Scheduler, outcome: impl Fn(usize) -> StepStatus) -> (Vec<usize>, Vec<Seen>) {
        let mut started = Vec::new();
        let mut running: VecDeque<usize> = VecDeque::new();
        loop {
            while let Some((i, v)) = s.next_settled() {
                match v {
                    Verdict::DependencyFailed(_) => s.end(i, Seen::new(StepStatus::Skipped)),
                    Verdict::Halted => s.end(i, Seen::new(StepStatus::Cancelled)),
                    Verdict::Admissible => s.admit(i),
                }
            }
            while let Some(i) = s.next_to_start() {
                s.start(i);
                started.push(i);
                running.push_back(i);
            }
            if s.has_settled() {
                continue;
            }
            let Some(i) = running.pop_front() else { break };
            s.returned(i, Seen::new(outcome(i)), true);
        }
        assert!(s.idle());
        (started, s.seen.clone())
    }

    #[test]
    fn a_failed_dependency_skips_all_success_and_not_all_done() {
        let mut nodes = vec![node(&[]), node(&[0]), node(&[0])];
        nodes[2].rule = TriggerRule::AllDone;
        let policy = Policy {
            limit: 4,
            by_priority: false,
            fail_fast: false,
        };
        let mut s = Scheduler::new(nodes, fresh(3), policy);
        let (started, seen) = drive(&mut s, |i| {
            if i == 0 {
                StepStatus::Failed
            } else {
                StepStatus::Succeeded
            }
        });
        assert_eq!(started, vec![0, 2]);
        assert_eq!(seen[1].status, StepStatus::Skipped);
        assert_eq!(seen[2].status, StepStatus::Succeeded);
    }

    #[test]
    fn a_skip_by_its_own_condition_does_not_skip_dependents() {
        let policy = Policy {
            limit: 1,
            by_priority: false,
            fail_fast: true,
        };
        let mut s = Scheduler::new(vec![node(&[]), node(&[0])], fresh(2), policy);
        let (0, Verdict::Admissible) = s.next_settled().unwrap() else {
            panic!("step 0 settles first")
        };
        s.end(
            0,
            Seen {
                status: StepStatus::Skipped,
                own_skip: true,
            },
        );
        assert_eq!(s.next_settled(), Some((1, Verdict::Admissible)));
    }

    #[test]
    fn fail_fast_cancels_what_had_not_started_but_runs_all_done() {
        // 0 fails; 1 and 2 were ready behind it (limit 1); 2 is all_done.
        let mut nodes = vec![node(&[]), node(&[]), node(&[])];
        nodes[2].rule = TriggerRule::AllDone;
        let policy = Policy {
            limit: 1,
            by_priority: false,
            fail_fast: true,
        };
        let mut s = Scheduler::new(nodes, fresh(3), policy);
        let (started, seen) = drive(&mut s, |_| StepStatus::Failed);
        assert_eq!(started, vec![0, 2]);
        assert_eq!(seen[1].status, StepStatus::Cancelled);
        assert!(s.halted());
    }

    #[test]
    fn ready_steps_start_by_priority_then_plan_order() {
        let mut nodes = vec![node(&[]), node(&[]), node(&[]), node(&[])];
        nodes[2].priority = Priority::Critical;
        nodes[3].priority = Priority::Low;
        let by_priority = Policy {
            limit: 1,
            by_priority: true,
            fail_fast: false,
        };
        let mut s = Scheduler::new(nodes.clone(), fresh(4), by_priority);
        assert_eq!(drive(&mut s, |_| StepStatus::Succeeded).0, vec![2, 0, 1, 3]);
        let in_order = Policy {
            by_priority: false,
            ..by_priority
        };
        let mut s = Scheduler::new(nodes, fresh(4), in_order);
        assert_eq!(drive(&mut s, |_| StepStatus::Succeeded).0, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_resumed_run_keeps_final_steps_and_settles_the_rest() {
        let nodes = vec![node(&[]), node(&[0]), node(&[1])];
        let mut seen = fresh(3);
        seen[0] = Seen::new(StepStatus::Succeeded);
        let policy = Policy {
            limit: 2,
            by_priority: false,
            fail_fast: true,
        };
        let mut s = Scheduler::new(nodes, seen, policy);
        let (started, seen) = drive(&mut s, |_| StepStatus::Succeeded);
        assert_eq!(started, vec![1, 2]);
        assert!(seen.iter().all(|s| s.status == StepStatus::Succeeded));
    }

    #[test]
    fn steps_aside_wait_without_a_slot_until_a_release() {
        let policy = Policy {
            limit: 1,
            by_priority: false,
            fail_fast: false,
        };
        let mut s = Scheduler::new(vec![node(&[]), node(&[])], fresh(2), policy);
        while let Some((i, _)) = s.next_settled() {
            s.admit(i);
        }
        assert_eq!(s.take_admitted(), vec![0, 1]);
        let first = s.next_to_start().unwrap();
        s.set_aside(first);
        // The slot is still free: the other step starts.
        let second = s.next_to_start().unwrap();
        assert_ne!(first, second);
        s.start(second);
        assert!(s.next_to_start().is_none());
        assert!(!s.idle());
        s.returned(second, Seen::new(StepStatus::Succeeded), true);
        s.resources_released();
        assert_eq!(s.next_to_start(), Some(first));
    }

    /// A random DAG: each step depends on some earlier ones.
    fn dag() -> impl Strategy<Value = (Vec<Node>, Vec<u8>, usize, bool, bool)> {
        (1usize..40)
            .prop_flat_map(|n| {
                (
                    proptest::collection::vec(
                        (
                            proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
                            0u8..4,
                            0u8..2,
                        ),
                        n,
                    ),
                    proptest::collection::vec(0u8..10, n),
                    1usize..5,
                    any::<bool>(),
                    any::<bool>(),
                )
            })
            .prop_map(|(raw, outcomes, limit, by_priority, fail_fast)| {
                let nodes = raw
                    .into_iter()
                    .enumerate()
                    .map(|(i, (deps, p, r))| {
                        let mut deps: Vec<usize> = if i == 0 {
                            Vec::new()
                        } else {
                            deps.iter().map(|d| d.index(i)).collect()
                        };
                        deps.sort_unstable();
                        deps.dedup();
                        Node {
                            deps,
                            priority: [
                                Priority::Low,
                                Priority::Normal,
                                Priority::High,
                                Priority::Critical,
                            ][p as usize],
                            rule: [TriggerRule::AllSuccess, TriggerRule::AllDone][r as usize],
                        }
                    })
                    .collect();
                (nodes, outcomes, limit, by_priority, fail_fast)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever the graph and outcomes: every step ends final exactly once;
        /// a step starts only after all its dependencies are final; never more
        /// than the limit run at once; an all_success step whose dependency
        /// failed never runs; after a fail_fast failure only all_done steps start.
        #[test]
        fn every_step_ends_once_and_in_order((nodes, outcomes, limit, by_priority, fail_fast) in dag()) {
            let n = nodes.len();
            let policy = Policy { limit, by_priority, fail_fast };
            let mut s = Scheduler::new(nodes.clone(), fresh(n), policy);
            let outcome = |i: usize| if outcomes[i] == 0 { StepStatus::Failed } else { StepStatus::Succeeded };
            let mut ended = vec![0usize; n];
            let mut running: Vec<usize> = Vec::new();
            let mut halted = false;
            let mut rounds = 0;
            loop {
                rounds += 1;
                prop_assert!(rounds < 10 * n + 10, "the scheduler does not end");
                while let Some((i, v)) = s.next_settled() {
                    for &d in &nodes[i].deps {
                        prop_assert!(s.seen[d].status.is_final(), "{i} settled before its dependency {d}");
                    }
                    match v {
                        Verdict::DependencyFailed(d) => {
                            prop_assert_eq!(nodes[i].rule, TriggerRule::AllSuccess);
                            prop_assert!(s.seen[d].fails_dependents());
                            ended[i] += 1;
                            s.end(i, Seen::new(StepStatus::Skipped));
                        }
                        Verdict::Halted => {
                            prop_assert!(halted);
                            ended[i] += 1;
                            s.end(i, Seen::new(StepStatus::Cancelled));
                        }
                        Verdict::Admissible => s.admit(i),
                    }
                }
                while let Some(i) = s.next_to_start() {
                    prop_assert!(!halted || nodes[i].rule == TriggerRule::AllDone, "{i} started after the run halted");
                    if nodes[i].rule == TriggerRule::AllSuccess {
                        prop_assert!(nodes[i].deps.iter().all(|&d| s.seen[d].status == StepStatus::Succeeded));
                    }
                    s.start(i);
                    running.push(i);
                    prop_assert!(running.len() <= limit);
                    prop_assert_eq!(s.in_flight(), running.len());
                }
                if s.has_settled() {
                    continue;
                }
                if running.is_empty() {
                    break;
                }
                // Steps end in an arbitrary (but deterministic) order.
                let k = outcomes[running[0]] as usize % running.len();
                let i = running.remove(k);
                let st = outcome(i);
                if st.is_failure() && fail_fast {
                    halted = true;
                }
                ended[i] += 1;
                s.returned(i, Seen::new(st), true);
            }
            prop_assert!(s.idle());
            prop_assert_eq!(s.halted(), halted);
            for (i, times) in ended.iter().enumerate() {
                prop_assert_eq!(*times, 1, "step {} ended {} times", i, times);
                prop_assert!(s.seen[i].status.is_final());
            }
        }
    }
}

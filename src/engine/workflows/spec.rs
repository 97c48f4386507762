//! Workflow definitions: the schema, validation (with petgraph) and the
//! execution plan.
//!
//! Validation runs before anything is stored or run and reports every problem
//! at once, each with a code, the step and the field it concerns.

use std::collections::{BTreeMap, HashMap, HashSet};

use petgraph::algo::{DfsSpace, has_path_connecting, kosaraju_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::condition;
use super::template::{Ref, templates_in};
use crate::actions::Registry;

/// Type of a declared workflow parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
#[schemars(inline)]
pub enum ParamType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    #[default]
    Any,
}

impl ParamType {
    pub fn accepts(self, v: &Value) -> bool {
        match self {
            ParamType::String => v.is_string(),
            ParamType::Number => v.is_number(),
            ParamType::Integer => v.is_i64() || v.is_u64(),
            ParamType::Boolean => v.is_boolean(),
            ParamType::Object => v.is_object(),
            ParamType::Array => v.is_array(),
            ParamType::Any => true,
        }
    }
}

/// A declared input of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// `string`, `number`, `integer`, `boolean`, `object`, `array` or `any` (default).
    #[serde(rename = "type", default)]
    pub kind: ParamType,
    /// Calls without this parameter (and without a default) are refused.
    #[serde(default)]
    pub required: bool,
    /// Value used when the call does not give one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// What the parameter means.
    #[serde(default)]
    pub description: String,
}

/// When a step may start, given how its dependencies ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
#[schemars(inline)]
pub enum TriggerRule {
    /// Every dependency succeeded (or was skipped by its own `when`). The default.
    #[default]
    AllSuccess,
    /// Every dependency finished, whatever its outcome: for cleanup steps.
    AllDone,
}

pub use crate::model::Priority;

/// What a run does after a step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
#[schemars(inline)]
pub enum OnFailure {
    /// Stop launching new steps (cleanup steps with `all_done` still run). The default.
    #[default]
    FailFast,
    /// Let independent branches finish.
    Continue,
}

/// Backoff between attempts: `initial_delay_ms * multiplier^(attempt-1)`, capped, with jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Milliseconds before the first retry.
    #[serde(default = "default_initial_delay")]
    pub initial_delay_ms: u64,
    /// Factor applied to the delay after each retry (1-10).
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Longest delay in milliseconds.
    #[serde(default = "default_max_delay")]
    pub max_delay_ms: u64,
    /// Randomise each delay by up to +/-50%, so that many retries spread out.
    #[serde(default = "default_true")]
    pub jitter: bool,
}

fn default_initial_delay() -> u64 {
    1000
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_max_delay() -> u64 {
    60_000
}
fn default_true() -> bool {
    true
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_delay_ms: 1000,
            multiplier: 2.0,
            max_delay_ms: 60_000,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `next` (2 for the first retry).
    pub fn delay_ms(&self, next: u32) -> u64 {
        let exp = self.multiplier.powi(next.saturating_sub(2) as i32);
        let base = (self.initial_delay_ms as f64 * exp).min(self.max_delay_ms as f64);
        let d = if self.jitter {
            base * rand::random_range(0.5..1.5)
        } else {
            base
        };
        (d as u64).min(self.max_delay_ms)
    }
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique within the workflow: lower-case letters, digits, `_` and `-` (at most 64).
    pub name: String,
    /// Module of the action, e.g. `core`.
    pub module: String,
    /// Action within the module, e.g. `echo`.
    pub action: String,
    /// Parameters of the action; strings may contain templates such as `{{params.x}}` or `{{steps.a.output.y}}`.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// Names of steps that must finish first.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// A condition over parameters and upstream outputs; false skips the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Per-attempt time limit in seconds (`timeout` is accepted too).
    #[serde(default, alias = "timeout", skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Attempts after the first one (default 0).
    #[serde(default)]
    pub max_retries: u32,
    /// Backoff between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// `all_success` (default) or `all_done`.
    #[serde(default)]
    pub trigger_rule: TriggerRule,
    /// Among ready steps, higher priority starts first.
    #[serde(default)]
    pub priority: Priority,
    /// Resources the step holds while it runs, e.g. {"cpu": 2, "locks": [{"key": "repo:main", "mode": "write"}]}; it waits (waiting_resources) until they are granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Value>,
}

/// A workflow definition: the input of `create_workflow` and of workflow files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// Unique name: letters, digits, `_`, `-` and `.` (at most 128).
    pub name: String,
    /// What the workflow does.
    #[serde(default)]
    pub description: String,
    /// Declared inputs, by name.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamSpec>,
    /// The steps; order does not matter, dependencies do.
    pub steps: Vec<StepSpec>,
    /// Time limit of a whole run, in seconds; the run ends as `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Steps of one run that may run at once (default: the session's max_parallel_tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// `fail_fast` (default) or `continue`.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Problem {
    /// Stable code: CYCLE_DETECTED, UNKNOWN_DEPENDENCY, SELF_DEPENDENCY, DUPLICATE_STEP,
    /// INVALID_NAME, MODULE_NOT_FOUND, INVALID_PARAMETERS, UNKNOWN_PARAMETER, NOT_UPSTREAM,
    /// INVALID_TEMPLATE, INVALID_CONDITION, INVALID_VALUE, LIMIT_EXCEEDED.
    pub code: String,
    /// The step concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The field concerned (`parameters.x`, `dependencies`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// How a valid workflow runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Plan {
    /// Steps grouped by level: every step of a level can run in parallel once the
    /// levels before it are done.
    pub levels: Vec<Vec<String>>,
    /// The longest chain of dependent steps.
    pub critical_path: Vec<String>,
    /// A topological order of all steps (plan order).
    pub order: Vec<String>,
}

/// Explicit limits of definitions and of what their runs produce (the
/// `[workflows]` configuration; each refusal names its key).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_steps: usize,
    pub max_definition_bytes: usize,
    /// Parameters of a step, and parentheses/`!` of a condition.
    pub max_nesting_depth: usize,
    pub max_condition_bytes: usize,
    /// Longest step, run and workflow time limit.
    pub max_timeout_seconds: u64,
    /// A step's parameters once their templates are rendered.
    pub max_rendered_bytes: usize,
    /// One step's output, and every stored output of one run together.
    pub max_step_output_bytes: usize,
    pub max_run_output_bytes: usize,
    /// Deepest nesting of a rendered parameter or a step output.
    pub max_value_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self::from_config(&crate::config::WorkflowsConfig::default())
    }
}

impl Limits {
    pub fn from_config(w: &crate::config::WorkflowsConfig) -> Self {
        Self {
            max_steps: w.max_steps,
            max_definition_bytes: w.max_definition_bytes,
            max_nesting_depth: w.max_nesting_depth,
            max_condition_bytes: w.max_condition_bytes,
            max_timeout_seconds: w.max_timeout_seconds,
            max_rendered_bytes: w.max_rendered_bytes,
            max_step_output_bytes: w.max_step_output_bytes,
            max_run_output_bytes: w.max_run_output_bytes,
            max_value_depth: w.max_value_depth,
        }
    }

    pub fn condition(&self) -> condition::Bounds {
        condition::Bounds {
            max_bytes: self.max_condition_bytes,
            max_depth: self.max_nesting_depth,
        }
    }

    /// A time limit in seconds (0 and past `workflows.max_timeout_seconds` refused).
    pub fn timeout_problem(&self, t: Option<u64>) -> Option<String> {
        match t {
            Some(0) => Some("timeout_seconds must be at least 1".into()),
            Some(t) if t > self.max_timeout_seconds => Some(format!(
                "timeout_seconds is {t}; the limit is {} (workflows.max_timeout_seconds)",
                self.max_timeout_seconds
            )),
            _ => None,
        }
    }
}

/// Longest problem message, in bytes (the rest is cut and counted).
const MAX_PROBLEM_BYTES: usize = 1000;

impl Problem {
    /// The problem as an answer may carry it: step and field quoted as
    /// excerpts, the message at most [`MAX_PROBLEM_BYTES`].
    fn bounded(mut self) -> Self {
        let cut = |s: &mut String, max: usize| {
            if s.len() > max {
                let head = crate::error::char_prefix(s, max).len();
                let rest = s.len() - head;
                s.truncate(head);
                s.push_str(&format!("… (+{rest} bytes)"));
            }
        };
        if let Some(st) = self.step.as_mut() {
            cut(st, crate::error::EXCERPT_BYTES);
        }
        if let Some(f) = self.field.as_mut() {
            cut(f, crate::error::EXCERPT_BYTES);
        }
        cut(&mut self.message, MAX_PROBLEM_BYTES);
        self
    }
}

fn problem(
    code: &str,
    step: Option<&str>,
    field: Option<&str>,
    message: impl Into<String>,
) -> Problem {
    Problem {
        code: code.into(),
        step: step.map(Into::into),
        field: field.map(Into::into),
        message: message.into(),
    }
}

fn valid_step_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub fn valid_workflow_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Validate a definition. Returns the plan, or every problem found.
pub fn validate(
    spec: &WorkflowSpec,
    registry: &Registry,
    limits: &Limits,
) -> Result<Plan, Vec<Problem>> {
    let mut p = Vec::new();
    if !valid_workflow_name(&spec.name) {
        p.push(problem(
            "INVALID_NAME",
            None,
            Some("name"),
            format!(
                "workflow name '{}' must be 1-128 letters, digits, '_', '-' or '.'",
                crate::error::excerpt(&spec.name)
            ),
        ));
    }
    let size = serde_json::to_vec(spec)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > limits.max_definition_bytes {
        p.push(problem(
            "LIMIT_EXCEEDED",
            None,
            None,
            format!(
                "the definition is {size} bytes; the limit is {} (workflows.max_definition_bytes)",
                limits.max_definition_bytes
            ),
        ));
    }
    if spec.steps.is_empty() {
        p.push(problem(
            "INVALID_VALUE",
            None,
            Some("steps"),
            "a workflow needs at least one step",
        ));
    }
    if spec.steps.len() > limits.max_steps {
        p.push(problem(
            "LIMIT_EXCEEDED",
            None,
            Some("steps"),
            format!(
                "{} steps; the limit is {} (workflows.max_steps)",
                spec.steps.len(),
                limits.max_steps
            ),
        ));
        return Err(p.into_iter().map(Problem::bounded).collect());
    }
    if let Some(why) = limits.timeout_problem(spec.timeout_seconds) {
        p.push(problem("INVALID_VALUE", None, Some("timeout_seconds"), why));
    }
    if spec.max_parallel == Some(0) {
        p.push(problem(
            "INVALID_VALUE",
            None,
            Some("max_parallel"),
            "max_parallel must be at least 1",
        ));
    }
    for (name, ps) in &spec.parameters {
        if !valid_step_name(name) && !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            p.push(problem(
                "INVALID_NAME",
                None,
                Some(&format!("parameters.{name}")),
                "parameter names are letters, digits and '_'",
            ));
        }
        if let Some(d) = &ps.default
            && !ps.kind.accepts(d)
        {
            p.push(problem(
                "INVALID_VALUE",
                None,
                Some(&format!("parameters.{name}.default")),
                format!("default {d} is not of type {:?}", ps.kind).to_lowercase(),
            ));
        }
    }

    // Steps: names, duplicates.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, s) in spec.steps.iter().enumerate() {
        if !valid_step_name(&s.name) {
            p.push(problem(
                "INVALID_NAME",
                Some(&s.name),
                Some("name"),
                format!(
                    "step name '{}' must be 1-64 characters of a-z, 0-9, '_' and '-'",
                    crate::error::excerpt(&s.name)
                ),
            ));
        }
        if index.contains_key(s.name.as_str()) {
            p.push(problem(
                "DUPLICATE_STEP",
                Some(&s.name),
                Some("name"),
                format!("step name '{}' is used twice", s.name),
            ));
        } else {
            index.insert(s.name.as_str(), i);
        }
    }

    // The graph: an edge dep -> step for every valid dependency.
    let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(spec.steps.len(), spec.steps.len());
    let nodes: Vec<NodeIndex> = (0..spec.steps.len()).map(|i| g.add_node(i)).collect();
    for (i, s) in spec.steps.iter().enumerate() {
        let mut seen = HashSet::new();
        for d in &s.dependencies {
            if d == &s.name {
                p.push(problem(
                    "SELF_DEPENDENCY",
                    Some(&s.name),
                    Some("dependencies"),
                    format!("step '{d}' depends on itself"),
                ));
            } else if !seen.insert(d) {
                p.push(problem(
                    "INVALID_VALUE",
                    Some(&s.name),
                    Some("dependencies"),
                    format!("dependency '{d}' is listed twice"),
                ));
            } else if let Some(&j) = index.get(d.as_str()) {
                g.add_edge(nodes[j], nodes[i], ());
            } else {
                p.push(problem(
                    "UNKNOWN_DEPENDENCY",
                    Some(&s.name),
                    Some("dependencies"),
                    format!(
                        "step '{}' depends on '{d}', which is not a step of this workflow",
                        s.name
                    ),
                ));
            }
        }
    }
    // Kosaraju's walk is iterative: a 20,000-step chain cannot exhaust the stack.
    for scc in kosaraju_scc(&g) {
        if scc.len() > 1 {
            let path = cycle_path(&g, &scc, spec);
            // A long cycle is shown by its first and last steps and its length.
            let message = if path.len() > 12 {
                format!(
                    "dependency cycle of {} steps: {} -> ... ({} more) -> {}",
                    path.len() - 1,
                    path[..8].join(" -> "),
                    path.len() - 11,
                    path[path.len() - 3..].join(" -> ")
                )
            } else {
                format!("dependency cycle: {}", path.join(" -> "))
            };
            p.push(problem(
                "CYCLE_DETECTED",
                Some(&path[0]),
                Some("dependencies"),
                message,
            ));
        }
    }

    // Actions, parameters, templates, conditions.
    let mut space = DfsSpace::new(&g);
    for (i, s) in spec.steps.iter().enumerate() {
        let step = Some(s.name.as_str());
        let nesting = s
            .parameters
            .values()
            .map(|v| 1 + crate::model::bounds::value_depth(v, limits.max_nesting_depth))
            .max()
            .unwrap_or(1);
        if nesting > limits.max_nesting_depth {
            p.push(problem(
                "LIMIT_EXCEEDED",
                step,
                Some("parameters"),
                format!(
                    "parameters are nested deeper than {} levels (workflows.max_nesting_depth)",
                    limits.max_nesting_depth
                ),
            ));
        }
        let mut templated = Vec::new();
        let mut found = Vec::new();
        templates_in(&Value::Object(s.parameters.clone()), "", &mut found);
        let mut refs: Vec<(String, Ref)> = Vec::new();
        for (at, t) in found {
            let top = at.split(['.', '[']).next().unwrap_or("").to_string();
            if !templated.contains(&top) {
                templated.push(top);
            }
            match t {
                Ok(t) => refs.extend(t.refs().map(|r| (format!("parameters.{at}"), r.clone()))),
                Err(e) => p.push(problem(
                    "INVALID_TEMPLATE",
                    step,
                    Some(&format!("parameters.{at}")),
                    e,
                )),
            }
        }
        if let Some(w) = &s.when {
            match condition::parse(w, limits.condition()) {
                Ok(e) => {
                    let mut rs = Vec::new();
                    e.refs(&mut rs);
                    refs.extend(rs.into_iter().map(|r| ("when".to_string(), r)));
                }
                Err(e) => p.push(problem("INVALID_CONDITION", step, Some("when"), e)),
            }
        }
        for (field, r) in refs {
            match &r {
                Ref::Param { name, .. } if !spec.parameters.contains_key(name) => {
                    p.push(problem(
                        "UNKNOWN_PARAMETER",
                        step,
                        Some(&field),
                        format!(
                            "parameter '{name}' is not declared; declared: [{}]",
                            spec.parameters
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                _ => {}
            }
            if let Some(up) = r.step() {
                match index.get(up) {
                    None => p.push(problem(
                        "NOT_UPSTREAM",
                        step,
                        Some(&field),
                        format!("'{up}' is not a step of this workflow"),
                    )),
                    Some(&j) if j == i => p.push(problem(
                        "NOT_UPSTREAM",
                        step,
                        Some(&field),
                        format!("step '{up}' refers to its own output"),
                    )),
                    Some(&j) => {
                        // A direct dependency needs no search.
                        let direct = s.dependencies.iter().any(|d| d == up);
                        if !direct && !has_path_connecting(&g, nodes[j], nodes[i], Some(&mut space))
                        {
                            p.push(problem("NOT_UPSTREAM", step, Some(&field), format!(
                                "step '{}' reads step '{up}', which is not upstream of it: add '{up}' to its dependencies", s.name)));
                        }
                    }
                }
            }
        }
        match registry.spec(&s.module, &s.action) {
            None => {
                let hint = match registry.actions_of(&s.module) {
                    Some(acts) => format!("module '{}' has actions: {}", s.module, acts.join(", ")),
                    None => format!("known modules: {}", registry.modules().join(", ")),
                };
                p.push(problem(
                    "MODULE_NOT_FOUND",
                    step,
                    Some("action"),
                    format!("no action '{}.{}' ({hint})", s.module, s.action),
                ));
            }
            Some(_) if registry.disabled(&s.module).is_some() => {
                p.push(problem(
                    "MODULE_DISABLED",
                    step,
                    Some("module"),
                    format!(
                        "module '{}' is disabled: {}",
                        s.module,
                        registry.disabled(&s.module).unwrap_or_default()
                    ),
                ));
            }
            Some(_) => {
                for e in registry.check_params(
                    &s.module,
                    &s.action,
                    &Value::Object(s.parameters.clone()),
                    &templated,
                ) {
                    p.push(problem(
                        "INVALID_PARAMETERS",
                        step,
                        Some("parameters"),
                        format!("{}.{}: {e}", s.module, s.action),
                    ));
                }
            }
        }
        if let Some(r) = &s.resources
            && let Err(e) = crate::engine::resources::Requirements::parse(r)
        {
            p.push(problem("INVALID_VALUE", step, Some("resources"), e.message));
        }
        if let Some(why) = limits.timeout_problem(s.timeout_seconds) {
            p.push(problem("INVALID_VALUE", step, Some("timeout_seconds"), why));
        }
        if s.max_retries > 100 {
            p.push(problem(
                "LIMIT_EXCEEDED",
                step,
                Some("max_retries"),
                "max_retries is at most 100",
            ));
        }
        if let Some(r) = &s.retry
            && (!(1.0..=10.0).contains(&r.multiplier)
                || r.initial_delay_ms > r.max_delay_ms
                || r.max_delay_ms > 3_600_000)
        {
            p.push(problem(
                "INVALID_VALUE",
                step,
                Some("retry"),
                "retry needs 1 <= multiplier <= 10 and initial_delay_ms <= max_delay_ms <= 3600000",
            ));
        }
    }
    if !p.is_empty() {
        return Err(p.into_iter().map(Problem::bounded).collect());
    }
    Ok(plan(&g, spec))
}

/// One cycle inside a strongly connected component, as step names `a -> b -> a`.
fn cycle_path(g: &DiGraph<usize, ()>, scc: &[NodeIndex], spec: &WorkflowSpec) -> Vec<String> {
    cycle_in(scc, |n| g.neighbors(n), |n| spec.steps[g[n]].name.as_str())
        .into_iter()
        .map(|n| spec.steps[g[n]].name.clone())
        .collect()
}

/// A cycle through a strongly connected component (`scc`, as an SCC
/// algorithm found it): from its least node by `name`, always on to the
/// least successor inside the component, until a node repeats. The first
/// node is repeated at the end (`a, b, a`). Iterative: any size is safe.
pub fn cycle_in<'n, N, I>(
    scc: &[N],
    successors: impl Fn(N) -> I,
    name: impl Fn(N) -> &'n str,
) -> Vec<N>
where
    N: Copy + Eq + std::hash::Hash,
    I: Iterator<Item = N>,
{
    let in_scc: HashSet<N> = scc.iter().copied().collect();
    let Some(&start) = scc.iter().min_by_key(|n| name(**n)) else {
        return Vec::new();
    };
    let mut path = vec![start];
    let mut pos: HashMap<N, usize> = HashMap::from([(start, 0)]);
    let mut cur = start;
    loop {
        let Some(next) = successors(cur)
            .filter(|n| in_scc.contains(n))
            .min_by_key(|n| name(*n))
        else {
            return path;
        };
        if let Some(&i) = pos.get(&next) {
            let mut cyc = path.split_off(i);
            cyc.push(next);
            return cyc;
        }
        pos.insert(next, path.len());
        path.push(next);
        cur = next;
    }
}

fn plan(g: &DiGraph<usize, ()>, spec: &WorkflowSpec) -> Plan {
    let order = toposort(g, None).expect("validated acyclic");
    let mut level = vec![0usize; spec.steps.len()];
    let mut best_pred: Vec<Option<NodeIndex>> = vec![None; spec.steps.len()];
    for &n in &order {
        for m in g.neighbors(n) {
            if level[m.index()] < level[n.index()] + 1 {
                level[m.index()] = level[n.index()] + 1;
                best_pred[m.index()] = Some(n);
            }
        }
    }
    let depth = level.iter().copied().max().unwrap_or(0);
    let mut levels = vec![Vec::new(); depth + 1];
    for &n in &order {
        levels[level[n.index()]].push(spec.steps[g[n]].name.clone());
    }
    let mut cur = order.iter().copied().max_by_key(|n| level[n.index()]);
    let mut critical_path = Vec::new();
    while let Some(n) = cur {
        critical_path.push(spec.steps[g[n]].name.clone());
        cur = best_pred[n.index()];
    }
    critical_path.reverse();
    Plan {
        levels,
        critical_path,
        order: order
            .iter()
            .map(|n| spec.steps[g[*n]].name.clone())
            .collect(),
    }
}

/// Bind call parameters to a definition's declared ones: defaults fill in,
/// unknown, missing and wrongly typed parameters are refused (all at once).
pub fn bind_params(
    spec: &WorkflowSpec,
    given: &Map<String, Value>,
) -> Result<Map<String, Value>, Vec<Problem>> {
    let mut p = Vec::new();
    let mut out = Map::new();
    for k in given.keys() {
        if !spec.parameters.contains_key(k) {
            p.push(problem(
                "UNKNOWN_PARAMETER",
                None,
                Some(&format!("parameters.{k}")),
                format!(
                    "workflow '{}' has no parameter '{k}'; declared: [{}]",
                    spec.name,
                    spec.parameters
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    for (name, ps) in &spec.parameters {
        match given.get(name).or(ps.default.as_ref()) {
            Some(v) if ps.kind.accepts(v) => {
                out.insert(name.clone(), v.clone());
            }
            Some(v) => p.push(problem(
                "INVALID_VALUE",
                None,
                Some(&format!("parameters.{name}")),
                format!(
                    "parameter '{name}' must be of type {}, got {v}",
                    serde_json::to_string(&ps.kind)
                        .unwrap_or_default()
                        .trim_matches('"')
                ),
            )),
            None if ps.required => p.push(problem(
                "INVALID_VALUE",
                None,
                Some(&format!("parameters.{name}")),
                format!(
                    "parameter '{name}' is required{}",
                    if ps.description.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", ps.description)
                    }
                ),
            )),
            None => {}
        }
    }
    if p.is_empty() { Ok(out) } else { Err(p) }
}

/// A Mermaid flowchart of the workflow.
pub fn mermaid(spec: &WorkflowSpec) -> String {
    let mut s = String::from("flowchart TD\n");
    for st in &spec.steps {
        s.push_str(&format!(
            "    {}[\"{} ({}.{})\"]\n",
            st.name.replace('-', "_"),
            st.name,
            st.module,
            st.action
        ));
    }
    for st in &spec.steps {
        for d in &st.dependencies {
            s.push_str(&format!(
                "    {} --> {}\n",
                d.replace('-', "_"),
                st.name.replace('-', "_")
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Result<Plan, Vec<Problem>> {
        let spec: WorkflowSpec = serde_json::from_value(v).unwrap();
        validate(&spec, &Registry::builtin(), &Limits::default())
    }

    fn codes(r: Result<Plan, Vec<Problem>>) -> Vec<String> {
        let mut c: Vec<String> = r.unwrap_err().into_iter().map(|p| p.code).collect();
        c.sort();
        c
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn diamond_plan_levels_and_critical_path() {
        let plan = check(json!({"name": "d", "steps": [
            {"name": "a", "module": "core", "action": "echo"},
            {"name": "b", "module": "core", "action": "echo", "dependencies": ["a"]},
            {"name": "c", "module": "core", "action": "echo", "dependencies": ["a"]},
            {"name": "e", "module": "core", "action": "echo", "dependencies": ["c"]},
            {"name": "d", "module": "core", "action": "echo", "dependencies": ["b", "e"]}
        ]}))
        .unwrap();
        let mut l1 = plan.levels[1].clone();
        l1.sort();
        assert_eq!(plan.levels.len(), 4);
        assert_eq!(plan.levels[0], names(&["a"]));
        assert_eq!(l1, names(&["b", "c"]));
        assert_eq!(plan.levels[2], names(&["e"]));
        assert_eq!(plan.levels[3], names(&["d"]));
        assert_eq!(plan.critical_path, names(&["a", "c", "e", "d"]));
        assert_eq!(plan.order.len(), 5);
    }

    #[test]
    fn cycles_are_reported_as_paths() {
        let err = check(json!({"name": "c", "steps": [
            {"name": "a", "module": "core", "action": "echo", "dependencies": ["c"]},
            {"name": "b", "module": "core", "action": "echo", "dependencies": ["a"]},
            {"name": "c", "module": "core", "action": "echo", "dependencies": ["b"]}
        ]}))
        .unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].code, "CYCLE_DETECTED");
        assert_eq!(err[0].message, "dependency cycle: a -> b -> c -> a");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let c = codes(check(
            json!({"name": "bad name!", "parameters": {"p": {"type": "integer", "default": "x"}}, "steps": [
                {"name": "a", "module": "core", "action": "echo", "dependencies": ["a", "zz"]},
                {"name": "a", "module": "core", "action": "nope"},
                {"name": "B", "module": "nomod", "action": "x"},
                {"name": "s", "module": "core", "action": "sleep", "parameters": {"ms": "slow"}},
                {"name": "t", "module": "core", "action": "echo", "parameters": {"x": "{{params.undeclared}}", "y": "{{steps.u.output}}", "z": "{{oops"}},
                {"name": "u", "module": "core", "action": "echo", "when": "params.p >", "timeout_seconds": 0,
                 "retry": {"multiplier": 0.5}}
            ]}),
        ));
        for want in [
            "INVALID_NAME",
            "INVALID_VALUE",
            "SELF_DEPENDENCY",
            "UNKNOWN_DEPENDENCY",
            "DUPLICATE_STEP",
            "MODULE_NOT_FOUND",
            "INVALID_PARAMETERS",
            "UNKNOWN_PARAMETER",
            "NOT_UPSTREAM",
            "INVALID_TEMPLATE",
            "INVALID_CONDITION",
        ] {
            assert!(c.contains(&want.to_string()), "{want} missing from {c:?}");
        }
    }

    #[test]
    fn templated_parameters_skip_static_schema_checks_but_upstream_is_required() {
        let ok = check(
            json!({"name": "t", "parameters": {"d": {"type": "integer", "default": 5}}, "steps": [
                {"name": "a", "module": "core", "action": "set", "parameters": {"value": 3}},
                {"name": "b", "module": "core", "action": "sleep", "parameters": {"ms": "{{steps.a.output}}"}, "dependencies": ["a"]},
                {"name": "c", "module": "core", "action": "sleep", "parameters": {"ms": "{{params.d}}"}, "dependencies": ["b"],
                 "when": "{{steps.a.output}} == 3"}
            ]}),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let c = codes(check(json!({"name": "t", "steps": [
            {"name": "a", "module": "core", "action": "set", "parameters": {"value": 3}},
            {"name": "b", "module": "core", "action": "echo", "parameters": {"x": "{{steps.a.output}}"}}
        ]})));
        assert_eq!(c, ["NOT_UPSTREAM"]);
    }

    #[test]
    fn limits_are_enforced() {
        let steps: Vec<Value> = (0..5)
            .map(|i| json!({"name": format!("s{i}"), "module": "core", "action": "echo"}))
            .collect();
        let spec: WorkflowSpec =
            serde_json::from_value(json!({"name": "big", "steps": steps})).unwrap();
        let limits = Limits {
            max_steps: 4,
            ..Limits::default()
        };
        let err = validate(&spec, &Registry::builtin(), &limits).unwrap_err();
        assert_eq!(err[0].code, "LIMIT_EXCEEDED");
        let deep = (0..40).fold(json!(1), |v, _| json!([v]));
        let c = codes(check(
            json!({"name": "deep", "steps": [{"name": "a", "module": "core", "action": "echo", "parameters": {"x": deep}}]}),
        ));
        assert_eq!(c, ["LIMIT_EXCEEDED"]);
    }

    #[test]
    fn parameters_bind_with_defaults_and_types() {
        let spec: WorkflowSpec = serde_json::from_value(json!({"name": "p", "parameters": {
            "n": {"type": "integer", "required": true},
            "env": {"type": "string", "default": "dev"},
            "opt": {"type": "object"}
        }, "steps": [{"name": "a", "module": "core", "action": "echo"}]}))
        .unwrap();
        let m = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            Value::Object(bind_params(&spec, &m(json!({"n": 3}))).unwrap()),
            json!({"n": 3, "env": "dev"})
        );
        let errs = bind_params(&spec, &m(json!({"env": 1, "extra": true}))).unwrap_err();
        let mut c: Vec<&str> = errs.iter().map(|p| p.code.as_str()).collect();
        c.sort();
        assert_eq!(c, ["INVALID_VALUE", "INVALID_VALUE", "UNKNOWN_PARAMETER"]);
    }

    #[test]
    fn retry_delays_grow_and_cap() {
        let r = RetryPolicy {
            initial_delay_ms: 100,
            multiplier: 2.0,
            max_delay_ms: 350,
            jitter: false,
        };
        assert_eq!(
            [r.delay_ms(2), r.delay_ms(3), r.delay_ms(4), r.delay_ms(5)],
            [100, 200, 350, 350]
        );
        let j = RetryPolicy { jitter: true, ..r };
        for _ in 0..100 {
            let d = j.delay_ms(2);
            assert!((50..=150).contains(&d), "{d}");
        }
    }
}

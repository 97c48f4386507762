//! Workflow definitions: the schema (steps, parameters, retry policies,
//! trigger rules), the bounds they are checked against, parameter binding
//! and the Mermaid picture. Validation, in passes, is in `validate.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::condition;

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
    /// The value's type (default `any`).
    #[serde(rename = "type", default)]
    pub kind: ParamType,
    /// Calls must give it (unless it has a default).
    #[serde(default)]
    pub required: bool,
    /// Value used when the call does not give one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::model::bounds::any_json")]
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
    /// First delay, in ms.
    #[serde(default = "default_initial_delay")]
    pub initial_delay_ms: u64,
    /// Delay factor per retry.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Longest delay, in ms.
    #[serde(default = "default_max_delay")]
    pub max_delay_ms: u64,
    /// Spread delays randomly (±50%).
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
    /// What is wrong with the policy, if anything (one check for steps and
    /// tasks). A first delay longer than `max_delay_ms` is capped, not refused.
    pub fn problem(&self) -> Option<String> {
        crate::model::bounds::retry_problem(
            self.multiplier,
            self.initial_delay_ms,
            self.max_delay_ms,
        )
    }

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
    /// Unique within the workflow.
    pub name: String,
    /// Module of the action, e.g. `core`.
    pub module: String,
    /// Action within the module, e.g. `echo`.
    pub action: String,
    /// Parameters of the action; strings may use `{{params.x}}`, `{{steps.a.output.y}}`.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// Names of steps that must finish first.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// A condition over parameters and upstream outputs; false skips the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Per-attempt time limit in seconds.
    #[serde(default, alias = "timeout", skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Attempts after the first one (default 0).
    #[serde(default, alias = "retry_count")]
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
    /// Resources held while the step runs (it waits for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::engine::resources::optional_requirements_schema")]
    pub resources: Option<Value>,
}

/// A workflow definition: the input of `create_workflow` and of workflow files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// Unique name.
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
    /// Steps of one run at once (default: the session's max_parallel_tasks).
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
    pub(super) fn bounded(mut self) -> Self {
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

pub(super) fn problem(
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

pub(super) fn valid_step_name(n: &str) -> bool {
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

pub use super::validate::validate;

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
    use crate::actions::Registry;
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

//! Validation of a workflow definition, in passes over the whole definition:
//! the header (name, size, counts, bounds, parameters), the step names, the
//! dependency graph and its cycles, then each step's parameters, templates,
//! `when`, action and bounds. References to another step's output must name
//! a step upstream: a direct dependency is checked in O(1), any other by one
//! walk per distinct upstream step named (not one per reference), so a
//! 20,000-step DAG validates in one pass over steps plus references.
//! Every problem is reported at once, each with a code, the step and field.

use std::collections::{BTreeMap, HashMap, HashSet};

use petgraph::algo::{kosaraju_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::Dfs;
use serde_json::Value;

use super::condition;
use super::spec::{
    Limits, Plan, Problem, RetryPolicy, WorkflowSpec, cycle_in, problem, valid_step_name,
    valid_workflow_name,
};
use super::template::{Ref, templates_in};
use crate::actions::Registry;

/// Validate a definition. Returns the plan, or every problem found.
pub fn validate(
    spec: &WorkflowSpec,
    registry: &Registry,
    limits: &Limits,
) -> Result<Plan, Vec<Problem>> {
    let mut p = Vec::new();
    if !header(spec, limits, &mut p) {
        return Err(p.into_iter().map(Problem::bounded).collect());
    }
    let index = step_names(spec, &mut p);
    let (g, nodes) = dependency_graph(spec, &index, &mut p);
    cycles(&g, spec, &mut p);
    let parsed: Vec<Parsed> = spec.steps.iter().map(|s| parse_step(s, limits)).collect();
    let upstream = Upstream::of(spec, &parsed, &index, &g, &nodes);
    for (i, (s, parsed)) in spec.steps.iter().zip(parsed).enumerate() {
        p.extend(parsed.problems);
        references(spec, i, &parsed.refs, &index, &upstream, &mut p);
        action_and_bounds(s, &parsed.templated, registry, limits, &mut p);
    }
    if !p.is_empty() {
        return Err(p.into_iter().map(Problem::bounded).collect());
    }
    Ok(plan(&g, spec))
}

/// The workflow's own fields. False: too many steps to look further.
fn header(spec: &WorkflowSpec, limits: &Limits, p: &mut Vec<Problem>) -> bool {
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
        return false;
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
    true
}

/// Step names: valid and unique. The index of each name's first step.
fn step_names<'s>(spec: &'s WorkflowSpec, p: &mut Vec<Problem>) -> HashMap<&'s str, usize> {
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
    index
}

/// The graph: an edge dep -> step for every valid dependency.
fn dependency_graph(
    spec: &WorkflowSpec,
    index: &HashMap<&str, usize>,
    p: &mut Vec<Problem>,
) -> (DiGraph<usize, ()>, Vec<NodeIndex>) {
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
    (g, nodes)
}

/// Every dependency cycle, one problem each.
fn cycles(g: &DiGraph<usize, ()>, spec: &WorkflowSpec, p: &mut Vec<Problem>) {
    // Kosaraju's walk is iterative: a 20,000-step chain cannot exhaust the stack.
    for scc in kosaraju_scc(g) {
        if scc.len() > 1 {
            let path = cycle_path(g, &scc, spec);
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
}

/// What one step's parameters and `when` say: their problems, the
/// references they make, and which top-level parameters are templated.
struct Parsed {
    problems: Vec<Problem>,
    refs: Vec<(String, Ref)>,
    templated: Vec<String>,
}

fn parse_step(s: &super::spec::StepSpec, limits: &Limits) -> Parsed {
    let step = Some(s.name.as_str());
    let mut p = Vec::new();
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
    Parsed {
        problems: p,
        refs,
        templated,
    }
}

/// Which steps are upstream of which, for the references that need a walk
/// (those to a step that is not a direct dependency): one walk from each
/// distinct upstream step named, its answers kept per (reader, upstream).
struct Upstream {
    reached: HashSet<(usize, usize)>,
}

impl Upstream {
    fn of(
        spec: &WorkflowSpec,
        parsed: &[Parsed],
        index: &HashMap<&str, usize>,
        g: &DiGraph<usize, ()>,
        nodes: &[NodeIndex],
    ) -> Self {
        // Upstream step -> the steps that read it without depending on it directly.
        let mut readers: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, (s, parsed)) in spec.steps.iter().zip(parsed).enumerate() {
            for (_, r) in &parsed.refs {
                if let Some(up) = r.step()
                    && let Some(&j) = index.get(up)
                    && j != i
                    && !s.dependencies.iter().any(|d| d == up)
                {
                    readers.entry(j).or_default().push(i);
                }
            }
        }
        let mut reached = HashSet::new();
        let mut dfs = Dfs::empty(g);
        for (j, rs) in readers {
            dfs.reset(g);
            dfs.move_to(nodes[j]);
            while dfs.next(g).is_some() {}
            for i in rs {
                if dfs.discovered.contains(nodes[i].index()) {
                    reached.insert((j, i));
                }
            }
        }
        Self { reached }
    }
}

/// References: declared parameters, and steps upstream of the reader.
fn references(
    spec: &WorkflowSpec,
    i: usize,
    refs: &[(String, Ref)],
    index: &HashMap<&str, usize>,
    upstream: &Upstream,
    p: &mut Vec<Problem>,
) {
    let s = &spec.steps[i];
    let step = Some(s.name.as_str());
    for (field, r) in refs {
        if let Ref::Param { name, .. } = r
            && !spec.parameters.contains_key(name)
        {
            p.push(problem(
                "UNKNOWN_PARAMETER",
                step,
                Some(field),
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
        if let Some(up) = r.step() {
            match index.get(up) {
                None => p.push(problem(
                    "NOT_UPSTREAM",
                    step,
                    Some(field),
                    format!("'{up}' is not a step of this workflow"),
                )),
                Some(&j) if j == i => p.push(problem(
                    "NOT_UPSTREAM",
                    step,
                    Some(field),
                    format!("step '{up}' refers to its own output"),
                )),
                Some(&j) => {
                    // A direct dependency needs no walk.
                    let direct = s.dependencies.iter().any(|d| d == up);
                    if !direct && !upstream.reached.contains(&(j, i)) {
                        p.push(problem("NOT_UPSTREAM", step, Some(field), format!(
                            "step '{}' reads step '{up}', which is not upstream of it: add '{up}' to its dependencies", s.name)));
                    }
                }
            }
        }
    }
}

/// The step's action and parameters, resources, timeout and retries.
fn action_and_bounds(
    s: &super::spec::StepSpec,
    templated: &[String],
    registry: &Registry,
    limits: &Limits,
    p: &mut Vec<Problem>,
) {
    let step = Some(s.name.as_str());
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
                templated,
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
    if s.max_retries > crate::model::bounds::MAX_RETRIES {
        p.push(problem(
            "LIMIT_EXCEEDED",
            step,
            Some("max_retries"),
            format!(
                "max_retries is at most {}",
                crate::model::bounds::MAX_RETRIES
            ),
        ));
    }
    if let Some(why) = s.retry.as_ref().and_then(RetryPolicy::problem) {
        p.push(problem("INVALID_VALUE", step, Some("retry"), why));
    }
}

/// One cycle inside a strongly connected component, as step names `a -> b -> a`.
fn cycle_path(g: &DiGraph<usize, ()>, scc: &[NodeIndex], spec: &WorkflowSpec) -> Vec<String> {
    cycle_in(scc, |n| g.neighbors(n), |n| spec.steps[g[n]].name.as_str())
        .into_iter()
        .map(|n| spec.steps[g[n]].name.clone())
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(name: &str, deps: &[&str], reads: &str) -> Value {
        json!({"name": name, "module": "core", "action": "echo",
               "dependencies": deps, "parameters": {"x": reads}})
    }

    fn not_upstream(steps: Vec<Value>) -> Vec<String> {
        let spec: WorkflowSpec =
            serde_json::from_value(json!({"name": "w", "steps": steps})).unwrap();
        match validate(&spec, &Registry::builtin(), &Limits::default()) {
            Ok(_) => Vec::new(),
            Err(p) => p
                .into_iter()
                .filter(|p| p.code == "NOT_UPSTREAM")
                .filter_map(|p| p.step)
                .collect(),
        }
    }

    #[test]
    fn one_walk_answers_every_reader_of_the_same_upstream_step() {
        // a -> b -> c, and d beside: c and d both read a; only c has it upstream.
        let bad = not_upstream(vec![
            step("a", &[], ""),
            step("b", &["a"], ""),
            step("c", &["b"], "{{steps.a.output}}"),
            step("d", &[], "{{steps.a.output}}"),
            step("e", &["c"], "{{steps.d.output}}"),
        ]);
        assert_eq!(bad, vec!["d", "e"]);
    }

    #[test]
    fn a_long_chain_reading_its_root_is_valid() {
        let n = 5_000;
        let steps = (0..n)
            .map(|i| {
                let name = format!("s{i}");
                if i == 0 {
                    step(&name, &[], "")
                } else {
                    step(&name, &[&format!("s{}", i - 1)], "{{steps.s0.output}}")
                }
            })
            .collect();
        assert!(not_upstream(steps).is_empty());
    }
}

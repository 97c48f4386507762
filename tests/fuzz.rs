//! Generated-input fuzzing of the parsers that take caller input, in process:
//! the workflow definition parser and validator, the template renderer and
//! the condition parser. Inputs mix the grammar's own tokens with bombs
//! (deep nesting, long chains, huge numbers, stray quotes and braces), so
//! most cases reach deep into each parser. A case passes when the call
//! returns (a value or an error) without panicking or overflowing the stack;
//! any crash fails the suite. `FUZZ_CASES` sets the cases per target
//! (default 2,000); the count of inputs tried is printed.

use std::sync::atomic::{AtomicUsize, Ordering};

use myrmex::actions::Registry;
use myrmex::engine::workflows::condition::{self, Bounds};
use myrmex::engine::workflows::library::parse_text;
use myrmex::engine::workflows::spec::{Limits, WorkflowSpec, bind_params, validate};
use myrmex::engine::workflows::template::{
    Budget, Scope, Template, render_value_within, templates_in,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn cases() -> u32 {
    // The parsers do not touch the store: the suite's PostgreSQL pass skips them.
    if std::env::var("TEST_MYRMEX_STORE").is_ok_and(|s| s == "postgres") {
        return 1;
    }
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

static TRIED: [AtomicUsize; 4] = [
    AtomicUsize::new(0),
    AtomicUsize::new(0),
    AtomicUsize::new(0),
    AtomicUsize::new(0),
];

fn tried(i: usize, what: &str) {
    let n = TRIED[i].fetch_add(1, Ordering::Relaxed) + 1;
    if n == cases() as usize {
        eprintln!("fuzz {what}: {n} inputs tried, no crash");
    }
}

/// Pieces of the condition and template grammars, and bombs.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("(".to_string()),
        Just(")".to_string()),
        Just("!".to_string()),
        Just(" && ".to_string()),
        Just(" || ".to_string()),
        Just(" and ".to_string()),
        Just(" not ".to_string()),
        Just(" == ".to_string()),
        Just(" < ".to_string()),
        Just(">=".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        Just("'a'".to_string()),
        Just("\"".to_string()),
        Just("{{".to_string()),
        Just("}}".to_string()),
        Just("${".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("\\{{".to_string()),
        Just("params.n".to_string()),
        Just("params.obj.k[0]".to_string()),
        Just("steps.a.output".to_string()),
        Just("steps.a.output.x[1].y".to_string()),
        Just("steps.a.status".to_string()),
        Just("a.result".to_string()),
        Just("run.id".to_string()),
        Just("project.path".to_string()),
        Just("-12.5e3".to_string()),
        Just("99999999999999999999999999".to_string()),
        Just("é".to_string()),
        "[a-z0-9_.]{0,8}".prop_map(|s| s),
        (1usize..3000).prop_map(|n| "(".repeat(n)),
        (1usize..3000).prop_map(|n| "!".repeat(n)),
        (1usize..3000).prop_map(|n| "true && ".repeat(n)),
        (1usize..500).prop_map(|n| "{{".repeat(n)),
        (1usize..500).prop_map(|n| "[".repeat(n)),
    ]
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(token(), 0..24).prop_map(|v| v.concat())
}

/// JSON values that may nest deeply and carry template strings.
fn value() -> impl Strategy<Value = Value> {
    nested(40, 200)
}

/// JSON values nested at most `depth` levels with about `size` nodes.
fn nested(depth: u32, size: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, size, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

struct S(Value);

impl Scope for S {
    fn param(&self, n: &str) -> Option<&Value> {
        self.0.get(n)
    }
    fn step(&self, n: &str) -> Option<(String, Option<&Value>)> {
        (n == "a").then(|| ("succeeded".to_string(), self.0.get("a_out")))
    }
    fn run_id(&self) -> &str {
        "run_1"
    }
    fn session_id(&self) -> &str {
        "ses_1"
    }
}

fn scope() -> S {
    S(json!({"n": 5, "obj": {"k": [true]}, "a_out": {"x": [1, {"y": "deep"}]}}))
}

/// A workflow definition: mostly well formed, with generated names,
/// dependencies, conditions, parameters, timeouts and retry policies.
fn definition() -> impl Strategy<Value = Value> {
    let step = (
        "[a-z]{1,3}",
        proptest::collection::vec("[a-z]{1,3}", 0..4),
        proptest::option::of(text()),
        nested(6, 24),
        proptest::option::of(any::<u64>()),
        any::<u32>(),
        proptest::option::of(nested(2, 6)),
        prop_oneof![Just("echo"), Just("set"), Just("sleep"), Just("nope")],
    )
        .prop_map(|(name, deps, when, params, timeout, retries, retry, action)| {
            let mut s = json!({"name": name, "module": "core", "action": action, "dependencies": deps,
                               "max_retries": retries % 200});
            if let Some(w) = when {
                s["when"] = json!(w);
            }
            s["parameters"] = match params {
                Value::Object(o) => Value::Object(o),
                other => json!({"value": other}),
            };
            if let Some(t) = timeout {
                s["timeout_seconds"] = json!(t);
            }
            if let Some(r) = retry {
                s["retry"] = r;
            }
            s
        });
    (
        proptest::collection::vec(step, 0..12),
        proptest::collection::btree_map("[a-z]{1,3}", nested(4, 12), 0..3),
    )
        .prop_map(|(steps, params)| {
            let declared: Map<String, Value> = params
                .keys()
                .map(|k| (k.clone(), json!({"type": "any"})))
                .collect();
            json!({"name": "fuzz", "parameters": declared, "steps": steps})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn conditions_parse_and_evaluate_without_crashing(src in text()) {
        for bounds in [Bounds::default(), Bounds { max_bytes: 1 << 20, max_depth: 100 }] {
            if let Ok(e) = condition::parse(&src, bounds) {
                let _ = e.eval(&scope());
                let mut refs = Vec::new();
                e.refs(&mut refs);
            }
        }
        tried(0, "conditions");
    }

    #[test]
    fn templates_parse_and_render_within_their_budget(v in value(), max in 0usize..100_000) {
        let mut found = Vec::new();
        templates_in(&v, "", &mut found);
        let mut budget = Budget::new(max, "workflows.max_rendered_bytes");
        if let Ok(out) = render_value_within(&v, &scope(), &mut budget) {
            // What was rendered stays within the budget (strings count their bytes).
            prop_assert!(out.to_string().len() <= max.saturating_mul(2) + v.to_string().len() * 2 + 2);
        }
        if let Value::String(s) = &v {
            let _ = Template::parse(s).map(|t| t.render(&scope()));
        }
        tried(1, "templates");
    }

    #[test]
    fn definitions_parse_and_validate_without_crashing(def in definition()) {
        static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
        let registry = REGISTRY.get_or_init(Registry::builtin);
        let limits = Limits::default();
        for (text, ext) in [
            (def.to_string(), "json"),
            (serde_yaml_ng::to_string(&def).unwrap_or_default(), "yaml"),
        ] {
            if let Ok(spec) = parse_text(&text, ext) {
                let _ = validate(&spec, registry, &limits);
                let _ = bind_params(&spec, &Map::new());
            }
        }
        if let Ok(spec) = serde_json::from_value::<WorkflowSpec>(def) {
            let _ = validate(&spec, registry, &limits);
        }
        tried(2, "definitions");
    }

    #[test]
    fn workflow_files_of_any_text_are_refused_or_parsed(src in text(), ext in prop_oneof![Just("json"), Just("yaml")]) {
        let _ = parse_text(&src, ext);
        tried(3, "workflow file text");
    }
}

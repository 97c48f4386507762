//! The published schemas are the contract, tested at their edges through the
//! real binary: for every tool, arguments are generated from its inputSchema
//! (each bound, just inside and just outside; each length limit; each enum
//! value and one outside; the empty and the all-null call) and sent. What
//! the schema admits is never refused with INVALID_PARAMETERS (referential
//! answers such as NOT_FOUND are fine); what it forbids is refused with
//! INVALID_PARAMETERS naming the field.

mod common;

use common::*;
use serde_json::{Map, Value, json};

/// A sample value a schema admits, for a field called `name`.
fn sample(schema: &Value, defs: &Value, name: &str) -> Value {
    let s = resolve(schema, defs);
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return e
            .iter()
            .find(|x| !x.is_null())
            .cloned()
            .unwrap_or(Value::Null);
    }
    if let Some(b) = s
        .get("anyOf")
        .or_else(|| s.get("oneOf"))
        .and_then(Value::as_array)
        && let Some(x) = b.iter().find(|x| x.get("type") != Some(&json!("null")))
    {
        return sample(x, defs, name);
    }
    let types = types_of(&s);
    let t = types
        .iter()
        .find(|t| *t != "null")
        .cloned()
        .unwrap_or_default();
    match t.as_str() {
        "object" => generate(&s, defs),
        "array" => {
            let min = s.get("minItems").and_then(Value::as_u64).unwrap_or(0);
            match s.get("items") {
                Some(items) if min > 0 || name == "steps" || name == "tasks" => {
                    json!([sample(items, defs, name)])
                }
                _ => json!([]),
            }
        }
        "integer" | "number" => s.get("minimum").cloned().unwrap_or(json!(0)),
        "boolean" => json!(false),
        "string" => json!(match name {
            "module" => "core",
            "action" => "echo",
            _ => "a",
        }),
        _ => Value::Null,
    }
}

fn resolve(s: &Value, defs: &Value) -> Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut d = defs[r.trim_start_matches("#/$defs/")].clone();
            if let (Value::Object(d), Value::Object(m)) = (&mut d, s) {
                for (k, v) in m {
                    if k != "$ref" {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
            d
        }
        None => s.clone(),
    }
}

fn types_of(s: &Value) -> Vec<String> {
    match s.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// The names an object schema requires, its aliases' `oneOf` included (the
/// first of each pair).
fn required(s: &Value) -> Vec<String> {
    let mut r: Vec<String> = s["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    let pairs = s["oneOf"].as_array().into_iter().flatten().chain(
        s["allOf"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|x| x["oneOf"].as_array().into_iter().flatten().take(1)),
    );
    for b in pairs.take(1) {
        if let Some(f) = b["required"][0].as_str() {
            r.push(f.to_string());
        }
    }
    r
}

/// The smallest object an object schema admits: its required fields.
fn generate(s: &Value, defs: &Value) -> Value {
    let s = resolve(s, defs);
    let mut out = Map::new();
    for f in required(&s) {
        out.insert(f.clone(), sample(&s["properties"][&f], defs, &f));
    }
    // An object that must have properties gets its first one.
    if out.is_empty()
        && s["minProperties"].as_u64().unwrap_or(0) > 0
        && let Some((k, p)) = s["properties"].as_object().and_then(|p| p.iter().next())
    {
        out.insert(k.clone(), sample(p, defs, k));
    }
    // A module and an action go together.
    if out.contains_key("module") && !out.contains_key("action") {
        out.insert("action".into(), json!("echo"));
    }
    Value::Object(out)
}

/// One generated call.
struct Case {
    args: Value,
    admitted: bool,
    field: String,
    what: String,
}

/// The field's path as the server names it (`steps[0].retry.multiplier`).
fn spelled(path: &[String]) -> String {
    let mut s = String::new();
    for p in path {
        if p == "[0]" {
            s.push_str(p);
        } else {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(p);
        }
    }
    s
}

/// `base` with `value` at `path`, the objects on the way made from their schemas.
fn with(base: &Value, root: &Value, defs: &Value, path: &[String], value: Value) -> Value {
    fn go(v: &mut Value, s: &Value, defs: &Value, path: &[String], value: Value) {
        let s = resolve(s, defs);
        let Some((head, rest)) = path.split_first() else {
            *v = value;
            return;
        };
        if head == "[0]" {
            let items = s["items"].clone();
            if !v.is_array() || v.as_array().unwrap().is_empty() {
                *v = json!([sample(&items, defs, "")]);
            }
            go(&mut v[0], &items, defs, rest, value);
            return;
        }
        // A nullable object field's object branch.
        let mut ps = s["properties"][head].clone();
        if let Some(b) = ps["anyOf"].as_array()
            && !rest.is_empty()
        {
            ps = b
                .iter()
                .find(|x| x.get("type") != Some(&json!("null")))
                .cloned()
                .unwrap_or(Value::Null);
        }
        if !v.is_object() {
            *v = json!({});
        }
        let slot = v
            .as_object_mut()
            .unwrap()
            .entry(head.clone())
            .or_insert_with(|| {
                if rest.is_empty() {
                    Value::Null
                } else {
                    sample(&ps, defs, head)
                }
            });
        if slot.is_null() && !rest.is_empty() {
            *slot = sample(&ps, defs, head);
        }
        go(slot, &ps, defs, rest, value);
    }
    let mut v = base.clone();
    go(&mut v, root, defs, path, value);
    v
}

/// Every leaf field of a schema with its path (objects and first items followed).
fn leaves(
    s: &Value,
    defs: &Value,
    path: Vec<String>,
    out: &mut Vec<(Vec<String>, Value)>,
    depth: usize,
) {
    let s = resolve(s, defs);
    if depth > 6 {
        return;
    }
    if let Some(b) = s.get("anyOf").and_then(Value::as_array)
        && let Some(x) = b.iter().find(|x| x.get("type") != Some(&json!("null")))
        && (x.get("$ref").is_some() || x.get("properties").is_some())
    {
        return leaves(x, defs, path, out, depth + 1);
    }
    if let Some(Value::Object(props)) = s.get("properties") {
        for (k, p) in props {
            let mut at = path.clone();
            at.push(k.clone());
            leaves(p, defs, at, out, depth + 1);
        }
        return;
    }
    if types_of(&s).contains(&"array".to_string())
        && let Some(items) = s.get("items")
        && resolve(items, defs).get("properties").is_some()
    {
        let mut at = path.clone();
        at.push("[0]".into());
        return leaves(items, defs, at, out, depth + 1);
    }
    if !path.is_empty() {
        out.push((path, s));
    }
}

fn cases(tool: &str, schema: &Value) -> Vec<Case> {
    let defs = schema.get("$defs").cloned().unwrap_or(json!({}));
    let base = generate(schema, &defs);
    let mut out = vec![Case {
        args: base.clone(),
        admitted: true,
        field: String::new(),
        what: "the required fields".into(),
    }];
    let req = required(schema);
    out.push(Case {
        args: json!({}),
        admitted: req.is_empty(),
        field: req.first().cloned().unwrap_or_default(),
        what: "no arguments".into(),
    });
    // Every optional field that may be null, null.
    let mut nulls = base.clone();
    for (k, p) in schema["properties"].as_object().into_iter().flatten() {
        if !req.contains(k) && types_of(p).contains(&"null".to_string()) {
            nulls[k] = Value::Null;
        }
    }
    out.push(Case {
        args: nulls,
        admitted: true,
        field: String::new(),
        what: "every optional field null".into(),
    });
    let mut fields = Vec::new();
    leaves(schema, &defs, Vec::new(), &mut fields, 0);
    for (path, s) in fields {
        let name = spelled(&path);
        // Aliases are tried as their field is; giving both is another test.
        if path.last().is_some_and(|l| {
            matches!(l.as_str(), "timeout" | "retry_count" | "project_name")
                || (tool == "execute_task" && l == "name")
        }) {
            continue;
        }
        let mut add = |v: Value, admitted: bool, what: String| {
            out.push(Case {
                args: with(&base, schema, &defs, &path, v),
                admitted,
                field: name.clone(),
                what,
            })
        };
        let types = types_of(&s);
        if let (Some(min), Some(max)) = (s.get("minimum"), s.get("maximum")) {
            let int = types.contains(&"integer".to_string());
            if int {
                let (lo, hi) = (min.as_u64().unwrap(), max.as_u64().unwrap());
                add(json!(lo), true, format!("{name} = {lo} (its minimum)"));
                add(json!(hi), true, format!("{name} = {hi} (its maximum)"));
                if hi > lo {
                    add(
                        json!(lo + 1),
                        true,
                        format!("{name} just above its minimum"),
                    );
                    add(
                        json!(hi - 1),
                        true,
                        format!("{name} just below its maximum"),
                    );
                }
                add(
                    json!(hi as u128 + 1),
                    false,
                    format!("{name} past its maximum"),
                );
                add(
                    json!(lo as i128 - 1),
                    false,
                    format!("{name} below its minimum"),
                );
            } else {
                let (lo, hi) = (min.as_f64().unwrap(), max.as_f64().unwrap());
                add(json!(lo), true, format!("{name} = {lo}"));
                add(json!(hi), true, format!("{name} = {hi}"));
                add(json!(hi + 0.5), false, format!("{name} past its maximum"));
                add(json!(lo - 0.5), false, format!("{name} below its minimum"));
            }
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
            let at = "a".repeat(max as usize);
            add(json!(at), true, format!("{name} of {max} characters"));
            add(json!(format!("{at}a")), false, format!("{name} too long"));
        }
        if s.get("minLength").and_then(Value::as_u64) == Some(1) {
            add(json!(""), false, format!("{name} empty"));
        }
        if let Some(vals) = s.get("enum").and_then(Value::as_array) {
            for v in vals {
                add(v.clone(), true, format!("{name} = {v}"));
            }
            add(json!("bogus"), false, format!("{name} = \"bogus\""));
        }
    }
    out
}

#[tokio::test]
async fn every_tool_accepts_what_its_schema_admits_and_refuses_what_it_forbids() {
    let env = Env::new();
    // Short waits keep the edges of wait_seconds quick (and show that a
    // configured limit is what the schema publishes).
    let c = env
        .stdio_config(
            Era::Modern,
            "[tools]\nprofile = \"all\"\n[workflows]\nmax_wait_seconds = 2\ndefault_wait_seconds = 1\n",
        )
        .await;
    let tools = c.list_all_tools().await.unwrap();
    assert!(tools.len() >= 44, "{}", tools.len());
    let (mut tried, mut admitted_refused, mut forbidden_accepted) = (0, Vec::new(), Vec::new());
    let mut by_rule = 0;
    for t in &tools {
        let schema = Value::Object((*t.input_schema).clone());
        // What the schema admits is decided by the schema itself (its rules
        // across fields included), not by the generator's intent.
        let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
        for mut case in cases(&t.name, &schema) {
            tried += 1;
            let admitted = validator.is_valid(&case.args);
            if case.admitted && !admitted {
                // A rule across fields forbids it: refused, whichever field is named.
                by_rule += 1;
                case.field = String::new();
            }
            case.admitted = admitted;
            let got = call(&c, &t.name, case.args.clone()).await;
            let refused = matches!(&got, Err(e) if e["code"] == "INVALID_PARAMETERS");
            if case.admitted && refused {
                admitted_refused.push(format!(
                    "{}: {} {}: {}",
                    t.name,
                    case.what,
                    case.args,
                    got.unwrap_err()["message"]
                ));
            } else if !case.admitted {
                let named = match &got {
                    Err(e) if refused => {
                        case.field.is_empty() || fields_named(e).contains(&case.field.as_str())
                    }
                    _ => false,
                };
                if !named {
                    forbidden_accepted.push(format!(
                        "{}: {} {}: {}",
                        t.name,
                        case.what,
                        case.args,
                        match &got {
                            Ok(_) => "accepted".to_string(),
                            Err(e) => e.to_string(),
                        }
                    ));
                }
            }
        }
    }
    println!(
        "boundary calls tried: {tried} ({by_rule} forbidden by a rule across fields); admitted but refused: {}; forbidden but accepted (or not named): {}",
        admitted_refused.len(),
        forbidden_accepted.len()
    );
    assert!(
        admitted_refused.is_empty() && forbidden_accepted.is_empty(),
        "admitted but refused:\n{}\n\nforbidden but accepted or not named:\n{}",
        admitted_refused.join("\n"),
        forbidden_accepted.join("\n")
    );
}

//! The published contract is the checked one. Each tool's inputSchema is
//! completed here from the definitions the checks read (the fixed limits of
//! `model::bounds`, the configuration's keys): every numeric bound, the
//! name rules, the aliases the tools accept, enums written out in place;
//! and a call's arguments are checked against that very schema before the
//! tool runs, every bad field reported at once, named as the caller spelled
//! it, with the config key of the limit it broke.

use std::collections::BTreeSet;

use serde_json::{Map, Number, Value, json};

use crate::config::Config;
use crate::error::Error;
use crate::model::bounds::{self as b, field_path};

/// Where a limit comes from: a configuration key, or fixed.
const FIXED: &str = "fixed";

/// A numeric range and the key that sets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    pub min: Number,
    pub max: Number,
    pub key: &'static str,
}

fn int(min: u64, max: u64, key: &'static str) -> Option<Bound> {
    Some(Bound {
        min: min.into(),
        max: max.into(),
        key,
    })
}

/// The range of the numeric field `field` of `tool`'s arguments (at any
/// depth: a step's `timeout_seconds` is a workflow's), as the check of that
/// field enforces it.
pub fn bound(cfg: &Config, tool: &str, field: &str) -> Option<Bound> {
    const TASK_TOOLS: &[&str] = &["create_task", "create_tasks", "update_task", "execute_task"];
    match field {
        "limit" if tool == "get_events" => int(1, b::MAX_EVENT_PAGE.into(), FIXED),
        "limit" => int(1, cfg.limits.max_page_size.into(), "limits.max_page_size"),
        "wait_seconds" => int(
            0,
            cfg.workflows.max_wait_seconds,
            "workflows.max_wait_seconds",
        ),
        "lease_seconds" => int(1, cfg.tasks.max_lease_seconds, "tasks.max_lease_seconds"),
        "ttl_seconds" => int(
            1,
            cfg.resources.max_ttl_seconds,
            "resources.max_ttl_seconds",
        ),
        "idle_ttl_seconds" => int(
            1,
            cfg.sessions.max_idle_ttl_seconds,
            "sessions.max_idle_ttl_seconds",
        ),
        "timeout_seconds" if tool == "create_session" => {
            int(1, b::MAX_SESSION_TIMEOUT_SECONDS, FIXED)
        }
        "timeout_seconds" if TASK_TOOLS.contains(&tool) => {
            int(1, b::MAX_TASK_TIMEOUT_SECONDS, FIXED)
        }
        "timeout_seconds" | "timeout" => int(
            1,
            cfg.workflows.max_timeout_seconds,
            "workflows.max_timeout_seconds",
        ),
        "max_parallel" | "max_parallel_tasks" => int(1, b::MAX_PARALLEL_TASKS.into(), FIXED),
        "max_parallel_workflows" => int(1, b::MAX_PARALLEL_WORKFLOWS.into(), FIXED),
        "max_retries" | "retry_count" => int(0, b::MAX_RETRIES.into(), FIXED),
        "initial_delay_ms" | "max_delay_ms" => int(0, b::MAX_RETRY_DELAY_MS, FIXED),
        "time_range_hours" => int(1, b::MAX_TIME_RANGE_HOURS.into(), FIXED),
        "multiplier" => {
            let (lo, hi) = b::RETRY_MULTIPLIER;
            Some(Bound {
                min: Number::from_f64(lo)?,
                max: Number::from_f64(hi)?,
                key: FIXED,
            })
        }
        _ => None,
    }
}

/// The rule of a string field, where its check has one a schema can say.
fn text_rule(cfg: &Config, tool: &str, def: &str, field: &str) -> Option<Value> {
    let names = cfg.limits.max_name_chars;
    match (def, field) {
        // A workflow's name (in its definition, and where one is named).
        ("", "name") if matches!(tool, "create_workflow" | "create_complex_workflow") => {
            Some(json!({"minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9_.-]+$"}))
        }
        ("StepSpec", "name") => {
            Some(json!({"minLength": 1, "maxLength": 64, "pattern": "^[a-z0-9_-]+$"}))
        }
        ("NewTask", "name") | ("", "task_name") => {
            Some(json!({"minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"}))
        }
        ("", "name" | "user_id") if tool == "create_session" => Some(json!({"maxLength": names})),
        ("", "description") if tool == "create_session" => {
            Some(json!({"maxLength": cfg.limits.max_description_chars}))
        }
        ("", "agent") => Some(json!({"minLength": 1, "maxLength": 128})),
        _ => None,
    }
}

/// Aliases the tools accept (serde `alias`), as (tool or `*`, the object's
/// `$defs` name or `` for the arguments, field, alias). Published beside
/// their field; giving both is refused.
const ALIASES: &[(&str, &str, &str, &str)] = &[
    ("*", "StepSpec", "timeout_seconds", "timeout"),
    ("*", "StepSpec", "max_retries", "retry_count"),
    ("execute_task", "", "task_name", "name"),
    ("manage_project", "", "project", "project_name"),
];

/// Rules across fields of a tool's arguments that its checks enforce: one of
/// two spellings required, fields that belong to one operation.
fn rules(tool: &str) -> Vec<Value> {
    let string = |f: &str| json!({"required": [f], "properties": {f: {"type": "string"}}});
    let not_both = |a: &str, b: &str| json!({"not": {"required": [a, b], "properties": {a: {"type": "string"}, b: {"type": "string"}}}});
    match tool {
        "create_project" => vec![
            json!({"oneOf": [string("name"), string("project_name")]}),
            not_both("template", "template_name"),
            not_both("path", "project_path"),
        ],
        "release_resources" => vec![json!({"oneOf": [
            string("allocation_id"),
            {"required": ["all_of_session"], "properties": {"all_of_session": {"const": true}}}
        ]})],
        "manage_project" => {
            // A field given belongs to its operation (the fields are not
            // nullable, see OPERATION_FIELDS); milestone needs its name,
            // delete its confirmation, update something to change (at the
            // top level, or in `parameters`, the original's form).
            let op = |op: &str| json!({"properties": {"operation": {"const": op}}});
            let mut belongs = Map::new();
            for (o, fields) in OPERATION_FIELDS {
                for f in *fields {
                    belongs.insert(f.to_string(), op(o));
                }
            }
            let needs = |o: &str, mut any: Vec<Value>| {
                any.push(json!({"required": ["parameters"], "properties": {"parameters": {"minProperties": 1}}}));
                json!({"if": {"required": ["operation"], "properties": {"operation": {"const": o}}}, "then": {"anyOf": any}})
            };
            let confirmed =
                json!({"required": ["confirm"], "properties": {"confirm": {"const": true}}});
            vec![
                json!({"dependentSchemas": belongs}),
                json!({"if": confirmed, "then": op("delete")}),
                needs("milestone", vec![json!({"required": ["milestone_name"]})]),
                needs("delete", vec![confirmed.clone()]),
                needs(
                    "update",
                    OPERATION_FIELDS[0]
                        .1
                        .iter()
                        .map(|f| json!({"required": [f]}))
                        .collect(),
                ),
            ]
        }
        _ => Vec::new(),
    }
}

/// manage_project's fields by the operation they belong to (`confirm`, a
/// boolean, belongs to delete when true). Published without `null`: a field
/// is given or left out.
const OPERATION_FIELDS: &[(&str, &[&str])] = &[
    (
        "update",
        &["description", "tags", "status", "version", "config"],
    ),
    ("milestone", &["milestone_name", "data"]),
    ("metrics", &["metrics"]),
];

/// `schema` (a tool's input schema as schemars made it) completed with what
/// its checks enforce under `cfg`.
pub fn publish(tool: &str, schema: &mut Map<String, Value>, cfg: &Config) {
    // A tool without arguments still says so in `properties` (clients index it).
    schema
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    inline_enums(schema);
    // The arguments object, then each definition, with its `$defs` name.
    complete_object(tool, "", schema, cfg);
    // Where what is required is more than `required` says (one of two
    // spellings, a field per operation), a whole valid call shows it; clients
    // that generate arguments from `required` alone start from it.
    if schema.contains_key("oneOf") || schema.contains_key("allOf") {
        let doc = crate::server::catalog::doc(tool);
        if let Ok(example) = serde_json::from_str::<Value>(doc.example) {
            schema.insert("examples".into(), json!([example]));
        }
    }
    if let Some(Value::Object(defs)) = schema.get_mut("$defs") {
        for (name, d) in defs.iter_mut() {
            if let Value::Object(d) = d {
                complete_object(tool, name, d, cfg);
            }
        }
    }
}

/// The `def` of an object written in place inside another.
const NESTED: &str = "(nested)";

/// One object schema: its properties' bounds and rules (nested objects
/// without a name of their own too), and its aliases.
fn complete_object(tool: &str, def: &str, o: &mut Map<String, Value>, cfg: &Config) {
    if let Some(Value::Object(props)) = o.get_mut("properties") {
        for (field, p) in props.iter_mut() {
            if let Some(bd) = bound(cfg, tool, field) {
                set_bound(p, &bd);
            }
            if let (Some(rule), Value::Object(pm)) = (text_rule(cfg, tool, def, field), &mut *p)
                && let Value::Object(rule) = rule
            {
                pm.extend(rule);
            }
            // Objects and arrays of objects defined in place.
            for inner in nested_objects(p) {
                complete_object(tool, NESTED, inner, cfg);
            }
        }
    }
    let mut exclusive = Vec::new();
    for (t, d, field, alias) in ALIASES {
        if (*t != "*" && *t != tool) || *d != def {
            continue;
        }
        let Some(Value::Object(props)) = o.get_mut("properties") else {
            continue;
        };
        let Some(canon) = props.get(*field).cloned() else {
            continue;
        };
        let mut a = canon;
        if let Value::Object(a) = &mut a {
            a.insert("description".into(), json!(format!("Alias of {field}.")));
        }
        props.insert(alias.to_string(), a);
        let was_required = o
            .get_mut("required")
            .and_then(Value::as_array_mut)
            .map(|r| {
                let before = r.len();
                r.retain(|x| x != field);
                before != r.len()
            })
            .unwrap_or(false);
        if was_required {
            exclusive.push(json!({"oneOf": [{"required": [field]}, {"required": [alias]}]}));
            // (Both are strings where this is used; a null fails the type.)
        } else {
            exclusive.push(json!({"not": {"required": [field, alias]}}));
        }
    }
    if def.is_empty() {
        exclusive.extend(rules(tool));
        if tool == "manage_project"
            && let Some(Value::Object(props)) = o.get_mut("properties")
        {
            for f in OPERATION_FIELDS.iter().flat_map(|(_, f)| f.iter()) {
                if let Some(t) = props.get_mut(*f).and_then(|p| p.get_mut("type"))
                    && let Value::Array(a) = t
                {
                    a.retain(|x| x != "null");
                    if a.len() == 1 {
                        *t = a[0].clone();
                    }
                }
                if let Some(Value::Array(e)) = props.get_mut(*f).and_then(|p| p.get_mut("enum")) {
                    e.retain(|x| !x.is_null());
                }
            }
        }
    }
    if o.get("required")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        o.remove("required");
    }
    match exclusive.len() {
        0 => {}
        1 => {
            let Value::Object(rule) = exclusive.remove(0) else {
                unreachable!()
            };
            o.extend(rule);
        }
        _ => {
            o.insert("allOf".into(), Value::Array(exclusive));
        }
    }
}

/// The object schemas written in place inside a property (its own, its
/// items', its nullable branches').
fn nested_objects(p: &mut Value) -> Vec<&mut Map<String, Value>> {
    let mut out = Vec::new();
    let mut stack = vec![p];
    while let Some(v) = stack.pop() {
        let Value::Object(m) = v else { continue };
        if m.contains_key("properties") {
            out.push(m);
            continue;
        }
        for (k, x) in m.iter_mut() {
            if k == "items" && x.is_object() {
                stack.push(x);
            } else if (k == "anyOf" || k == "oneOf")
                && let Value::Array(a) = x
            {
                stack.extend(a.iter_mut());
            }
        }
    }
    out
}

/// Set `minimum`/`maximum` on the numeric schema `p` (or its numeric branches).
fn set_bound(p: &mut Value, bd: &Bound) {
    let Value::Object(m) = p else { return };
    let numeric = |t: &Value| match t {
        Value::String(s) => s == "integer" || s == "number",
        Value::Array(a) => a
            .iter()
            .any(|x| x.as_str().is_some_and(|s| s == "integer" || s == "number")),
        _ => false,
    };
    if m.get("type").is_some_and(numeric) {
        m.insert("minimum".into(), Value::Number(bd.min.clone()));
        m.insert("maximum".into(), Value::Number(bd.max.clone()));
        return;
    }
    for k in ["anyOf", "oneOf"] {
        if let Some(Value::Array(a)) = m.get_mut(k) {
            for x in a {
                set_bound(x, bd);
            }
        }
    }
}

/// Enums are written where they are used, not behind `$ref` (clients turn
/// a referenced enum into an object); a nullable one becomes one `enum`
/// with `null`. Definitions no longer referenced are dropped.
fn inline_enums(schema: &mut Map<String, Value>) {
    let no_defs = Map::new();
    let defs = match schema.get("$defs") {
        Some(Value::Object(d)) => d,
        _ => &no_defs,
    };
    let enums: Map<String, Value> = defs
        .iter()
        .filter(|(_, d)| is_enum(d))
        .map(|(k, d)| {
            let mut d = d.clone();
            crate::server::profiles::compact(&mut d);
            (format!("#/$defs/{k}"), d)
        })
        .collect();
    let mut stack: Vec<&mut Value> = schema.values_mut().collect();
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                if let Some(d) = m
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| enums.get(r))
                {
                    let d = d.clone();
                    m.remove("$ref");
                    if let Value::Object(d) = d {
                        for (k, x) in d {
                            if k != "description" || !m.contains_key("description") {
                                m.insert(k, x);
                            }
                        }
                    }
                }
                // anyOf [enum, null] -> one nullable enum.
                if let Some(Value::Array(a)) = m.get("anyOf")
                    && a.len() == 2
                {
                    let is_null = |x: &Value| x.get("type") == Some(&json!("null"));
                    let inner = a.iter().find(|x| !is_null(x)).and_then(|e| {
                        match e.get("$ref").and_then(Value::as_str) {
                            Some(r) => enums.get(r).cloned(),
                            None => is_enum(e).then(|| {
                                let mut e = e.clone();
                                crate::server::profiles::compact(&mut e);
                                e
                            }),
                        }
                    });
                    if a.iter().any(is_null)
                        && let Some(Value::Object(d)) = &inner
                        && let Some(Value::Array(vals)) = d.get("enum")
                    {
                        let mut vals = vals.clone();
                        vals.push(Value::Null);
                        m.remove("anyOf");
                        m.insert("type".into(), json!(["string", "null"]));
                        m.insert("enum".into(), Value::Array(vals));
                    }
                }
                stack.extend(m.values_mut());
            }
            Value::Array(a) => stack.extend(a.iter_mut()),
            _ => {}
        }
    }
    // Drop the definitions nothing refers to any more.
    let text = Value::Object(schema.clone()).to_string();
    if let Some(Value::Object(defs)) = schema.get_mut("$defs") {
        defs.retain(|k, _| text.contains(&format!("\"#/$defs/{k}\"")));
        if defs.is_empty() {
            schema.remove("$defs");
        }
    }
}

fn is_enum(d: &Value) -> bool {
    if d.get("enum").is_some() {
        return true;
    }
    d.get("oneOf").and_then(Value::as_array).is_some_and(|a| {
        a.iter()
            .all(|x| x.get("const").is_some_and(Value::is_string))
    })
}

/// The checker of one tool's published schema.
pub struct Checker {
    tool: String,
    schema: Value,
    /// Compiled on the tool's first call: a server start compiles none.
    validator: std::sync::OnceLock<Result<jsonschema::Validator, String>>,
    keys: Vec<(String, &'static str)>,
}

impl Checker {
    pub fn new(tool: &str, schema: &Map<String, Value>, cfg: &Config) -> Self {
        let schema = Value::Object(schema.clone());
        let mut fields = BTreeSet::new();
        collect_fields(&schema, &mut fields);
        let keys = fields
            .into_iter()
            .filter_map(|f| bound(cfg, tool, &f).map(|bd| (f, bd.key)))
            .collect();
        Self {
            tool: tool.to_string(),
            schema,
            validator: std::sync::OnceLock::new(),
            keys,
        }
    }

    /// Every way `args` breaks the schema, or none.
    pub fn check(&self, args: &Value) -> Result<(), Error> {
        let validator = self
            .validator
            .get_or_init(|| {
                jsonschema::options()
                    .should_validate_formats(false)
                    .build(&self.schema)
                    .map_err(|e| format!("the schema of {} does not compile: {e}", self.tool))
            })
            .as_ref()
            .map_err(|e| Error::internal(e.clone()))?;
        let mut problems: Vec<(String, String)> = Vec::new();
        for e in validator.iter_errors(args) {
            self.describe(&e, &mut problems);
        }
        if problems.is_empty() {
            return Ok(());
        }
        problems.dedup();
        let name = |f: &str| {
            if f.is_empty() {
                "the arguments".to_string()
            } else {
                format!("'{}'", crate::error::excerpt(f))
            }
        };
        let listed: Vec<String> = problems
            .iter()
            .take(20)
            .map(|(f, w)| format!("{} {w}", name(f)))
            .collect();
        let more = problems.len().saturating_sub(listed.len());
        let message = format!(
            "invalid arguments for {}: {}{}",
            self.tool,
            listed.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        );
        let fields: Vec<Value> = problems
            .iter()
            .take(20)
            .map(|(f, w)| json!({"field": crate::error::excerpt(f), "problem": w}))
            .collect();
        Err(Error::invalid(
            message,
            "Check every field listed against this tool's inputSchema (tools/list): it states each type, bound and required field; nothing was changed.",
        )
        .with_details(json!({"field": fields[0]["field"], "fields": fields})))
    }
}

impl Checker {
    /// One violation as (field, problem) pairs; a failed `anyOf`/`oneOf` is
    /// described by the branch of the value's type (a nullable object's
    /// object branch), so the field at fault is named, not its container.
    fn describe(&self, e: &jsonschema::ValidationError<'_>, problems: &mut Vec<(String, String)>) {
        use jsonschema::error::ValidationErrorKind as K;
        let at = field_path(&e.instance_path().to_string());
        let join = |k: &str| {
            if at.is_empty() {
                k.to_string()
            } else {
                format!("{at}.{k}")
            }
        };
        match e.kind() {
            K::AdditionalProperties { unexpected } => {
                for u in unexpected {
                    problems.push((join(u), "is not a field of this object".into()));
                }
            }
            K::Required { property } => {
                let p = property.as_str().unwrap_or_default();
                problems.push((join(p), "is required".into()));
            }
            K::Minimum { limit } | K::Maximum { limit } => {
                let last = at.rsplit(['.', '[']).next().unwrap_or_default();
                let key = self
                    .keys
                    .iter()
                    .find(|(f, _)| f == last)
                    .map_or(FIXED, |(_, k)| k);
                let (word, rel) = if matches!(e.kind(), K::Minimum { .. }) {
                    ("least", "below")
                } else {
                    ("most", "above")
                };
                let key = if key == FIXED {
                    "a fixed limit".to_string()
                } else {
                    key.to_string()
                };
                problems.push((
                    at.clone(),
                    format!("{} is {rel} the limit: at {word} {limit} ({key})", e.instance()),
                ));
            }
            K::Type { kind } => {
                problems.push((at.clone(), format!("must be of type {}", type_words(kind))))
            }
            K::Enum { options } => problems.push((
                at.clone(),
                format!(
                    "{} is not one of {}",
                    crate::error::excerpt(&e.instance().to_string()),
                    options
                        .as_array()
                        .map(|o| o
                            .iter()
                            .filter(|x| !x.is_null())
                            .map(|x| x.as_str().unwrap_or_default().to_string())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                ),
            )),
            K::AnyOf { context } | K::OneOfNotValid { context } => {
                // The branch whose type the value has: its own errors.
                let here = e.instance_path().to_string();
                let typed = context.iter().find(|branch| {
                    !branch.is_empty()
                        && !branch.iter().any(|x| {
                            matches!(x.kind(), K::Type { .. }) && x.instance_path().to_string() == here
                        })
                });
                match typed {
                    Some(branch) if context.len() > 1 && !self.alternatives(context) => {
                        for x in branch {
                            self.describe(x, problems);
                        }
                    }
                    _ => {
                        let names = self.alternatives_text(context);
                        match names.split_first() {
                            Some((first, rest)) if self.alternatives(context) => problems.push((
                                join(first),
                                if rest.is_empty() {
                                    "is required".to_string()
                                } else {
                                    format!("is required (or {})", rest.join(" or "))
                                },
                            )),
                            _ => problems.push((
                                at.clone(),
                                format!("matches none of: {}", names.join("; ")),
                            )),
                        }
                    }
                }
            }
            K::Constant { expected_value } => problems.push((
                at.clone(),
                format!(
                    "must be {expected_value} for the fields given (a field of one operation belongs to it alone)"
                ),
            )),
            K::Not { .. } | K::OneOfMultipleValid { .. } => problems.push((
                at.clone(),
                "gives two fields of which only one may be given".into(),
            )),
            _ => problems.push((at.clone(), crate::error::excerpt(&e.to_string()).into_owned())),
        }
    }

    /// Whether a failed `oneOf`/`anyOf` chose between required fields (not types).
    fn alternatives(&self, context: &[Vec<jsonschema::ValidationError<'static>>]) -> bool {
        context.iter().flatten().any(|x| {
            matches!(
                x.kind(),
                jsonschema::error::ValidationErrorKind::Required { .. }
            )
        })
    }

    fn alternatives_text(
        &self,
        context: &[Vec<jsonschema::ValidationError<'static>>],
    ) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for x in context.iter().flatten() {
            if let jsonschema::error::ValidationErrorKind::Required { property } = x.kind() {
                names.push(property.as_str().unwrap_or_default().to_string());
            } else {
                names.push(format!(
                    "{} ({})",
                    field_path(&x.instance_path().to_string()),
                    crate::error::excerpt(&x.to_string())
                ));
            }
        }
        names.dedup();
        names
    }
}

fn type_words(kind: &jsonschema::error::TypeKind) -> String {
    use jsonschema::error::TypeKind;
    match kind {
        TypeKind::Single(t) => t.to_string(),
        TypeKind::Multiple(ts) => ts
            .iter()
            .map(|t| t.to_string())
            .filter(|t| t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

/// Every property name in a schema.
fn collect_fields(v: &Value, out: &mut BTreeSet<String>) {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(p)) = m.get("properties") {
                    out.extend(p.keys().cloned());
                }
                stack.extend(m.values());
            }
            Value::Array(a) => stack.extend(a.iter()),
            _ => {}
        }
    }
}

/// What is wrong with a published input schema for a client that builds its
/// model's tool definitions from it: an untyped property, an object without
/// `properties`, an enum behind `$ref`, a number without its bounds.
pub fn lint(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let defs = schema.get("$defs").cloned().unwrap_or(json!({}));
    let resolve = |v: &Value| -> Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => defs
                .get(r.trim_start_matches("#/$defs/"))
                .cloned()
                .unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    if schema.get("properties").is_none() {
        out.push("the arguments object has no properties".to_string());
    }
    let mut stack: Vec<(String, Value)> = vec![("".into(), schema.clone())];
    for (k, d) in defs.as_object().into_iter().flatten() {
        stack.push((format!("$defs.{k}"), d.clone()));
    }
    while let Some((at, v)) = stack.pop() {
        let Value::Object(m) = &v else { continue };
        if let Some(r) = m.get("$ref") {
            if is_enum(&resolve(&v)) {
                out.push(format!("{at}: an enum behind $ref {r}"));
            }
            continue;
        }
        let types: Vec<&str> = match m.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        // The branches of a typed schema are rules on it; of an untyped one, its shapes.
        let branches = m
            .get("anyOf")
            .or_else(|| m.get("oneOf"))
            .and_then(Value::as_array)
            .filter(|_| !m.contains_key("type"));
        let untyped_alternatives = m.contains_key("anyOf") || m.contains_key("oneOf");
        if types.is_empty() && !untyped_alternatives && !m.contains_key("const") {
            out.push(format!("{at}: no type"));
        }
        let only = |allowed: &[&str]| {
            types.iter().any(|t| allowed.contains(t))
                && types.iter().all(|t| allowed.contains(t) || *t == "null")
        };
        if types.iter().any(|t| *t == "integer" || *t == "number")
            && only(&["integer", "number", "object"])
            && (!m.contains_key("minimum") || !m.contains_key("maximum"))
        {
            out.push(format!("{at}: a number without minimum and maximum"));
        }
        if only(&["object"])
            && !m.contains_key("properties")
            && !matches!(
                m.get("additionalProperties"),
                Some(Value::Object(_) | Value::Bool(true))
            )
        {
            out.push(format!("{at}: an object without properties"));
        }
        if let Some(Value::Object(p)) = m.get("properties") {
            for (k, x) in p {
                stack.push((format!("{at}.{k}"), x.clone()));
            }
        }
        if let Some(x @ Value::Object(_)) = m.get("items") {
            stack.push((format!("{at}[]"), x.clone()));
        }
        if let Some(x @ Value::Object(_)) = m.get("additionalProperties") {
            stack.push((format!("{at}.*"), x.clone()));
        }
        for (i, x) in branches.into_iter().flatten().enumerate() {
            stack.push((format!("{at}|{i}"), x.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_published_schema_is_typed_bounded_and_inline() {
        let mut bad = Vec::new();
        for t in crate::server::catalog::tools() {
            for p in lint(&Value::Object((*t.input_schema).clone())) {
                bad.push(format!("{}: {p}", t.name));
            }
        }
        assert!(
            bad.is_empty(),
            "{} problems:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }

    /// Each tool's documented example is a call its published schema admits.
    #[test]
    fn every_example_is_admitted_by_its_schema() {
        for t in crate::server::catalog::tools() {
            let schema = Value::Object((*t.input_schema).clone());
            let example: Value =
                serde_json::from_str(crate::server::catalog::doc(&t.name).example).unwrap();
            let checker = Checker::new(&t.name, &t.input_schema, &Config::default());
            assert!(
                checker.check(&example).is_ok(),
                "{}: {example} is refused: {:?} ({schema})",
                t.name,
                checker.check(&example).unwrap_err().message
            );
        }
    }

    #[test]
    fn paths_are_spelled_as_the_caller_wrote_them() {
        assert_eq!(field_path(""), "");
        assert_eq!(field_path("/steps/0/retry"), "steps[0].retry");
        assert_eq!(field_path("/a~1b"), "a/b");
    }
}

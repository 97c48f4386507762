//! Tool profiles: which tools `tools/list` offers (`core`, `standard`, `all`
//! or a comma list), and the compact form of their schemas there. The full
//! schemas stay in `MCP_TOOL_SPECIFICATION.md` and `tool-schemas/`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rmcp::handler::server::router::tool::ToolRouter;
use serde_json::{Map, Value};

use super::{MyrmexServer, contract};
use crate::config::Config;

/// What an agent needs for most work: run and follow workflows, drain a task graph, look at the server.
pub const CORE: &[&str] = &[
    "create_workflow",
    "execute_workflow",
    "get_workflow_run",
    "list_workflows",
    "cancel_workflow_run",
    "create_tasks",
    "next_task",
    "complete_task",
    "fail_task",
    "get_system_status",
];

/// `core` plus the tool names of the original module, and the event log.
pub const STANDARD_EXTRA: &[&str] = &[
    "create_session",
    "create_complex_workflow",
    "execute_task",
    "allocate_resources",
    "create_project",
    "manage_project",
    "list_projects",
    "get_health_status",
    "get_events",
];

/// The tool names a profile selects, or why it is not one.
pub fn select(profile: &str) -> Result<Vec<String>, String> {
    let all: Vec<String> = MyrmexServer::router()
        .list_all()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    let mut names: Vec<String> = match profile.trim() {
        "all" => all.clone(),
        "core" => CORE.iter().map(|s| s.to_string()).collect(),
        "standard" => CORE
            .iter()
            .chain(STANDARD_EXTRA)
            .map(|s| s.to_string())
            .collect(),
        list => {
            let names: Vec<String> = list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            let unknown: Vec<&String> = names.iter().filter(|n| !all.contains(n)).collect();
            if names.is_empty() || !unknown.is_empty() {
                let mut known = all.clone();
                known.sort();
                return Err(format!(
                    "tools: '{list}' is not core, standard, all or a comma list of tool names (unknown: {unknown:?}; known: {})",
                    known.join(", ")
                ));
            }
            names
        }
    };
    names.sort();
    names.dedup();
    Ok(names)
}

/// What a server offers under a configuration: the profile's tools with
/// their published input schemas (compact, and with no output schemas unless
/// asked for), and the checker of each tool's arguments against its schema.
#[derive(Clone)]
pub struct Offered {
    pub router: ToolRouter<MyrmexServer>,
    pub checkers: Arc<HashMap<String, Arc<contract::Checker>>>,
}

/// Every tool with its published input schema under `cfg` (all profiles).
pub fn published(cfg: &Config) -> ToolRouter<MyrmexServer> {
    let mut r = MyrmexServer::router();
    for (name, route) in r.map.iter_mut() {
        let mut input = (*route.attr.input_schema).clone();
        contract::publish(name, &mut input, cfg);
        let mut input = Value::Object(input);
        compact(&mut input);
        if let Value::Object(m) = input {
            route.attr.input_schema = Arc::new(m);
        }
    }
    r
}

/// What a server offers under `cfg`. Built once per configuration.
pub fn offered(cfg: &Config) -> Offered {
    static BUILT: OnceLock<Mutex<HashMap<String, Offered>>> = OnceLock::new();
    // Everything the published schemas are made from.
    let key = serde_json::to_string(&(
        &cfg.tools,
        &cfg.limits,
        &cfg.workflows,
        &cfg.tasks,
        &cfg.resources,
        &cfg.sessions,
    ))
    .unwrap_or_default();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    built
        .entry(key)
        .or_insert_with(|| {
            // The profile was checked when the configuration was loaded.
            let keep = select(&cfg.tools.profile).unwrap_or_default();
            let mut r = published(cfg);
            let names: Vec<String> = r.map.keys().map(|k| k.to_string()).collect();
            for n in names {
                if !keep.contains(&n) {
                    r.remove_route(&n);
                }
            }
            let mut checkers = HashMap::new();
            for (name, route) in r.map.iter_mut() {
                let checker = contract::Checker::new(name, &route.attr.input_schema, cfg);
                checkers.insert(name.to_string(), Arc::new(checker));
                if !cfg.tools.output_schemas {
                    route.attr.output_schema = None;
                }
            }
            Offered {
                router: r,
                checkers: Arc::new(checkers),
            }
        })
        .clone()
}

/// Make a schema cheaper to read without changing what it accepts: drop
/// `$schema`, the descriptions of `$defs` entries (their users describe
/// them), integer and float `format`s (not standard formats) and
/// `default: null`; turn a `oneOf` of string constants into an `enum`.
pub fn compact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("$schema");
            // A definition's own description repeats what the properties that use it say.
            if let Some(Value::Object(defs)) = m.get_mut("$defs") {
                for d in defs.values_mut() {
                    if let Value::Object(d) = d {
                        d.remove("description");
                    }
                }
            }
            if m.get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| NUMERIC_FORMATS.contains(&f))
            {
                m.remove("format");
            }
            // A default of nothing (or false) says nothing an optional field does not.
            if m.get("default").is_some_and(|d| {
                d.is_null()
                    || *d == Value::Bool(false)
                    || d.as_array().is_some_and(Vec::is_empty)
                    || d.as_object().is_some_and(Map::is_empty)
            }) {
                m.remove("default");
            }
            if let Some(consts) = m.get("oneOf").and_then(string_consts) {
                m.remove("oneOf");
                m.insert("type".into(), Value::String("string".into()));
                m.insert("enum".into(), Value::Array(consts));
            }
            for (_, x) in m.iter_mut() {
                compact(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(compact),
        _ => {}
    }
}

const NUMERIC_FORMATS: &[&str] = &[
    "uint", "uint8", "uint16", "uint32", "uint64", "int", "int8", "int16", "int32", "int64",
    "float", "double",
];

/// The constants of a `oneOf` whose every branch is a string `const`.
fn string_consts(v: &Value) -> Option<Vec<Value>> {
    let branches = v.as_array()?;
    branches
        .iter()
        .map(|b| {
            let b: &Map<String, Value> = b.as_object()?;
            let c = b.get("const")?;
            (c.is_string()
                && b.keys()
                    .all(|k| matches!(k.as_str(), "const" | "type" | "description")))
            .then(|| c.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn compact_keeps_what_a_schema_accepts() {
        let mut s = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": {"T": {"description": "a T", "type": "object"}},
            "properties": {
                "n": {"type": "integer", "format": "uint32", "minimum": 0},
                "when": {"type": ["string", "null"], "default": null},
                "mode": {"description": "how", "oneOf": [
                    {"const": "a", "type": "string", "description": "A."},
                    {"const": "b", "type": "string"}]},
                "mixed": {"oneOf": [{"const": "a"}, {"type": "integer"}]},
                "email": {"type": "string", "format": "email"}
            }
        });
        super::compact(&mut s);
        assert_eq!(
            s,
            json!({"$defs": {"T": {"type": "object"}}, "properties": {
                "n": {"type": "integer", "minimum": 0},
                "when": {"type": ["string", "null"]},
                "mode": {"description": "how", "type": "string", "enum": ["a", "b"]},
                "mixed": {"oneOf": [{"const": "a"}, {"type": "integer"}]},
                "email": {"type": "string", "format": "email"}
            }})
        );
    }

    #[test]
    fn profiles_name_known_tools() {
        let all = super::select("all").unwrap();
        for p in ["core", "standard"] {
            for t in super::select(p).unwrap() {
                assert!(all.contains(&t), "{p}: {t}");
            }
        }
        assert_eq!(
            super::select(" next_task , complete_task").unwrap(),
            ["complete_task", "next_task"]
        );
        let e = super::select("next_task,nope").unwrap_err();
        assert!(e.contains("nope") && e.contains("known: "), "{e}");
    }
}

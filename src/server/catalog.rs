//! The tool catalogue: what `myrmex schemas` writes.
//!
//! `tool-schemas/<tool>.json` holds each tool's definition exactly as
//! `tools/list` serves it; `MCP_TOOL_SPECIFICATION.md` documents every tool
//! for people. Both are generated from the code and checked in; a test fails
//! when they drift.

use std::fmt::Write as _;
use std::path::Path;

use rmcp::model::Tool;
use serde_json::Value;

use crate::error::ErrorCode;
use ErrorCode::*;

/// What the code alone cannot say about a tool.
pub struct ToolDoc {
    pub name: &'static str,
    /// Error codes the tool can return, besides those every tool can return.
    pub errors: &'static [ErrorCode],
    /// Arguments of a typical call, as JSON.
    pub example: &'static str,
}

/// Codes any tool may return.
pub const COMMON_ERRORS: &[ErrorCode] = &[InvalidParameters, StoreUnavailable, InternalError];

pub const DOCS: &[ToolDoc] = &[
    ToolDoc {
        name: "allocate_resources",
        errors: &[ResourceUnavailable, NotFound, SessionClosed],
        example: r#"{"user_id": "builder-1", "requirements": {"cpu": 2, "memory_mb": 2048, "locks": [{"key": "repo:main", "mode": "write"}]}, "ttl_seconds": 600, "wait_seconds": 10}"#,
    },
    ToolDoc {
        name: "release_resources",
        errors: &[NotFound, Conflict, SessionClosed],
        example: r#"{"allocation_id": "alc_0123456789abcdef0123456789abcdef"}"#,
    },
    ToolDoc {
        name: "renew_allocation",
        errors: &[NotFound, Conflict],
        example: r#"{"allocation_id": "alc_0123456789abcdef0123456789abcdef", "ttl_seconds": 600}"#,
    },
    ToolDoc {
        name: "list_allocations",
        errors: &[],
        example: r#"{"status": "active"}"#,
    },
    ToolDoc {
        name: "get_resource_status",
        errors: &[NotFound, SessionClosed],
        example: r#"{}"#,
    },
    ToolDoc {
        name: "create_project",
        errors: &[
            TemplateNotFound,
            ProjectExists,
            PermissionDenied,
            ModuleNotFound,
            SessionClosed,
        ],
        example: r#"{"name": "etl", "template": "data_pipeline", "tags": ["team-a"], "config_overrides": {"processing": {"batch_size": 500}}}"#,
    },
    ToolDoc {
        name: "list_templates",
        errors: &[],
        example: r#"{}"#,
    },
    ToolDoc {
        name: "get_template",
        errors: &[TemplateNotFound],
        example: r#"{"template_name": "web_application"}"#,
    },
    ToolDoc {
        name: "list_projects",
        errors: &[],
        example: r#"{"status": "active", "tag": "team-a"}"#,
    },
    ToolDoc {
        name: "get_project",
        errors: &[NotFound],
        example: r#"{"project": "etl"}"#,
    },
    ToolDoc {
        name: "manage_project",
        errors: &[NotFound],
        example: r#"{"project": "etl", "operation": "milestone", "milestone_name": "mvp", "data": {"notes": "first run green"}}"#,
    },
    ToolDoc {
        name: "generate_docs",
        errors: &[NotFound],
        example: r#"{"project": "etl"}"#,
    },
    ToolDoc {
        name: "list_modules",
        errors: &[ModuleNotFound],
        example: r#"{"module": "shell"}"#,
    },
    ToolDoc {
        name: "create_task",
        errors: &[
            NotFound,
            Conflict,
            CycleDetected,
            ModuleNotFound,
            LimitExceeded,
            SessionClosed,
        ],
        example: r#"{"task": {"name": "summarise", "module": "core", "action": "echo", "parameters": {"text": "{{tasks.fetch.result.body}}"}, "priority": "high"}}"#,
    },
    ToolDoc {
        name: "create_tasks",
        errors: &[
            NotFound,
            Conflict,
            CycleDetected,
            ModuleNotFound,
            LimitExceeded,
            SessionClosed,
        ],
        example: r#"{"tasks": [{"name": "design", "description": "Write the API design"}, {"name": "review", "dependencies": ["design"], "tags": ["review"]}]}"#,
    },
    ToolDoc {
        name: "execute_task",
        errors: &[
            NotFound,
            Conflict,
            CycleDetected,
            ModuleNotFound,
            LimitExceeded,
            SessionClosed,
        ],
        example: r#"{"task_name": "wait-a-bit", "module": "core", "action": "sleep", "parameters": {"ms": 200}, "retry_count": 2, "wait_seconds": 10}"#,
    },
    ToolDoc {
        name: "get_task",
        errors: &[NotFound],
        example: r#"{"task_id": "tsk_0123456789abcdef0123456789abcdef", "wait_seconds": 20}"#,
    },
    ToolDoc {
        name: "list_tasks",
        errors: &[NotFound, SessionClosed],
        example: r#"{"status": "ready", "limit": 50}"#,
    },
    ToolDoc {
        name: "update_task",
        errors: &[
            SessionClosed,
            NotFound,
            Conflict,
            CycleDetected,
            LimitExceeded,
        ],
        example: r#"{"task_id": "tsk_0123456789abcdef0123456789abcdef", "changes": {"priority": "critical", "tags": ["urgent"]}}"#,
    },
    ToolDoc {
        name: "cancel_task",
        errors: &[SessionClosed, NotFound, Conflict],
        example: r#"{"task_id": "tsk_0123456789abcdef0123456789abcdef"}"#,
    },
    ToolDoc {
        name: "retry_task",
        errors: &[SessionClosed, NotFound, Conflict, DependencyFailed],
        example: r#"{"task_id": "tsk_0123456789abcdef0123456789abcdef"}"#,
    },
    ToolDoc {
        name: "get_task_graph",
        errors: &[NotFound, SessionClosed],
        example: r#"{}"#,
    },
    ToolDoc {
        name: "next_task",
        errors: &[NotFound, SessionClosed],
        example: r#"{"agent": "worker-1", "tags": ["backend"], "lease_seconds": 600}"#,
    },
    ToolDoc {
        name: "complete_task",
        errors: &[SessionClosed, NotFound, LeaseNotHeld, LimitExceeded],
        example: r#"{"task_id": "tsk_0123456789abcdef0123456789abcdef", "lease_id": "lse_0123456789abcdef0123456789abcdef", "result": {"files": ["api.md"]}, "summary": "Wrote the API design"}"#,
    },
    ToolDoc {
        name: "fail_task",
        errors: &[SessionClosed, NotFound, LeaseNotHeld],
        example: r#"{"task_id": "tsk_0123456789abcdef0123456789abcdef", "lease_id": "lse_0123456789abcdef0123456789abcdef", "error": "the build server is down", "retryable": true}"#,
    },
    ToolDoc {
        name: "renew_task_lease",
        errors: &[SessionClosed, NotFound, LeaseNotHeld],
        example: r#"{"task_id": "tsk_0123456789abcdef0123456789abcdef", "lease_id": "lse_0123456789abcdef0123456789abcdef", "lease_seconds": 600}"#,
    },
    ToolDoc {
        name: "cancel_workflow_run",
        errors: &[NotFound, Conflict],
        example: r#"{"run_id": "run_0123456789abcdef0123456789abcdef"}"#,
    },
    ToolDoc {
        name: "create_complex_workflow",
        errors: &[CycleDetected, ModuleNotFound, NotFound, SessionClosed],
        example: r#"{"name": "analysis", "workflow_definition": {"steps": [{"name": "fetch", "module": "core", "action": "set", "parameters": {"value": {"rows": 3}}}, {"name": "report", "module": "core", "action": "echo", "parameters": {"rows": "{{steps.fetch.output.rows}}"}}], "dependencies": {"report": ["fetch"]}}}"#,
    },
    ToolDoc {
        name: "create_workflow",
        errors: &[CycleDetected, NotFound, SessionClosed, LimitExceeded],
        example: r#"{"name": "greet", "parameters": {"who": {"type": "string", "required": true}}, "steps": [{"name": "hello", "module": "core", "action": "echo", "parameters": {"text": "hello {{params.who}}"}}, {"name": "wait", "module": "core", "action": "sleep", "parameters": {"ms": 100}, "dependencies": ["hello"], "max_retries": 2}]}"#,
    },
    ToolDoc {
        name: "delete_workflow",
        errors: &[WorkflowNotFound, PermissionDenied, NotFound, SessionClosed],
        example: r#"{"workflow_name": "greet"}"#,
    },
    ToolDoc {
        name: "execute_workflow",
        errors: &[WorkflowNotFound, NotFound, SessionClosed],
        example: r#"{"workflow_name": "greet", "parameters": {"who": "world"}, "wait_seconds": 10}"#,
    },
    ToolDoc {
        name: "get_workflow",
        errors: &[WorkflowNotFound, NotFound, SessionClosed],
        example: r#"{"workflow_name": "greet"}"#,
    },
    ToolDoc {
        name: "get_workflow_run",
        errors: &[NotFound],
        example: r#"{"run_id": "run_0123456789abcdef0123456789abcdef", "wait_seconds": 30}"#,
    },
    ToolDoc {
        name: "list_workflow_runs",
        errors: &[NotFound],
        example: r#"{"status": "failed", "limit": 20}"#,
    },
    ToolDoc {
        name: "list_workflows",
        errors: &[NotFound, SessionClosed],
        example: r#"{}"#,
    },
    ToolDoc {
        name: "retry_workflow_run",
        errors: &[NotFound, Conflict, SessionClosed],
        example: r#"{"run_id": "run_0123456789abcdef0123456789abcdef", "wait_seconds": 10}"#,
    },
    ToolDoc {
        name: "validate_workflow",
        errors: &[],
        example: r#"{"name": "check", "steps": [{"name": "a", "module": "core", "action": "echo", "dependencies": ["b"]}, {"name": "b", "module": "core", "action": "echo", "dependencies": ["a"]}]}"#,
    },
    ToolDoc {
        name: "close_session",
        errors: &[NotFound, SessionClosed],
        example: r#"{"session_id": "ses_0123456789abcdef0123456789abcdef"}"#,
    },
    ToolDoc {
        name: "create_session",
        errors: &[LimitExceeded],
        example: r#"{"name": "nightly-build", "mode": "parallel", "max_parallel_tasks": 8, "idle_ttl_seconds": 3600, "metadata": {"team": "infra"}}"#,
    },
    ToolDoc {
        name: "get_events",
        errors: &[NotFound],
        example: r#"{"since": "0.1842", "session_id": "ses_0123456789abcdef0123456789abcdef", "kinds": ["run", "step"], "limit": 100}"#,
    },
    ToolDoc {
        name: "get_health_status",
        errors: &[NotFound],
        example: r#"{}"#,
    },
    ToolDoc {
        name: "get_session",
        errors: &[NotFound, LimitExceeded],
        example: r#"{"session_id": "ses_0123456789abcdef0123456789abcdef"}"#,
    },
    ToolDoc {
        name: "get_system_status",
        errors: &[NotFound],
        example: r#"{"include_active_sessions": true, "include_detailed_metrics": true}"#,
    },
    ToolDoc {
        name: "list_sessions",
        errors: &[NotFound],
        example: r#"{"status": "active", "limit": 20}"#,
    },
];

/// Every tool, sorted by name.
pub fn tools() -> Vec<Tool> {
    let mut tools = super::profiles::published(&crate::config::Config::default()).list_all();
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    tools
}

pub(crate) fn doc(name: &str) -> &'static ToolDoc {
    DOCS.iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("tool {name} has no entry in server::catalog::DOCS"))
}

/// The generated files, as (relative path, content) pairs.
pub fn render() -> Vec<(String, String)> {
    let tools = tools();
    let mut files: Vec<(String, String)> = tools
        .iter()
        .map(|t| {
            let json = serde_json::to_string_pretty(t).expect("tool serializes") + "\n";
            (format!("tool-schemas/{}.json", t.name), json)
        })
        .collect();
    files.push(("MCP_TOOL_SPECIFICATION.md".into(), specification(&tools)));
    files
}

/// Write the generated files under `dir`; stale tool schemas are removed.
pub fn write(dir: &Path) -> std::io::Result<Vec<String>> {
    let schemas = dir.join("tool-schemas");
    std::fs::create_dir_all(&schemas)?;
    let files = render();
    for entry in std::fs::read_dir(&schemas)? {
        let path = entry?.path();
        let rel = format!(
            "tool-schemas/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        if path.extension().is_some_and(|e| e == "json") && !files.iter().any(|(p, _)| *p == rel) {
            std::fs::remove_file(&path)?;
        }
    }
    for (rel, content) in &files {
        std::fs::write(dir.join(rel), content)?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// Paths under `dir` whose content differs from what the code generates.
pub fn drift(dir: &Path) -> Vec<String> {
    let files = render();
    let mut out: Vec<String> = files
        .iter()
        .filter(|(rel, content)| {
            std::fs::read_to_string(dir.join(rel)).ok().as_deref() != Some(content)
        })
        .map(|(rel, _)| rel.clone())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir.join("tool-schemas")) {
        for e in entries.flatten() {
            let rel = format!("tool-schemas/{}", e.file_name().to_string_lossy());
            if !files.iter().any(|(p, _)| *p == rel) {
                out.push(format!("{rel} (no such tool)"));
            }
        }
    }
    out
}

/// The naming rule every tool follows.
const VOCABULARY: &str = "### One vocabulary\n\n\
- `name` names what a call creates (create_workflow, create_session, create_project, a step, a task). \
An argument that refers to an existing object carries its kind: `<kind>_id` for an id (`session_id`, `run_id`, \
`task_id`, `lease_id`, `allocation_id`), `<kind>_name` for a name (`workflow_name`, `template_name`, `task_name`, \
`milestone_name`), and the bare kind where an id or a name is accepted (`project`, `module`).\n\
- One concept has one spelling in every tool: `parameters`, `dependencies`, `priority`, `tags`, `metadata`, \
`timeout_seconds`, `max_retries`, `retry`, `wait_seconds`, `limit`/`cursor`. Single and batch forms take the same \
item (`create_task {task}` and `create_tasks {tasks: [...]}` items are one shape).\n\
- The original module's spellings are accepted as aliases where it documented them, and published in the schema \
beside their field (giving both is refused): `project_name` (manage_project), `name` (execute_task), a step's \
`timeout` and `retry_count`, create_project's `project_name`, `template_name`, `project_path`.\n\
- Every bound, enum and required field a check enforces is in the inputSchema; a call is checked against it \
before the tool runs, and every bad field is reported at once in `details.fields`, spelled as the caller wrote it, \
with the configuration key of the limit it broke.\n";

/// Where myrmex deliberately differs from the module it descends from.
const DIFFERENCES: &str = "### Differences from the original module\n\n\
| where | the original | myrmex | why |\n|---|---|---|---|\n\
| status words | `success`, `failure`, `completed` | `succeeded`, `failed`, `cancelled`, `timed_out`, `skipped` | one set of words for runs, steps and tasks; `success` (boolean) is still in every original tool's answer |\n\
| answer envelope | `{success, data, error, metadata}` | the tool's own fields at the top level, plus `success` in the original tools; errors are `isError` results `{success: false, error: {code, message, hint, details}}` | MCP structured content is validated against one output schema |\n\
| workflow scope | one global list of workflows on disk | session-scoped by default, `scope: \"global\"` for all of a principal's sessions, plus the read-only library | sessions isolate agents' work; a workflow not visible in a session names the session that has it |\n\
| resources | `cpu`/`memory`/`disk`/`network` objects, granted from a global manager | whole amounts per pool (`cpu`, `memory_mb`, `disk_mb`, `gpu`, configured pools) and read/write/exclusive locks, under quotas, with a lease | amounts are enforced; a pool the server lacks (e.g. `network`) is refused with the pools there are and `[resources.pools]` |\n\
| execute_workflow / execute_task | block until done (or forever) | wait up to `wait_seconds` (capped), then answer with the status and the id to follow | no call hangs; runs and tasks survive restarts |\n\
| create_complex_workflow | runs once, nothing stored | stored as a definition and run | the run can be followed, retried and rerun |\n\
| manage_project operations | status, update, milestone, archive | also metrics and delete (with `confirm: true`) | the original stored metrics but had no call for them |\n\
| create_project `workflow_executed` | bool | bool, with `workflow_name` and `run_id` beside it | the run can be followed |\n\
| get_workflow, delete_workflow, get_template | (not in the original) | the object is `workflow_name` / `template_name`, as in execute_workflow and create_project | one vocabulary |\n\
| health components | workflow_manager, task_orchestrator, project_manager, resource_manager (always healthy but the last) | those names, each the worst of the real checks it stands for, beside ours (`store`, `background.*`, ...) | the checks are real |\n";

fn specification(tools: &[Tool]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# myrmex MCP tool specification\n");
    let _ = writeln!(
        s,
        "Generated by `myrmex schemas` from the code; do not edit by hand. \
         Machine-readable definitions (input and output JSON Schemas) are in `tool-schemas/`.\n"
    );
    let _ = writeln!(s, "## Conventions\n");
    let _ = writeln!(
        s,
        "- Every tool returns `structuredContent` (an object matching its output schema) plus the same JSON as text.\n\
         - `session_id` is optional wherever it is not required: without it a call works in your default session, created on first use.\n\
         - Ids are opaque and bound to the principal that created them; another principal gets `NOT_FOUND`.\n\
         - Unknown argument fields are refused with `INVALID_PARAMETERS` naming the field.\n\
         - Lists are paginated: pass `next_cursor` back as `cursor`.\n\
         - Errors are tool results with `isError: true` whose one text block is the JSON body below \
         (no `structuredContent`, which would have to match the success schema); nothing is changed by a call that fails.\n"
    );
    let _ = writeln!(
        s,
        "```json\n{{\"error\": {{\"code\": \"NOT_FOUND\", \"message\": \"session 'ses_...' not found\", \"hint\": \"Check the session_id; ...\", \"details\": {{\"kind\": \"session\", \"id\": \"ses_...\"}}}}}}\n```\n"
    );
    let _ = writeln!(s, "{VOCABULARY}\n{DIFFERENCES}");
    let _ = writeln!(s, "### Error codes\n\n| code | meaning |\n|---|---|");
    for c in ErrorCode::ALL {
        let _ = writeln!(s, "| `{}` | {} |", c.as_str(), c.meaning());
    }
    let _ = writeln!(s, "\n## Tools\n");
    for t in tools {
        let _ = writeln!(s, "- [`{0}`](#{0})", t.name);
    }
    for t in tools {
        let d = doc(&t.name);
        let _ = writeln!(s, "\n### {}\n", t.name);
        let _ = writeln!(s, "{}\n", t.description.as_deref().unwrap_or(""));
        let _ = writeln!(s, "**Input**\n");
        s.push_str(&fields_table(&Value::Object((*t.input_schema).clone())));
        let _ = writeln!(s, "\n**Output**\n");
        match &t.output_schema {
            Some(o) => s.push_str(&fields_table(&Value::Object((**o).clone()))),
            None => s.push_str("(text only)\n"),
        }
        let _ = writeln!(s, "\n**Errors**: {}\n", {
            let mut codes: Vec<&str> = d
                .errors
                .iter()
                .chain(COMMON_ERRORS)
                .map(|c| c.as_str())
                .collect();
            codes.dedup();
            codes
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        if let Some(a) = &t.annotations {
            let _ = writeln!(
                s,
                "**Annotations**: title \"{}\", readOnlyHint {}, destructiveHint {}, idempotentHint {}, openWorldHint {}\n",
                a.title.as_deref().unwrap_or(""),
                a.read_only_hint.unwrap_or(false),
                a.destructive_hint.unwrap_or(true),
                a.idempotent_hint.unwrap_or(false),
                a.open_world_hint.unwrap_or(true),
            );
        }
        let args: Value = serde_json::from_str(d.example).expect("example is JSON");
        let call = serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": t.name, "arguments": args}
        });
        let _ = writeln!(
            s,
            "**Example**\n\n```json\n{}\n```",
            serde_json::to_string_pretty(&call).expect("json")
        );
    }
    s
}

/// A markdown table of an object schema's properties.
fn fields_table(schema: &Value) -> String {
    let props = schema.get("properties").and_then(Value::as_object);
    let Some(props) = props.filter(|p| !p.is_empty()) else {
        return "(no fields)\n".into();
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut s = String::from("| field | type | required | description |\n|---|---|---|---|\n");
    for (name, p) in props {
        let desc = p
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .replace('\n', " ")
            .replace('|', "\\|");
        let _ = writeln!(
            s,
            "| `{name}` | {} | {} | {desc} |",
            type_of(p, schema),
            if required.contains(&name.as_str()) {
                "yes"
            } else {
                "no"
            }
        );
    }
    s
}

fn type_of(p: &Value, root: &Value) -> String {
    if let Some(r) = p.get("$ref").and_then(Value::as_str) {
        let target = r.rsplit('/').next().unwrap_or(r);
        return match root.pointer(&format!("/$defs/{target}")) {
            Some(def) => type_of(def, root),
            None => target.to_string(),
        };
    }
    if let Some(e) = p.get("enum").and_then(Value::as_array) {
        return e
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    if let Some(alts) = p
        .get("oneOf")
        .or_else(|| p.get("anyOf"))
        .and_then(Value::as_array)
    {
        return alts
            .iter()
            .map(|a| type_of(a, root))
            .collect::<Vec<_>>()
            .join(" or ");
    }
    if let Some(c) = p.get("const") {
        return format!("`{c}`");
    }
    match p.get("type") {
        Some(Value::String(t)) if t == "array" => {
            format!(
                "array of {}",
                p.get("items")
                    .map(|i| type_of(i, root))
                    .unwrap_or_else(|| "any".into())
            )
        }
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_is_documented_and_every_doc_is_a_tool() {
        let names: Vec<String> = tools().iter().map(|t| t.name.to_string()).collect();
        for n in &names {
            doc(n);
        }
        for d in DOCS {
            assert!(
                names.iter().any(|n| n == d.name),
                "DOCS names unknown tool {}",
                d.name
            );
            serde_json::from_str::<Value>(d.example).expect("example is JSON");
        }
    }

    #[test]
    fn every_tool_has_annotations_and_an_object_output_schema() {
        for t in tools() {
            let a = t
                .annotations
                .as_ref()
                .unwrap_or_else(|| panic!("{} has no annotations", t.name));
            assert!(
                a.title.is_some() && a.read_only_hint.is_some() && a.destructive_hint.is_some()
            );
            assert!(a.idempotent_hint.is_some() && a.open_world_hint.is_some());
            let o = t
                .output_schema
                .as_ref()
                .unwrap_or_else(|| panic!("{} has no output schema", t.name));
            assert_eq!(
                o.get("type").and_then(Value::as_str),
                Some("object"),
                "{}",
                t.name
            );
            assert_eq!(
                t.input_schema.get("additionalProperties"),
                Some(&Value::Bool(false)),
                "{}",
                t.name
            );
        }
    }

    /// Older spec schemas (2025-11-25) require every property schema to be an
    /// object: a bare `true` (what schemars emits for an undocumented JSON
    /// value) fails the conformance suite's wire check.
    #[test]
    fn no_property_schema_is_a_bare_boolean() {
        fn walk(v: &Value, at: &str) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::Object(props)) = o.get("properties") {
                        for (k, p) in props {
                            assert!(p.is_object(), "{at}.properties.{k} is {p}");
                        }
                    }
                    for (k, x) in o {
                        walk(x, &format!("{at}.{k}"));
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, at)),
                _ => {}
            }
        }
        for t in tools() {
            walk(&serde_json::to_value(&t).unwrap(), &t.name);
        }
    }

    #[test]
    fn every_input_field_has_a_description() {
        for t in tools() {
            let props = t
                .input_schema
                .get("properties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            for (name, p) in props {
                assert!(
                    p.get("description").is_some(),
                    "{}.{} has no description",
                    t.name,
                    name
                );
            }
        }
    }
}

//! Project templates: the original's JSON shape (name, type, description,
//! version, directory_structure, workflows, required/optional modules,
//! default_config, documentation_config) plus `files`, loaded from the
//! templates shipped in the binary and from the configured template folders,
//! each validated when loaded. An invalid one is kept with its reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The templates that ship with myrmex.
const BUILTIN: &[(&str, &str)] = &[
    (
        "ai_analysis",
        include_str!("../../../templates/ai_analysis.json"),
    ),
    (
        "data_pipeline",
        include_str!("../../../templates/data_pipeline.json"),
    ),
    (
        "web_application",
        include_str!("../../../templates/web_application.json"),
    ),
];

/// `nested_docs` links: whether nested docs are written and linked.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DocLinks {
    /// Write the nested README/AGENTS at all (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Link each nested doc to its parent's (default true).
    #[serde(default = "yes")]
    pub parent_link: bool,
    /// Link each doc to its documented subfolders' (default true).
    #[serde(default = "yes")]
    pub child_links: bool,
}

fn yes() -> bool {
    true
}

impl Default for DocLinks {
    fn default() -> Self {
        Self {
            enabled: true,
            parent_link: true,
            child_links: true,
        }
    }
}

/// How a template's documentation is generated.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DocConfig {
    /// Folders that get their own README.md and AGENTS.md (default: every folder of directory_structure).
    #[serde(default)]
    pub nested_docs: Option<Vec<String>>,
    /// Accepted for compatibility with the original (doc templates are looked up by file name).
    #[serde(default)]
    pub doc_templates: Map<String, Value>,
    /// Extra `{{variables}}` for the doc templates.
    #[serde(default)]
    pub doc_variables: Map<String, Value>,
    #[serde(default)]
    pub doc_links: Option<DocLinks>,
}

/// A file a template writes: inline content, or a file under the template's folder.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum FileSource {
    Inline(String),
    Source {
        /// Path under `<template dir>/<template name>/`.
        source: String,
    },
}

/// A project template.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Letters, digits, `_` and `-`.
    pub name: String,
    /// The project type: ai_analysis, web_application, data_pipeline, ml_model, documentation, research or custom.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_version")]
    pub version: String,
    /// Folders created in the project (relative, `/`-separated).
    #[serde(default)]
    pub directory_structure: Vec<String>,
    /// The original's glob-to-folder copies; only `{}` is accepted (use `files`).
    #[serde(default)]
    pub template_files: Map<String, Value>,
    /// Files written in the project: destination path to inline content or `{"source": path}`; `{{var}}` placeholders are rendered.
    #[serde(default)]
    pub files: BTreeMap<String, FileSource>,
    /// Workflows (by name) meant for projects of this template.
    #[serde(default)]
    pub workflows: Vec<String>,
    /// myrmex modules the project needs; creating it is refused while one is disabled.
    #[serde(default)]
    pub required_modules: Vec<String>,
    /// Modules or capabilities the project can use.
    #[serde(default)]
    pub optional_modules: Vec<String>,
    /// The project's initial config (strings may hold `{{var}}` placeholders).
    #[serde(default)]
    pub default_config: Map<String, Value>,
    #[serde(default)]
    pub documentation_config: DocConfig,
    /// Accepted for compatibility with the original (unused).
    #[serde(default)]
    pub template_generators: Map<String, Value>,
    /// The original's top-level doc_links (used when documentation_config has none).
    #[serde(default)]
    pub doc_links: Option<DocLinks>,
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub created_at: Option<String>,
}

fn default_version() -> String {
    "1.0".into()
}

impl Template {
    /// Folders of the project, normalized (no trailing `/`), `.myrmex` included.
    pub fn directories(&self) -> Vec<String> {
        let mut v: Vec<String> = self.directory_structure.iter().map(|d| norm(d)).collect();
        v.push(".myrmex".into());
        let set: BTreeSet<String> = v.into_iter().filter(|d| !d.is_empty()).collect();
        set.into_iter().collect()
    }

    /// Folders that get nested docs (never `.myrmex`).
    pub fn nested_docs(&self) -> Vec<String> {
        let v: Vec<String> = match &self.documentation_config.nested_docs {
            Some(n) => n.iter().map(|d| norm(d)).collect(),
            None => self.directory_structure.iter().map(|d| norm(d)).collect(),
        };
        let set: BTreeSet<String> = v
            .into_iter()
            .filter(|d| !d.is_empty() && d != ".myrmex" && !d.starts_with(".myrmex/"))
            .collect();
        set.into_iter().collect()
    }

    pub fn links(&self) -> DocLinks {
        self.documentation_config
            .doc_links
            .or(self.doc_links)
            .unwrap_or_default()
    }
}

/// `src/` -> `src`, `./a//b` -> `a/b`.
pub fn norm(p: &str) -> String {
    p.split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// A relative path that stays where it is put: no `..`, not absolute, not empty.
pub fn safe_relative(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    if p.trim().is_empty() {
        return Err("is empty".into());
    }
    if path.is_absolute() {
        return Err(format!("'{p}' is absolute; give a path inside the project"));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        return Err(format!("'{p}' contains '..'"));
    }
    if p.contains('\0') {
        return Err(format!("'{p}' contains a NUL byte"));
    }
    Ok(())
}

/// A loaded template: valid, or with the reasons it is not.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub template: Option<Template>,
    /// `builtin` or the file it came from.
    pub origin: String,
    /// Where `files` sources are read from.
    pub folder: Option<PathBuf>,
    pub problems: Vec<String>,
    pub name: String,
}

/// What validation checks names against.
pub struct Known<'a> {
    pub modules: &'a [String],
    pub workflows: &'a BTreeSet<String>,
}

/// Every problem of a template.
pub fn validate(t: &Template, folder: Option<&Path>, known: &Known<'_>) -> Vec<String> {
    let mut p = Vec::new();
    let ok_name = !t.name.is_empty()
        && t.name.len() <= 64
        && t.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok_name {
        p.push(format!(
            "name '{}' must be 1-64 letters, digits, '_' or '-'",
            t.name
        ));
    }
    if t.kind.is_empty() || !t.kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        p.push(format!(
            "type '{}' must be lower-case letters and '_' (e.g. custom)",
            t.kind
        ));
    }
    if !t.template_files.is_empty() {
        p.push("template_files (glob copies) is not supported: list each file in `files`".into());
    }
    for d in &t.directory_structure {
        if let Err(e) = safe_relative(d) {
            p.push(format!("directory_structure: {e}"));
        }
    }
    for d in t.documentation_config.nested_docs.iter().flatten() {
        if let Err(e) = safe_relative(d) {
            p.push(format!("documentation_config.nested_docs: {e}"));
        }
    }
    for (dest, src) in &t.files {
        if let Err(e) = safe_relative(dest) {
            p.push(format!("files: destination {e}"));
        }
        if norm(dest) == ".myrmex/project.json" {
            p.push("files: .myrmex/project.json is written by myrmex".into());
        }
        if let FileSource::Source { source } = src {
            match (safe_relative(source), folder) {
                (Err(e), _) => p.push(format!("files.{dest}: source {e}")),
                (Ok(()), None) => p.push(format!(
                    "files.{dest}: a source file needs a template folder (a template in a template_dirs folder)"
                )),
                (Ok(()), Some(f)) if !f.join(source).is_file() => p.push(format!(
                    "files.{dest}: source {} does not exist",
                    f.join(source).display()
                )),
                _ => {}
            }
        }
    }
    for m in &t.required_modules {
        if !known.modules.iter().any(|k| k == m) {
            p.push(format!(
                "required_modules: '{m}' is not a myrmex module (known: {}); list other capabilities in optional_modules",
                known.modules.join(", ")
            ));
        }
    }
    for w in &t.workflows {
        if !known.workflows.contains(w) {
            p.push(format!(
                "workflows: no workflow named '{w}' in the library (workflows_dirs and the shipped project workflows)"
            ));
        }
    }
    p
}

fn load_one(text: &str, origin: String, folder: Option<PathBuf>, known: &Known<'_>) -> Loaded {
    match serde_json::from_str::<Template>(text) {
        Ok(t) => {
            let problems = validate(&t, folder.as_deref(), known);
            Loaded {
                name: t.name.clone(),
                template: Some(t),
                origin,
                folder,
                problems,
            }
        }
        Err(e) => Loaded {
            name: String::new(),
            template: None,
            origin,
            folder,
            problems: vec![format!("not a template: {e}")],
        },
    }
}

/// The shipped templates, then those of `dirs` (a later one replaces an
/// earlier one of the same name). Returns them by name plus the files that
/// could not even be named.
pub fn load_all(dirs: &[PathBuf], known: &Known<'_>) -> (BTreeMap<String, Loaded>, Vec<Loaded>) {
    let mut by_name = BTreeMap::new();
    let mut unnamed = Vec::new();
    for (name, text) in BUILTIN {
        let l = load_one(text, format!("builtin:{name}"), None, known);
        by_name.insert(l.name.clone(), l);
    }
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                unnamed.push(Loaded {
                    name: String::new(),
                    template: None,
                    origin: dir.display().to_string(),
                    folder: None,
                    problems: vec![format!("cannot read the template folder: {e}")],
                });
                continue;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        for path in paths {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    unnamed.push(Loaded {
                        name: String::new(),
                        template: None,
                        origin: path.display().to_string(),
                        folder: None,
                        problems: vec![format!("cannot read: {e}")],
                    });
                    continue;
                }
            };
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let l = load_one(
                &text,
                path.display().to_string(),
                Some(dir.join(&stem)),
                known,
            );
            if l.name.is_empty() {
                unnamed.push(l);
            } else {
                by_name.insert(l.name.clone(), l);
            }
        }
    }
    (by_name, unnamed)
}

/// Replace `{{ key }}` placeholders whose key is in `vars`; others stay as written.
pub fn render_placeholders(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let key = after[..end].trim();
                match vars.get(key) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&rest[start..start + 2 + end + 2]),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Render placeholders in every string of a JSON value.
pub fn render_json(v: &Value, vars: &BTreeMap<String, String>) -> Value {
    match v {
        Value::String(s) => Value::String(render_placeholders(s, vars)),
        Value::Array(a) => Value::Array(a.iter().map(|x| render_json(x, vars)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), render_json(x, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Merge `over` into `base`: objects merge key by key, anything else replaces.
pub fn deep_merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => deep_merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_render_known_keys_only() {
        let vars: BTreeMap<String, String> =
            [("a".to_string(), "1".to_string())].into_iter().collect();
        assert_eq!(
            render_placeholders("x {{a}} {{ a }} {{b}} {{", &vars),
            "x 1 1 {{b}} {{"
        );
        assert_eq!(
            render_json(&json!({"k": ["{{a}}", 2]}), &vars),
            json!({"k": ["1", 2]})
        );
    }

    #[test]
    fn deep_merge_merges_objects_and_replaces_the_rest() {
        let mut base = json!({"a": {"x": 1, "y": [1]}, "b": 1});
        deep_merge(&mut base, &json!({"a": {"y": [2], "z": 3}, "c": null}));
        assert_eq!(
            base,
            json!({"a": {"x": 1, "y": [2], "z": 3}, "b": 1, "c": null})
        );
    }

    #[test]
    fn the_shipped_templates_parse_and_name_their_folders() {
        for (name, text) in BUILTIN {
            let t: Template = serde_json::from_str(text).unwrap();
            assert_eq!(&t.name, name);
            assert!(t.directories().contains(&".myrmex".to_string()));
            assert!(!t.nested_docs().contains(&".myrmex".to_string()));
        }
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for p in ["", "/etc", "../x", "a/../../b"] {
            assert!(safe_relative(p).is_err(), "{p}");
        }
        assert!(safe_relative("a/b/c.txt").is_ok());
    }
}

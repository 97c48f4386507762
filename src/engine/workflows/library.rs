//! The workflow library: definition files loaded at start from the configured
//! directories, read-only and shared by every session. A broken file does not
//! stop the server; it is kept with its reason for health and listings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::spec::{Limits, WorkflowSpec, validate};
use crate::actions::Registry;

#[derive(Debug, Clone)]
pub struct LibraryEntry {
    pub spec: WorkflowSpec,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct BrokenFile {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Library {
    pub workflows: BTreeMap<String, LibraryEntry>,
    pub broken: Vec<BrokenFile>,
}

/// Parse a definition file by its extension (`.json`, `.yaml`, `.yml`).
pub fn parse_file(path: &Path) -> Result<WorkflowSpec, String> {
    // Bounded before it is read: a definition larger than the largest
    // accepted one (with room for YAML's comments) is refused unread.
    const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "the file has {size} bytes; workflow files are at most {MAX_FILE_BYTES}"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    parse_text(
        &text,
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
    )
}

pub fn parse_text(text: &str, ext: &str) -> Result<WorkflowSpec, String> {
    // Parsed as the definition (messages with line numbers), and as a value
    // whose shape is checked against the published schema.
    let (spec, value): (WorkflowSpec, serde_json::Value) = match ext {
        "json" => (
            serde_json::from_str(text).map_err(|e| format!("invalid JSON definition: {e}"))?,
            serde_json::from_str(text).map_err(|e| format!("invalid JSON definition: {e}"))?,
        ),
        "yaml" | "yml" if yaml_flow_depth(text) > MAX_YAML_FLOW_DEPTH => {
            return Err(format!(
                "invalid YAML definition: brackets nest deeper than {MAX_YAML_FLOW_DEPTH} levels"
            ));
        }
        "yaml" | "yml" => (
            serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML definition: {e}"))?,
            serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML definition: {e}"))?,
        ),
        other => {
            return Err(format!(
                "unknown extension '.{other}': use .json, .yaml or .yml"
            ));
        }
    };
    crate::model::bounds::check_shape::<WorkflowSpec>(&value)
        .map_err(|e| format!("invalid definition: {e}"))?;
    Ok(spec)
}

/// Deepest `[`/`{` nesting a YAML file may have. The YAML parser takes time
/// quadratic in the nesting (100,000 levels: a minute) before its own depth
/// limit applies, so the nesting is measured first.
const MAX_YAML_FLOW_DEPTH: usize = 128;

/// The deepest nesting of flow brackets in YAML text, outside quoted strings
/// and comments (an overestimate where plain scalars hold brackets).
fn yaml_flow_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    let mut prev_blank = true;
    while let Some(c) = chars.next() {
        match c {
            '#' if prev_blank => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\'' => {
                while let Some(c) = chars.next() {
                    if c == '\'' {
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev_blank = c.is_whitespace();
    }
    deepest
}

/// The project workflows that ship with myrmex (templates name them); a file
/// of the same name in `workflows_dirs` replaces one.
const BUILTIN: &[(&str, &str)] = &[
    (
        "ai-analysis.yaml",
        include_str!("../../../workflows/projects/ai-analysis.yaml"),
    ),
    (
        "build-and-test.yaml",
        include_str!("../../../workflows/projects/build-and-test.yaml"),
    ),
    (
        "data-processing.yaml",
        include_str!("../../../workflows/projects/data-processing.yaml"),
    ),
    (
        "deploy.yaml",
        include_str!("../../../workflows/projects/deploy.yaml"),
    ),
    (
        "visualization.yaml",
        include_str!("../../../workflows/projects/visualization.yaml"),
    ),
];

/// Where a shipped workflow is said to come from.
pub const BUILTIN_PREFIX: &str = "builtin:workflows/projects/";

impl Library {
    pub fn load(dirs: &[PathBuf], registry: &Registry, limits: &Limits) -> Library {
        let mut lib = Library::default();
        for (file, text) in BUILTIN {
            let path = PathBuf::from(format!("{BUILTIN_PREFIX}{file}"));
            match parse_text(text, "yaml") {
                Ok(spec) => {
                    if lib.admit(&spec, &path, registry, limits) {
                        lib.workflows
                            .insert(spec.name.clone(), LibraryEntry { spec, path });
                    }
                }
                Err(reason) => lib.broken.push(BrokenFile { path, reason }),
            }
        }
        for dir in dirs {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) => {
                    lib.broken.push(BrokenFile {
                        path: dir.clone(),
                        reason: format!("cannot read directory: {e}"),
                    });
                    continue;
                }
            };
            let mut paths: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("json" | "yaml" | "yml")
                        )
                })
                .collect();
            paths.sort();
            for path in paths {
                let spec = match parse_file(&path) {
                    Ok(s) => s,
                    Err(reason) => {
                        tracing::warn!(path = %path.display(), %reason, "workflow file skipped");
                        lib.broken.push(BrokenFile { path, reason });
                        continue;
                    }
                };
                if !lib.admit(&spec, &path, registry, limits) {
                    continue;
                }
                // A shipped workflow of the same name is replaced; another file's is not.
                if let Some(first) = lib
                    .workflows
                    .get(&spec.name)
                    .filter(|e| !e.path.to_string_lossy().starts_with(BUILTIN_PREFIX))
                {
                    lib.broken.push(BrokenFile {
                        path: path.clone(),
                        reason: format!(
                            "workflow '{}' is already defined by {}",
                            spec.name,
                            first.path.display()
                        ),
                    });
                    continue;
                }
                lib.workflows
                    .insert(spec.name.clone(), LibraryEntry { spec, path });
            }
        }
        tracing::info!(
            loaded = lib.workflows.len(),
            broken = lib.broken.len(),
            "workflow library loaded"
        );
        lib
    }

    /// Validate a definition for the library; an invalid one is recorded as
    /// broken. One whose only problem is a module this server's policy
    /// disables is admitted: running it is refused with the hint.
    fn admit(
        &mut self,
        spec: &WorkflowSpec,
        path: &Path,
        registry: &Registry,
        limits: &Limits,
    ) -> bool {
        let Err(problems) = validate(spec, registry, limits) else {
            return true;
        };
        if problems.iter().all(|p| p.code == "MODULE_DISABLED") {
            return true;
        }
        let reason = problems
            .iter()
            .map(|p| {
                format!(
                    "{}{}: {}",
                    p.code,
                    p.step
                        .as_ref()
                        .map(|s| format!(" (step {s})"))
                        .unwrap_or_default(),
                    p.message
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        tracing::warn!(path = %path.display(), %reason, "workflow file invalid");
        self.broken.push(BrokenFile {
            path: path.to_path_buf(),
            reason,
        });
        false
    }
}

#[cfg(test)]
mod bomb_tests {
    use super::parse_text;

    #[test]
    fn yaml_and_json_bombs_are_refused() {
        // Nested far past any sane definition.
        let deep = format!(
            "name: w\nsteps: {}1{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let e = parse_text(&deep, "yaml").unwrap_err();
        assert!(e.contains("nest deeper than 128"), "{e}");
        let deep = format!(
            "{{\"name\": \"w\", \"steps\": {}1{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse_text(&deep, "json").is_err());
        // Brackets in strings and comments are not nesting.
        let quoted = format!(
            "name: w # {}\nsteps: [{{name: a, module: core, action: echo, parameters: {{x: '{}', y: \"{}\"}}}}]\n",
            "[".repeat(500),
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(
            parse_text(&quoted, "yaml").is_ok(),
            "{:?}",
            parse_text(&quoted, "yaml")
        );
        // Aliases expanding exponentially ("billion laughs").
        let mut laughs = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (prev, next) in ('a'..'i').zip('b'..='i') {
            laughs.push_str(&format!("{next}: &{next} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        laughs.push_str("name: w\nsteps: *i\n");
        assert!(parse_text(&laughs, "yaml").is_err());
    }
}

//! `fs`: read, write, list, create and delete files, confined to the roots
//! of `[modules.fs]` (the projects folder by default).
//!
//! A path is relative to the first root, or absolute inside one of them.
//! `..` components are refused outright; the existing part of every path is
//! resolved (symlinks included) and must stay inside the root, so a symlink
//! pointing out of the root is refused too. Writes are atomic: a temporary
//! file in the same folder, synced, then renamed over the target.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use base64::Engine as _;
use serde_json::{Value, json};

use super::{ActionCtx, ActionError, ActionSpec, Module};
use crate::config::Config;
use crate::error::ErrorCode;

#[derive(Clone)]
pub struct Fs {
    enabled: bool,
    /// Configured roots; the first is where relative paths start.
    roots: Vec<PathBuf>,
    /// Why there are no roots (the data directory is unknown).
    no_roots: Option<String>,
    /// The default root is created on first use; configured ones must exist.
    default_root: bool,
    max_read: u64,
    max_write: u64,
    max_list: usize,
}

fn denied(msg: impl Into<String>) -> ActionError {
    ActionError::new(ErrorCode::PermissionDenied, msg)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ActionError {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorCode::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
        std::io::ErrorKind::AlreadyExists => ErrorCode::Conflict,
        _ => ErrorCode::ActionFailed,
    };
    ActionError::new(code, format!("{what} {}: {e}", path.display()))
}

/// A checked path: the real location plus the (resolved) root it is in.
pub struct Target {
    pub path: PathBuf,
    pub root: PathBuf,
}

/// Resolve a path given by a caller inside a set of roots (`conf` as
/// configured, `real` the same resolved, the first one the base of relative
/// paths): `..` is refused, an absolute path must be inside a root, and the
/// existing part of the path (symlinks included) must stay inside it.
pub fn confine(conf: &[PathBuf], real: &[PathBuf], given: &str) -> Result<Target, ActionError> {
    if given.is_empty() {
        return Err(ActionError::new(
            ErrorCode::InvalidParameters,
            "path is empty",
        ));
    }
    if given.contains('\0') {
        return Err(ActionError::new(
            ErrorCode::InvalidParameters,
            "path contains a NUL byte",
        ));
    }
    let p = Path::new(given);
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(denied(format!(
            "path '{given}' contains '..', which is not allowed"
        )));
    }
    let Some(first) = real.first() else {
        return Err(denied("there is no root to resolve paths in"));
    };
    let (root, rest): (PathBuf, PathBuf) = if p.is_absolute() {
        let found = conf.iter().zip(real.iter()).find_map(|(conf, real)| {
            p.strip_prefix(real)
                .or_else(|_| p.strip_prefix(conf))
                .ok()
                .map(|rest| (real.clone(), rest.to_path_buf()))
        });
        match found {
            Some(f) => f,
            None => {
                return Err(denied(format!(
                    "path '{given}' is outside the allowed roots ({})",
                    show(real)
                )));
            }
        }
    } else {
        (first.clone(), p.to_path_buf())
    };
    // Resolve the longest existing prefix (symlinks included), then append the rest.
    let mut existing = root.clone();
    let mut tail: Vec<std::ffi::OsString> = Vec::new();
    let comps: Vec<_> = rest
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let next = existing.join(c);
        if std::fs::symlink_metadata(&next).is_ok() {
            existing = match next.canonicalize() {
                Ok(r) => r,
                // A dangling symlink: where it points is unknown; refuse.
                Err(_) => {
                    return Err(denied(format!(
                        "path '{given}' goes through a symlink that points nowhere"
                    )));
                }
            };
            if !existing.starts_with(&root) {
                return Err(denied(format!(
                    "path '{given}' leads outside the root {} through a symlink",
                    root.display()
                )));
            }
        } else {
            tail.extend(comps[i..].iter().map(|c| c.as_os_str().to_owned()));
            break;
        }
    }
    let mut path = existing;
    for t in tail {
        path.push(t);
    }
    Ok(Target { path, root })
}

impl Fs {
    pub fn new(config: &Config) -> Self {
        let c = &config.modules.fs;
        let (roots, no_roots, default_root) = if c.roots.is_empty() {
            match config.projects_roots() {
                Ok(r) => (r, None, true),
                Err(e) => (vec![], Some(e.to_string()), true),
            }
        } else {
            (c.roots.clone(), None, false)
        };
        Self {
            enabled: c.enabled,
            roots,
            no_roots,
            default_root,
            max_read: c.max_read_bytes,
            max_write: c.max_write_bytes,
            max_list: c.max_list_entries,
        }
    }

    /// The roots, resolved (the default one is created when missing).
    fn real_roots(&self) -> Result<Vec<PathBuf>, ActionError> {
        let mut out = Vec::new();
        for (i, r) in self.roots.iter().enumerate() {
            if i == 0 && self.default_root {
                std::fs::create_dir_all(r).map_err(|e| io_err("cannot create the root", r, e))?;
            }
            match r.canonicalize() {
                Ok(p) => out.push(p),
                Err(e) if i == 0 => return Err(io_err("the fs root", r, e)),
                Err(_) => {}
            }
        }
        Ok(out)
    }

    /// Resolve a path given by a step and check that it stays inside a root.
    fn resolve(&self, given: &str) -> Result<Target, ActionError> {
        confine(&self.roots, &self.real_roots()?, given)
    }

    fn read(&self, p: &Value) -> Result<Value, ActionError> {
        let t = self.resolve(str_param(p, "path")?)?;
        let limit = p
            .get("max_bytes")
            .and_then(Value::as_u64)
            .unwrap_or(self.max_read)
            .min(self.max_read);
        let meta = std::fs::metadata(&t.path).map_err(|e| io_err("cannot read", &t.path, e))?;
        if !meta.is_file() {
            return Err(ActionError::new(
                ErrorCode::InvalidParameters,
                format!(
                    "{} is not a file (use fs.list for folders)",
                    t.path.display()
                ),
            ));
        }
        if meta.len() > limit {
            return Err(ActionError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{} has {} bytes; the limit is {limit} (max_bytes, [modules.fs] max_read_bytes)",
                    t.path.display(),
                    meta.len()
                ),
            ));
        }
        let bytes = std::fs::read(&t.path).map_err(|e| io_err("cannot read", &t.path, e))?;
        let encoding = p.get("encoding").and_then(Value::as_str).unwrap_or("utf8");
        let content = if encoding == "base64" {
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        } else {
            String::from_utf8(bytes.clone()).map_err(|_| {
                ActionError::new(
                    ErrorCode::InvalidParameters,
                    format!(
                        "{} is not UTF-8 text; read it with encoding: base64",
                        t.path.display()
                    ),
                )
            })?
        };
        Ok(json!({"path": t.path, "size": bytes.len(), "encoding": encoding, "content": content}))
    }

    fn write(&self, p: &Value) -> Result<Value, ActionError> {
        let t = self.resolve(str_param(p, "path")?)?;
        let content = str_param(p, "content")?;
        let bytes = match p.get("encoding").and_then(Value::as_str).unwrap_or("utf8") {
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(content)
                .map_err(|e| {
                    ActionError::new(
                        ErrorCode::InvalidParameters,
                        format!("content is not base64: {e}"),
                    )
                })?,
            _ => content.as_bytes().to_vec(),
        };
        if bytes.len() as u64 > self.max_write {
            return Err(ActionError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{} bytes to write; the limit is {} ([modules.fs] max_write_bytes)",
                    bytes.len(),
                    self.max_write
                ),
            ));
        }
        if t.path == t.root {
            return Err(denied("cannot write over an fs root"));
        }
        let parent = t.path.parent().unwrap_or(&t.root).to_path_buf();
        if p.get("create_dirs")
            .and_then(Value::as_bool)
            .unwrap_or(true)
        {
            std::fs::create_dir_all(&parent).map_err(|e| io_err("cannot create", &parent, e))?;
        }
        let existed = match std::fs::symlink_metadata(&t.path) {
            Ok(m) if m.is_dir() => {
                return Err(ActionError::new(
                    ErrorCode::Conflict,
                    format!("{} is a folder", t.path.display()),
                ));
            }
            Ok(_) => true,
            Err(_) => false,
        };
        if existed && !p.get("overwrite").and_then(Value::as_bool).unwrap_or(true) {
            return Err(ActionError::new(
                ErrorCode::Conflict,
                format!("{} exists and overwrite is false", t.path.display()),
            ));
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".myrmex-write-")
            .tempfile_in(&parent)
            .map_err(|e| io_err("cannot create a temporary file in", &parent, e))?;
        tmp.write_all(&bytes)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| io_err("cannot write", &t.path, e))?;
        tmp.persist(&t.path)
            .map_err(|e| io_err("cannot move the new content to", &t.path, e.error))?;
        Ok(json!({"path": t.path, "bytes_written": bytes.len(), "created": !existed}))
    }

    fn list(&self, p: &Value) -> Result<Value, ActionError> {
        let t = self.resolve(p.get("path").and_then(Value::as_str).unwrap_or("."))?;
        let recursive = p.get("recursive").and_then(Value::as_bool).unwrap_or(false);
        let limit = p
            .get("max_entries")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .unwrap_or(self.max_list)
            .min(self.max_list);
        if !t.path.is_dir() {
            return Err(ActionError::new(
                ErrorCode::InvalidParameters,
                format!("{} is not a folder", t.path.display()),
            ));
        }
        let mut entries = Vec::new();
        let mut truncated = false;
        let mut stack = vec![t.path.clone()];
        'walk: while let Some(dir) = stack.pop() {
            let mut items: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| io_err("cannot list", &dir, e))?
                .filter_map(|e| e.ok())
                .collect();
            items.sort_by_key(|e| e.file_name());
            for item in items {
                if entries.len() >= limit {
                    truncated = true;
                    break 'walk;
                }
                let meta = match item.path().symlink_metadata() {
                    Ok(m) => m,
                    Err(_) => continue,
                };
                let kind = if meta.file_type().is_symlink() {
                    "symlink"
                } else if meta.is_dir() {
                    "dir"
                } else {
                    "file"
                };
                let rel = item
                    .path()
                    .strip_prefix(&t.path)
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|_| item.path());
                let modified = meta
                    .modified()
                    .ok()
                    .map(|m| chrono::DateTime::<chrono::Utc>::from(m).to_rfc3339());
                entries.push(
                    json!({"path": rel, "type": kind, "size": meta.len(), "modified": modified}),
                );
                if recursive && kind == "dir" {
                    stack.push(item.path());
                }
            }
        }
        Ok(json!({"path": t.path, "entries": entries, "truncated": truncated}))
    }

    fn mkdir(&self, p: &Value) -> Result<Value, ActionError> {
        let t = self.resolve(str_param(p, "path")?)?;
        let existed = t.path.is_dir();
        let r = if p.get("parents").and_then(Value::as_bool).unwrap_or(true) {
            std::fs::create_dir_all(&t.path)
        } else if existed {
            Ok(())
        } else {
            std::fs::create_dir(&t.path)
        };
        r.map_err(|e| io_err("cannot create", &t.path, e))?;
        Ok(json!({"path": t.path, "created": !existed}))
    }

    fn delete(&self, given: &Value) -> Result<Value, ActionError> {
        let raw = str_param(given, "path")?;
        // A symlink is removed itself, never what it points to: resolve only its folder.
        let link = {
            let p = Path::new(raw);
            match (p.parent(), p.file_name()) {
                (Some(parent), Some(name)) => {
                    let parent = if parent.as_os_str().is_empty() {
                        "."
                    } else {
                        parent.to_str().unwrap_or(".")
                    };
                    let dir = self.resolve(parent)?;
                    let candidate = dir.path.join(name);
                    candidate
                        .symlink_metadata()
                        .ok()
                        .filter(|m| m.file_type().is_symlink())
                        .map(|_| candidate)
                }
                _ => None,
            }
        };
        if let Some(l) = link {
            std::fs::remove_file(&l).map_err(|e| io_err("cannot delete", &l, e))?;
            return Ok(json!({"path": l, "deleted": true, "type": "symlink"}));
        }
        let t = self.resolve(raw)?;
        let missing_ok = given
            .get("missing_ok")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if t.path == t.root {
            return Err(denied("cannot delete an fs root"));
        }
        let meta = match std::fs::symlink_metadata(&t.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing_ok => {
                return Ok(json!({"path": t.path, "deleted": false, "type": null}));
            }
            Err(e) => return Err(io_err("cannot delete", &t.path, e)),
        };
        if meta.is_dir() {
            if given
                .get("recursive")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                std::fs::remove_dir_all(&t.path)
            } else {
                std::fs::remove_dir(&t.path)
            }
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::DirectoryNotEmpty {
                    ActionError::new(
                        ErrorCode::Conflict,
                        format!(
                            "{} is a folder that is not empty; pass recursive: true",
                            t.path.display()
                        ),
                    )
                } else {
                    io_err("cannot delete", &t.path, e)
                }
            })?;
            Ok(json!({"path": t.path, "deleted": true, "type": "dir"}))
        } else {
            std::fs::remove_file(&t.path).map_err(|e| io_err("cannot delete", &t.path, e))?;
            Ok(json!({"path": t.path, "deleted": true, "type": "file"}))
        }
    }
}

fn str_param<'a>(p: &'a Value, key: &str) -> Result<&'a str, ActionError> {
    p.get(key).and_then(Value::as_str).ok_or_else(|| {
        ActionError::new(ErrorCode::InvalidParameters, format!("'{key}' is required"))
    })
}

fn show(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

const PATH_DOC: &str = "Relative to the first fs root, or absolute inside a root; '..' is refused.";

fn path_schema() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 4096, "description": PATH_DOC})
}

fn encoding_schema() -> Value {
    json!({"type": "string", "enum": ["utf8", "base64"], "description": "utf8 (default) or base64 for binary content."})
}

#[async_trait]
impl Module for Fs {
    fn name(&self) -> &'static str {
        "fs"
    }

    fn description(&self) -> &'static str {
        "Files and folders inside the configured roots (the projects folder by default)."
    }

    fn disabled(&self) -> Option<String> {
        if !self.enabled {
            return Some("the fs module is disabled; set [modules.fs] enabled = true in the server's configuration".into());
        }
        self.no_roots.as_ref().map(|why| {
            format!("the fs module has no root ({why}); set [modules.fs] roots or data_dir in the server's configuration")
        })
    }

    fn actions(&self) -> Vec<ActionSpec> {
        let spec = |action: &'static str,
                    description: &'static str,
                    params: Value,
                    output: Value| ActionSpec {
            module: "fs",
            action,
            description,
            params_schema: params,
            output_schema: output,
        };
        vec![
            spec(
                "read",
                "Read a file. Output {path, size, encoding, content}.",
                json!({
                    "type": "object",
                    "properties": {
                        "path": path_schema(),
                        "encoding": encoding_schema(),
                        "max_bytes": {"type": "integer", "minimum": 0, "description": "Refuse files larger than this (at most [modules.fs] max_read_bytes)."}
                    },
                    "required": ["path"],
                    "additionalProperties": false
                }),
                json!({"type": "object", "properties": {"path": {"type": "string"}, "size": {"type": "integer"}, "encoding": {"type": "string"}, "content": {"type": "string"}}}),
            ),
            spec(
                "write",
                "Write a file atomically (temporary file + rename). Output {path, bytes_written, created}.",
                json!({
                    "type": "object",
                    "properties": {
                        "path": path_schema(),
                        "content": {"type": "string", "description": "The new content."},
                        "encoding": encoding_schema(),
                        "create_dirs": {"type": "boolean", "description": "Create missing parent folders (default true)."},
                        "overwrite": {"type": "boolean", "description": "Replace an existing file (default true)."}
                    },
                    "required": ["path", "content"],
                    "additionalProperties": false
                }),
                json!({"type": "object", "properties": {"path": {"type": "string"}, "bytes_written": {"type": "integer"}, "created": {"type": "boolean"}}}),
            ),
            spec(
                "list",
                "List a folder (sorted; symlinks not followed). Output {path, entries: [{path, type, size, modified}], truncated}.",
                json!({
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "minLength": 1, "maxLength": 4096, "description": "The folder (default: the first root)."},
                        "recursive": {"type": "boolean", "description": "Include subfolders' entries (default false)."},
                        "max_entries": {"type": "integer", "minimum": 1, "description": "Stop after this many entries (at most [modules.fs] max_list_entries)."}
                    },
                    "additionalProperties": false
                }),
                json!({"type": "object", "properties": {"path": {"type": "string"}, "entries": {"type": "array"}, "truncated": {"type": "boolean"}}}),
            ),
            spec(
                "mkdir",
                "Create a folder (with its parents unless parents: false). Output {path, created}.",
                json!({
                    "type": "object",
                    "properties": {
                        "path": path_schema(),
                        "parents": {"type": "boolean", "description": "Create missing parents too (default true)."}
                    },
                    "required": ["path"],
                    "additionalProperties": false
                }),
                json!({"type": "object", "properties": {"path": {"type": "string"}, "created": {"type": "boolean"}}}),
            ),
            spec(
                "delete",
                "Delete a file, a symlink (not its target) or a folder (non-empty ones need recursive: true). Output {path, deleted, type}.",
                json!({
                    "type": "object",
                    "properties": {
                        "path": path_schema(),
                        "recursive": {"type": "boolean", "description": "Delete a folder with its content (default false)."},
                        "missing_ok": {"type": "boolean", "description": "Succeed when the path does not exist (default false)."}
                    },
                    "required": ["path"],
                    "additionalProperties": false
                }),
                json!({"type": "object", "properties": {"path": {"type": "string"}, "deleted": {"type": "boolean"}, "type": {"type": ["string", "null"]}}}),
            ),
        ]
    }

    async fn call(&self, action: &str, p: Value, ctx: ActionCtx) -> Result<Value, ActionError> {
        // File system calls block: keep them off the async workers. A project
        // run works in its project folder: it is the first root for the call.
        let mut this = self.clone();
        if let Some(dir) = &ctx.workdir {
            this.roots.insert(0, dir.clone());
            this.default_root = false;
        }
        let action = action.to_string();
        tokio::task::spawn_blocking(move || match action.as_str() {
            "read" => this.read(&p),
            "write" => this.write(&p),
            "list" => this.list(&p),
            "mkdir" => this.mkdir(&p),
            "delete" => this.delete(&p),
            other => Err(ActionError::new(
                ErrorCode::ModuleNotFound,
                format!("fs has no action '{other}'"),
            )),
        })
        .await
        .map_err(|e| ActionError::new(ErrorCode::InternalError, format!("fs task failed: {e}")))?
    }
}

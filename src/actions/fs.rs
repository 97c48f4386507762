//! `fs`: read, write, list, create and delete files, confined to roots.
//!
//! Without `[modules.fs] roots`, a principal's steps reach only what it owns:
//! its work area `<data_dir>/work/<principal>` and its projects' folders.
//! Configured roots are shared by every principal (an operator's choice;
//! `{principal}` in a root gives each principal its own).
//!
//! A path is relative to the first root, or absolute inside one of them.
//! `..` components are refused outright; the existing part of every path is
//! resolved (symlinks included) and must stay inside the root, so a symlink
//! pointing out of the root is refused too. The operation itself then opens
//! the path beneath a handle of the root (cap-std: `openat2` with
//! `RESOLVE_BENEATH`, or a checked component walk), so a folder swapped for
//! a symlink after the check still cannot lead out. Writes are atomic: a
//! temporary file in the same folder handle, synced, then renamed over the target.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use cap_std::fs::Dir;

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
    if e.kind() == std::io::ErrorKind::PermissionDenied
        && e.to_string().contains("outside of the filesystem")
    {
        return denied(format!(
            "{what} {}: the path leads outside its root (through a symlink)",
            path.display()
        ));
    }
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
            match config.data_dir() {
                Ok(d) => (vec![d.join("work")], None, true),
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

    /// The roots for one call of `principal`'s. Configured roots are shared
    /// (`{principal}` in one stands for the caller's folder name). Without
    /// configured roots a principal reaches only its own: its work area
    /// `<data_dir>/work/<principal>` (created on first use, where relative
    /// paths start) and the folders of its projects.
    async fn roots_for(&self, ctx: &ActionCtx) -> Result<Fs, ActionError> {
        let mut this = self.clone();
        let me = principal_dir(&ctx.principal);
        if self.default_root {
            if let Some(base) = self.roots.first() {
                this.roots = vec![base.join(&me)];
            }
            if let Some(host) = &ctx.host {
                this.roots
                    .extend(host.principal_folders(&ctx.principal).await?);
            }
        } else {
            for r in &mut this.roots {
                if let Some(s) = r.to_str().filter(|s| s.contains("{principal}")) {
                    *r = PathBuf::from(s.replace("{principal}", &me));
                }
            }
        }
        // A project run works in its project folder: the first root of the call.
        if let Some(dir) = &ctx.workdir {
            this.roots.insert(0, dir.clone());
            this.default_root = false;
        }
        Ok(this)
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

    /// Resolve a path given by a step: checked against the roots (with
    /// messages that say which rule it broke), then opened beneath a handle
    /// of its root, so that a symlink swapped in after the check still
    /// cannot lead out of it.
    fn place(&self, given: &str) -> Result<Place, ActionError> {
        let t = confine(&self.roots, &self.real_roots()?, given)?;
        let rel = t
            .path
            .strip_prefix(&t.root)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let dir = Dir::open_ambient_dir(&t.root, cap_std::ambient_authority())
            .map_err(|e| io_err("cannot open the root", &t.root, e))?;
        Ok(Place {
            root: t.root,
            dir,
            rel,
        })
    }

    fn read(&self, p: &Value) -> Result<Value, ActionError> {
        let t = self.place(str_param(p, "path")?)?;
        let path = t.shown();
        let limit = p
            .get("max_bytes")
            .and_then(Value::as_u64)
            .unwrap_or(self.max_read)
            .min(self.max_read);
        let file = t
            .dir
            .open(t.here())
            .map_err(|e| io_err("cannot read", &path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| io_err("cannot read", &path, e))?;
        if !meta.is_file() {
            return Err(ActionError::new(
                ErrorCode::InvalidParameters,
                format!("{} is not a file (use fs.list for folders)", path.display()),
            ));
        }
        let too_big = |n: u64| {
            ActionError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{} has {n} bytes; the limit is {limit} (max_bytes, [modules.fs] max_read_bytes)",
                    path.display()
                ),
            )
        };
        if meta.len() > limit {
            return Err(too_big(meta.len()));
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, limit + 1), &mut bytes)
            .map_err(|e| io_err("cannot read", &path, e))?;
        if bytes.len() as u64 > limit {
            // It grew since it was measured.
            return Err(too_big(bytes.len() as u64));
        }
        let encoding = p.get("encoding").and_then(Value::as_str).unwrap_or("utf8");
        let size = bytes.len();
        let content = if encoding == "base64" {
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        } else {
            String::from_utf8(bytes).map_err(|_| {
                ActionError::new(
                    ErrorCode::InvalidParameters,
                    format!(
                        "{} is not UTF-8 text; read it with encoding: base64",
                        path.display()
                    ),
                )
            })?
        };
        Ok(json!({"path": path, "size": size, "encoding": encoding, "content": content}))
    }

    fn write(&self, p: &Value) -> Result<Value, ActionError> {
        let t = self.place(str_param(p, "path")?)?;
        let path = t.shown();
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
        let Some(name) = t.rel.file_name().map(|n| n.to_owned()) else {
            return Err(denied("cannot write over an fs root"));
        };
        let parent_rel = t.rel.parent().map(Path::to_path_buf).unwrap_or_default();
        let parent_shown = t.root.join(&parent_rel);
        if p.get("create_dirs")
            .and_then(Value::as_bool)
            .unwrap_or(true)
            && !parent_rel.as_os_str().is_empty()
        {
            t.dir
                .create_dir_all(&parent_rel)
                .map_err(|e| io_err("cannot create", &parent_shown, e))?;
        }
        let parent = t
            .open_dir(&parent_rel)
            .map_err(|e| io_err("cannot write in", &parent_shown, e))?;
        let existed = match parent.symlink_metadata(&name) {
            Ok(m) if m.is_dir() => {
                return Err(ActionError::new(
                    ErrorCode::Conflict,
                    format!("{} is a folder", path.display()),
                ));
            }
            Ok(_) => true,
            Err(_) => false,
        };
        if existed && !p.get("overwrite").and_then(Value::as_bool).unwrap_or(true) {
            return Err(ActionError::new(
                ErrorCode::Conflict,
                format!("{} exists and overwrite is false", path.display()),
            ));
        }
        // A temporary file beside the target, synced, then renamed over it:
        // both inside the same folder handle.
        let tmp = format!(".myrmex-write-{}", uuid::Uuid::new_v4().simple());
        let written = (|| {
            let mut f = parent.open_with(
                &tmp,
                cap_std::fs::OpenOptions::new().write(true).create_new(true),
            )?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            parent.rename(&tmp, &parent, &name)
        })();
        if let Err(e) = written {
            let _ = parent.remove_file(&tmp);
            return Err(io_err("cannot write", &path, e));
        }
        Ok(json!({"path": path, "bytes_written": bytes.len(), "created": !existed}))
    }

    fn list(&self, p: &Value) -> Result<Value, ActionError> {
        let t = self.place(p.get("path").and_then(Value::as_str).unwrap_or("."))?;
        let path = t.shown();
        let recursive = p.get("recursive").and_then(Value::as_bool).unwrap_or(false);
        let limit = p
            .get("max_entries")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .unwrap_or(self.max_list)
            .min(self.max_list);
        let start = match t.dir.metadata(t.here()) {
            Ok(m) if m.is_dir() => t
                .open_dir(&t.rel)
                .map_err(|e| io_err("cannot list", &path, e))?,
            Ok(_) => {
                return Err(ActionError::new(
                    ErrorCode::InvalidParameters,
                    format!("{} is not a folder", path.display()),
                ));
            }
            Err(e) => return Err(io_err("cannot list", &path, e)),
        };
        let mut entries = Vec::new();
        let mut truncated = false;
        // Folders are entered by handle, beneath the root; listed symlinks are not entered.
        let mut stack = vec![(start, PathBuf::new())];
        'walk: while let Some((dir, prefix)) = stack.pop() {
            let mut items: Vec<_> = dir
                .entries()
                .map_err(|e| io_err("cannot list", &path.join(&prefix), e))?
                .filter_map(|e| e.ok())
                .collect();
            items.sort_by_key(|e| e.file_name());
            for item in items {
                if entries.len() >= limit {
                    truncated = true;
                    break 'walk;
                }
                let Ok(meta) = item.metadata() else { continue };
                let ft = meta.file_type();
                let kind = if ft.is_symlink() {
                    "symlink"
                } else if ft.is_dir() {
                    "dir"
                } else {
                    "file"
                };
                let name = item.file_name();
                let rel = prefix.join(&name);
                let modified = meta
                    .modified()
                    .ok()
                    .map(|m| chrono::DateTime::<chrono::Utc>::from(m.into_std()).to_rfc3339());
                entries.push(
                    json!({"path": rel, "type": kind, "size": meta.len(), "modified": modified}),
                );
                if recursive
                    && kind == "dir"
                    && let Ok(sub) = dir.open_dir(&name)
                {
                    stack.push((sub, rel));
                }
            }
        }
        Ok(json!({"path": path, "entries": entries, "truncated": truncated}))
    }

    fn mkdir(&self, p: &Value) -> Result<Value, ActionError> {
        let t = self.place(str_param(p, "path")?)?;
        let path = t.shown();
        let existed = t.dir.metadata(t.here()).is_ok_and(|m| m.is_dir());
        let r = if t.rel.as_os_str().is_empty() || existed {
            Ok(())
        } else if p.get("parents").and_then(Value::as_bool).unwrap_or(true) {
            t.dir.create_dir_all(&t.rel)
        } else {
            t.dir.create_dir(&t.rel)
        };
        r.map_err(|e| io_err("cannot create", &path, e))?;
        Ok(json!({"path": path, "created": !existed}))
    }

    fn delete(&self, given: &Value) -> Result<Value, ActionError> {
        let raw = str_param(given, "path")?;
        let missing_ok = given
            .get("missing_ok")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        // The folder is resolved, the last component never followed: a
        // symlink is removed itself, never what it points to.
        let p = Path::new(raw);
        let name = match p.file_name() {
            Some(n)
                if p.components()
                    .next_back()
                    .is_some_and(|c| matches!(c, Component::Normal(_))) =>
            {
                n.to_owned()
            }
            _ => {
                // `.`, `/`, a root itself.
                let t = self.place(raw)?;
                if t.rel.as_os_str().is_empty() {
                    return Err(denied("cannot delete an fs root"));
                }
                t.rel.file_name().map(|n| n.to_owned()).unwrap_or_default()
            }
        };
        let parent_given = match p.parent() {
            Some(pp) if !pp.as_os_str().is_empty() => pp.to_str().unwrap_or("."),
            _ => ".",
        };
        let t = self.place(parent_given)?;
        let shown = t.shown().join(&name);
        let parent = t
            .open_dir(&t.rel)
            .map_err(|e| io_err("cannot delete", &shown, e))?;
        let meta = match parent.symlink_metadata(&name) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing_ok => {
                return Ok(json!({"path": shown, "deleted": false, "type": null}));
            }
            Err(e) => return Err(io_err("cannot delete", &shown, e)),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            parent
                .remove_file(&name)
                .map_err(|e| io_err("cannot delete", &shown, e))?;
            return Ok(json!({"path": shown, "deleted": true, "type": "symlink"}));
        }
        if ft.is_dir() {
            if given
                .get("recursive")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                parent.remove_dir_all(&name)
            } else {
                parent.remove_dir(&name)
            }
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::DirectoryNotEmpty {
                    ActionError::new(
                        ErrorCode::Conflict,
                        format!(
                            "{} is a folder that is not empty; pass recursive: true",
                            shown.display()
                        ),
                    )
                } else {
                    io_err("cannot delete", &shown, e)
                }
            })?;
            Ok(json!({"path": shown, "deleted": true, "type": "dir"}))
        } else {
            parent
                .remove_file(&name)
                .map_err(|e| io_err("cannot delete", &shown, e))?;
            Ok(json!({"path": shown, "deleted": true, "type": "file"}))
        }
    }
}

/// A checked path: the root's real location, a handle of it, and the path
/// beneath it (empty: the root itself).
struct Place {
    root: PathBuf,
    dir: Dir,
    rel: PathBuf,
}

impl Place {
    /// The path as answers show it.
    fn shown(&self) -> PathBuf {
        self.root.join(&self.rel)
    }

    /// The path beneath the root, `.` for the root itself.
    fn here(&self) -> &Path {
        if self.rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.rel
        }
    }

    /// A handle of a folder beneath the root (the root for an empty path).
    fn open_dir(&self, rel: &Path) -> std::io::Result<Dir> {
        if rel.as_os_str().is_empty() {
            self.dir.try_clone()
        } else {
            self.dir.open_dir(rel)
        }
    }
}

/// A principal's folder name: its name where that is a plain file name,
/// else a sanitized form with a hash (two principals never share one).
pub fn principal_dir(principal: &str) -> String {
    let plain = !principal.is_empty()
        && principal.len() <= 64
        && principal != "."
        && principal != ".."
        && principal
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if plain {
        return principal.to_string();
    }
    use sha2::Digest as _;
    let hash = hex::encode(sha2::Sha256::digest(principal.as_bytes()));
    let safe: String = principal
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(32)
        .collect();
    format!("{safe}-{}", &hash[..12])
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
        "Files and folders inside the configured roots (by default the caller's work area and its projects' folders)."
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
        // File system calls block: keep them off the async workers.
        let this = self.roots_for(&ctx).await?;
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

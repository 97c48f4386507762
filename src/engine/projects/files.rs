//! Projects on disk: the metadata document, scaffolding a project from a
//! template (atomically: built in a temporary folder inside the root, then
//! renamed into place), and archives. The engine (`engine::projects`) keeps
//! the records, checks who may do what, and runs project workflows.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::template::{DocLinks, FileSource, Template, render_json, render_placeholders};

/// Where a project keeps its metadata.
pub const META_DIR: &str = ".myrmex";
pub const META_FILE: &str = ".myrmex/project.json";

/// A project's metadata: `.myrmex/project.json` and the Store's copy.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ProjectDoc {
    pub id: String,
    pub name: String,
    pub description: String,
    /// ai_analysis, web_application, data_pipeline, ml_model, documentation, research or custom.
    #[serde(rename = "type")]
    pub kind: String,
    /// Absolute path of the project folder.
    pub path: String,
    /// planning, active, paused, completed, archived or failed.
    pub status: crate::model::ProjectStatus,
    pub version: String,
    pub template: Option<String>,
    pub config: Map<String, Value>,
    pub workflows: Vec<String>,
    /// Kept for the original's shape; running workflows are counted from the runs.
    #[serde(default)]
    pub active_workflows: Vec<String>,
    pub required_modules: Vec<String>,
    pub author: String,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    /// By name: the data given plus `completed_at`.
    #[serde(default)]
    pub milestones: Map<String, Value>,
    #[serde(default)]
    pub metrics: Map<String, Value>,
    /// Who owns it.
    pub principal: String,
    /// Folders of the project (relative), for the docs' layout.
    #[serde(default)]
    pub directories: Vec<String>,
    /// Folders with their own README/AGENTS.
    #[serde(default)]
    pub nested_docs: Vec<String>,
    #[serde(default)]
    pub doc_links: DocLinks,
    #[serde(default)]
    pub doc_variables: Map<String, Value>,
}

impl ProjectDoc {
    /// The `{{var}}` values for files and docs.
    pub fn vars(&self) -> BTreeMap<String, String> {
        let mut v: BTreeMap<String, String> = [
            ("project_name", self.name.clone()),
            ("project_type", self.kind.clone()),
            ("description", self.description.clone()),
            ("version", self.version.clone()),
            ("author", self.author.clone()),
            ("created_at", self.created_at.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, x) in &self.doc_variables {
            let s = match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            v.insert(k.clone(), s);
        }
        v
    }

    /// What a project run's templates see as `{{project...}}`.
    pub fn context(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "path": self.path,
            "type": self.kind,
            "version": self.version,
            "tags": self.tags,
            "config": self.config,
        })
    }

    /// Generate (or regenerate) the project's docs.
    pub fn generate_docs(
        &self,
        root: &Path,
        templates: &super::docs::DocTemplates,
    ) -> std::io::Result<super::docs::DocReport> {
        super::docs::generate(&super::docs::DocInput {
            root,
            vars: self.vars(),
            directories: self
                .directories
                .iter()
                .filter(|d| *d != META_DIR)
                .cloned()
                .collect(),
            nested: self.nested_docs.clone(),
            links: self.doc_links,
            workflows: self.workflows.clone(),
            templates,
        })
    }
}

/// Write JSON atomically (temporary file in the same folder, fsync, rename).
pub fn write_json(path: &Path, v: &impl Serialize) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".myrmex-write-")
        .tempfile_in(dir)?;
    serde_json::to_writer_pretty(&mut tmp, v).map_err(std::io::Error::other)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Read a project's metadata from its folder.
pub fn read_doc(dir: &Path) -> Result<ProjectDoc, String> {
    let text = std::fs::read_to_string(dir.join(META_FILE)).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// Build a project's tree in a temporary folder next to `target` and rename it
/// into place; on any failure nothing is left. Returns the files created
/// (relative paths, sorted).
pub fn scaffold(
    target: &Path,
    doc: &ProjectDoc,
    template: Option<(&Template, Option<&Path>)>,
    doc_templates: &super::docs::DocTemplates,
) -> std::io::Result<Vec<String>> {
    let parent = target
        .parent()
        .ok_or_else(|| std::io::Error::other("the project path has no parent folder"))?;
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".myrmex-new-")
        .tempdir_in(parent)?;
    let root = tmp.path();
    let vars = doc.vars();
    for d in &doc.directories {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::create_dir_all(root.join(META_DIR))?;
    let mut files = Vec::new();
    if let Some((t, folder)) = template {
        for (dest, src) in &t.files {
            let content = match src {
                FileSource::Inline(s) => s.clone(),
                FileSource::Source { source } => {
                    let from = folder
                        .ok_or_else(|| {
                            std::io::Error::other("a source file needs a template folder")
                        })?
                        .join(source);
                    std::fs::read_to_string(&from).map_err(|e| {
                        std::io::Error::new(e.kind(), format!("{}: {e}", from.display()))
                    })?
                }
            };
            let path = root.join(super::template::norm(dest));
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::write(&path, render_placeholders(&content, &vars))?;
            files.push(super::template::norm(dest));
        }
    }
    let mut doc = doc.clone();
    doc.config = match render_json(&Value::Object(doc.config.clone()), &vars) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    write_json(&root.join(META_FILE), &doc)?;
    files.push(META_FILE.to_string());
    let report = doc.generate_docs(root, doc_templates)?;
    files.extend(report.written);
    // Into place: an empty folder at the target is replaced, anything else stays.
    let tmp_path = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp_path, target) {
        let _ = std::fs::remove_dir_all(&tmp_path);
        return Err(e);
    }
    files.sort();
    Ok(files)
}

/// Write `<archives>/<name>.tar.gz` of the project folder (entries under `<name>/`).
pub fn archive(dir: &Path, name: &str, archives: &Path) -> std::io::Result<(PathBuf, u64)> {
    std::fs::create_dir_all(archives)?;
    let out = archives.join(format!("{name}.tar.gz"));
    let tmp = tempfile::Builder::new()
        .prefix(".myrmex-archive-")
        .tempfile_in(archives)?;
    {
        let gz = flate2::write::GzEncoder::new(tmp.as_file(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        tar.append_dir_all(name, dir)?;
        tar.into_inner()?.finish()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(&out).map_err(|e| e.error)?;
    let bytes = std::fs::metadata(&out)?.len();
    Ok((out, bytes))
}

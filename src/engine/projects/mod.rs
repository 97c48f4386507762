//! Projects: templates, creation, the docs, lifecycle operations, and the
//! context project runs see. Files are handled by `files` (the metadata
//! document, scaffolding, archives), `template` (project templates) and
//! `docs` (the generated README and AGENTS docs); this module checks names,
//! paths, owners and policy, and keeps the Store's copy of each project's
//! metadata in step with `.myrmex/project.json`.

pub mod docs;
pub mod files;
pub mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::sessions::{decode_cursor, next_cursor, page_limit};
use super::workflows::{ExecuteRequest, RunSummary};
use super::{Engine, Principal, iso, new_id, now_ms};
use crate::actions::fs::confine;
use crate::error::{Error, ErrorCode, Result};
use crate::model::ProjectStatus;
use crate::store::{ProjectQuery, ProjectRecord, RunQuery};
use docs::{DocReport, DocTemplates};
use files::{META_FILE, ProjectDoc};
use template::{Known, Loaded, Template, deep_merge};

const MAX_TAGS: usize = 32;

/// The templates this server knows, valid or not.
pub struct Templates {
    pub by_name: BTreeMap<String, Loaded>,
    /// Files that could not be read as a template at all.
    pub unnamed: Vec<Loaded>,
    pub dirs: Vec<PathBuf>,
}

impl Templates {
    pub fn load(dirs: &[PathBuf], modules: &[String], workflows: &BTreeSet<String>) -> Self {
        let (by_name, unnamed) = template::load_all(dirs, &Known { modules, workflows });
        for l in by_name.values().chain(unnamed.iter()) {
            if !l.problems.is_empty() {
                tracing::warn!(template = %l.name, origin = %l.origin, problems = ?l.problems, "invalid project template");
            }
        }
        Self {
            by_name,
            unnamed,
            dirs: dirs.to_vec(),
        }
    }

    /// Every invalid template, one line each.
    pub fn invalid(&self) -> Vec<String> {
        self.by_name
            .values()
            .chain(self.unnamed.iter())
            .filter(|l| !l.problems.is_empty())
            .map(|l| format!("{}: {}", l.origin, l.problems.join("; ")))
            .collect()
    }
}

/// A template as `list_templates` shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TemplateSummary {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub version: String,
    pub workflows: Vec<String>,
    pub required_modules: Vec<String>,
    /// `builtin:<name>` or the file it was loaded from.
    pub origin: String,
    /// False when the template cannot be used; `problems` says why.
    pub valid: bool,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateSummary>,
    /// Files in template folders that are not templates at all, with the reason.
    pub unreadable: Vec<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TemplateView {
    pub template: Template,
    pub origin: String,
    pub valid: bool,
    pub problems: Vec<String>,
}

/// What `create_project` asks for.
#[derive(Debug, Clone, Default)]
pub struct NewProject {
    pub name: String,
    pub template: Option<String>,
    pub path: Option<String>,
    pub description: Option<String>,
    pub author: Option<String>,
    pub tags: Vec<String>,
    pub config_overrides: Option<Map<String, Value>>,
    pub execute_workflow: ProjectRun,
    pub workflow_parameters: Map<String, Value>,
    pub session_id: Option<String>,
}

/// Which workflow `create_project` runs for the new project.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ProjectRun {
    #[default]
    Nothing,
    /// The template's first workflow (`execute_workflow: true`).
    First,
    /// This one (the original's `execute_workflow: "<name>"`): one of the
    /// template's workflows or one the caller can see.
    Named(String),
}

/// `create_project`'s answer (the original specification's fields).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CreatedProject {
    /// `created`.
    pub status: String,
    pub project_id: String,
    pub project_name: String,
    pub project_path: String,
    pub template_used: Option<String>,
    /// Files written, relative to the project folder.
    pub files_created: Vec<String>,
    /// Whether a workflow was started because of execute_workflow (the original's bool).
    pub workflow_executed: bool,
    /// The workflow started because of execute_workflow, if any.
    pub workflow_name: Option<String>,
    /// The run when it finished within the wait; otherwise see run_id.
    pub workflow_result: Option<Value>,
    pub run_id: Option<String>,
    pub next_steps: Vec<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProjectSummary {
    pub project_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub path: String,
    pub template: Option<String>,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProjectPage {
    pub projects: Vec<ProjectSummary>,
    pub next_cursor: Option<String>,
}

/// A project in full: the original status fields plus docs and recent runs.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProjectView {
    pub project_id: String,
    pub name: String,
    pub description: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub version: String,
    pub path: String,
    pub template: Option<String>,
    pub author: String,
    pub tags: Vec<String>,
    pub config: Map<String, Value>,
    pub workflows: Vec<String>,
    /// Runs of this project still going.
    pub active_workflows: usize,
    pub required_modules: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub milestones: Map<String, Value>,
    pub metrics: Map<String, Value>,
    /// README.md / AGENTS.md files of the project, relative.
    pub docs: Vec<String>,
    /// The latest runs for this project (newest last, at most 10).
    pub recent_runs: Vec<RunSummary>,
}

/// What `manage_project` does.
#[derive(Debug, Clone)]
pub enum Operation {
    Status,
    Update {
        description: Option<String>,
        tags: Option<Vec<String>>,
        status: Option<ProjectStatus>,
        version: Option<String>,
        config: Option<Map<String, Value>>,
    },
    Milestone {
        name: String,
        data: Map<String, Value>,
    },
    Metrics {
        metrics: Option<Map<String, Value>>,
    },
    Archive,
    Delete {
        confirm: bool,
    },
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Managed {
    pub operation: String,
    pub project_id: String,
    /// The project's status after the operation.
    pub project_status: String,
    /// What the operation produced (see the tool's description).
    pub result: Value,
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("project name '{name}' is not allowed"),
            "Use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit (it names the folder).",
        ))
    }
}

fn check_tags(tags: &[String]) -> Result<()> {
    if tags.len() > MAX_TAGS || tags.iter().any(|t| t.is_empty() || t.chars().count() > 64) {
        return Err(Error::invalid(
            format!(
                "{} tags given; each must be 1-64 characters, at most {MAX_TAGS}",
                tags.len()
            ),
            "Shorten or drop tags.",
        ));
    }
    Ok(())
}

fn io_error(what: &str, e: std::io::Error) -> Error {
    Error::new(
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ErrorCode::ProjectExists
        } else {
            ErrorCode::InternalError
        },
        format!("{what}: {e}"),
        "Nothing was left behind; fix the cause (disk space, permissions, the template's files) and call again.",
    )
}

fn record_of(doc: &ProjectDoc, created_at: i64, updated_at: i64) -> Result<ProjectRecord> {
    Ok(ProjectRecord {
        id: doc.id.clone(),
        principal: doc.principal.clone(),
        name: doc.name.clone(),
        path: doc.path.clone(),
        status: doc.status,
        kind: doc.kind.clone(),
        template: doc.template.clone(),
        tags: serde_json::to_string(&doc.tags).map_err(|e| Error::internal(e.to_string()))?,
        record: serde_json::to_string(doc).map_err(|e| Error::internal(e.to_string()))?,
        created_at,
        updated_at,
    })
}

fn doc_of(r: &ProjectRecord) -> Result<ProjectDoc> {
    serde_json::from_str(&r.record)
        .map_err(|e| Error::internal(format!("project {} has corrupt metadata: {e}", r.id)))
}

fn not_found(key: &str) -> Error {
    Error::not_found(
        "project",
        key,
        "Check the project id or name; list_projects shows your projects.",
    )
}

impl Engine {
    pub fn templates(&self) -> &Templates {
        &self.inner.templates
    }

    /// The folders projects are created in.
    fn project_roots(&self) -> Result<Vec<PathBuf>> {
        self.config()
            .projects_roots()
            .map_err(|e| Error::internal(format!("no projects folder: {e}")))
    }

    pub fn list_templates(&self) -> TemplateList {
        let t = self.templates();
        TemplateList {
            templates: t
                .by_name
                .values()
                .filter_map(|l| {
                    let tpl = l.template.as_ref()?;
                    Some(TemplateSummary {
                        name: tpl.name.clone(),
                        kind: tpl.kind.clone(),
                        description: tpl.description.clone(),
                        version: tpl.version.clone(),
                        workflows: tpl.workflows.clone(),
                        required_modules: tpl.required_modules.clone(),
                        origin: l.origin.clone(),
                        valid: l.problems.is_empty(),
                        problems: l.problems.clone(),
                    })
                })
                .collect(),
            unreadable: t
                .unnamed
                .iter()
                .map(|l| format!("{}: {}", l.origin, l.problems.join("; ")))
                .collect(),
        }
    }

    fn template_error(&self, name: &str) -> Error {
        Error::new(
            ErrorCode::TemplateNotFound,
            format!("no template named '{name}'"),
            format!(
                "Known templates: {}. list_templates describes them; omit template for an empty project.",
                self.templates()
                    .by_name
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }

    pub fn get_template(&self, name: &str) -> Result<TemplateView> {
        let l = self
            .templates()
            .by_name
            .get(name)
            .ok_or_else(|| self.template_error(name))?;
        Ok(TemplateView {
            template: l
                .template
                .clone()
                .ok_or_else(|| self.template_error(name))?,
            origin: l.origin.clone(),
            valid: l.problems.is_empty(),
            problems: l.problems.clone(),
        })
    }

    /// Where a new project goes: inside a projects root, never through `..` or a symlink out.
    fn project_target(&self, name: &str, path: Option<&str>) -> Result<PathBuf> {
        let roots = self.project_roots()?;
        for r in roots.iter().take(1) {
            std::fs::create_dir_all(r)
                .map_err(|e| io_error("cannot create the projects folder", e))?;
        }
        let real: Vec<PathBuf> = roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
        let given = path.unwrap_or(name);
        let t = confine(&roots, &real, given).map_err(|e| {
            Error::new(
                e.code,
                e.message,
                format!(
                    "Give a path inside the projects folder{} ({}), or omit path to use <root>/<name>.",
                    if roots.len() > 1 { "s" } else { "" },
                    real.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        if t.path == t.root {
            return Err(Error::new(
                ErrorCode::PermissionDenied,
                "a project cannot be the projects folder itself",
                "Give a path below the projects folder, or omit path.",
            ));
        }
        Ok(t.path)
    }

    pub async fn create_project(&self, p: &Principal, req: NewProject) -> Result<CreatedProject> {
        check_name(&req.name)?;
        check_tags(&req.tags)?;
        let loaded = match &req.template {
            Some(name) => Some(
                self.templates()
                    .by_name
                    .get(name)
                    .ok_or_else(|| self.template_error(name))?,
            ),
            None => None,
        };
        let tpl: Option<(&Template, Option<&Path>)> = match loaded {
            Some(l) => {
                let t = l
                    .template
                    .as_ref()
                    .ok_or_else(|| self.template_error(&l.name))?;
                if !l.problems.is_empty() {
                    return Err(Error::invalid(
                        format!(
                            "template '{}' is invalid: {}",
                            l.name,
                            l.problems.join("; ")
                        ),
                        format!(
                            "Fix {} (list_templates shows the problems) or choose another template.",
                            l.origin
                        ),
                    ));
                }
                Some((t, l.folder.as_deref()))
            }
            None => None,
        };
        if let Some((t, _)) = tpl {
            for m in &t.required_modules {
                if let Some(why) = self.registry().disabled(m) {
                    return Err(Error::new(
                        ErrorCode::ModuleNotFound,
                        format!(
                            "template '{}' requires module '{m}', which is disabled",
                            t.name
                        ),
                        format!("{why}. Nothing was created."),
                    ));
                }
            }
        }
        let session = self
            .sessions()
            .resolve(p, req.session_id.as_deref())
            .await?;
        // The workflow to run is known before anything is written.
        let template_workflows = tpl.map(|(t, _)| t.workflows.clone()).unwrap_or_default();
        let run = match &req.execute_workflow {
            ProjectRun::Nothing => None,
            ProjectRun::First => Some(template_workflows.first().cloned().ok_or_else(|| {
                Error::invalid(
                    "execute_workflow is true but the template names no workflow",
                    "Nothing was created; choose a template that names workflows, pass a workflow's name in execute_workflow, or omit it.",
                )
            })?),
            ProjectRun::Named(w) => {
                if !template_workflows.contains(w) {
                    // Not the template's: it must exist for the caller now.
                    self.resolve_workflow(p, &session, w).await.map_err(|mut e| {
                        e.hint = format!("{} Nothing was created.", e.hint);
                        e
                    })?;
                }
                Some(w.clone())
            }
        };
        let target = self.project_target(&req.name, req.path.as_deref())?;
        if self.store().project_by_name(&req.name).await?.is_some() {
            return Err(Error::new(
                ErrorCode::ProjectExists,
                format!("a project named '{}' exists", req.name),
                "Choose another name; list_projects shows yours.",
            ));
        }
        if target.exists()
            && std::fs::read_dir(&target)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            return Err(Error::new(
                ErrorCode::ProjectExists,
                format!("{} exists and is not empty", target.display()),
                "Choose another name or path; nothing was written.",
            ));
        }
        let now = now_ms();
        let mut config = Value::Object(
            tpl.map(|(t, _)| t.default_config.clone())
                .unwrap_or_default(),
        );
        if let Some(o) = &req.config_overrides {
            deep_merge(&mut config, &Value::Object(o.clone()));
        }
        let kind = tpl
            .map(|(t, _)| t.kind.clone())
            .unwrap_or_else(|| "custom".into());
        let mut doc = ProjectDoc {
            id: new_id("prj"),
            name: req.name.clone(),
            description: String::new(),
            kind: kind.clone(),
            path: target.display().to_string(),
            status: ProjectStatus::Planning,
            version: "1.0.0".into(),
            template: tpl.map(|(t, _)| t.name.clone()),
            config: match config {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            workflows: tpl.map(|(t, _)| t.workflows.clone()).unwrap_or_default(),
            active_workflows: vec![],
            required_modules: tpl
                .map(|(t, _)| t.required_modules.clone())
                .unwrap_or_default(),
            author: req.author.clone().unwrap_or_default(),
            tags: req.tags.clone(),
            created_at: iso(now),
            updated_at: iso(now),
            milestones: Map::new(),
            metrics: Map::new(),
            principal: p.name().into(),
            directories: tpl
                .map(|(t, _)| t.directories())
                .unwrap_or_else(|| vec![".myrmex".into()]),
            nested_docs: tpl.map(|(t, _)| t.nested_docs()).unwrap_or_default(),
            doc_links: tpl.map(|(t, _)| t.links()).unwrap_or_default(),
            doc_variables: tpl
                .map(|(t, _)| t.documentation_config.doc_variables.clone())
                .unwrap_or_default(),
        };
        // The description: the caller's, else the template's (rendered), else the original's default.
        doc.description = match (&req.description, tpl) {
            (Some(d), _) => d.clone(),
            (None, Some((t, _))) if !t.description.is_empty() => {
                template::render_placeholders(&t.description, &doc.vars())
            }
            _ => {
                let words: Vec<String> = kind
                    .split('_')
                    .map(|w| {
                        let mut c = w.chars();
                        c.next()
                            .map(|f| f.to_uppercase().chain(c).collect())
                            .unwrap_or_default()
                    })
                    .collect();
                format!("{} project", words.join(" "))
            }
        };
        let doc_templates = DocTemplates::lookup(&self.templates().dirs, doc.template.as_deref());
        let created = {
            let target = target.clone();
            let doc = doc.clone();
            let tpl_owned = tpl.map(|(t, f)| (t.clone(), f.map(Path::to_path_buf)));
            tokio::task::spawn_blocking(move || {
                files::scaffold(
                    &target,
                    &doc,
                    tpl_owned.as_ref().map(|(t, f)| (t, f.as_deref())),
                    &doc_templates,
                )
            })
            .await
            .map_err(|e| Error::internal(e.to_string()))?
            .map_err(|e| io_error("the project could not be created", e))?
        };
        // The rendered config is what the folder holds.
        doc = files::read_doc(&target).map_err(Error::internal)?;
        if let Err(e) = self
            .store()
            .insert_project(&record_of(&doc, now, now)?)
            .await
        {
            let _ = std::fs::remove_dir_all(&target);
            return Err(match e {
                crate::store::StoreError::Conflict(_) => Error::new(
                    ErrorCode::ProjectExists,
                    format!(
                        "a project named '{}' was created at the same moment",
                        req.name
                    ),
                    "Choose another name.",
                ),
                other => other.into(),
            });
        }
        tracing::info!(project = %doc.id, name = %doc.name, path = %doc.path, "project created");
        let mut out = CreatedProject {
            status: "created".into(),
            project_id: doc.id.clone(),
            project_name: doc.name.clone(),
            project_path: doc.path.clone(),
            template_used: doc.template.clone(),
            files_created: created,
            workflow_executed: false,
            workflow_name: None,
            workflow_result: None,
            run_id: None,
            next_steps: vec![],
        };
        if let Some(w) = run {
            let req = ExecuteRequest {
                workflow_name: w.clone(),
                parameters: req.workflow_parameters.clone(),
                session_id: Some(session.session_id.clone()),
                project: Some(doc.context()),
                ..Default::default()
            };
            let id = self.start_named_run(p, &session, req).await?;
            let wait = std::time::Duration::from_secs(self.config().workflows.default_wait_seconds);
            let view = self.wait_run(&id, wait, &mut |_, _, _| {}).await?;
            out.workflow_executed = true;
            out.workflow_name = Some(w);
            out.run_id = Some(id);
            if crate::engine::runs::view_final(&view.status) {
                out.workflow_result =
                    Some(serde_json::to_value(&view).map_err(|e| Error::internal(e.to_string()))?);
            }
        }
        out.next_steps = vec![
            format!("Read {}/README.md and AGENTS.md.", doc.path),
            match doc.workflows.first() {
                Some(w) => format!(
                    "Run a project workflow: execute_workflow {{\"workflow_name\": \"{w}\", \"project\": \"{}\"}}.",
                    doc.name
                ),
                None => "Add work: create_tasks in your session, or define a workflow and run it with `project`.".into(),
            },
            "Track progress with manage_project (milestone, metrics, update status).".into(),
        ];
        Ok(out)
    }

    /// A project of the caller, by id or name.
    async fn visible_project(&self, p: &Principal, key: &str) -> Result<ProjectRecord> {
        let r = if key.starts_with("prj_") {
            self.store().get_project(key).await?
        } else {
            self.store().project_by_name(key).await?
        };
        match r {
            Some(r) if r.principal == p.name() => Ok(r),
            _ => Err(not_found(key)),
        }
    }

    /// The context a project run sees as `{{project...}}`.
    pub async fn project_context(&self, p: &Principal, key: &str) -> Result<Value> {
        let r = self.visible_project(p, key).await?;
        Ok(doc_of(&r)?.context())
    }

    pub async fn list_projects(
        &self,
        p: &Principal,
        status: Option<ProjectStatus>,
        kind: Option<&str>,
        tag: Option<&str>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<ProjectPage> {
        let limit = page_limit(&self.config().limits, limit)?;
        let after = cursor.map(decode_cursor).transpose()?;
        let mut rows = self
            .store()
            .list_projects(&ProjectQuery {
                principal: p.name(),
                status,
                kind,
                tag,
                after,
                limit: limit + 1,
            })
            .await?;
        let next = next_cursor(&mut rows, limit, |r| (r.created_at, &r.id));
        Ok(ProjectPage {
            projects: rows
                .iter()
                .map(|r| ProjectSummary {
                    project_id: r.id.clone(),
                    name: r.name.clone(),
                    kind: r.kind.clone(),
                    status: r.status.as_str().into(),
                    path: r.path.clone(),
                    template: r.template.clone(),
                    tags: serde_json::from_str(&r.tags).unwrap_or_default(),
                    created_at: iso(r.created_at),
                    updated_at: iso(r.updated_at),
                })
                .collect(),
            next_cursor: next,
        })
    }

    pub async fn get_project(&self, p: &Principal, key: &str) -> Result<ProjectView> {
        let r = self.visible_project(p, key).await?;
        self.project_view(&r).await
    }

    async fn project_view(&self, r: &ProjectRecord) -> Result<ProjectView> {
        let doc = doc_of(r)?;
        let runs = self
            .store()
            .list_runs(&RunQuery {
                principal: &r.principal,
                session_id: None,
                status: None,
                workflow_name: None,
                parent_run_id: None,
                project_id: Some(&r.id),
                after: None,
                limit: 10_000,
            })
            .await?;
        let active = runs.iter().filter(|x| !x.status.is_final()).count();
        let recent: Vec<RunSummary> = runs
            .iter()
            .rev()
            .take(10)
            .rev()
            .map(super::workflows::run_summary)
            .collect();
        let mut docs = Vec::new();
        for dir in std::iter::once(String::new()).chain(doc.nested_docs.iter().cloned()) {
            for f in ["README.md", "AGENTS.md"] {
                let rel = if dir.is_empty() {
                    f.to_string()
                } else {
                    format!("{dir}/{f}")
                };
                if Path::new(&doc.path).join(&rel).is_file() {
                    docs.push(rel);
                }
            }
        }
        Ok(ProjectView {
            project_id: doc.id,
            name: doc.name,
            description: doc.description,
            kind: doc.kind,
            status: doc.status.as_str().into(),
            version: doc.version,
            path: doc.path,
            template: doc.template,
            author: doc.author,
            tags: doc.tags,
            config: doc.config,
            workflows: doc.workflows,
            active_workflows: active,
            required_modules: doc.required_modules,
            created_at: doc.created_at,
            updated_at: doc.updated_at,
            milestones: doc.milestones,
            metrics: doc.metrics,
            docs,
            recent_runs: recent,
        })
    }

    /// Write a changed project to its folder, then to the Store.
    async fn save_project(&self, r: &ProjectRecord, doc: &mut ProjectDoc) -> Result<()> {
        let now = now_ms();
        doc.updated_at = iso(now);
        let path = Path::new(&doc.path).join(META_FILE);
        files::write_json(&path, &*doc)
            .map_err(|e| io_error("the project metadata could not be written", e))?;
        self.store()
            .update_project(&record_of(doc, r.created_at, now)?)
            .await?;
        Ok(())
    }

    pub async fn generate_project_docs(
        &self,
        p: &Principal,
        key: &str,
    ) -> Result<(String, DocReport)> {
        let r = self.visible_project(p, key).await?;
        let doc = doc_of(&r)?;
        let templates = DocTemplates::lookup(&self.templates().dirs, doc.template.as_deref());
        let root = PathBuf::from(&doc.path);
        let report = tokio::task::spawn_blocking(move || doc.generate_docs(&root, &templates))
            .await
            .map_err(|e| Error::internal(e.to_string()))?
            .map_err(|e| io_error("the docs could not be written", e))?;
        Ok((r.id, report))
    }

    pub async fn manage_project(&self, p: &Principal, key: &str, op: Operation) -> Result<Managed> {
        let r = self.visible_project(p, key).await?;
        let mut doc = doc_of(&r)?;
        let (name, result) = match op {
            Operation::Status => {
                let v = self.project_view(&r).await?;
                (
                    "status",
                    json!({
                        "name": v.name, "status": v.status, "type": v.kind, "version": v.version,
                        "path": v.path, "workflows": v.workflows.len(), "active_workflows": v.active_workflows,
                        "required_modules": v.required_modules, "created_at": v.created_at,
                        "updated_at": v.updated_at, "milestones": v.milestones, "metrics": v.metrics,
                    }),
                )
            }
            Operation::Update {
                description,
                tags,
                status,
                version,
                config,
            } => {
                if description.is_none()
                    && tags.is_none()
                    && status.is_none()
                    && version.is_none()
                    && config.is_none()
                {
                    return Err(Error::invalid(
                        "update needs at least one of description, tags, status, version, config",
                        "Pass the fields to change.",
                    ));
                }
                if let Some(t) = &tags {
                    check_tags(t)?;
                }
                if let Some(d) = description {
                    doc.description = d;
                }
                if let Some(t) = tags {
                    doc.tags = t;
                }
                if let Some(s) = status {
                    doc.status = s;
                }
                if let Some(v) = version {
                    doc.version = v;
                }
                if let Some(c) = config {
                    let mut merged = Value::Object(std::mem::take(&mut doc.config));
                    deep_merge(&mut merged, &Value::Object(c));
                    doc.config = match merged {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    };
                }
                self.save_project(&r, &mut doc).await?;
                let r = self.visible_project(p, &r.id).await?;
                (
                    "update",
                    serde_json::to_value(self.project_view(&r).await?)
                        .map_err(|e| Error::internal(e.to_string()))?,
                )
            }
            Operation::Milestone { name, data } => {
                if name.trim().is_empty() || name.chars().count() > 128 {
                    return Err(Error::invalid(
                        "a milestone needs a name of 1-128 characters",
                        "Pass milestone_name.",
                    ));
                }
                // A copy: the caller's data is not changed.
                let mut m = data.clone();
                m.insert("completed_at".into(), Value::String(iso(now_ms())));
                doc.milestones
                    .insert(name.clone(), Value::Object(m.clone()));
                self.save_project(&r, &mut doc).await?;
                ("milestone", json!({"name": name, "milestone": m}))
            }
            Operation::Metrics { metrics } => {
                if let Some(m) = metrics {
                    for (k, v) in m {
                        doc.metrics.insert(k, v);
                    }
                    self.save_project(&r, &mut doc).await?;
                }
                ("metrics", Value::Object(doc.metrics.clone()))
            }
            Operation::Archive => {
                let archives = self
                    .config()
                    .archives_dir()
                    .map_err(|e| Error::internal(format!("no archives folder: {e}")))?;
                let dir = PathBuf::from(&doc.path);
                let name = doc.name.clone();
                let (path, bytes) =
                    tokio::task::spawn_blocking(move || files::archive(&dir, &name, &archives))
                        .await
                        .map_err(|e| Error::internal(e.to_string()))?
                        .map_err(|e| io_error("the archive could not be written", e))?;
                doc.status = ProjectStatus::Archived;
                self.save_project(&r, &mut doc).await?;
                (
                    "archive",
                    json!({"archive_path": path.display().to_string(), "bytes": bytes, "files_kept": true}),
                )
            }
            Operation::Delete { confirm } => {
                if !confirm {
                    return Err(Error::invalid(
                        "delete removes the project's folder and record; it needs confirm: true",
                        "Call again with confirm: true, or archive the project instead.",
                    ));
                }
                let dir = PathBuf::from(&doc.path);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .map_err(|e| io_error("the project folder could not be deleted", e))?;
                }
                self.store().delete_project(&r.id).await?;
                return Ok(Managed {
                    operation: "delete".into(),
                    project_id: r.id,
                    project_status: "deleted".into(),
                    result: json!({"deleted": true, "path": doc.path}),
                });
            }
        };
        Ok(Managed {
            operation: name.into(),
            project_id: r.id,
            project_status: doc.status.as_str().into(),
            result,
        })
    }

    /// Register projects found in the roots that the Store does not know
    /// (created by another server, or restored from a backup).
    pub async fn register_projects_on_disk(&self) -> Result<usize> {
        let mut n = 0;
        for root in self.project_roots()? {
            let Ok(entries) = std::fs::read_dir(&root) else {
                continue;
            };
            for e in entries.flatten() {
                let dir = e.path();
                if !dir.join(META_FILE).is_file() {
                    continue;
                }
                let mut doc = match files::read_doc(&dir) {
                    Ok(d) => d,
                    Err(err) => {
                        tracing::warn!(path = %dir.display(), error = %err, "unreadable project metadata; not registered");
                        continue;
                    }
                };
                if self.store().project_by_name(&doc.name).await?.is_some()
                    || self.store().get_project(&doc.id).await?.is_some()
                {
                    continue;
                }
                doc.path = dir.display().to_string();
                let now = now_ms();
                self.store()
                    .insert_project(&record_of(&doc, now, now)?)
                    .await?;
                tracing::info!(project = %doc.id, name = %doc.name, "project found on disk registered");
                n += 1;
            }
        }
        Ok(n)
    }
}

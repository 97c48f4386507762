//! Project tools: templates, creating a project from one, reading and
//! listing projects, lifecycle operations, and regenerating the docs.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::engine::projects::docs::DocReport;
use crate::engine::projects::{
    CreatedProject, Managed, NewProject, Operation, ProjectPage, ProjectRun, ProjectView,
    TemplateList, TemplateView,
};
use crate::error::Error;
use crate::server::{MyrmexServer, args::Args, principal};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectArgs {
    /// The project's name (names its folder): letters, digits, `_`, `-`, `.`.
    #[serde(default)]
    pub name: Option<String>,
    /// The original's spelling of `name`.
    #[serde(default)]
    pub project_name: Option<String>,
    /// Template to scaffold from (list_templates); omit for an empty `custom` project.
    #[serde(default)]
    pub template: Option<String>,
    /// The original's spelling of `template`.
    #[serde(default)]
    pub template_name: Option<String>,
    /// Folder for the project, inside a projects root (relative to the first); default `<root>/<name>`.
    #[serde(default)]
    pub path: Option<String>,
    /// The original's spelling of `path`.
    #[serde(default)]
    pub project_path: Option<String>,
    /// What the project is (default: the template's description).
    #[serde(default)]
    pub description: Option<String>,
    /// Who made it (shown in the README).
    #[serde(default)]
    pub author: Option<String>,
    /// Labels for list_projects.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Deep-merged into the template's default_config (objects merge key by key).
    #[serde(default)]
    pub config_overrides: Option<Map<String, Value>>,
    /// true: run the template's first workflow for the new project; a name: run that workflow (the original's form). Waits briefly for it.
    #[serde(default)]
    pub execute_workflow: ExecuteWorkflow,
    /// Parameters of that workflow.
    #[serde(default)]
    pub workflow_parameters: Map<String, Value>,
    /// Session of the workflow run; omit for your default session.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// Exactly one of two spellings.
fn one_of(
    a: Option<String>,
    b: Option<String>,
    names: (&str, &str),
) -> Result<Option<String>, Error> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => Err(Error::invalid(
            format!("{} and {} differ ('{x}' and '{y}')", names.0, names.1),
            format!("Give {} only (or both with the same value).", names.0),
        )),
        (Some(x), _) | (None, Some(x)) => Ok(Some(x)),
        (None, None) => Ok(None),
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetTemplateArgs {
    /// The template's name.
    pub template_name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListProjectsArgs {
    /// Only projects with this status.
    #[serde(default)]
    pub status: Option<ProjectStatus>,
    /// Only projects of this type (e.g. data_pipeline).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Only projects with this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `execute_workflow`: a flag or a workflow's name.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(inline)]
pub enum ExecuteWorkflow {
    Flag(bool),
    Name(String),
}

impl Default for ExecuteWorkflow {
    fn default() -> Self {
        Self::Flag(false)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectStatus {
    Planning,
    Active,
    Paused,
    Completed,
    Archived,
    Failed,
}

impl From<ProjectStatus> for crate::model::ProjectStatus {
    fn from(s: ProjectStatus) -> Self {
        use crate::model::ProjectStatus as M;
        match s {
            ProjectStatus::Planning => M::Planning,
            ProjectStatus::Active => M::Active,
            ProjectStatus::Paused => M::Paused,
            ProjectStatus::Completed => M::Completed,
            ProjectStatus::Archived => M::Archived,
            ProjectStatus::Failed => M::Failed,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectArgs {
    /// The project's id (`prj_...`) or name.
    pub project: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum OperationName {
    /// The original status fields.
    Status,
    /// Change description, tags, status, version and/or config (deep-merged).
    Update,
    /// Record milestone_name with data and a completed_at timestamp.
    Milestone,
    /// Merge metrics into the project's metrics (or read them).
    Metrics,
    /// Write <archives>/<name>.tar.gz and set status archived; files are kept.
    Archive,
    /// Delete the folder and the record; needs confirm: true.
    Delete,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManageProjectArgs {
    /// The project's id (`prj_...`) or name (the original's `project_name` is accepted too).
    #[serde(alias = "project_name")]
    pub project: String,
    /// status, update, milestone, metrics, archive or delete.
    pub operation: OperationName,
    /// update: new description.
    #[serde(default)]
    pub description: Option<String>,
    /// update: new tags (replace the old ones).
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// update: new status.
    #[serde(default)]
    pub status: Option<ProjectStatus>,
    /// update: new version.
    #[serde(default)]
    pub version: Option<String>,
    /// update: merged into the config (objects key by key).
    #[serde(default)]
    pub config: Option<Map<String, Value>>,
    /// milestone: its name.
    #[serde(default)]
    pub milestone_name: Option<String>,
    /// milestone: its data (stored with completed_at).
    #[serde(default)]
    pub data: Option<Map<String, Value>>,
    /// metrics: values merged into the project's metrics.
    #[serde(default)]
    pub metrics: Option<Map<String, Value>>,
    /// delete: must be true.
    #[serde(default)]
    pub confirm: bool,
    /// The original module's form: the operation's fields in one object, e.g. {"milestone_name": "v1", "data": {...}}.
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

crate::model::vocab::spelled!(OperationName {
    Status => "status",
    Update => "update",
    Milestone => "milestone",
    Metrics => "metrics",
    Archive => "archive",
    Delete => "delete",
});

impl ManageProjectArgs {
    /// The fields of `parameters` moved to the top level, as if given there
    /// (a field given both ways, or one the tool does not have, is refused).
    fn lift_parameters(mut self) -> Result<Self, Error> {
        let Some(params) = self.parameters.take() else {
            return Ok(self);
        };
        let mut top = match serde_json::to_value(&self) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(Error::internal(
                    "manage_project arguments did not serialize",
                ));
            }
        };
        let mut twice = Vec::new();
        for (k, v) in params {
            if matches!(
                k.as_str(),
                "project" | "project_name" | "operation" | "parameters"
            ) {
                return Err(Error::invalid(
                    format!("parameters.{k} is not an operation field"),
                    format!("Pass {k} at the top level."),
                ));
            }
            if top
                .get(&k)
                .is_some_and(|x| !x.is_null() && *x != Value::Bool(false))
            {
                twice.push(k);
                continue;
            }
            top.insert(k, v);
        }
        if !twice.is_empty() {
            return Err(Error::invalid(
                format!(
                    "{} given both at the top level and in parameters",
                    twice.join(", ")
                ),
                "Give each field once.",
            ));
        }
        crate::model::bounds::parse_value::<Self>(Value::Object(top)).map_err(|mut e| {
            e.message = format!("in parameters: {}", e.message);
            e
        })
    }

    fn operation(self) -> Result<Operation, Error> {
        use OperationName as N;
        let given: Vec<&str> = [
            ("description", self.description.is_some(), N::Update),
            ("tags", self.tags.is_some(), N::Update),
            ("status", self.status.is_some(), N::Update),
            ("version", self.version.is_some(), N::Update),
            ("config", self.config.is_some(), N::Update),
            (
                "milestone_name",
                self.milestone_name.is_some(),
                N::Milestone,
            ),
            ("data", self.data.is_some(), N::Milestone),
            ("metrics", self.metrics.is_some(), N::Metrics),
            ("confirm", self.confirm, N::Delete),
        ]
        .into_iter()
        .filter(|(_, set, op)| *set && *op != self.operation)
        .map(|(name, _, _)| name)
        .collect();
        if !given.is_empty() {
            return Err(Error::invalid(
                format!(
                    "{} not used by operation {}",
                    given.join(", "),
                    self.operation.as_str()
                ),
                "Pass only the fields of the operation: update (description, tags, status, version, config), milestone (milestone_name, data), metrics (metrics), delete (confirm).",
            ));
        }
        Ok(match self.operation {
            N::Status => Operation::Status,
            N::Update => Operation::Update {
                description: self.description,
                tags: self.tags,
                status: self.status.map(Into::into),
                version: self.version,
                config: self.config,
            },
            N::Milestone => Operation::Milestone {
                name: self.milestone_name.ok_or_else(|| {
                    Error::invalid(
                        "milestone needs milestone_name",
                        "Pass milestone_name (and data).",
                    )
                })?,
                data: self.data.unwrap_or_default(),
            },
            N::Metrics => Operation::Metrics {
                metrics: self.metrics,
            },
            N::Archive => Operation::Archive,
            N::Delete => Operation::Delete {
                confirm: self.confirm,
            },
        })
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DocsGenerated {
    pub project_id: String,
    #[serde(flatten)]
    pub report: DocReport,
}

#[tool_router(router = projects_router, vis = "pub(crate)")]
impl MyrmexServer {
    #[tool(
        name = "create_project",
        description = "Create a project from a template (or empty): folders, files and README/AGENTS docs built atomically inside a projects root, metadata in .myrmex/project.json; optionally runs one of its workflows. Answers project_id, project_path, files_created, workflow_result, next_steps.",
        annotations(
            title = "Create project",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn create_project(
        &self,
        Parameters(args): Parameters<Args<CreateProjectArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<super::Answer<CreatedProject>>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let name = one_of(a.name, a.project_name, ("name", "project_name"))?
            .ok_or_else(|| Error::invalid("name is required", "Pass name (or project_name)."))?;
        let req = NewProject {
            name,
            template: one_of(a.template, a.template_name, ("template", "template_name"))?,
            path: one_of(a.path, a.project_path, ("path", "project_path"))?,
            description: a.description,
            author: a.author,
            tags: a.tags,
            config_overrides: a.config_overrides,
            execute_workflow: match a.execute_workflow {
                ExecuteWorkflow::Flag(false) => ProjectRun::Nothing,
                ExecuteWorkflow::Flag(true) => ProjectRun::First,
                ExecuteWorkflow::Name(w) => ProjectRun::Named(w),
            },
            workflow_parameters: a.workflow_parameters,
            session_id: a.session_id,
        };
        Ok(Json(super::Answer::done(
            self.engine.create_project(&p, req).await?,
        )))
    }

    #[tool(
        name = "list_templates",
        description = "List the project templates (shipped and from template_dirs) with type, workflows and required modules; invalid ones are listed with their problems.",
        annotations(
            title = "List templates",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_templates(
        &self,
        Parameters(args): Parameters<Args<NoArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TemplateList>, Error> {
        principal(&ctx)?;
        args.parse()?;
        Ok(Json(self.engine.list_templates()))
    }

    #[tool(
        name = "get_template",
        description = "Read a project template in full: folders, files, workflows, modules, default_config and documentation_config.",
        annotations(
            title = "Get template",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_template(
        &self,
        Parameters(args): Parameters<Args<GetTemplateArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TemplateView>, Error> {
        principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(self.engine.get_template(&a.template_name)?))
    }

    #[tool(
        name = "list_projects",
        description = "List your projects, oldest first, filtered by status, type or tag. Paginated.",
        annotations(
            title = "List projects",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_projects(
        &self,
        Parameters(args): Parameters<Args<ListProjectsArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<super::Answer<ProjectPage>>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(super::Answer::done(
            self.engine
                .list_projects(
                    &p,
                    a.status.map(Into::into),
                    a.kind.as_deref(),
                    a.tag.as_deref(),
                    a.cursor.as_deref(),
                    a.limit,
                )
                .await?,
        )))
    }

    #[tool(
        name = "get_project",
        description = "Read a project: status, type, version, path, config, workflows, active runs, milestones, metrics, its docs and its recent workflow runs.",
        annotations(
            title = "Get project",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_project(
        &self,
        Parameters(args): Parameters<Args<ProjectArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ProjectView>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        Ok(Json(self.engine.get_project(&p, &a.project).await?))
    }

    #[tool(
        name = "manage_project",
        description = "Operate on a project: status, update (description, tags, status, version, config), milestone, metrics, archive (tar.gz, status archived, files kept) or delete (folder and record; confirm: true).",
        annotations(
            title = "Manage project",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn manage_project(
        &self,
        Parameters(args): Parameters<Args<ManageProjectArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<super::Answer<Managed>>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let project = a.project.clone();
        let op = a.lift_parameters()?.operation()?;
        Ok(Json(super::Answer::done(
            self.engine.manage_project(&p, &project, op).await?,
        )))
    }

    #[tool(
        name = "generate_docs",
        description = "Regenerate a project's README.md and AGENTS.md files (root and nested folders, with parent and child links). Files whose marker line was removed are left alone (listed as kept).",
        annotations(
            title = "Generate docs",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn generate_docs(
        &self,
        Parameters(args): Parameters<Args<ProjectArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<DocsGenerated>, Error> {
        let p = principal(&ctx)?;
        let a = args.parse()?;
        let (project_id, report) = self.engine.generate_project_docs(&p, &a.project).await?;
        Ok(Json(DocsGenerated { project_id, report }))
    }
}

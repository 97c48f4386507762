//! MCP prompts (`plan_workflow`, `work_the_task_graph`, `kickoff_project`)
//! and completions of their arguments. Prompts are built from live state: the
//! modules that are enabled, the caller's workflows, task graph, templates and
//! projects.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CompleteRequestParams, CompleteResult, CompletionInfo, GetPromptResult, PromptMessage,
    Reference, Role,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, prompt, prompt_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{MyrmexServer, principal};
use crate::engine::Principal;
use crate::engine::workflows::spec::WorkflowSpec;
use crate::error::Error;

/// A tool error as a protocol error of a prompt, completion or resource request.
pub(super) fn protocol(e: Error) -> ErrorData {
    ErrorData::invalid_params(
        format!("{}: {}", e.code.as_str(), e.message),
        Some(json!({"code": e.code.as_str(), "hint": e.hint})),
    )
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PlanWorkflowArgs {
    /// What the workflow should achieve.
    pub goal: String,
    /// Limits to respect (time, resources, what must not happen).
    #[serde(default)]
    pub constraints: Option<String>,
    /// An existing workflow to start from (completions offer your workflows).
    #[serde(default)]
    pub base_workflow: Option<String>,
    /// A project the workflow works on (completions offer your projects).
    #[serde(default)]
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WorkTheGraphArgs {
    /// The session whose graph to drain (default: your default session; completions offer yours).
    #[serde(default)]
    pub session_id: Option<String>,
    /// The name you claim tasks under.
    #[serde(default)]
    pub agent: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct KickoffArgs {
    /// What the project is for.
    pub goal: String,
    /// A template to use (completions offer the templates); omitted: choose one.
    #[serde(default)]
    pub template: Option<String>,
    /// The new project's name.
    #[serde(default)]
    pub project_name: Option<String>,
}

fn user(text: String) -> Vec<PromptMessage> {
    vec![PromptMessage::new_text(Role::User, text)]
}

#[prompt_router(vis = "pub(super)")]
impl MyrmexServer {
    /// Turn a goal into a valid workflow definition using the enabled modules.
    #[prompt(
        name = "plan_workflow",
        description = "Turn a goal and constraints into a valid myrmex workflow definition, using only the modules that are enabled; the definition schema is inline."
    )]
    async fn plan_workflow(
        &self,
        Parameters(a): Parameters<PlanWorkflowArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResult, ErrorData> {
        let p = principal(&ctx).map_err(protocol)?;
        let mut text = format!("Goal: {}\n", a.goal);
        if let Some(c) = &a.constraints {
            text.push_str(&format!("Constraints: {c}\n"));
        }
        text.push_str(
            "\nDesign a myrmex workflow: a DAG of steps, each running module.action with parameters. \
             Parameters may reference {{params.<name>}}, {{steps.<step>.output.<path>}}, {{run.id}} \
             and, in a project run, {{project.path}}. Use dependencies for order, max_retries and \
             timeout_seconds where a step can fail or hang, and `when` to skip steps.\n\n\
             Enabled modules and their actions (required parameters in brackets):\n",
        );
        for m in self.engine.registry().module_infos() {
            if m.disabled.is_some() {
                continue;
            }
            for s in &m.actions {
                let required: Vec<&str> = s.params_schema["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                text.push_str(&format!(
                    "- {}.{} [{}]: {}\n",
                    s.module,
                    s.action,
                    required.join(", "),
                    s.description
                ));
            }
        }
        let disabled: Vec<String> = self
            .engine
            .registry()
            .module_infos()
            .into_iter()
            .filter_map(|m| m.disabled.map(|why| format!("{} ({why})", m.name)))
            .collect();
        if !disabled.is_empty() {
            text.push_str(&format!("Disabled (do not use): {}\n", disabled.join("; ")));
        }
        if let Some(name) = &a.base_workflow {
            let w = self
                .engine
                .get_workflow(&p, None, name)
                .await
                .map_err(protocol)?;
            text.push_str(&format!(
                "\nStart from workflow '{name}' (version {}):\n{}\n",
                w.version,
                serde_json::to_string(&w.definition).unwrap_or_default()
            ));
        }
        if let Some(project) = &a.project {
            let pr = self
                .engine
                .get_project(&p, project)
                .await
                .map_err(protocol)?;
            text.push_str(&format!(
                "\nThe workflow runs for project '{}' (execute_workflow with project: \"{}\"): its folder is {{{{project.path}}}} = {}; relative paths of fs and shell steps resolve there.\n",
                pr.name, pr.name, pr.path
            ));
        }
        let schema =
            serde_json::to_string(&schemars::schema_for!(WorkflowSpec)).unwrap_or_default();
        text.push_str(&format!(
            "\nThe definition must match this JSON Schema (the input of create_workflow):\n{schema}\n\n\
             Then: validate_workflow with the definition and fix every problem it reports; \
             create_workflow; execute_workflow (wait_seconds up to 50) and follow the run with \
             get_workflow_run."
        ));
        Ok(GetPromptResult::new(user(text))
            .with_description(format!("Plan a workflow for: {}", a.goal)))
    }

    /// How to drain a task graph with next_task / complete_task.
    #[prompt(
        name = "work_the_task_graph",
        description = "How to drain a session's task graph as an agent: claim with next_task, do the work, report with complete_task or fail_task, renew long leases; with the graph's current counts."
    )]
    async fn work_the_task_graph(
        &self,
        Parameters(a): Parameters<WorkTheGraphArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResult, ErrorData> {
        let p = principal(&ctx).map_err(protocol)?;
        let session = self
            .engine
            .sessions()
            .resolve(&p, a.session_id.as_deref())
            .await
            .map_err(protocol)?;
        let graph = self
            .engine
            .tasks()
            .graph(&session, None, 4096)
            .await
            .map_err(protocol)?;
        let agent = a.agent.unwrap_or_else(|| "agent".into());
        let sid = &session.session_id;
        let counts: Vec<String> = graph
            .counts
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        let text = format!(
            "You work through the task graph of session {sid} as '{agent}'. It holds {} task(s) ({}).\n\n\
             Repeat until next_task answers no task:\n\
             1. next_task {{\"session_id\": \"{sid}\", \"agent\": \"{agent}\"}} claims the most urgent ready \
             task whose dependencies are done; keep its task_id and lease_id. The answer's counts say what \
             is blocked, claimed by others or waiting for resources when there is nothing for you.\n\
             2. Do the work the task's description, parameters and its dependencies' results ask for \
             (get_task shows a task in full).\n\
             3. complete_task with task_id, lease_id and a result (JSON) or fail_task with an error; \
             dependents become ready. A lease ends after lease_seconds: renew_task_lease before that on \
             long work, otherwise the task goes to another agent.\n\
             4. create_tasks adds work you discover (with dependencies by name).\n\n\
             When next_task answers nothing while tasks are still claimed by others or blocked, wait a \
             little and ask again; get_task_graph shows the whole graph.",
            graph.total_tasks,
            if counts.is_empty() {
                "none yet".into()
            } else {
                counts.join(", ")
            },
        );
        Ok(GetPromptResult::new(user(text))
            .with_description(format!("Drain the task graph of session {sid}")))
    }

    /// Template choice and first workflow of a new project.
    #[prompt(
        name = "kickoff_project",
        description = "Start a project: choose a template for the goal, create the project with create_project, generate its docs and run its first workflow."
    )]
    async fn kickoff_project(
        &self,
        Parameters(a): Parameters<KickoffArgs>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResult, ErrorData> {
        let mut text = format!("Goal of the new project: {}\n\n", a.goal);
        let name = a.project_name.unwrap_or_else(|| "<a short name>".into());
        match &a.template {
            Some(t) => {
                let v = self.engine.get_template(t).map_err(protocol)?;
                text.push_str(&format!(
                    "Template '{t}': {}\nIts workflows: {}\nIts configuration (override with config_overrides): {}\n",
                    v.template.description,
                    v.template.workflows.join(", "),
                    Value::Object(v.template.default_config.clone())
                ));
            }
            None => {
                text.push_str("Choose the template that fits the goal best:\n");
                for t in self.engine.list_templates().templates {
                    if t.valid {
                        text.push_str(&format!(
                            "- {} ({}): {} Workflows: {}.\n",
                            t.name,
                            t.kind,
                            t.description,
                            t.workflows.join(", ")
                        ));
                    }
                }
            }
        }
        text.push_str(&format!(
            "\nThen:\n1. create_project {{\"project_name\": \"{name}\", \"template_name\": \"{}\", \"description\": ...}} \
             (add execute_workflow to run one of the template's workflows right away).\n\
             2. generate_docs keeps README/AGENTS docs in step with the folders.\n\
             3. execute_workflow {{\"workflow_name\": ..., \"project\": \"{name}\"}} runs a workflow in the \
             project's folder; get_project shows its runs and docs; manage_project records milestones.",
            a.template.as_deref().unwrap_or("<the template>")
        ));
        Ok(GetPromptResult::new(user(text))
            .with_description(format!("Kick off a project for: {}", a.goal)))
    }
}

impl MyrmexServer {
    /// `completion/complete`: names for prompt arguments, best matches first.
    pub(super) async fn completions(
        &self,
        req: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let p = principal(&ctx).map_err(protocol)?;
        let arg = req.argument.name.as_str();
        let candidates = match &req.r#ref {
            Reference::Prompt(prompt) => match (prompt.name.as_str(), arg) {
                ("plan_workflow", "base_workflow") => self.workflow_names(&p).await?,
                ("plan_workflow", "project") => self.project_names(&p).await?,
                ("work_the_task_graph", "session_id") => self.session_ids(&p).await?,
                ("kickoff_project", "template") => self.template_names(),
                _ => Vec::new(),
            },
            Reference::Resource(r) => match (r.uri.as_str(), arg) {
                ("myrmex://workflows/{name}", "name") => self.workflow_names(&p).await?,
                ("myrmex://projects/{project_id}", "project_id") => self.project_ids(&p).await?,
                ("myrmex://sessions/{session_id}", "session_id") => self.session_ids(&p).await?,
                ("myrmex://templates/{name}", "name") => self.template_names(),
                ("myrmex://runs/{run_id}", "run_id") => self.run_ids(&p).await?,
                ("myrmex://tasks/{task_id}", "task_id") => self.task_ids(&p).await?,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        let values = rank(&req.argument.value, candidates);
        let total = values.len();
        let shown: Vec<String> = values
            .into_iter()
            .take(CompletionInfo::MAX_VALUES)
            .collect();
        let has_more = total > shown.len();
        let info = CompletionInfo::with_pagination(shown, Some(total as u32), has_more)
            .map_err(|e| ErrorData::internal_error(e, None))?;
        Ok(CompleteResult::new(info))
    }

    async fn workflow_names(&self, p: &Principal) -> Result<Vec<String>, ErrorData> {
        Ok(self
            .all_workflows(p)
            .await
            .map_err(protocol)?
            .into_iter()
            .map(|w| w.name)
            .collect())
    }

    /// Every workflow the caller can run (at most 10,000).
    pub(super) async fn all_workflows(
        &self,
        p: &Principal,
    ) -> Result<Vec<crate::engine::workflows::WorkflowSummary>, Error> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .engine
                .list_workflows(p, None, cursor.as_deref(), None)
                .await?;
            out.extend(page.workflows);
            match page.next_cursor {
                Some(c) if out.len() < 10_000 => cursor = Some(c),
                _ => return Ok(out),
            }
        }
    }

    /// Every project of the caller (at most 10,000).
    pub(super) async fn all_projects(
        &self,
        p: &Principal,
    ) -> Result<Vec<crate::engine::projects::ProjectSummary>, Error> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .engine
                .list_projects(p, None, None, None, cursor.as_deref(), None)
                .await?;
            out.extend(page.projects);
            match page.next_cursor {
                Some(c) if out.len() < 10_000 => cursor = Some(c),
                _ => return Ok(out),
            }
        }
    }

    fn template_names(&self) -> Vec<String> {
        self.engine
            .list_templates()
            .templates
            .into_iter()
            .filter(|t| t.valid)
            .map(|t| t.name)
            .collect()
    }

    /// The caller's most recent runs (one page), newest first.
    async fn run_ids(&self, p: &Principal) -> Result<Vec<String>, ErrorData> {
        let page = self
            .engine
            .list_workflow_runs(
                p,
                None,
                None,
                None,
                None,
                Some(self.engine.config().limits.max_page_size),
            )
            .await
            .map_err(protocol)?;
        Ok(page.runs.into_iter().rev().map(|r| r.run_id).collect())
    }

    /// Tasks of the caller's default session (one page).
    async fn task_ids(&self, p: &Principal) -> Result<Vec<String>, ErrorData> {
        let session = self
            .engine
            .sessions()
            .resolve(p, None)
            .await
            .map_err(protocol)?;
        let page = self
            .engine
            .tasks()
            .list(
                &session,
                &Default::default(),
                None,
                self.engine.config().limits.max_page_size,
                false,
            )
            .await
            .map_err(protocol)?;
        Ok(page
            .tasks
            .into_iter()
            .filter_map(|t| t["task_id"].as_str().map(String::from))
            .collect())
    }

    async fn project_ids(&self, p: &Principal) -> Result<Vec<String>, ErrorData> {
        let all = self.all_projects(p).await.map_err(protocol)?;
        Ok(all.into_iter().map(|pr| pr.project_id).collect())
    }

    async fn project_names(&self, p: &Principal) -> Result<Vec<String>, ErrorData> {
        let all = self.all_projects(p).await.map_err(protocol)?;
        Ok(all.into_iter().map(|pr| pr.name).collect())
    }

    async fn session_ids(&self, p: &Principal) -> Result<Vec<String>, ErrorData> {
        let page = self
            .engine
            .sessions()
            .list(
                p,
                crate::engine::sessions::ListSessions {
                    status: Some(crate::engine::sessions::SessionStatus::Active),
                    limit: Some(self.engine.config().limits.max_page_size),
                    cursor: None,
                },
            )
            .await
            .map_err(protocol)?;
        Ok(page.sessions.into_iter().map(|s| s.session_id).collect())
    }
}

/// Candidates that start with `typed` (case-insensitive) first, then those
/// that contain it, each group sorted.
fn rank(typed: &str, mut candidates: Vec<String>) -> Vec<String> {
    let t = typed.to_lowercase();
    candidates.sort();
    candidates.dedup();
    let (mut starts, mut contains) = (Vec::new(), Vec::new());
    for c in candidates {
        let l = c.to_lowercase();
        if l.starts_with(&t) {
            starts.push(c);
        } else if l.contains(&t) {
            contains.push(c);
        }
    }
    starts.extend(contains);
    starts
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_matches_come_before_substring_matches() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            super::rank("de", c(&["build-and-test", "deploy", "Demo", "x"])),
            c(&["Demo", "deploy"])
        );
        assert_eq!(
            super::rank("test", c(&["build-and-test", "deploy"])),
            c(&["build-and-test"])
        );
        assert_eq!(super::rank("", c(&["b", "a"])), c(&["a", "b"]));
    }
}

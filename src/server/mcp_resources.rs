//! MCP resources: `myrmex://<kind>/<id>` for workflows, runs, tasks,
//! projects, templates and sessions, as JSON documents; resource templates;
//! a paginated list of the caller's concrete resources; completions of the
//! templates' variables.

use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};
use serde::Serialize;
use serde_json::json;

use super::{MyrmexServer, principal};
use crate::engine::Principal;
use crate::engine::sessions::{ListSessions, SessionStatus};
use crate::error::{Error, ErrorCode};

/// The resource kinds: URI template, name, what it holds.
pub const TEMPLATES: &[(&str, &str, &str)] = &[
    (
        "myrmex://workflows/{name}",
        "workflow",
        "A workflow definition with its plan and version.",
    ),
    (
        "myrmex://runs/{run_id}",
        "run",
        "A workflow run's live state: status, per-step states, outputs.",
    ),
    (
        "myrmex://tasks/{task_id}",
        "task",
        "A task of a task graph, in full.",
    ),
    (
        "myrmex://projects/{project_id}",
        "project",
        "A project's metadata, docs index and recent runs.",
    ),
    (
        "myrmex://templates/{name}",
        "template",
        "A project template.",
    ),
    (
        "myrmex://sessions/{session_id}",
        "session",
        "A session: its settings, status and counters.",
    ),
];

const PREFIX: &str = "myrmex://";

/// Split `myrmex://kind/id`.
fn parse(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix(PREFIX)?;
    let (kind, id) = rest.split_once('/')?;
    (!id.is_empty() && !id.contains('/')).then_some((kind, id))
}

fn read_error(uri: &str, e: Error) -> ErrorData {
    if matches!(
        e.code,
        ErrorCode::NotFound | ErrorCode::WorkflowNotFound | ErrorCode::TemplateNotFound
    ) {
        return ErrorData::resource_not_found(
            format!("{uri}: {}", e.message),
            Some(json!({"uri": uri, "code": e.code.as_str(), "hint": e.hint})),
        );
    }
    ErrorData::invalid_params(
        format!("{uri}: {}: {}", e.code.as_str(), e.message),
        Some(json!({"uri": uri, "code": e.code.as_str(), "hint": e.hint})),
    )
}

fn json_contents(uri: &str, v: &impl Serialize) -> Result<ResourceContents, Error> {
    let text = serde_json::to_string(v).map_err(|e| Error::internal(e.to_string()))?;
    Ok(ResourceContents::text(text, uri).with_mime_type("application/json"))
}

impl MyrmexServer {
    pub(super) fn resource_templates(&self) -> ListResourceTemplatesResult {
        ListResourceTemplatesResult::with_all_items(
            TEMPLATES
                .iter()
                .map(|(t, name, d)| {
                    ResourceTemplate::new(*t, *name)
                        .with_description(*d)
                        .with_mime_type("application/json")
                })
                .collect(),
        )
    }

    /// The caller's concrete resources (sessions, workflows, projects,
    /// templates), a page at a time.
    pub(super) async fn resource_list(
        &self,
        req: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let p = principal(&ctx).map_err(super::prompts::protocol)?;
        let all = self
            .all_resources(&p)
            .await
            .map_err(super::prompts::protocol)?;
        let from = match req.and_then(|r| r.cursor) {
            Some(c) => {
                crate::engine::workflows::decode_offset(&c).map_err(super::prompts::protocol)?
            }
            None => 0,
        };
        let size = self.engine.config().limits.default_page_size as usize;
        let end = (from + size).min(all.len());
        let mut r = ListResourcesResult::with_all_items(all[from.min(end)..end].to_vec());
        r.next_cursor = (end < all.len()).then(|| crate::engine::workflows::encode_offset(end));
        Ok(r)
    }

    async fn all_resources(&self, p: &Principal) -> Result<Vec<Resource>, Error> {
        let e = &self.engine;
        let mut out = Vec::new();
        let sessions = e
            .sessions()
            .list(
                p,
                ListSessions {
                    status: Some(SessionStatus::Active),
                    limit: Some(e.config().limits.max_page_size),
                    cursor: None,
                },
            )
            .await?;
        for s in sessions.sessions {
            out.push(
                Resource::new(format!("{PREFIX}sessions/{}", s.session_id), s.name)
                    .with_description("session")
                    .with_mime_type("application/json"),
            );
        }
        for w in self.all_workflows(p).await? {
            out.push(
                Resource::new(format!("{PREFIX}workflows/{}", w.name), w.name.clone())
                    .with_description(format!("workflow ({}): {}", w.source, w.description))
                    .with_mime_type("application/json"),
            );
        }
        for pr in self.all_projects(p).await? {
            out.push(
                Resource::new(format!("{PREFIX}projects/{}", pr.project_id), pr.name)
                    .with_description(format!("project ({})", pr.kind))
                    .with_mime_type("application/json"),
            );
        }
        for t in e.list_templates().templates {
            out.push(
                Resource::new(format!("{PREFIX}templates/{}", t.name), t.name.clone())
                    .with_description(format!("template: {}", t.description))
                    .with_mime_type("application/json"),
            );
        }
        Ok(out)
    }

    pub(super) async fn resource_read(
        &self,
        req: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResult, ErrorData> {
        let uri = req.uri.as_str();
        let p = principal(&ctx).map_err(super::prompts::protocol)?;
        self.read_as(&p, uri).await
    }

    /// Read a resource as `p`.
    async fn read_as(&self, p: &Principal, uri: &str) -> Result<ReadResourceResult, ErrorData> {
        let Some((kind, id)) = parse(uri) else {
            return Err(ErrorData::resource_not_found(
                format!("{uri} is not a myrmex resource"),
                Some(
                    json!({"uri": uri, "hint": "URIs look like myrmex://runs/run_...; resources/templates/list shows every kind."}),
                ),
            ));
        };
        let e = &self.engine;
        let no_wait = std::time::Duration::ZERO;
        let mut quiet = |_: usize, _: usize, _: String| {};
        let contents = match kind {
            "workflows" => lookup(uri, e.get_workflow(p, None, id).await),
            "runs" => lookup(
                uri,
                e.get_workflow_run(p, id, None, no_wait, &mut quiet).await,
            ),
            "tasks" => lookup(uri, e.tasks().get(e, p, id, None, no_wait).await),
            "projects" => lookup(uri, e.get_project(p, id).await),
            "templates" => lookup(uri, e.get_template(id)),
            "sessions" => lookup(uri, e.sessions().get(p, id).await),
            _ => {
                return Err(ErrorData::resource_not_found(
                    format!("{uri}: no resource kind '{kind}'"),
                    Some(
                        json!({"uri": uri, "hint": "Kinds: workflows, runs, tasks, projects, templates, sessions."}),
                    ),
                ));
            }
        };
        let contents = contents.map_err(|e| read_error(uri, e))?;
        let cap = e.config().limits.max_result_bytes;
        if let ResourceContents::TextResourceContents { text, .. } = &contents
            && text.len() > cap
        {
            return Err(read_error(
                uri,
                Error::new(
                    ErrorCode::ResultTooLarge,
                    format!(
                        "the resource is {} bytes; the limit is {cap} (limits.max_result_bytes)",
                        text.len()
                    ),
                    "Read it through its tool instead (get_workflow_run, get_task, get_project, ...), which pages and summarises.",
                ),
            ));
        }
        Ok(ReadResourceResult::new(vec![contents]))
    }
}

/// A lookup's value as JSON contents, or its error.
fn lookup<T: Serialize>(uri: &str, r: Result<T, Error>) -> Result<ResourceContents, Error> {
    json_contents(uri, &r?)
}

/// How often a subscription looks at its resources.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

impl MyrmexServer {
    /// What identifies a resource's state: for a run its status and each
    /// step's status and attempts (its clock fields move all the time), for
    /// the others their JSON. None when it cannot be read (gone, not visible).
    async fn fingerprint(&self, p: &Principal, uri: &str) -> Option<String> {
        if let Some(("runs", id)) = parse(uri) {
            let mut quiet = |_: usize, _: usize, _: String| {};
            let v = self
                .engine
                .get_workflow_run(p, id, None, std::time::Duration::ZERO, &mut quiet)
                .await
                .ok()?;
            let steps: Vec<String> = v
                .steps
                .iter()
                .map(|s| format!("{}:{}:{}", s.name, s.status, s.attempts))
                .collect();
            return Some(format!("{}|{}", v.status, steps.join(",")));
        }
        let r = self.read_as(p, uri).await.ok()?;
        serde_json::to_string(&r.contents).ok()
    }

    /// Watch `uris` for `p` until `stop`: `changed(uri)` on every change
    /// (false from it ends the watch: the client is gone).
    pub(super) async fn watch_resources<F, Fut>(
        &self,
        p: Principal,
        uris: Vec<String>,
        stop: tokio_util::sync::CancellationToken,
        mut changed: F,
    ) where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut last: Vec<Option<String>> = Vec::new();
        for u in &uris {
            last.push(self.fingerprint(&p, u).await);
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(WATCH_EVERY) => {}
            }
            for (i, u) in uris.iter().enumerate() {
                let now = self.fingerprint(&p, u).await;
                if now != last[i] {
                    last[i] = now;
                    if !changed(u.clone()).await {
                        return;
                    }
                }
            }
        }
    }

    /// The set of the caller's listed resources, to notice additions and removals.
    async fn listed(&self, p: &Principal) -> Option<Vec<String>> {
        let mut v: Vec<String> = self
            .all_resources(p)
            .await
            .ok()?
            .into_iter()
            .map(|r| r.uri)
            .collect();
        v.sort();
        Some(v)
    }

    /// `resources/list_changed` on every change of the listed set, until `stop`.
    pub(super) async fn watch_list<F, Fut>(
        &self,
        p: Principal,
        stop: tokio_util::sync::CancellationToken,
        mut changed: F,
    ) where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut last = self.listed(&p).await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(WATCH_EVERY * 5) => {}
            }
            let now = self.listed(&p).await;
            if now.is_some() && now != last {
                last = now;
                if !changed().await {
                    return;
                }
            }
        }
    }

    /// Whether `uri` names a resource `p` may read now.
    pub(super) async fn readable(&self, p: &Principal, uri: &str) -> Result<(), ErrorData> {
        self.read_as(p, uri).await.map(|_| ())
    }
}

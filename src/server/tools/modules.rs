//! `list_modules`: what steps and tasks can run, with each action's parameter
//! and output schemas, and which modules the server's policy enables.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, ErrorCode};
use crate::server::{MyrmexServer, args::Args, principal};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListModulesArgs {
    /// Only this module (e.g. `shell`).
    #[serde(default)]
    pub module: Option<String>,
    /// Include each action's parameter/output JSON Schemas (default: only with `module`).
    #[serde(default)]
    pub include_schemas: Option<bool>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ModuleList {
    pub modules: Vec<ModuleEntry>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ModuleEntry {
    pub name: String,
    pub description: String,
    /// Whether steps and tasks may use it now.
    pub enabled: bool,
    /// When disabled: why, and the configuration key that enables it.
    pub enable_hint: Option<String>,
    pub actions: Vec<ActionEntry>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ActionEntry {
    /// `module.action`, as a step's `action` field may be written.
    pub name: String,
    pub description: String,
    /// JSON Schema of the step's `parameters` (with include_schemas).
    #[schemars(schema_with = "any_object")]
    pub parameters_schema: Option<Value>,
    /// JSON Schema of the action's output (with include_schemas).
    #[schemars(schema_with = "any_object")]
    pub output_schema: Option<Value>,
}

fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": ["object", "boolean", "null"]})
}

#[tool_router(router = modules_router, vis = "pub(crate)")]
impl MyrmexServer {
    #[tool(
        name = "list_modules",
        description = "List the modules and actions steps and tasks can use, whether each is enabled (if not, the config key that enables it); with `module`, each action's parameter/output schemas.",
        annotations(
            title = "List modules",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_modules(
        &self,
        Parameters(args): Parameters<Args<ListModulesArgs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ModuleList>, Error> {
        principal(&ctx)?;
        let a = args.parse()?;
        let schemas = a.include_schemas.unwrap_or(a.module.is_some());
        let infos = self.engine.registry().module_infos();
        if let Some(m) = &a.module
            && !infos.iter().any(|i| i.name == m)
        {
            return Err(Error::new(
                ErrorCode::ModuleNotFound,
                format!("no module named '{m}'"),
                format!(
                    "Known modules: {}.",
                    infos.iter().map(|i| i.name).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let modules = infos
            .into_iter()
            .filter(|i| a.module.as_deref().is_none_or(|m| m == i.name))
            .map(|i| ModuleEntry {
                name: i.name.to_string(),
                description: i.description.to_string(),
                enabled: i.disabled.is_none(),
                enable_hint: i.disabled,
                actions: i
                    .actions
                    .into_iter()
                    .map(|s| ActionEntry {
                        name: format!("{}.{}", s.module, s.action),
                        description: s.description.to_string(),
                        parameters_schema: schemas.then(|| s.params_schema.clone()),
                        output_schema: schemas.then(|| s.output_schema.clone()),
                    })
                    .collect(),
            })
            .collect();
        Ok(Json(ModuleList { modules }))
    }
}

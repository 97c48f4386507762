//! One `Config` for the whole server, merged from three layers:
//! a TOML file < `MYRMEX_*` environment variables < command-line flags.
//!
//! Environment variables name a key by its path with `__` between levels:
//! `MYRMEX_STORE=memory`, `MYRMEX_HTTP__BIND=127.0.0.1:8000`,
//! `MYRMEX_SESSIONS__DEFAULT_IDLE_TTL_SECONDS=3600`. Unknown keys are errors,
//! so a typo never silently does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

/// The longest duration any configuration key may set (ten years): deadlines
/// computed from a configured duration never overflow.
pub const MAX_DURATION_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// The effective configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where myrmex keeps its files (the SQLite database, later projects).
    /// Default: the platform data directory, e.g. `~/.local/share/myrmex`.
    pub data_dir: Option<PathBuf>,
    /// `memory`, `sqlite` (the file `myrmex.db` in the data directory),
    /// `sqlite://PATH`, or `postgres://USER[:PASSWORD]@HOST:PORT/DB`.
    pub store: String,
    /// SQLite durability: `full` (default; every commit is on disk before the
    /// caller is answered, also across power loss) or `normal` (WAL without an
    /// fsync per commit: survives a crash of myrmex, may lose the last commits
    /// on power loss; several times faster for step-heavy workloads).
    pub sqlite_synchronous: SqliteSync,
    /// How long an SQLite write waits for the write lock another connection or
    /// process holds, in milliseconds (several processes on one data directory
    /// take turns; past it the call fails with STORE_UNAVAILABLE).
    pub sqlite_busy_timeout_ms: u64,
    /// `get_health_status` writes a probe to the store, and reads who executes
    /// runs and how full the pools are, at most once per this many
    /// milliseconds; calls in between report the last look and when it was
    /// (0: on every call).
    pub health_probe_interval_ms: u64,
    /// A tracing filter: `error`, `warn`, `info`, `debug`, `trace`, or a
    /// directive list such as `myrmex=debug,sqlx=warn`.
    pub log_level: String,
    /// `text` or `json` (one JSON object per line). Logs always go to stderr.
    pub log_format: LogFormat,
    /// Directories of workflow definition files (`*.json`, `*.yaml`, `*.yml`)
    /// loaded at start as a read-only library shared by every session.
    pub workflows_dirs: Vec<PathBuf>,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub sessions: SessionsConfig,
    pub workflows: WorkflowsConfig,
    pub tasks: TasksConfig,
    pub resources: ResourcesConfig,
    pub limits: LimitsConfig,
    /// What steps and tasks may touch: the shell, the network, files.
    pub modules: ModulesConfig,
    /// Downstream MCP servers whose tools `mcp.call` can call, by name.
    pub mcp_servers: Vec<McpServerConfig>,
    pub projects: ProjectsConfig,
    pub cluster: ClusterConfig,
    pub tools: ToolsConfig,
    pub events: EventsConfig,
}

/// The event log (`get_events`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// How long events are kept, in hours (fractions allowed); older ones are pruned.
    pub retention_hours: f64,
    /// How often old events are pruned.
    pub prune_interval_seconds: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention_hours: 168.0,
            prune_interval_seconds: 300,
        }
    }
}

/// What `tools/list` offers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// `core` (running workflows and draining task graphs), `standard` (core plus the
    /// original module's tool names), `all`, or a comma list of tool names. `--tools` overrides it.
    pub profile: String,
    /// Include each tool's full output JSON Schema in tools/list (about 114 KB for all tools);
    /// off, results still carry structuredContent, and the schemas are in tool-schemas/.
    pub output_schemas: bool,
    /// How long an MCP task (execute_workflow and execute_task for clients with the
    /// tasks extension) follows its run, and how long its result is kept after.
    pub task_ttl_seconds: u64,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            profile: "all".into(),
            output_schemas: false,
            task_ttl_seconds: 86_400,
        }
    }
}

/// Several processes on one PostgreSQL store: who executes work, and leases.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Execute workflow runs and auto tasks in this process. `--no-execute`
    /// turns it off (a PostgreSQL store only): `myrmex worker` processes do the work.
    pub execute: bool,
    /// How long an executor's lease on a run or auto task lasts without a
    /// heartbeat (renewed every third of it). A process that dies loses its
    /// work to another executor after this long.
    pub lease_ttl_ms: u64,
    /// How often an executor looks for unclaimed work when no notification came.
    pub poll_interval_ms: u64,
    /// SQLite: how often a process reads the store's change stamp to see other
    /// processes' notifications and commits (a waiting next_task or get_task
    /// looks again when it moved). PostgreSQL uses LISTEN/NOTIFY; there a
    /// waiting next_task or get_task looks at the store again this often.
    pub signal_poll_ms: u64,
    /// Most runs one process executes at once.
    pub max_active_runs: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            execute: true,
            lease_ttl_ms: 15_000,
            poll_interval_ms: 1000,
            signal_poll_ms: 100,
            max_active_runs: 256,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectsConfig {
    /// Folders projects are created in (a project's `path` must be inside one).
    /// Empty: `<data_dir>/projects`.
    pub roots: Vec<PathBuf>,
    /// Folders of your own templates (`*.json`; a template's source files in
    /// `<dir>/<template name>/`, doc template overrides in `<dir>/doc_templates/`).
    /// A template with a shipped template's name replaces it.
    pub template_dirs: Vec<PathBuf>,
    /// Where `archive` writes `<name>.tar.gz`. Unset: `<data_dir>/archives`.
    pub archives_dir: Option<PathBuf>,
}

/// Policy of the action modules. Everything that touches the machine or the
/// network is off or confined by default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModulesConfig {
    pub shell: ShellConfig,
    pub http: HttpModuleConfig,
    pub fs: FsConfig,
    pub workflow: WorkflowModuleConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShellConfig {
    /// `shell.run` runs commands only when this is true.
    pub enabled: bool,
    /// Programs `shell.run` may start (a name matches argv[0] or its file name;
    /// `sh` allows `shell: true`). Empty: any program.
    pub allowed_commands: Vec<String>,
    /// Directories a command may run in (and below). Empty: anywhere. The
    /// first one is the default working directory.
    pub allowed_roots: Vec<PathBuf>,
    /// Time limit of a command when the step does not give one, and the longest allowed.
    pub default_timeout_seconds: u64,
    pub max_timeout_seconds: u64,
    /// Bytes of stdout and of stderr kept (the rest is dropped and flagged), and the most a step may ask for.
    pub default_max_output_bytes: usize,
    pub max_output_bytes: usize,
    /// Commands inherit the server's environment (plus the step's `env`).
    pub inherit_env: bool,
    /// Names of the variables a step's `env` may set. Empty: any, except (while
    /// allowed_commands is set) those that change what a program runs or loads
    /// (PATH, LD_*, DYLD_*, BASH_ENV, ENV, PYTHON*, PERL5*, RUBYOPT, NODE_OPTIONS, GIT_*, ...).
    pub allowed_env: Vec<String>,
}

impl Default for ShellConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            allowed_commands: Vec::new(),
            allowed_roots: Vec::new(),
            default_timeout_seconds: 300,
            max_timeout_seconds: 3600,
            default_max_output_bytes: 1024 * 1024,
            max_output_bytes: 16 * 1024 * 1024,
            inherit_env: true,
            allowed_env: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpModuleConfig {
    /// `http.request` makes requests only when this is true.
    pub enabled: bool,
    /// Host names requests may go to: exact names, `*.example.com`, or `*` for any.
    pub allowed_hosts: Vec<String>,
    /// Loopback, private, link-local and other non-public addresses are refused
    /// (after DNS resolution and on every redirect) unless listed here: IP
    /// addresses, CIDR blocks (`10.0.0.0/8`) or host names.
    pub allowed_private: Vec<String>,
    /// Time limit of a request when the step does not give one, and the longest allowed.
    pub default_timeout_seconds: u64,
    pub max_timeout_seconds: u64,
    /// Largest response body when the step does not say, and the most a step may ask for.
    pub default_max_response_bytes: usize,
    pub max_response_bytes: usize,
    /// Redirects followed (each one checked like the first request).
    pub max_redirects: u32,
}

impl Default for HttpModuleConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            allowed_hosts: vec!["*".into()],
            allowed_private: Vec::new(),
            default_timeout_seconds: 30,
            max_timeout_seconds: 600,
            default_max_response_bytes: 10 * 1024 * 1024,
            max_response_bytes: 100 * 1024 * 1024,
            max_redirects: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FsConfig {
    /// The `fs` actions work only when this is true.
    pub enabled: bool,
    /// Directories the `fs` actions are confined to, shared by every principal
    /// (`{principal}` in one stands for the caller's folder name). Empty: each
    /// principal reaches its work area `<data_dir>/work/<principal>` and its projects' folders.
    /// Relative paths in a step resolve against the first root.
    pub roots: Vec<PathBuf>,
    /// Largest file `fs.read` returns and `fs.write` writes, in bytes.
    pub max_read_bytes: u64,
    pub max_write_bytes: u64,
    /// Most entries `fs.list` returns.
    pub max_list_entries: usize,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            roots: Vec::new(),
            max_read_bytes: 10 * 1024 * 1024,
            max_write_bytes: 10 * 1024 * 1024,
            max_list_entries: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkflowModuleConfig {
    /// How deep `workflow.run` may nest child runs (a top-level run is depth 0).
    pub max_depth: u32,
}

impl Default for WorkflowModuleConfig {
    fn default() -> Self {
        Self { max_depth: 5 }
    }
}

/// A downstream MCP server: `command` (stdio) or `url` (Streamable HTTP).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct McpServerConfig {
    /// How steps name it (`mcp.call` parameter `server`).
    pub name: String,
    /// Program to start; it speaks MCP on its stdin/stdout.
    pub command: Option<String>,
    pub args: Vec<String>,
    /// Extra environment of the program.
    pub env: BTreeMap<String, String>,
    /// Working directory of the program.
    pub cwd: Option<PathBuf>,
    /// Streamable HTTP endpoint.
    pub url: Option<String>,
    /// Extra HTTP headers (for example `Authorization`).
    pub headers: BTreeMap<String, String>,
    /// Time limit of one downstream call when the step does not give one.
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResourcesConfig {
    /// Capacity of the `cpu` pool in cores; unset: the host's.
    pub cpu: Option<u64>,
    /// Capacity of the `memory_mb` pool; unset: the host's memory.
    pub memory_mb: Option<u64>,
    /// Capacity of the `disk_mb` pool.
    pub disk_mb: u64,
    /// Capacity of the `gpu` pool.
    pub gpu: u64,
    /// Further pools and their capacities, e.g. `openai_requests = 60`.
    pub pools: BTreeMap<String, u64>,
    /// Lease of an allocation when allocate_resources does not say, and the longest allowed.
    pub default_ttl_seconds: u64,
    pub max_ttl_seconds: u64,
    /// How often expired allocations are reclaimed (milliseconds).
    pub expiry_sweep_interval_ms: u64,
    /// A waiting request gains one priority level per this many seconds waited (no starvation).
    pub aging_seconds: u64,
    pub quotas: QuotasConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// Allocations one principal, and one session, may hold at once.
    pub max_allocations_per_principal: u32,
    pub max_allocations_per_session: u32,
    /// Most of a pool one principal may hold at once, e.g. `gpu = 1`; pools not named: no limit.
    pub per_principal: BTreeMap<String, u64>,
    /// Most of a pool one session may hold at once.
    pub per_session: BTreeMap<String, u64>,
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        Self {
            cpu: None,
            memory_mb: None,
            disk_mb: 100 * 1024,
            gpu: 0,
            pools: BTreeMap::new(),
            default_ttl_seconds: 300,
            max_ttl_seconds: 24 * 3600,
            expiry_sweep_interval_ms: 1000,
            aging_seconds: 30,
            quotas: QuotasConfig::default(),
        }
    }
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            max_allocations_per_principal: 1000,
            max_allocations_per_session: 200,
            per_principal: BTreeMap::new(),
            per_session: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// Most tasks in one session's graph (finished ones included).
    pub max_tasks_per_session: usize,
    /// Most tasks in one create_tasks batch.
    pub max_batch: usize,
    /// Largest parameters, result or metadata of a task, serialized, in bytes.
    pub max_payload_bytes: usize,
    /// Lease of a claimed agent task when next_task does not say, and the longest allowed.
    pub default_lease_seconds: u64,
    pub max_lease_seconds: u64,
    /// How often expired leases are looked for.
    pub lease_sweep_interval_ms: u64,
    /// Most nodes get_task_graph returns.
    pub max_graph_nodes: usize,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            max_tasks_per_session: 10_000,
            max_batch: 500,
            max_payload_bytes: 256 * 1024,
            default_lease_seconds: 300,
            max_lease_seconds: 3600,
            lease_sweep_interval_ms: 1000,
            max_graph_nodes: 500,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkflowsConfig {
    /// Most steps in one workflow.
    pub max_steps: usize,
    /// Largest definition, serialized, in bytes.
    pub max_definition_bytes: usize,
    /// Deepest nesting of step parameters, and of parentheses and `!` in a `when` condition.
    pub max_nesting_depth: usize,
    /// Longest `when` condition, in bytes.
    pub max_condition_bytes: usize,
    /// Longest time limit (`timeout_seconds`) of a step, a workflow or a run.
    pub max_timeout_seconds: u64,
    /// Largest parameters of one step once their templates are rendered, in bytes.
    pub max_rendered_bytes: usize,
    /// Largest output of one step, and all stored step outputs of one run together, in bytes.
    /// A step past either fails with LIMIT_EXCEEDED and nothing past the bound is stored.
    pub max_step_output_bytes: usize,
    pub max_run_output_bytes: usize,
    /// Deepest nesting of a rendered parameter value or a step output.
    pub max_value_depth: usize,
    /// How long execute_workflow waits for the run when the call does not say.
    pub default_wait_seconds: u64,
    /// Longest wait a call may ask for (keep it under the ~60 s clients time out at).
    pub max_wait_seconds: u64,
}

impl Default for WorkflowsConfig {
    fn default() -> Self {
        Self {
            max_steps: 20_000,
            max_definition_bytes: 8 * 1024 * 1024,
            max_nesting_depth: 32,
            max_condition_bytes: 16 * 1024,
            max_timeout_seconds: 30 * 24 * 3600,
            max_rendered_bytes: 16 * 1024 * 1024,
            max_step_output_bytes: 16 * 1024 * 1024,
            max_run_output_bytes: 64 * 1024 * 1024,
            max_value_depth: 64,
            default_wait_seconds: 5,
            max_wait_seconds: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    #[default]
    Full,
    Normal,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address for `serve --http` when the flag has no value.
    pub bind: String,
    /// Host header values accepted (DNS-rebinding protection). Entries may
    /// carry a port (`example.com:8443`).
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted; a request carrying any other `Origin` gets
    /// 403. Requests without `Origin` (non-browser clients) pass. `:*` matches
    /// any port.
    pub allowed_origins: Vec<String>,
    /// Largest accepted request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Interval of SSE keep-alive comments, in seconds (0 disables them).
    pub sse_keep_alive_seconds: u64,
    /// The legacy HTTP+SSE transport (protocol 2024-11-05): its event stream and its POST path.
    pub legacy_sse_path: String,
    pub legacy_messages_path: String,
    /// Most open connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// Seconds a request's headers may take to arrive (also closes a keep-alive
    /// connection that sends no next request within it).
    pub header_read_timeout_seconds: u64,
    /// Seconds a request's body may take to arrive whole (408 after).
    pub body_read_timeout_seconds: u64,
    /// A connection with no request in flight and no traffic for this long is closed.
    pub idle_timeout_seconds: u64,
    /// Streamable HTTP transport sessions (`Mcp-Session-Id`) open at once, in all and per
    /// principal (a principal's least recently used one is closed for a new one; past the
    /// total, new ones get 503), and how long an unused one lives. Legacy SSE streams have
    /// caps of the same values, counted apart from these sessions (past them, a new stream
    /// gets 429).
    pub max_sessions: usize,
    pub max_sessions_per_principal: usize,
    pub session_idle_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Bearer tokens accepted over HTTP, each mapped to a principal name.
    /// When empty, HTTP callers are the local principal, and only a
    /// loopback bind is allowed.
    pub tokens: Vec<TokenConfig>,
    /// Principals that may see every principal's activity: `/metrics`, and other
    /// principals' lock keys, holders and waiters in get_resource_status. Others see
    /// their own and counts of the rest.
    pub admin_principals: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The principal this token authenticates as.
    pub name: String,
    /// Lower-case hex SHA-256 of the token (`myrmex hash-token` prints it).
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// A file whose content (trimmed) is the token itself.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Idle time after which a session is closed, when it does not set its own.
    pub default_idle_ttl_seconds: u64,
    /// Largest `idle_ttl_seconds` a session may ask for.
    pub max_idle_ttl_seconds: u64,
    /// How often the sweeper looks for idle or timed-out sessions.
    pub sweep_interval_seconds: u64,
    /// Active sessions one principal may hold at once.
    pub max_active_per_principal: u32,
    /// Defaults of `create_session`.
    pub default_max_parallel_tasks: u32,
    pub default_max_parallel_workflows: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest name (sessions, later workflows and tasks), in characters.
    pub max_name_chars: usize,
    /// Longest description, in characters.
    pub max_description_chars: usize,
    /// Largest `metadata` object, serialized, in bytes.
    pub max_metadata_bytes: usize,
    /// Page size of list tools when `limit` is not given.
    pub default_page_size: u32,
    /// Largest page a list tool returns.
    pub max_page_size: u32,
    /// Largest tool answer, as JSON bytes (about 4 bytes per token). Lists page and graphs
    /// split to stay under it; an answer still larger becomes a RESULT_TOO_LARGE error that says
    /// how to ask for less.
    pub max_result_bytes: usize,
    /// Largest JSON-RPC message (one line) read over stdio; longer lines are skipped unread
    /// and answered with an error. HTTP bodies are bounded by `http.max_body_bytes`.
    pub max_message_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: None,
            store: "sqlite".into(),
            sqlite_synchronous: SqliteSync::Full,
            sqlite_busy_timeout_ms: 10_000,
            health_probe_interval_ms: 5_000,
            log_level: "info,rmcp=warn,sqlx=warn".into(),
            log_format: LogFormat::Text,
            workflows_dirs: Vec::new(),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            sessions: SessionsConfig::default(),
            workflows: WorkflowsConfig::default(),
            tasks: TasksConfig::default(),
            resources: ResourcesConfig::default(),
            limits: LimitsConfig::default(),
            modules: ModulesConfig::default(),
            mcp_servers: Vec::new(),
            projects: ProjectsConfig::default(),
            cluster: ClusterConfig::default(),
            tools: ToolsConfig::default(),
            events: EventsConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:7341".into(),
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            allowed_origins: vec![
                "http://localhost:*".into(),
                "http://127.0.0.1:*".into(),
                "http://[::1]:*".into(),
            ],
            max_body_bytes: 4 * 1024 * 1024,
            sse_keep_alive_seconds: 15,
            legacy_sse_path: "/sse".into(),
            legacy_messages_path: "/messages".into(),
            max_connections: 512,
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 30,
            idle_timeout_seconds: 120,
            max_sessions: 1000,
            max_sessions_per_principal: 64,
            session_idle_seconds: 300,
        }
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            default_idle_ttl_seconds: 7 * 24 * 3600,
            max_idle_ttl_seconds: 90 * 24 * 3600,
            sweep_interval_seconds: 30,
            max_active_per_principal: 100,
            default_max_parallel_tasks: 4,
            default_max_parallel_workflows: 2,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_name_chars: 128,
            max_description_chars: 4096,
            max_metadata_bytes: 16 * 1024,
            default_page_size: 50,
            max_page_size: 200,
            max_result_bytes: 40_000,
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Flags that override the file and the environment (unset flags override nothing).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

/// Where the store lives, parsed from `Config::store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Memory,
    Sqlite(PathBuf, SqliteSync),
    /// A PostgreSQL URL, e.g. `postgres://user@host:5432/db`.
    Postgres(String),
}

impl Config {
    /// Merge file (if any) < environment < overrides, then validate.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment
            .merge(
                // MYRMEX_CONFIG names the file itself (a CLI flag), not a key.
                Env::prefixed("MYRMEX_").ignore(&["config"]).split("__"),
            )
            .merge(Serialized::defaults(overrides));
        let config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.validate_durations()?;
        self.validate_cluster()?;
        if self.tools.task_ttl_seconds == 0 {
            anyhow::bail!("tools.task_ttl_seconds must be at least 1");
        }
        let ev = &self.events;
        if !(ev.retention_hours > 0.0 && ev.retention_hours.is_finite())
            || ev.prune_interval_seconds == 0
        {
            anyhow::bail!(
                "events: retention_hours must be a positive number and prune_interval_seconds at least 1"
            );
        }
        for t in &self.auth.tokens {
            match (&t.token_sha256, &t.token_file) {
                (Some(h), None) => {
                    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                        anyhow::bail!(
                            "auth token '{}': token_sha256 must be 64 hex characters (see `myrmex hash-token`)",
                            t.name
                        );
                    }
                }
                (None, Some(_)) => {}
                _ => anyhow::bail!(
                    "auth token '{}': set exactly one of token_sha256 or token_file",
                    t.name
                ),
            }
            if t.name.trim().is_empty() {
                anyhow::bail!("auth tokens need a non-empty name");
            }
        }
        if self.limits.max_message_bytes < 4096 {
            anyhow::bail!("limits.max_message_bytes must be at least 4096");
        }
        if self.limits.max_result_bytes < 4096 {
            anyhow::bail!("limits.max_result_bytes must be at least 4096");
        }
        if self.limits.default_page_size == 0
            || self.limits.default_page_size > self.limits.max_page_size
        {
            anyhow::bail!("limits.default_page_size must be between 1 and limits.max_page_size");
        }
        if self.sessions.sweep_interval_seconds == 0 {
            anyhow::bail!("sessions.sweep_interval_seconds must be at least 1");
        }
        if self.sessions.default_idle_ttl_seconds == 0
            || self.sessions.default_idle_ttl_seconds > self.sessions.max_idle_ttl_seconds
        {
            anyhow::bail!(
                "sessions.default_idle_ttl_seconds must be between 1 and sessions.max_idle_ttl_seconds"
            );
        }
        if self.workflows.default_wait_seconds > self.workflows.max_wait_seconds {
            anyhow::bail!(
                "workflows.default_wait_seconds must not exceed workflows.max_wait_seconds"
            );
        }
        let w = &self.workflows;
        if w.max_nesting_depth == 0 || w.max_nesting_depth > 100 {
            anyhow::bail!("workflows.max_nesting_depth must be between 1 and 100");
        }
        if w.max_value_depth < w.max_nesting_depth || w.max_value_depth > 120 {
            anyhow::bail!(
                "workflows.max_value_depth must be between workflows.max_nesting_depth and 120 (JSON read back from the store nests at most 128 levels)"
            );
        }
        if w.max_timeout_seconds == 0 || w.max_step_output_bytes > w.max_run_output_bytes {
            anyhow::bail!(
                "workflows.max_timeout_seconds must be at least 1, and workflows.max_step_output_bytes must not exceed workflows.max_run_output_bytes"
            );
        }
        let h = &self.http;
        if h.max_connections == 0
            || h.header_read_timeout_seconds == 0
            || h.body_read_timeout_seconds == 0
            || h.max_sessions == 0
            || h.max_sessions_per_principal == 0
            || h.session_idle_seconds == 0
        {
            anyhow::bail!(
                "http: max_connections, header_read_timeout_seconds, body_read_timeout_seconds, max_sessions, max_sessions_per_principal and session_idle_seconds must be at least 1"
            );
        }
        if h.idle_timeout_seconds <= self.workflows.max_wait_seconds {
            anyhow::bail!(
                "http.idle_timeout_seconds must be longer than workflows.max_wait_seconds (a waiting call keeps its connection busy, but its client may reuse the connection right after)"
            );
        }
        if self.http.max_body_bytes < 1024 {
            anyhow::bail!("http.max_body_bytes must be at least 1024");
        }
        self.validate_modules()
    }

    /// `cluster` settings, and that not executing has someone else to execute.
    /// Every duration an operator sets is at most [`MAX_DURATION_SECONDS`],
    /// so that no deadline computed from it (now + duration) can overflow.
    fn validate_durations(&self) -> anyhow::Result<()> {
        let ms = |v: u64| v / 1000;
        let (h, w, m) = (&self.http, &self.workflows, &self.modules);
        let durations = [
            ("tools.task_ttl_seconds", self.tools.task_ttl_seconds),
            (
                "events.prune_interval_seconds",
                self.events.prune_interval_seconds,
            ),
            ("cluster.lease_ttl_ms", ms(self.cluster.lease_ttl_ms)),
            (
                "cluster.poll_interval_ms",
                ms(self.cluster.poll_interval_ms),
            ),
            ("cluster.signal_poll_ms", ms(self.cluster.signal_poll_ms)),
            ("sqlite_busy_timeout_ms", ms(self.sqlite_busy_timeout_ms)),
            (
                "health_probe_interval_ms",
                ms(self.health_probe_interval_ms),
            ),
            (
                "modules.shell.max_timeout_seconds",
                m.shell.max_timeout_seconds,
            ),
            (
                "modules.http.max_timeout_seconds",
                m.http.max_timeout_seconds,
            ),
            ("resources.max_ttl_seconds", self.resources.max_ttl_seconds),
            (
                "resources.expiry_sweep_interval_ms",
                ms(self.resources.expiry_sweep_interval_ms),
            ),
            ("resources.aging_seconds", self.resources.aging_seconds),
            ("tasks.max_lease_seconds", self.tasks.max_lease_seconds),
            (
                "tasks.lease_sweep_interval_ms",
                ms(self.tasks.lease_sweep_interval_ms),
            ),
            ("workflows.max_timeout_seconds", w.max_timeout_seconds),
            ("workflows.max_wait_seconds", w.max_wait_seconds),
            ("http.sse_keep_alive_seconds", h.sse_keep_alive_seconds),
            (
                "http.header_read_timeout_seconds",
                h.header_read_timeout_seconds,
            ),
            (
                "http.body_read_timeout_seconds",
                h.body_read_timeout_seconds,
            ),
            ("http.idle_timeout_seconds", h.idle_timeout_seconds),
            ("http.session_idle_seconds", h.session_idle_seconds),
            (
                "sessions.max_idle_ttl_seconds",
                self.sessions.max_idle_ttl_seconds,
            ),
            (
                "sessions.sweep_interval_seconds",
                self.sessions.sweep_interval_seconds,
            ),
        ];
        for (key, seconds) in durations {
            if seconds > MAX_DURATION_SECONDS {
                anyhow::bail!(
                    "{key} is {seconds} s; the longest duration accepted is {MAX_DURATION_SECONDS} s (ten years)"
                );
            }
        }
        for s in &self.mcp_servers {
            if s.timeout_seconds.is_some_and(|t| t > MAX_DURATION_SECONDS) {
                anyhow::bail!(
                    "mcp_servers '{}': timeout_seconds is over the longest duration accepted, {MAX_DURATION_SECONDS} s",
                    s.name
                );
            }
        }
        Ok(())
    }

    pub fn validate_cluster(&self) -> anyhow::Result<()> {
        let spec = self.store_spec()?;
        if !self.cluster.execute && !matches!(spec, StoreSpec::Postgres(_)) {
            anyhow::bail!(
                "cluster.execute = false (--no-execute) needs a PostgreSQL store that `myrmex worker` processes share; with store '{}' nothing would run the work",
                self.store
            );
        }
        let c = &self.cluster;
        if c.lease_ttl_ms < 300
            || c.poll_interval_ms == 0
            || c.signal_poll_ms == 0
            || c.max_active_runs == 0
        {
            anyhow::bail!(
                "cluster: lease_ttl_ms must be at least 300, poll_interval_ms, signal_poll_ms and max_active_runs at least 1"
            );
        }
        if self.sqlite_busy_timeout_ms == 0 {
            anyhow::bail!("sqlite_busy_timeout_ms must be at least 1");
        }
        Ok(())
    }

    fn validate_modules(&self) -> anyhow::Result<()> {
        let sh = &self.modules.shell;
        if sh.default_timeout_seconds == 0 || sh.default_timeout_seconds > sh.max_timeout_seconds {
            anyhow::bail!(
                "modules.shell.default_timeout_seconds must be between 1 and modules.shell.max_timeout_seconds"
            );
        }
        if sh.default_max_output_bytes > sh.max_output_bytes {
            anyhow::bail!(
                "modules.shell.default_max_output_bytes must not exceed modules.shell.max_output_bytes"
            );
        }
        let h = &self.modules.http;
        if h.default_timeout_seconds == 0 || h.default_timeout_seconds > h.max_timeout_seconds {
            anyhow::bail!(
                "modules.http.default_timeout_seconds must be between 1 and modules.http.max_timeout_seconds"
            );
        }
        if h.default_max_response_bytes > h.max_response_bytes {
            anyhow::bail!(
                "modules.http.default_max_response_bytes must not exceed modules.http.max_response_bytes"
            );
        }
        for entry in &h.allowed_private {
            if entry.trim().is_empty() {
                anyhow::bail!("modules.http.allowed_private has an empty entry");
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.mcp_servers {
            let ok_name = !s.name.is_empty()
                && s.name.len() <= 64
                && s.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok_name {
                anyhow::bail!(
                    "mcp_servers: name '{}' must be 1-64 letters, digits, '_' or '-'",
                    s.name
                );
            }
            if !names.insert(s.name.clone()) {
                anyhow::bail!("mcp_servers: the name '{}' is used twice", s.name);
            }
            match (&s.command, &s.url) {
                (Some(c), None) if !c.trim().is_empty() => {}
                (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {}
                (None, Some(u)) => anyhow::bail!(
                    "mcp_servers '{}': url '{u}' must start with http:// or https://",
                    s.name
                ),
                _ => anyhow::bail!(
                    "mcp_servers '{}': set exactly one of command (stdio) or url (Streamable HTTP)",
                    s.name
                ),
            }
            if s.timeout_seconds == Some(0) {
                anyhow::bail!(
                    "mcp_servers '{}': timeout_seconds must be at least 1",
                    s.name
                );
            }
        }
        Ok(())
    }

    /// The data directory: configured, or the platform default.
    pub fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        directories::ProjectDirs::from("", "", "myrmex")
            .map(|p| p.data_dir().to_path_buf())
            .ok_or_else(|| {
                anyhow::anyhow!("no home directory found: set --data-dir or MYRMEX_DATA_DIR")
            })
    }

    /// Folders projects live in (and the default fs roots): `[projects] roots`,
    /// or `<data dir>/projects`.
    pub fn projects_roots(&self) -> anyhow::Result<Vec<PathBuf>> {
        if self.projects.roots.is_empty() {
            Ok(vec![self.data_dir()?.join("projects")])
        } else {
            Ok(self.projects.roots.clone())
        }
    }

    /// Where `manage_project` `archive` writes: `[projects] archives_dir`, or `<data dir>/archives`.
    pub fn archives_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.projects.archives_dir {
            Some(d) => Ok(d.clone()),
            None => Ok(self.data_dir()?.join("archives")),
        }
    }

    pub fn store_spec(&self) -> anyhow::Result<StoreSpec> {
        let s = self.store.trim();
        match s {
            "memory" => Ok(StoreSpec::Memory),
            "sqlite" => Ok(StoreSpec::Sqlite(
                self.data_dir()?.join("myrmex.db"),
                self.sqlite_synchronous,
            )),
            _ if s.starts_with("sqlite://") => {
                let p = &s["sqlite://".len()..];
                if p.is_empty() {
                    anyhow::bail!("store '{s}': give a file path after sqlite://");
                }
                Ok(StoreSpec::Sqlite(PathBuf::from(p), self.sqlite_synchronous))
            }
            _ if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
                Ok(StoreSpec::Postgres(s.to_string()))
            }
            _ => anyhow::bail!(
                "store '{s}' is not understood: use `memory`, `sqlite`, `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("myrmex.example.toml")
    }

    /// Every key path of the default configuration, e.g. `http.bind`.
    fn key_paths(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_object() {
                    key_paths(v, &path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }

    #[test]
    fn the_example_file_documents_every_key_with_its_default() {
        let loaded = Config::load(Some(&example_path()), &Overrides::default()).unwrap();
        assert_eq!(
            loaded,
            Config::default(),
            "myrmex.example.toml must show the defaults"
        );
        let text = std::fs::read_to_string(example_path()).unwrap();
        let mut keys = Vec::new();
        key_paths(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut keys,
        );
        for k in keys.iter().chain(
            ["data_dir", "auth.tokens", "token_sha256", "token_file"]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .iter(),
        ) {
            let leaf = k.rsplit('.').next().unwrap();
            assert!(
                text.contains(&format!("{leaf} =")) || text.contains(&format!("[[{k}]]")),
                "key {k} is not in the example"
            );
        }
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        assert!(
            readme.contains(text.trim()),
            "README.md must include myrmex.example.toml verbatim"
        );
    }

    #[test]
    fn store_specs() {
        let mut c = Config {
            data_dir: Some("/d".into()),
            ..Config::default()
        };
        assert_eq!(
            c.store_spec().unwrap(),
            StoreSpec::Sqlite("/d/myrmex.db".into(), SqliteSync::Full)
        );
        c.store = "memory".into();
        assert_eq!(c.store_spec().unwrap(), StoreSpec::Memory);
        c.store = "sqlite:///x/y.db".into();
        assert_eq!(
            c.store_spec().unwrap(),
            StoreSpec::Sqlite("/x/y.db".into(), SqliteSync::Full)
        );
        c.store = "sqlite://".into();
        assert!(c.store_spec().is_err());
        c.store = "postgres://u@localhost:5432/db".into();
        assert_eq!(
            c.store_spec().unwrap(),
            StoreSpec::Postgres("postgres://u@localhost:5432/db".into())
        );
        c.store = "mysql://x".into();
        assert!(
            c.store_spec()
                .unwrap_err()
                .to_string()
                .contains("postgres://")
        );
    }

    /// A configured duration past ten years is refused naming its key, so no
    /// deadline computed from it can overflow (`Instant + Duration` panics).
    #[test]
    fn durations_past_ten_years_are_refused_by_key() {
        let mut c = Config::default();
        assert!(c.validate().is_ok());
        c.modules.http.max_timeout_seconds = u64::MAX / 2;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("modules.http.max_timeout_seconds"), "{e}");
        let mut c = Config::default();
        c.workflows.max_wait_seconds = MAX_DURATION_SECONDS + 1;
        c.http.idle_timeout_seconds = MAX_DURATION_SECONDS + 2;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("workflows.max_wait_seconds"), "{e}");
        let mut c = Config::default();
        c.cluster.lease_ttl_ms = u64::MAX;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("cluster.lease_ttl_ms"), "{e}");
    }
}

//! `shell.run`: run a program (or a `/bin/sh -c` command line) as a child
//! process in its own process group, with a time limit, bounded output and
//! the policy of `[modules.shell]`.
//!
//! Success means exit code 0, or one of `ok_exit_codes`. A timeout or a
//! cancellation kills the whole process group, so a command cannot leave
//! children behind; so does a command whose descendants keep its output
//! open after it exited.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{ActionCtx, ActionError, ActionSpec, Module};
use crate::config::ShellConfig;
use crate::error::ErrorCode;

pub struct Shell {
    config: ShellConfig,
}

/// How long a finished command's leftover descendants may keep its output open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

impl Shell {
    pub fn new(config: &ShellConfig) -> Self {
        Self {
            config: config.clone(),
        }
    }

    fn params_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "Program and arguments, run without a shell."},
                "command": {"type": "string", "minLength": 1, "description": "A command line for /bin/sh -c; needs shell: true."},
                "shell": {"type": "boolean", "description": "Run `command` through /bin/sh -c."},
                "cwd": {"type": "string", "description": "Working directory (relative: to the default one); must be inside [modules.shell] allowed_roots when set."},
                "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Extra environment variables."},
                "stdin": {"type": "string", "description": "Text written to the program's standard input."},
                "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": self.config.max_timeout_seconds, "description": "Kill the process group after this long (default [modules.shell] default_timeout_seconds)."},
                "max_output_bytes": {"type": "integer", "minimum": 0, "maximum": self.config.max_output_bytes, "description": "Bytes of stdout and of stderr kept; the rest is dropped and flagged."},
                "ok_exit_codes": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "description": "Exit codes that count as success (default [0])."}
            },
            "oneOf": [
                {"required": ["argv"], "not": {"required": ["command"]}},
                {"required": ["command", "shell"], "not": {"required": ["argv"]}, "properties": {"shell": {"const": true}}}
            ],
            "additionalProperties": false
        })
    }

    /// The directory the command runs in, checked against the allowed roots
    /// (a project run's folder is allowed, and is where it starts).
    fn working_dir(
        &self,
        cwd: Option<&str>,
        workdir: Option<&PathBuf>,
    ) -> Result<Option<PathBuf>, ActionError> {
        let base = workdir
            .cloned()
            .or_else(|| self.config.allowed_roots.first().cloned());
        let dir = match (cwd, &base) {
            (None, None) => return Ok(None),
            (None, Some(b)) => b.clone(),
            (Some(c), Some(b)) => b.join(c),
            (Some(c), None) => PathBuf::from(c),
        };
        let real = dir.canonicalize().map_err(|e| {
            ActionError::new(
                ErrorCode::InvalidParameters,
                format!("working directory {}: {e}", dir.display()),
            )
        })?;
        if !real.is_dir() {
            return Err(ActionError::new(
                ErrorCode::InvalidParameters,
                format!("working directory {} is not a directory", dir.display()),
            ));
        }
        if !self.config.allowed_roots.is_empty()
            && !self
                .config
                .allowed_roots
                .iter()
                .chain(workdir)
                .filter_map(|r| r.canonicalize().ok())
                .any(|r| real.starts_with(&r))
        {
            return Err(ActionError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "working directory {} is outside [modules.shell] allowed_roots ({})",
                    real.display(),
                    show_paths(&self.config.allowed_roots)
                ),
            ));
        }
        Ok(Some(real))
    }

    fn check_program(
        &self,
        program: &str,
        env: &serde_json::Map<String, Value>,
    ) -> Result<(), ActionError> {
        if self.config.allowed_commands.is_empty() {
            return Ok(());
        }
        if !self.config.allowed_commands.iter().any(|c| c == program) {
            return Err(ActionError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "'{program}' is not in [modules.shell] allowed_commands ({}){}",
                    self.config.allowed_commands.join(", "),
                    if program == "sh" {
                        "; shell: true runs sh"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if let Some(name) = env.keys().find(|k| injects(k)) {
            return Err(ActionError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "env may not set {} while [modules.shell] allowed_commands is set: it changes which program runs or what code it loads (refused: {})",
                    crate::error::excerpt(name),
                    INJECTING_ENV.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// `[modules.shell] allowed_env`, when set, names every variable a step may set.
    fn check_env(&self, env: &serde_json::Map<String, Value>) -> Result<(), ActionError> {
        let allowed = &self.config.allowed_env;
        if allowed.is_empty() {
            return Ok(());
        }
        match env.keys().find(|k| !allowed.contains(k)) {
            Some(k) => Err(ActionError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "env may not set {}: [modules.shell] allowed_env lists {}",
                    crate::error::excerpt(k),
                    allowed.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }
}

/// Variables that make an allowed program run other code: the dynamic
/// loader's, shells' start-up files, interpreters' option and module paths,
/// pagers and helpers that programs start. `*` ends a prefix.
pub const INJECTING_ENV: &[&str] = &[
    "PATH",
    "LD_*",
    "DYLD_*",
    "GLIBC_TUNABLES",
    "GCONV_PATH",
    "NLSPATH",
    "BASH_ENV",
    "ENV",
    "BASH_FUNC_*",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "IFS",
    "PYTHON*",
    "PERL5*",
    "PERLLIB",
    "PERL_MB_OPT",
    "RUBYOPT",
    "RUBYLIB",
    "NODE_OPTIONS",
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "GIT_*",
    "LESSOPEN",
    "LESSCLOSE",
    "PAGER",
    "EDITOR",
    "VISUAL",
    "BROWSER",
    "SSH_ASKPASS",
    "HOSTALIASES",
];

/// Does setting `name` let a step change what an allowed program runs?
fn injects(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    INJECTING_ENV.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == *p,
    })
}

fn show_paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Output of one stream: the first `limit` bytes and how many there were.
struct Captured {
    kept: Vec<u8>,
    total: u64,
}

async fn capture(mut r: impl AsyncRead + Unpin, limit: usize) -> Captured {
    let mut kept = Vec::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    Captured { kept, total }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Why the wait for the command ended.
enum End {
    Exited(std::process::ExitStatus),
    TimedOut,
    Cancelled,
}

#[async_trait]
impl Module for Shell {
    fn name(&self) -> &'static str {
        "shell"
    }

    fn description(&self) -> &'static str {
        "Run programs on the server's machine (no shell unless asked), with time and output limits."
    }

    fn disabled(&self) -> Option<String> {
        (!self.config.enabled).then(|| {
            "the shell module is disabled; set [modules.shell] enabled = true (optionally with allowed_commands and allowed_roots) in the server's configuration".to_string()
        })
    }

    fn actions(&self) -> Vec<ActionSpec> {
        vec![ActionSpec {
            module: "shell",
            action: "run",
            description: "Run `argv` (or `command` with shell: true); succeeds on exit code 0 (or ok_exit_codes). Output {exit_code, stdout, stderr, stdout_truncated, stderr_truncated, duration_ms}.",
            params_schema: self.params_schema(),
            output_schema: json!({
                "type": "object",
                "properties": {
                    "exit_code": {"type": ["integer", "null"]},
                    "stdout": {"type": "string"},
                    "stderr": {"type": "string"},
                    "stdout_truncated": {"type": "boolean"},
                    "stderr_truncated": {"type": "boolean"},
                    "duration_ms": {"type": "integer"}
                },
                "required": ["exit_code", "stdout", "stderr", "stdout_truncated", "stderr_truncated", "duration_ms"]
            }),
        }]
    }

    async fn call(&self, action: &str, p: Value, ctx: ActionCtx) -> Result<Value, ActionError> {
        if action != "run" {
            return Err(ActionError::new(
                ErrorCode::ModuleNotFound,
                format!("shell has no action '{action}'"),
            ));
        }
        let env = p
            .get("env")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let argv: Vec<String> = match (p.get("argv"), p.get("command")) {
            (Some(Value::Array(a)), _) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            (_, Some(Value::String(c))) => vec!["sh".into(), "-c".into(), c.clone()],
            _ => {
                return Err(ActionError::new(
                    ErrorCode::InvalidParameters,
                    "give argv, or command with shell: true",
                ));
            }
        };
        let Some(program) = argv.first() else {
            return Err(ActionError::new(
                ErrorCode::InvalidParameters,
                "argv is empty: give the program and its arguments",
            ));
        };
        self.check_program(program, &env)?;
        self.check_env(&env)?;
        let cwd = self.working_dir(p.get("cwd").and_then(Value::as_str), ctx.workdir.as_ref())?;
        let timeout = p
            .get("timeout_seconds")
            .and_then(Value::as_u64)
            .unwrap_or(self.config.default_timeout_seconds);
        let limit = p
            .get("max_output_bytes")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .unwrap_or(self.config.default_max_output_bytes);
        let ok_codes: Vec<i64> = p
            .get("ok_exit_codes")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_else(|| vec![0]);

        let program = if argv[0] == "sh" && p.get("command").is_some() {
            "/bin/sh"
        } else {
            argv[0].as_str()
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&argv[1..])
            .stdin(if p.get("stdin").is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if !self.config.inherit_env {
            cmd.env_clear();
            if let Ok(path) = std::env::var("PATH") {
                cmd.env("PATH", path);
            }
        }
        for (k, v) in &env {
            if let Some(v) = v.as_str() {
                cmd.env(k, v);
            }
        }
        if let Some(d) = &cwd {
            cmd.current_dir(d);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| {
            ActionError::new(
                ErrorCode::ActionFailed,
                format!("cannot start '{}': {e}", argv[0]),
            )
        })?;
        let pid = child.id();
        let out = tokio::spawn(capture(child.stdout.take().expect("piped"), limit));
        let err = tokio::spawn(capture(child.stderr.take().expect("piped"), limit));
        if let (Some(mut w), Some(text)) =
            (child.stdin.take(), p.get("stdin").and_then(Value::as_str))
        {
            let text = text.as_bytes().to_vec();
            // A program that does not read its input must not block the step.
            tokio::spawn(async move {
                let _ = w.write_all(&text).await;
            });
        }
        let end = tokio::select! {
            s = child.wait() => match s {
                Ok(s) => End::Exited(s),
                Err(e) => {
                    kill_group(pid);
                    return Err(ActionError::new(ErrorCode::ActionFailed, format!("waiting for '{}': {e}", argv[0])));
                }
            },
            _ = tokio::time::sleep(Duration::from_secs(timeout)) => End::TimedOut,
            _ = ctx.cancel.cancelled() => End::Cancelled,
        };
        if !matches!(end, End::Exited(_)) {
            kill_group(pid);
            let _ = child.wait().await;
        }
        // Descendants still holding the output open are killed with the group.
        let drain = async {
            let o = out.await.unwrap_or(Captured {
                kept: vec![],
                total: 0,
            });
            let e = err.await.unwrap_or(Captured {
                kept: vec![],
                total: 0,
            });
            (o, e)
        };
        tokio::pin!(drain);
        let (o, e) = match tokio::time::timeout(DRAIN_AFTER_EXIT, &mut drain).await {
            Ok(v) => v,
            Err(_) => {
                kill_group(pid);
                drain.await
            }
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let text = |c: &Captured| String::from_utf8_lossy(&c.kept).into_owned();
        let output = json!({
            "exit_code": match &end { End::Exited(s) => s.code().map(Value::from).unwrap_or(Value::Null), _ => Value::Null },
            "stdout": text(&o),
            "stderr": text(&e),
            "stdout_truncated": o.total > o.kept.len() as u64,
            "stderr_truncated": e.total > e.kept.len() as u64,
            "duration_ms": duration_ms,
        });
        let tail = |s: &str| -> String {
            let s = s.trim_end();
            let start = s.len().saturating_sub(500);
            let start = (start..=s.len())
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(s.len());
            s[start..].to_string()
        };
        match end {
            End::Cancelled => Err(ActionError::cancelled()),
            End::TimedOut => Err(ActionError::new(
                ErrorCode::TimeoutExceeded,
                format!(
                    "'{}' ran longer than {timeout} s; its process group was killed. stderr: {}",
                    argv[0],
                    tail(&text(&e))
                ),
            )),
            End::Exited(status) => match status.code() {
                Some(c) if ok_codes.contains(&i64::from(c)) => Ok(output),
                Some(c) => Err(ActionError::new(
                    ErrorCode::ActionFailed,
                    format!(
                        "'{}' exited with code {c} (ok: {ok_codes:?}). stderr: {}",
                        argv[0],
                        tail(&text(&e))
                    ),
                )),
                None => {
                    use std::os::unix::process::ExitStatusExt;
                    Err(ActionError::new(
                        ErrorCode::ActionFailed,
                        format!(
                            "'{}' was killed by signal {}",
                            argv[0],
                            status.signal().unwrap_or_default()
                        ),
                    ))
                }
            },
        }
    }
}

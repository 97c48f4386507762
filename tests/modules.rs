//! The action modules through a real MCP client: discovery and policy
//! (list_modules, disabled modules refused at definition time), shell.run
//! with real child processes, fs confined to its roots, and http.request
//! against a local HTTP server started by the test.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Run one action as an auto task and return the task (get_task view).
async fn act(c: &Client, module: &str, action: &str, params: Value) -> Value {
    let name = format!("t{}", SEQ.fetch_add(1, Ordering::SeqCst));
    let v = ok(
        c,
        "execute_task",
        json!({"task_name": name, "module": module, "action": action,
               "parameters": params, "wait_seconds": 50}),
    )
    .await;
    let t = ok(
        c,
        "get_task",
        json!({"task_id": v["task_id"], "wait_seconds": 50}),
    )
    .await;
    assert!(
        matches!(
            t["status"].as_str(),
            Some("succeeded" | "failed" | "timed_out")
        ),
        "{t}"
    );
    t
}

/// The action succeeded; its result.
async fn done(c: &Client, module: &str, action: &str, params: Value) -> Value {
    let t = act(c, module, action, params.clone()).await;
    assert_eq!(t["status"], "succeeded", "{module}.{action} {params}: {t}");
    t["result"].clone()
}

/// The action failed with `code`; its error message.
async fn refused(c: &Client, module: &str, action: &str, params: Value, code: &str) -> String {
    let t = act(c, module, action, params.clone()).await;
    assert_ne!(t["status"], "succeeded", "{module}.{action} {params}: {t}");
    assert_eq!(t["error"]["code"], code, "{module}.{action} {params}: {t}");
    t["error"]["message"].as_str().unwrap().to_string()
}

fn toml_path(p: &Path) -> String {
    p.to_str().unwrap().replace('\\', "\\\\")
}

/// Is a process gone (or a zombie waiting to be reaped)?
fn process_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_gone(pid: &str) {
    for _ in 0..100 {
        if process_gone(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} is still running");
}

async fn read_pid(path: &Path) -> String {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s.trim().to_string();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} was never written", path.display());
}

#[tokio::test]
async fn list_modules_shows_the_policy_and_disabled_modules_are_refused_at_definition() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &["--store", "memory"]).await;
    // The whole list is a summary by default: no schemas (they are ~29 KB).
    let summary = ok(&c, "list_modules", json!({})).await;
    let all = summary["modules"].as_array().unwrap();
    assert!(all.len() >= 7, "{summary}");
    assert!(
        all.iter()
            .flat_map(|m| m["actions"].as_array().unwrap())
            .all(|a| a["parameters_schema"].is_null() && a["output_schema"].is_null()),
        "{summary}"
    );
    let list = ok(&c, "list_modules", json!({"include_schemas": true})).await;
    let modules: Vec<&Value> = list["modules"].as_array().unwrap().iter().collect();
    let by = |n: &str| {
        modules
            .iter()
            .find(|m| m["name"] == n)
            .unwrap_or_else(|| panic!("no module {n}: {list}"))
    };
    for (name, enabled) in [
        ("core", true),
        ("shell", false),
        ("http", false),
        ("fs", true),
        ("mcp", false),
        ("workflow", true),
        ("agent", true),
    ] {
        assert_eq!(by(name)["enabled"], enabled, "{name}: {list}");
    }
    assert!(
        by("shell")["enable_hint"]
            .as_str()
            .unwrap()
            .contains("[modules.shell] enabled = true")
    );
    assert!(
        by("mcp")["enable_hint"]
            .as_str()
            .unwrap()
            .contains("[[mcp_servers]]")
    );
    let run = by("shell")["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "shell.run")
        .unwrap();
    assert!(run["parameters_schema"]["properties"]["argv"].is_object());
    assert!(run["output_schema"]["properties"]["exit_code"].is_object());
    let fs_actions: Vec<&str> = by("fs")["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        fs_actions,
        ["fs.delete", "fs.list", "fs.mkdir", "fs.read", "fs.write"]
    );

    let one = ok(
        &c,
        "list_modules",
        json!({"module": "fs", "include_schemas": false}),
    )
    .await;
    assert_eq!(one["modules"].as_array().unwrap().len(), 1);
    assert!(one["modules"][0]["actions"][0]["parameters_schema"].is_null());
    // One module asked for: its schemas by default.
    let fs = ok(&c, "list_modules", json!({"module": "fs"})).await;
    assert!(
        fs["modules"][0]["actions"][0]["parameters_schema"]["properties"].is_object(),
        "{fs}"
    );
    let e = err(
        &c,
        "list_modules",
        json!({"module": "nope"}),
        "MODULE_NOT_FOUND",
    )
    .await;
    assert!(e["hint"].as_str().unwrap().contains("shell"));

    // A step on a disabled module is refused when the workflow is defined.
    let e = err(
        &c,
        "create_workflow",
        json!({"name": "sh", "steps": [{"name": "s", "module": "shell", "action": "run", "parameters": {"argv": ["true"]}}]}),
        "MODULE_NOT_FOUND",
    )
    .await;
    let p = &e["details"]["problems"][0];
    assert_eq!(p["code"], "MODULE_DISABLED", "{e}");
    assert!(
        p["message"]
            .as_str()
            .unwrap()
            .contains("[modules.shell] enabled = true"),
        "{e}"
    );
    let e = err(
        &c,
        "create_task",
        json!({"task": {"name": "sh", "module": "http", "action": "request", "parameters": {"url": "http://example.com"}}}),
        "MODULE_NOT_FOUND",
    )
    .await;
    assert!(
        e["hint"]
            .as_str()
            .unwrap()
            .contains("[modules.http] enabled = true"),
        "{e}"
    );
    // Parameters are checked against the action's schema at definition time.
    let v = ok(
        &c,
        "validate_workflow",
        json!({"name": "bad", "steps": [{"name": "r", "module": "fs", "action": "read", "parameters": {"encoding": "utf8"}}]}),
    )
    .await;
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0]["code"], "INVALID_PARAMETERS", "{v}");
    assert!(
        v["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("\"path\" is a required property"),
        "{v}"
    );
    // agent.task and workflow.run are for steps; tasks get a hint instead.
    let e = err(
        &c,
        "create_task",
        json!({"task": {"name": "a", "module": "agent", "action": "task", "parameters": {"instructions": "x"}}}),
        "INVALID_PARAMETERS",
    )
    .await;
    assert!(
        e["hint"]
            .as_str()
            .unwrap()
            .contains("omit module and action"),
        "{e}"
    );
}

fn shell_config(root: &Path, extra: &str) -> String {
    format!(
        "[modules.shell]\nenabled = true\nallowed_roots = [\"{}\"]\n{extra}",
        toml_path(root)
    )
}

#[tokio::test]
async fn shell_runs_programs_with_exit_codes_input_environment_and_output_limits() {
    let env = Env::new();
    let root = env.path().join("work");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let c = env
        .stdio_config(Era::Legacy, &shell_config(&root, ""))
        .await;

    let out = done(&c, "shell", "run", json!({"argv": ["echo", "hello"]})).await;
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["stdout"], "hello\n");
    assert_eq!(out["stdout_truncated"], false);
    assert!(out["duration_ms"].as_u64().is_some());

    let msg = refused(
        &c,
        "shell",
        "run",
        json!({"argv": ["sh", "-c", "echo oops >&2; exit 3"]}),
        "ACTION_FAILED",
    )
    .await;
    assert!(msg.contains("code 3") && msg.contains("oops"), "{msg}");
    let out = done(
        &c,
        "shell",
        "run",
        json!({"argv": ["sh", "-c", "exit 3"], "ok_exit_codes": [0, 3]}),
    )
    .await;
    assert_eq!(out["exit_code"], 3);

    let out = done(
        &c,
        "shell",
        "run",
        json!({"command": "printf 'a\\nb\\n' | wc -l", "shell": true}),
    )
    .await;
    assert_eq!(out["stdout"].as_str().unwrap().trim(), "2");
    let out = done(
        &c,
        "shell",
        "run",
        json!({"argv": ["cat"], "stdin": "fed in"}),
    )
    .await;
    assert_eq!(out["stdout"], "fed in");
    let out = done(
        &c,
        "shell",
        "run",
        json!({"argv": ["sh", "-c", "printf %s \"$GREETING\""], "env": {"GREETING": "hi there"}}),
    )
    .await;
    assert_eq!(out["stdout"], "hi there");
    let out = done(&c, "shell", "run", json!({"argv": ["pwd"]})).await;
    assert!(
        out["stdout"].as_str().unwrap().trim().ends_with("/work"),
        "{out}"
    );
    let out = done(&c, "shell", "run", json!({"argv": ["pwd"], "cwd": "sub"})).await;
    assert!(
        out["stdout"]
            .as_str()
            .unwrap()
            .trim()
            .ends_with("/work/sub"),
        "{out}"
    );

    // Output beyond the limit is dropped and flagged; the command still succeeds.
    let out = done(
        &c,
        "shell",
        "run",
        json!({"command": "head -c 100000 /dev/zero | tr '\\000' x; echo done >&2", "shell": true, "max_output_bytes": 100}),
    )
    .await;
    assert_eq!(out["stdout"].as_str().unwrap().len(), 100);
    assert_eq!(out["stdout"].as_str().unwrap(), "x".repeat(100));
    assert_eq!(out["stdout_truncated"], true);
    assert_eq!(out["stderr"], "done\n");
    assert_eq!(out["stderr_truncated"], false);

    // Policy: working directories stay inside allowed_roots.
    let msg = refused(
        &c,
        "shell",
        "run",
        json!({"argv": ["pwd"], "cwd": "/"}),
        "PERMISSION_DENIED",
    )
    .await;
    assert!(msg.contains("allowed_roots"), "{msg}");
    refused(
        &c,
        "shell",
        "run",
        json!({"argv": ["definitely-not-a-program-xyz"]}),
        "ACTION_FAILED",
    )
    .await;
    // Both or neither of argv and command is refused by the schema.
    err(
        &c,
        "create_task",
        json!({"task": {"name": "both", "module": "shell", "action": "run", "parameters": {"argv": ["true"], "command": "true", "shell": true}}}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "create_task",
        json!({"task": {"name": "noshell", "module": "shell", "action": "run", "parameters": {"command": "true"}}}),
        "INVALID_PARAMETERS",
    )
    .await;
}

#[tokio::test]
async fn shell_timeouts_and_cancellation_kill_the_whole_process_tree() {
    let env = Env::new();
    let root = env.path().join("work");
    std::fs::create_dir_all(&root).unwrap();
    let c = env
        .stdio_config(Era::Modern, &shell_config(&root, ""))
        .await;
    // A command that starts a background grandchild and waits.
    let tree = |pidfile: &str| json!({"command": format!("sleep 300 & echo $! > {pidfile}; wait"), "shell": true});

    // The action's own timeout.
    let mut p = tree("a.pid");
    p["timeout_seconds"] = json!(1);
    let t = act(&c, "shell", "run", p).await;
    assert_eq!(t["status"], "timed_out", "{t}");
    assert_eq!(t["error"]["code"], "TIMEOUT_EXCEEDED");
    assert!(
        t["error"]["message"]
            .as_str()
            .unwrap()
            .contains("process group was killed")
    );
    wait_gone(&read_pid(&root.join("a.pid")).await).await;

    // The step's timeout (the engine cancels the action).
    ok(
        &c,
        "create_workflow",
        json!({"name": "slow", "steps": [{"name": "s", "module": "shell", "action": "run", "parameters": tree("b.pid"), "timeout_seconds": 1}]}),
    )
    .await;
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "slow", "wait_seconds": 30}),
    )
    .await;
    assert_eq!(run["steps"][0]["status"], "timed_out", "{run}");
    wait_gone(&read_pid(&root.join("b.pid")).await).await;

    // Cancelling the run.
    ok(
        &c,
        "create_workflow",
        json!({"name": "forever", "steps": [{"name": "s", "module": "shell", "action": "run", "parameters": tree("c.pid")}]}),
    )
    .await;
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "forever", "wait_seconds": 0}),
    )
    .await;
    let pid = read_pid(&root.join("c.pid")).await;
    assert!(!process_gone(&pid));
    ok(&c, "cancel_workflow_run", json!({"run_id": run["run_id"]})).await;
    wait_gone(&pid).await;
    let run = ok(
        &c,
        "get_workflow_run",
        json!({"run_id": run["run_id"], "wait_seconds": 10}),
    )
    .await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(run["steps"][0]["status"], "cancelled", "{run}");
}

#[tokio::test]
async fn shell_allowed_commands_limit_what_runs() {
    let env = Env::new();
    let root = env.path().join("work");
    std::fs::create_dir_all(&root).unwrap();
    let c = env
        .stdio_config(
            Era::Legacy,
            &shell_config(&root, "allowed_commands = [\"echo\"]\n"),
        )
        .await;
    let out = done(&c, "shell", "run", json!({"argv": ["echo", "ok"]})).await;
    assert_eq!(out["stdout"], "ok\n");
    let msg = refused(
        &c,
        "shell",
        "run",
        json!({"argv": ["ls"]}),
        "PERMISSION_DENIED",
    )
    .await;
    assert!(msg.contains("allowed_commands"), "{msg}");
    let msg = refused(
        &c,
        "shell",
        "run",
        json!({"command": "echo hi", "shell": true}),
        "PERMISSION_DENIED",
    )
    .await;
    assert!(msg.contains("sh"), "{msg}");
    refused(
        &c,
        "shell",
        "run",
        json!({"argv": ["echo"], "env": {"PATH": "/tmp"}}),
        "PERMISSION_DENIED",
    )
    .await;
    // A refusal is not retried: the policy will not change between attempts.
    let v = ok(
        &c,
        "execute_task",
        json!({"task_name": "retry-ls", "module": "shell", "action": "run",
               "parameters": {"argv": ["ls"]}, "retry_count": 3, "wait_seconds": 50}),
    )
    .await;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["retry_attempts"], 0, "{v}");
}

#[tokio::test]
async fn fs_stays_inside_its_roots_and_writes_atomically() {
    let env = Env::new();
    let root = env.path().join("root");
    let outside = env.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::fs::write(root.join("big.bin"), vec![7u8; 2000]).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("secret-link")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::os::unix::fs::symlink(root.join("data"), root.join("inside-link")).unwrap();
    let c = env
        .stdio_config(
            Era::Modern,
            &format!(
                "[modules.fs]\nroots = [\"{}\"]\nmax_read_bytes = 1000\nmax_write_bytes = 1000\n",
                toml_path(&root)
            ),
        )
        .await;

    let w = done(
        &c,
        "fs",
        "write",
        json!({"path": "a/b/c.txt", "content": "hello"}),
    )
    .await;
    assert_eq!(w["created"], true);
    assert_eq!(w["bytes_written"], 5);
    assert_eq!(
        std::fs::read_to_string(root.join("a/b/c.txt")).unwrap(),
        "hello"
    );
    let r = done(&c, "fs", "read", json!({"path": "a/b/c.txt"})).await;
    assert_eq!(r["content"], "hello");
    let w = done(
        &c,
        "fs",
        "write",
        json!({"path": "a/b/c.txt", "content": "again"}),
    )
    .await;
    assert_eq!(w["created"], false);
    // No temporary file is left next to the target.
    let names: Vec<String> = std::fs::read_dir(root.join("a/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["c.txt"]);
    refused(
        &c,
        "fs",
        "write",
        json!({"path": "a/b/c.txt", "content": "x", "overwrite": false}),
        "CONFLICT",
    )
    .await;
    let b = done(
        &c,
        "fs",
        "write",
        json!({"path": "bin.dat", "content": "AAEC/w==", "encoding": "base64"}),
    )
    .await;
    assert_eq!(b["bytes_written"], 4);
    assert_eq!(std::fs::read(root.join("bin.dat")).unwrap(), [0, 1, 2, 255]);
    let r = done(
        &c,
        "fs",
        "read",
        json!({"path": "bin.dat", "encoding": "base64"}),
    )
    .await;
    assert_eq!(r["content"], "AAEC/w==");
    refused(
        &c,
        "fs",
        "read",
        json!({"path": "bin.dat"}),
        "INVALID_PARAMETERS",
    )
    .await;

    done(&c, "fs", "mkdir", json!({"path": "m/n"})).await;
    assert!(root.join("m/n").is_dir());
    let l = done(&c, "fs", "list", json!({"path": "a", "recursive": true})).await;
    let paths: Vec<&str> = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["b", "b/c.txt"]);
    let l = done(&c, "fs", "list", json!({"max_entries": 2})).await;
    assert_eq!(l["truncated"], true);
    assert_eq!(l["entries"].as_array().unwrap().len(), 2);
    // Absolute paths inside a root are fine; symlinks that stay inside too.
    let abs = root.join("a/b/c.txt");
    let r = done(&c, "fs", "read", json!({"path": abs.to_str().unwrap()})).await;
    assert_eq!(r["content"], "again");
    done(
        &c,
        "fs",
        "write",
        json!({"path": "inside-link/x.txt", "content": "in"}),
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(root.join("data/x.txt")).unwrap(),
        "in"
    );

    // Every escape is refused and changes nothing.
    let secret = outside.join("secret.txt");
    for (action, params) in [
        ("read", json!({"path": "../outside/secret.txt"})),
        ("read", json!({"path": "a/../../outside/secret.txt"})),
        ("read", json!({"path": secret.to_str().unwrap()})),
        ("read", json!({"path": "escape/secret.txt"})),
        ("read", json!({"path": "secret-link"})),
        ("write", json!({"path": "escape/new.txt", "content": "x"})),
        (
            "write",
            json!({"path": outside.join("new.txt").to_str().unwrap(), "content": "x"}),
        ),
        ("mkdir", json!({"path": "escape/dir"})),
        ("list", json!({"path": "escape"})),
        ("delete", json!({"path": "escape/secret.txt"})),
        ("delete", json!({"path": "."})),
    ] {
        refused(&c, "fs", action, params, "PERMISSION_DENIED").await;
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "secret");
    assert!(!outside.join("new.txt").exists() && !outside.join("dir").exists());
    // Deleting a symlink removes the link, never its target.
    let d = done(&c, "fs", "delete", json!({"path": "escape"})).await;
    assert_eq!(d["type"], "symlink");
    assert!(secret.exists() && !root.join("escape").exists());

    // Limits.
    let msg = refused(
        &c,
        "fs",
        "read",
        json!({"path": "big.bin", "encoding": "base64"}),
        "LIMIT_EXCEEDED",
    )
    .await;
    assert!(msg.contains("max_read_bytes"), "{msg}");
    refused(
        &c,
        "fs",
        "write",
        json!({"path": "huge.txt", "content": "x".repeat(1001)}),
        "LIMIT_EXCEEDED",
    )
    .await;
    assert!(!root.join("huge.txt").exists());
    refused(
        &c,
        "fs",
        "read",
        json!({"path": "missing.txt"}),
        "NOT_FOUND",
    )
    .await;

    // Deleting: folders need recursive.
    refused(&c, "fs", "delete", json!({"path": "a"}), "CONFLICT").await;
    done(&c, "fs", "delete", json!({"path": "a", "recursive": true})).await;
    assert!(!root.join("a").exists());
    let d = done(&c, "fs", "delete", json!({"path": "a", "missing_ok": true})).await;
    assert_eq!(d["deleted"], false);
}

/// A small HTTP server for the http module's tests.
async fn http_fixture() -> String {
    use axum::routing::{any, get};
    use axum::{Router, extract::Query, http::HeaderMap, http::Method, response::IntoResponse};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    let app = Router::new()
        .route(
            "/json",
            get(|| async { axum::Json(json!({"hello": "world", "n": 1})) }),
        )
        .route(
            "/echo",
            any(
                |method: Method,
                 headers: HeaderMap,
                 Query(q): Query<std::collections::HashMap<String, String>>,
                 body: String| async move {
                    axum::Json(json!({
                        "method": method.as_str(),
                        "query": q,
                        "x_test": headers.get("x-test").and_then(|v| v.to_str().ok()),
                        "content_type": headers.get("content-type").and_then(|v| v.to_str().ok()),
                        "authorization": headers.get("authorization").and_then(|v| v.to_str().ok()),
                        "body": body,
                    }))
                },
            ),
        )
        .route("/text", get(|| async { "plain text" }))
        .route(
            "/redirect",
            get(|| async { axum::response::Redirect::to("/json") }),
        )
        .route(
            "/post-redirect",
            any(|| async { axum::response::Redirect::to("/echo") }),
        )
        .route(
            "/loop",
            get(|| async { axum::response::Redirect::to("/loop") }),
        )
        .route(
            "/redirect-private",
            get(move || async move {
                axum::response::Redirect::to(&format!("http://127.0.0.2:{port}/json"))
            }),
        )
        .route("/big", get(|| async { "y".repeat(1_000_000) }))
        .route(
            "/missing",
            get(|| async { (axum::http::StatusCode::NOT_FOUND, "nothing here").into_response() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn http_requests_follow_the_policy_on_every_hop() {
    let base = http_fixture().await;
    let env = Env::new();
    let c = env
        .stdio_config(
            Era::Modern,
            // The 1 MB body below is read whole through get_task.
            "[limits]\nmax_result_bytes = 4000000\n\n[modules.http]\nenabled = true\nallowed_private = [\"127.0.0.1\"]\n",
        )
        .await;
    let r = done(
        &c,
        "http",
        "request",
        json!({"url": format!("{base}/json")}),
    )
    .await;
    assert_eq!(r["status"], 200);
    assert_eq!(r["ok"], true);
    assert_eq!(r["json"], json!({"hello": "world", "n": 1}));
    assert!(
        r["headers"]["content-type"]
            .as_str()
            .unwrap()
            .contains("json")
    );

    let r = done(
        &c,
        "http",
        "request",
        json!({"url": format!("{base}/echo"), "method": "POST", "json": {"a": [1, 2]},
               "headers": {"x-test": "yes"}, "query": {"q": "1 2", "n": 3}}),
    )
    .await;
    let echo = &r["json"];
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["x_test"], "yes");
    assert_eq!(echo["content_type"], "application/json");
    assert_eq!(echo["query"], json!({"q": "1 2", "n": "3"}));
    assert_eq!(
        serde_json::from_str::<Value>(echo["body"].as_str().unwrap()).unwrap(),
        json!({"a": [1, 2]})
    );
    for method in ["PUT", "PATCH", "DELETE"] {
        let r = done(
            &c,
            "http",
            "request",
            json!({"url": format!("{base}/echo"), "method": method, "body": "raw"}),
        )
        .await;
        assert_eq!(r["json"]["method"], method);
        assert_eq!(r["json"]["body"], "raw");
    }
    let r = done(
        &c,
        "http",
        "request",
        json!({"url": format!("{base}/text")}),
    )
    .await;
    assert_eq!(r["body"], "plain text");
    assert!(r["json"].is_null());

    // Redirects are followed and reported; a POST answered with 303 becomes a GET.
    let r = done(
        &c,
        "http",
        "request",
        json!({"url": format!("{base}/redirect")}),
    )
    .await;
    assert_eq!(r["json"]["hello"], "world");
    assert_eq!(r["redirects"], json!([format!("{base}/json")]));
    let r = done(
        &c,
        "http",
        "request",
        json!({"url": format!("{base}/post-redirect"), "method": "POST", "body": "x"}),
    )
    .await;
    assert_eq!(r["json"]["method"], "GET");
    let r = done(
        &c,
        "http",
        "request",
        json!({"url": format!("{base}/redirect"), "follow_redirects": false}),
    )
    .await;
    assert_eq!(r["status"], 303);
    let msg = refused(
        &c,
        "http",
        "request",
        json!({"url": format!("{base}/loop")}),
        "ACTION_FAILED",
    )
    .await;
    assert!(msg.contains("max_redirects"), "{msg}");
    // A redirect to a private address that is not allowed is refused.
    let msg = refused(
        &c,
        "http",
        "request",
        json!({"url": format!("{base}/redirect-private")}),
        "PERMISSION_DENIED",
    )
    .await;
    assert!(
        msg.contains("127.0.0.2") && msg.contains("allowed_private"),
        "{msg}"
    );

    // Status and size limits.
    let msg = refused(
        &c,
        "http",
        "request",
        json!({"url": format!("{base}/missing")}),
        "ACTION_FAILED",
    )
    .await;
    assert!(msg.contains("404"), "{msg}");
    let r = done(
        &c,
        "http",
        "request",
        json!({"url": format!("{base}/missing"), "fail_on_status": false}),
    )
    .await;
    assert_eq!(r["status"], 404);
    assert_eq!(r["ok"], false);
    let msg = refused(
        &c,
        "http",
        "request",
        json!({"url": format!("{base}/big"), "max_response_bytes": 1000}),
        "LIMIT_EXCEEDED",
    )
    .await;
    assert!(msg.contains("1000"), "{msg}");
    let r = done(&c, "http", "request", json!({"url": format!("{base}/big")})).await;
    assert_eq!(r["body"].as_str().unwrap().len(), 1_000_000);
    let t = act(
        &c,
        "http",
        "request",
        json!({"url": format!("{base}/slow"), "timeout_seconds": 1}),
    )
    .await;
    assert_eq!(t["error"]["code"], "TIMEOUT_EXCEEDED", "{t}");
    refused(
        &c,
        "http",
        "request",
        json!({"url": "ftp://127.0.0.1/x"}),
        "PERMISSION_DENIED",
    )
    .await;
    // Other non-public addresses stay refused: only 127.0.0.1 was allowed.
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/",
        "http://[::1]:80/",
        "http://127.0.0.2/",
    ] {
        let msg = refused(
            &c,
            "http",
            "request",
            json!({"url": url}),
            "PERMISSION_DENIED",
        )
        .await;
        assert!(msg.contains("allowed_private"), "{url}: {msg}");
    }
}

#[tokio::test]
async fn http_refuses_private_addresses_and_unlisted_hosts_by_default() {
    let base = http_fixture().await;
    let port = base.rsplit(':').next().unwrap().to_string();
    let env = Env::new();
    let c = env
        .stdio_config(
            Era::Legacy,
            "[modules.http]\nenabled = true\nallowed_hosts = [\"localhost\", \"127.0.0.1\", \"*.example.test\"]\n",
        )
        .await;
    let msg = refused(
        &c,
        "http",
        "request",
        json!({"url": format!("{base}/json")}),
        "PERMISSION_DENIED",
    )
    .await;
    assert!(
        msg.contains("loopback") && msg.contains("allowed_private"),
        "{msg}"
    );
    // A name is checked after DNS resolution.
    let msg = refused(
        &c,
        "http",
        "request",
        json!({"url": format!("http://localhost:{port}/json")}),
        "PERMISSION_DENIED",
    )
    .await;
    assert!(msg.contains("localhost resolves to"), "{msg}");
    let msg = refused(
        &c,
        "http",
        "request",
        json!({"url": "http://other.invalid/"}),
        "PERMISSION_DENIED",
    )
    .await;
    assert!(msg.contains("allowed_hosts"), "{msg}");
}

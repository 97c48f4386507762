//! Per-call benchmark (not a test): every read-only tool of the real server
//! against the floor of the stack (a bare rmcp server with one trivial tool,
//! `../shared/bench/rmcp-floor`), side by side in one run over stdio, with a
//! lean JSON-RPC client (a line out, a line in, no SDK). Calls alternate: one
//! to the floor, one to myrmex, so both see the same machine noise. Prints
//! p50/p99 round trip, server CPU and context switches per call (summed over
//! the server's threads from /proc), and the ratio of p50 to the floor's.
//!
//!     cargo build --release --bin myrmex
//!     cargo run --release --example bench_calls
//!     BENCH_CALLS=2000 BENCH_FLOOR=/path/to/rmcp_probe cargo run --release --example bench_calls
//!
//! BENCH_TOOLS=a,b measures only those tools. The floor is found at BENCH_FLOOR, or built once (release) from
//! BENCH_FLOOR_SRC (default `../shared/bench/rmcp-floor` beside the checkout)
//! into `target/bench-floor`. MYRMEX_BIN picks the myrmex binary (it is not
//! passed on: MYRMEX_* variables are the server's configuration).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use common::{proc_status, thread_usage};
use serde_json::{Value, json};

/// A server child spoken to one JSON-RPC line at a time.
struct Lean {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
    line: String,
}

impl Lean {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut s = Self {
            child,
            stdin,
            stdout,
            next_id: 0,
            line: String::new(),
        };
        s.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "bench_calls", "version": "0"}}),
        );
        s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        s
    }

    fn send(&mut self, v: &Value) {
        let mut text = v.to_string();
        text.push('\n');
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// One request; its answer's `result` (panics on a JSON-RPC error).
    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            self.line.clear();
            if self.stdout.read_line(&mut self.line).unwrap() == 0 {
                panic!("the server closed its output");
            }
            let v: Value = serde_json::from_str(&self.line).unwrap();
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// One tool call; the round trip in µs (a tool error panics: the bench
    /// must measure answers, not refusals).
    fn call(&mut self, tool: &str, args: &Value) -> f64 {
        let t = Instant::now();
        let r = self.request("tools/call", json!({"name": tool, "arguments": args}));
        let us = t.elapsed().as_secs_f64() * 1e6;
        assert_ne!(r["isError"], json!(true), "{tool}: {r}");
        us
    }

    /// (CPU ns, context switches) of every thread of the server so far.
    fn usage(&self) -> (u64, u64) {
        thread_usage(self.child.id())
    }

    fn rss_kib(&self) -> u64 {
        proc_status(format!("/proc/{}/status", self.child.id()), "VmRSS")
    }
}

impl Drop for Lean {
    fn drop(&mut self) {
        // End of input ends a stdio server; a profiler around it writes its data.
        self.stdin = None;
        for _ in 0..300 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The floor binary: BENCH_FLOOR, or built from its source into target/.
fn floor_binary() -> PathBuf {
    if let Ok(p) = std::env::var("BENCH_FLOOR") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = std::env::var("BENCH_FLOOR_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("../shared/bench/rmcp-floor"));
    let build = root.join("target/bench-floor");
    let bin = build.join("target/release/rmcp_probe");
    if bin.exists() {
        return bin;
    }
    assert!(
        src.join("Cargo.toml").exists(),
        "no floor server: set BENCH_FLOOR to its binary or BENCH_FLOOR_SRC to its source ({} has none)",
        src.display()
    );
    eprintln!("building the floor server from {} ...", src.display());
    std::fs::create_dir_all(&build).unwrap();
    let ok = Command::new("cp")
        .arg("-r")
        .arg(src.join("."))
        .arg(&build)
        .status()
        .unwrap()
        .success()
        && Command::new("cargo")
            .args(["build", "--release", "--quiet"])
            .current_dir(&build)
            .status()
            .unwrap()
            .success();
    assert!(ok, "the floor server did not build");
    bin
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Row {
    tool: String,
    p50: f64,
    p99: f64,
    cpu_us: f64,
    switches: f64,
}

/// The floor's calls over every row: round trips, CPU and context switches.
#[derive(Default)]
struct FloorTally {
    times: Vec<f64>,
    cpu_ns: u64,
    switches: u64,
}

/// `n` calls of `tool`, alternating with the floor's `create_project` (whose
/// row is measured over all of them together).
fn measure(
    floor: &mut Lean,
    myrmex: &mut Lean,
    tool: &str,
    args: &Value,
    n: usize,
    warm: usize,
    tally: &mut FloorTally,
) -> Row {
    let fargs = json!({"name": "bench"});
    for _ in 0..warm {
        floor.call("create_project", &fargs);
        myrmex.call(tool, args);
    }
    let mut times = Vec::with_capacity(n);
    let (fc0, fs0) = floor.usage();
    let (c0, s0) = myrmex.usage();
    for _ in 0..n {
        tally.times.push(floor.call("create_project", &fargs));
        times.push(myrmex.call(tool, args));
    }
    let (c1, s1) = myrmex.usage();
    let (fc1, fs1) = floor.usage();
    tally.cpu_ns += fc1 - fc0;
    tally.switches += fs1 - fs0;
    times.sort_by(f64::total_cmp);
    Row {
        tool: tool.to_string(),
        p50: pct(&times, 0.5),
        p99: pct(&times, 0.99),
        cpu_us: (c1 - c0) as f64 / n as f64 / 1000.0,
        switches: (s1 - s0) as f64 / n as f64,
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let warm = n / 5;
    let bin = std::env::var("MYRMEX_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/myrmex").to_string()
    });
    let floor_bin = floor_binary();
    let dir = tempfile::tempdir().unwrap();

    let mut floor = Lean::spawn(Command::new(&floor_bin));
    let mut cmd = Command::new(&bin);
    cmd.env_remove("MYRMEX_BIN")
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--log-level", "warn", "serve", "--tools", "all"]);
    let mut myrmex = Lean::spawn(cmd);
    let idle_kib = myrmex.rss_kib();

    // A little state so that the reads have something to read.
    let mut setup = |tool: &str, args: Value| -> Value {
        let r = myrmex.request("tools/call", json!({"name": tool, "arguments": args}));
        assert_ne!(r["isError"], json!(true), "{tool}: {r}");
        r["structuredContent"].clone()
    };
    let session = setup("create_session", json!({"name": "bench"}))["session_id"].clone();
    let tasks: Vec<Value> = (0..20).map(|i| json!({"name": format!("t{i}")})).collect();
    setup(
        "create_tasks",
        json!({"session_id": session, "tasks": tasks}),
    );
    setup(
        "create_workflow",
        json!({"session_id": session, "name": "w",
               "steps": [{"name": "a", "module": "core", "action": "echo"}]}),
    );

    // Every read-only tool whose required arguments the bench can fill.
    let list = myrmex.request("tools/list", json!({}));
    let only: Option<Vec<String>> = std::env::var("BENCH_TOOLS")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    let mut reads: Vec<(String, Value)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for t in list["tools"].as_array().unwrap() {
        if t["annotations"]["readOnlyHint"] != json!(true) {
            continue;
        }
        let name = t["name"].as_str().unwrap().to_string();
        if only.as_ref().is_some_and(|o| !o.contains(&name)) {
            continue;
        }
        let required: Vec<&str> = t["inputSchema"]["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut args = serde_json::Map::new();
        let mut fillable = true;
        for r in required {
            match r {
                "session_id" => {
                    args.insert("session_id".into(), session.clone());
                }
                "workflow_name" if name != "get_template" => {
                    args.insert("session_id".into(), session.clone());
                    args.insert("workflow_name".into(), json!("w"));
                }
                _ => fillable = false,
            }
        }
        if fillable {
            reads.push((name, Value::Object(args)));
        } else {
            skipped.push(name);
        }
    }

    println!(
        "{n} calls per tool after {warm} warm-up, alternating with the floor's create_project over stdio"
    );
    println!(
        "{:<26} {:>9} {:>9} {:>7} {:>11} {:>9}",
        "tool", "p50_us", "p99_us", "ratio", "cpu_us/call", "cs/call"
    );
    let mut tally = FloorTally::default();
    let mut rows = Vec::new();
    for (tool, args) in &reads {
        rows.push(measure(
            &mut floor,
            &mut myrmex,
            tool,
            args,
            n,
            warm,
            &mut tally,
        ));
    }
    let floor_times = &mut tally.times;
    floor_times.sort_by(f64::total_cmp);
    let calls = floor_times.len() as f64;
    let floor_p50 = pct(floor_times, 0.5);
    println!(
        "{:<26} {:>9.0} {:>9.0} {:>7.2} {:>11.0} {:>9.1}",
        "floor create_project",
        floor_p50,
        pct(floor_times, 0.99),
        1.0,
        tally.cpu_ns as f64 / calls / 1000.0,
        tally.switches as f64 / calls
    );
    for r in &rows {
        println!(
            "{:<26} {:>9.0} {:>9.0} {:>7.2} {:>11.0} {:>9.1}",
            r.tool,
            r.p50,
            r.p99,
            r.p50 / floor_p50,
            r.cpu_us,
            r.switches
        );
    }
    if !skipped.is_empty() {
        println!("not measured (required arguments the bench does not make): {skipped:?}");
    }
    println!(
        "rss KiB: floor {}, myrmex idle {idle_kib}, myrmex after {} calls {}",
        floor.rss_kib(),
        rows.len() * (n + warm),
        myrmex.rss_kib()
    );
}

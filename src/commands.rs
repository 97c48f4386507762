//! The `validate` and `run` commands: workflow files without an MCP client.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::Config;
use crate::engine::runs::view_final;
use crate::engine::workflows::ExecuteRequest;
use crate::engine::workflows::library::parse_file;
use crate::engine::{Engine, Principal};
use crate::model::{RunStatus, StepStatus};

/// `myrmex validate FILE`: print every problem, or the plan. Returns success.
pub fn validate(config: &Config, file: &Path) -> anyhow::Result<bool> {
    let spec = parse_file(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    match crate::engine::workflows::validate_offline(config, &spec) {
        Ok(plan) => {
            println!(
                "{}: valid workflow '{}' with {} steps",
                file.display(),
                spec.name,
                spec.steps.len()
            );
            for (i, level) in plan.levels.iter().enumerate() {
                println!("  level {i}: {}", level.join(", "));
            }
            println!("  critical path: {}", plan.critical_path.join(" -> "));
            Ok(true)
        }
        Err(problems) => {
            println!("{}: {} problem(s)", file.display(), problems.len());
            for p in problems {
                let at = match (&p.step, &p.field) {
                    (Some(s), Some(f)) => format!(" step {s}, {f}"),
                    (Some(s), None) => format!(" step {s}"),
                    (None, Some(f)) => format!(" {f}"),
                    (None, None) => String::new(),
                };
                println!("  {}{at}: {}", p.code, p.message);
            }
            Ok(false)
        }
    }
}

/// Parse `k=v`: v as JSON when it parses, else as a string.
pub fn parse_params(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--param '{p}' is not KEY=VALUE"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        m.insert(k.to_string(), v);
    }
    Ok(m)
}

/// `myrmex run FILE`: run to the end with a live progress display on stderr,
/// then print the run as JSON on stdout. Ctrl-C cancels the run cleanly.
/// Returns whether the run succeeded.
pub async fn run(engine: &Engine, file: &Path, params: Map<String, Value>) -> anyhow::Result<bool> {
    let spec = parse_file(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let total = spec.steps.len() as u64;
    let p = Principal::local();
    let req = ExecuteRequest {
        workflow_name: spec.name.clone(),
        parameters: params,
        ..Default::default()
    };
    let run_id = engine
        .start_definition(&p, None, spec, req)
        .await
        .map_err(|e| {
            let problems = e
                .details
                .as_ref()
                .and_then(|d| d.get("problems"))
                .map(|p| format!("\n{p:#}"))
                .unwrap_or_default();
            anyhow::anyhow!("{}: {}\nhint: {}{problems}", e.code, e.message, e.hint)
        })?;
    let bar = indicatif::ProgressBar::new(total);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut cancelled = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut none = |_: usize, _: usize, _: String| {};
    let view = loop {
        let v = engine
            .get_workflow_run(&p, &run_id, None, Duration::from_millis(200), &mut none)
            .await?;
        bar.set_position(v.steps_completed as u64);
        let running: Vec<&str> = v
            .steps
            .iter()
            .filter(|s| StepStatus::parse(&s.status) == Some(StepStatus::Running))
            .map(|s| s.name.as_str())
            .collect();
        let retrying = v
            .steps
            .iter()
            .filter(|s| StepStatus::parse(&s.status) == Some(StepStatus::Retrying))
            .count();
        bar.set_message(format!(
            "running: {}{}",
            if running.is_empty() {
                "-".to_string()
            } else {
                running.join(", ")
            },
            if retrying > 0 {
                format!("  retrying: {retrying}")
            } else {
                String::new()
            }
        ));
        if view_final(&v.status) {
            break v;
        }
        tokio::select! {
            _ = &mut ctrl_c, if !cancelled => {
                cancelled = true;
                bar.println("interrupted: cancelling the run");
                engine.runs().cancel(&run_id);
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    };
    bar.finish_and_clear();
    eprintln!(
        "run {} {} in {:.2} s ({} of {} steps)",
        view.run_id, view.status, view.execution_time, view.steps_completed, view.steps_total
    );
    // A closed stdout (`| head`) is not an error of the run.
    let _ = writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(&view)?
    );
    Ok(RunStatus::parse(&view.status) == Some(RunStatus::Succeeded))
}

//! Logging to the client: only for clients that ask (2025-11-25
//! `logging/setLevel`; 2026-07-28 a log level in the request's `_meta`).
#![allow(deprecated)] // MCP logging is deprecated by SEP-2577 but still in use

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use rmcp::model::{
    CallToolRequestParams, LoggingLevel, LoggingMessageNotificationParam, RequestMetaObject,
    SetLevelRequestParams,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient};
use serde_json::{Value, json};

/// A client that keeps the log messages it receives.
#[derive(Clone, Default)]
struct Catcher(Arc<Mutex<Vec<LoggingMessageNotificationParam>>>);

impl ClientHandler for Catcher {
    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.0.lock().unwrap().push(params);
    }
}

async fn connect(env: &Env, era: Era) -> (RunningService<RoleClient, Catcher>, Catcher) {
    let catcher = Catcher::default();
    (env.stdio_with(era, &[], catcher.clone()).await, catcher)
}

async fn run(c: &RunningService<RoleClient, Catcher>, meta: Option<RequestMetaObject>) -> Value {
    let mut req = CallToolRequestParams::new("execute_workflow").with_arguments(
        json!({"workflow_name": "two", "wait_seconds": 20})
            .as_object()
            .unwrap()
            .clone(),
    );
    req.meta = meta;
    let r = c.call_tool(req).await.unwrap();
    r.structured_content.unwrap()
}

async fn define(c: &RunningService<RoleClient, Catcher>) {
    let args = json!({"name": "two", "steps": [
        {"name": "ok", "module": "core", "action": "echo", "parameters": {}},
        {"name": "bad", "module": "core", "action": "fail", "parameters": {"message": "no"}, "dependencies": ["ok"]}
    ]});
    let r = c
        .call_tool(
            CallToolRequestParams::new("create_workflow")
                .with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{r:?}");
}

fn texts(c: &Catcher) -> Vec<(String, String)> {
    c.0.lock()
        .unwrap()
        .iter()
        .map(|m| {
            (
                serde_json::to_value(m.level)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string(),
                m.data["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_2025_client_gets_logs_after_set_level_only() {
    let env = Env::new();
    let (c, caught) = connect(&env, Era::Legacy).await;
    define(&c).await;
    let v = run(&c, None).await;
    assert_eq!(v["status"], "failed");
    assert!(texts(&caught).is_empty(), "no setLevel, no logs");
    c.set_level(SetLevelRequestParams::new(LoggingLevel::Info))
        .await
        .unwrap();
    run(&c, None).await;
    let got = texts(&caught);
    assert!(
        got.contains(&("info".into(), "step 'ok' succeeded".into())),
        "{got:?}"
    );
    assert!(
        got.contains(&("warning".into(), "step 'bad' failed".into())),
        "{got:?}"
    );
    // Warning and above: the success is not sent.
    caught.0.lock().unwrap().clear();
    c.set_level(SetLevelRequestParams::new(LoggingLevel::Warning))
        .await
        .unwrap();
    run(&c, None).await;
    let got = texts(&caught);
    assert_eq!(
        got,
        [("warning".to_string(), "step 'bad' failed".to_string())]
    );
}

#[tokio::test]
async fn a_2026_client_gets_logs_only_for_requests_that_ask() {
    let env = Env::new();
    let (c, caught) = connect(&env, Era::Modern).await;
    define(&c).await;
    run(&c, None).await;
    assert!(
        texts(&caught).is_empty(),
        "no log level in the request, no logs"
    );
    let mut meta = RequestMetaObject::new();
    meta.set_log_level(LoggingLevel::Info);
    run(&c, Some(meta)).await;
    let got = texts(&caught);
    assert!(
        got.contains(&("warning".into(), "step 'bad' failed".into())),
        "{got:?}"
    );
}

//! Progress notifications: execute_workflow and get_workflow_run report steps
//! done of total, with the step that just finished, when given a progress token.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use rmcp::RoleClient;
use rmcp::handler::client::ClientHandler;
use rmcp::model::{
    CallToolRequestParams, NumberOrString, ProgressNotificationParam, ProgressToken,
    RequestMetaObject,
};
use rmcp::service::{NotificationContext, ServiceExt};
use rmcp::transport::TokioChildProcess;
use serde_json::json;

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<ProgressNotificationParam>>>);

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.0.lock().unwrap().push(params);
    }
}

#[tokio::test]
async fn execute_workflow_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_myrmex"));
    cmd.args(["--store", "memory", "--data-dir"])
        .arg(dir.path())
        .arg("serve");
    let (proc, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rec = Recorder::default();
    let client = rec.clone().serve(proc).await.unwrap();
    let steps: Vec<_> = (0..4)
        .map(|i| json!({"name": format!("s{i}"), "module": "core", "action": "sleep", "parameters": {"ms": 100},
                        "dependencies": if i == 0 { vec![] } else { vec![format!("s{}", i - 1)] }}))
        .collect();
    let args = json!({"name": "chain", "steps": steps});
    client
        .call_tool(
            CallToolRequestParams::new("create_workflow")
                .with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    let mut meta = RequestMetaObject::default();
    meta.set_progress_token(ProgressToken(NumberOrString::String("p1".into())));
    let mut req = CallToolRequestParams::new("execute_workflow").with_arguments(
        json!({"workflow_name": "chain", "wait_seconds": 30})
            .as_object()
            .unwrap()
            .clone(),
    );
    req.meta = Some(meta);
    let res = client.call_tool(req).await.unwrap();
    assert_eq!(res.structured_content.unwrap()["status"], "succeeded");
    // Notifications may trail the result slightly.
    for _ in 0..50 {
        if rec.0.lock().unwrap().len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let got = rec.0.lock().unwrap().clone();
    assert!(got.len() >= 4, "{got:?}");
    // rmcp's client assigns the token itself; every notification carries the same one.
    assert!(
        got.iter()
            .all(|p| p.total == Some(4.0) && p.progress_token == got[0].progress_token),
        "{got:?}"
    );
    let progress: Vec<f64> = got.iter().map(|p| p.progress).collect();
    assert!(
        progress.windows(2).all(|w| w[0] < w[1]),
        "progress must increase: {progress:?}"
    );
    assert_eq!(*progress.last().unwrap(), 4.0);
    assert!(
        got.iter()
            .any(|p| p.message.as_deref() == Some("step 's3' succeeded")),
        "{got:?}"
    );
    client.cancel().await.ok();
}

//! MCP resources (myrmex://...) and completions of their template variables,
//! through real clients in both eras.

mod common;

use common::*;
use rmcp::model::ReadResourceRequestParams;
use serde_json::{Value, json};

async fn read(c: &Client, uri: &str) -> Result<Value, String> {
    let r = c
        .read_resource(ReadResourceRequestParams::new(uri))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(r.contents.len(), 1);
    let v = serde_json::to_value(&r.contents[0]).unwrap();
    assert_eq!(v["uri"], uri);
    assert_eq!(v["mimeType"], "application/json");
    Ok(serde_json::from_str(v["text"].as_str().unwrap()).unwrap())
}

#[tokio::test]
async fn every_kind_of_resource_reads_as_json_and_completes() {
    for era in ERAS {
        let env = Env::new();
        let c = env.stdio(era, &[]).await;
        let templates = c.list_all_resource_templates().await.unwrap();
        let mut uris: Vec<&str> = templates.iter().map(|t| t.uri_template.as_str()).collect();
        uris.sort();
        assert_eq!(
            uris,
            [
                "myrmex://projects/{project_id}",
                "myrmex://runs/{run_id}",
                "myrmex://sessions/{session_id}",
                "myrmex://tasks/{task_id}",
                "myrmex://templates/{name}",
                "myrmex://workflows/{name}"
            ]
        );
        ok(
            &c,
            "create_workflow",
            json!({"name": "rw", "steps": [
            {"name": "a", "module": "core", "action": "echo", "parameters": {"x": 1}}]}),
        )
        .await;
        let run = ok(
            &c,
            "execute_workflow",
            json!({"workflow_name": "rw", "wait_seconds": 10}),
        )
        .await;
        let task = ok(&c, "create_task", json!({"task": {"name": "look"}})).await;
        let project = ok(
            &c,
            "create_project",
            json!({"project_name": "res-proj", "template_name": "data_pipeline"}),
        )
        .await;
        let session = ok(&c, "get_session", json!({})).await;

        let w = read(&c, "myrmex://workflows/rw").await.unwrap();
        assert_eq!(w["name"], "rw");
        let r = read(
            &c,
            &format!("myrmex://runs/{}", run["run_id"].as_str().unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(r["status"], "succeeded");
        assert_eq!(r["workflow_results"]["a"], json!({"x": 1}));
        let t = read(
            &c,
            &format!("myrmex://tasks/{}", task["task_id"].as_str().unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(t["name"], "look");
        let pid = project["project_id"].as_str().unwrap();
        let pr = read(&c, &format!("myrmex://projects/{pid}")).await.unwrap();
        assert_eq!(pr["name"], "res-proj");
        let tp = read(&c, "myrmex://templates/data_pipeline").await.unwrap();
        assert_eq!(tp["template"]["name"], "data_pipeline");
        let sid = session["session_id"].as_str().unwrap();
        let s = read(&c, &format!("myrmex://sessions/{sid}")).await.unwrap();
        assert_eq!(s["session_id"], sid);

        for bad in [
            "myrmex://runs/run_nope",
            "myrmex://workflows/nope",
            "myrmex://gadgets/x",
            "https://example.com/x",
        ] {
            let e = read(&c, bad).await.unwrap_err();
            // -32002 (2025-11-25) or -32602 (2026-07-28), naming the URI.
            assert!(
                (e.contains("-32002") || e.contains("-32602")) && e.contains(bad),
                "{bad}: {e}"
            );
        }

        // The concrete resources: sessions, workflows, projects, templates.
        let listed: Vec<String> = c
            .list_all_resources()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.uri.clone())
            .collect();
        for want in [
            format!("myrmex://sessions/{sid}"),
            "myrmex://workflows/rw".to_string(),
            format!("myrmex://projects/{pid}"),
            "myrmex://templates/web_application".to_string(),
        ] {
            assert!(listed.contains(&want), "{want} in {listed:?}");
        }

        // Template variables complete.
        let got = c
            .complete_resource_simple("myrmex://workflows/{name}", "name", "r")
            .await
            .unwrap();
        assert_eq!(got.first().map(String::as_str), Some("rw"), "{got:?}");
        let got = c
            .complete_resource_simple("myrmex://runs/{run_id}", "run_id", "run_")
            .await
            .unwrap();
        assert_eq!(got, [run["run_id"].as_str().unwrap()]);
        let got = c
            .complete_resource_simple("myrmex://projects/{project_id}", "project_id", "")
            .await
            .unwrap();
        assert_eq!(got, [pid]);
        let got = c
            .complete_resource_simple("myrmex://tasks/{task_id}", "task_id", "tsk_")
            .await
            .unwrap();
        assert_eq!(got, [task["task_id"].as_str().unwrap()]);
    }
}

//! Prompts and completions through real clients, in both protocol eras.

mod common;

use common::*;
use rmcp::model::GetPromptRequestParams;
use serde_json::{Value, json};

async fn prompt_text(c: &Client, name: &str, args: Value) -> Result<String, String> {
    let Value::Object(args) = args else { panic!() };
    let r = c
        .get_prompt(GetPromptRequestParams::new(name).with_arguments(args))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(r.messages.len(), 1);
    Ok(r.messages[0]
        .content
        .as_text()
        .expect("text content")
        .text
        .clone())
}

#[tokio::test]
async fn prompts_are_listed_with_their_arguments_and_built_from_live_state() {
    for era in ERAS {
        let env = Env::new();
        let c = env.stdio(era, &[]).await;
        let prompts = c.list_all_prompts().await.unwrap();
        let mut names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["kickoff_project", "plan_workflow", "work_the_task_graph"]
        );
        let plan = prompts.iter().find(|p| p.name == "plan_workflow").unwrap();
        let args: Vec<(&str, Option<bool>)> = plan
            .arguments
            .as_ref()
            .unwrap()
            .iter()
            .map(|a| (a.name.as_str(), a.required))
            .collect();
        assert!(args.contains(&("goal", Some(true))), "{args:?}");
        assert!(
            args.iter()
                .any(|(n, r)| *n == "base_workflow" && *r != Some(true)),
            "{args:?}"
        );

        // plan_workflow: enabled modules only, the schema inline, a base workflow's definition.
        ok(
            &c,
            "create_workflow",
            json!({"name": "greet", "steps": [
            {"name": "hello", "module": "core", "action": "echo", "parameters": {"msg": "hi"}}]}),
        )
        .await;
        let text = prompt_text(
            &c,
            "plan_workflow",
            json!({"goal": "say hello twice", "constraints": "under a minute", "base_workflow": "greet"}),
        )
        .await
        .unwrap();
        assert!(text.contains("Goal: say hello twice"), "{text}");
        assert!(text.contains("Constraints: under a minute"));
        assert!(text.contains("- core.echo"), "{text}");
        assert!(text.contains("- core.sleep [ms]"), "{text}");
        assert!(
            !text.contains("- shell.run"),
            "shell is disabled by default"
        );
        assert!(text.contains("Disabled (do not use): "), "{text}");
        assert!(text.contains("\"hello\""), "the base definition: {text}");
        assert!(text.contains("\"dependencies\""), "the schema: {text}");
        assert!(text.contains("validate_workflow"));
        let e = prompt_text(
            &c,
            "plan_workflow",
            json!({"goal": "x", "base_workflow": "nope"}),
        )
        .await
        .unwrap_err();
        assert!(e.contains("WORKFLOW_NOT_FOUND"), "{e}");
        let e = prompt_text(&c, "plan_workflow", json!({}))
            .await
            .unwrap_err();
        assert!(e.contains("goal"), "{e}");

        // work_the_task_graph: the session's counts and the loop.
        ok(
            &c,
            "create_tasks",
            json!({"tasks": [{"name": "a"}, {"name": "b", "dependencies": ["a"]}]}),
        )
        .await;
        let text = prompt_text(&c, "work_the_task_graph", json!({"agent": "ann"}))
            .await
            .unwrap();
        assert!(text.contains("holds 2 task(s)"), "{text}");
        assert!(text.contains("\"agent\": \"ann\""), "{text}");
        assert!(text.contains("complete_task"));

        // kickoff_project: the templates, or the chosen one.
        let text = prompt_text(&c, "kickoff_project", json!({"goal": "a web app"}))
            .await
            .unwrap();
        for t in ["ai_analysis", "web_application", "data_pipeline"] {
            assert!(text.contains(t), "{t}: {text}");
        }
        let text = prompt_text(
            &c,
            "kickoff_project",
            json!({"goal": "etl", "template": "data_pipeline", "project_name": "etl1"}),
        )
        .await
        .unwrap();
        assert!(text.contains("Template 'data_pipeline'"), "{text}");
        assert!(text.contains("\"project_name\": \"etl1\""), "{text}");
        assert!(!text.contains("web_application"), "{text}");
    }
}

#[tokio::test]
async fn prompt_arguments_complete_with_names() {
    for era in ERAS {
        let env = Env::new();
        let c = env.stdio(era, &[]).await;
        for name in ["qqdeploy-web", "qqdemo", "qqbuild"] {
            ok(
                &c,
                "create_workflow",
                json!({"name": name, "steps": [
                {"name": "s", "module": "core", "action": "echo", "parameters": {}}]}),
            )
            .await;
        }
        let got = c
            .complete_prompt_argument("plan_workflow", "base_workflow", "qqde", None)
            .await
            .unwrap();
        assert_eq!(got.values, ["qqdemo", "qqdeploy-web"]);
        assert_eq!(got.total, Some(2));
        assert_eq!(got.has_more, Some(false));
        // Substring matches come after prefix matches.
        let got = c
            .complete_prompt_simple("plan_workflow", "base_workflow", "qbui")
            .await
            .unwrap();
        assert_eq!(got, ["qqbuild"]);
        let got = c
            .complete_prompt_simple("kickoff_project", "template", "DATA")
            .await
            .unwrap();
        assert_eq!(got, ["data_pipeline"]);
        let s = ok(&c, "create_session", json!({"name": "second"})).await;
        let sid = s["session_id"].as_str().unwrap().to_string();
        let got = c
            .complete_prompt_simple("work_the_task_graph", "session_id", "ses_")
            .await
            .unwrap();
        assert!(got.contains(&sid), "{got:?}");
        assert_eq!(got.len(), 2, "the default session and 'second': {got:?}");
        let got = c
            .complete_prompt_simple("work_the_task_graph", "session_id", &sid[..16])
            .await
            .unwrap();
        assert_eq!(got, vec![sid.clone()]);
        ok(
            &c,
            "create_project",
            json!({"project_name": "alpha-site", "template_name": "web_application"}),
        )
        .await;
        let got = c
            .complete_prompt_simple("plan_workflow", "project", "alp")
            .await
            .unwrap();
        assert_eq!(got, ["alpha-site"]);
        // Free-text arguments have nothing to offer.
        let got = c
            .complete_prompt_simple("plan_workflow", "goal", "")
            .await
            .unwrap();
        assert!(got.is_empty());
    }
}

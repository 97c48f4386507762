//! Subscriptions to resources in both eras: `resources/subscribe` (2025-11-25)
//! and `subscriptions/listen` (2026-07-28) deliver `resources/updated` as a
//! run's steps change, and list changes when definitions are added.
#![allow(deprecated)] // resources/subscribe is the 2025-11-25 way, deprecated in rmcp 3.x

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rmcp::model::{
    CallToolRequestParams, ResourceUpdatedNotificationParam, ServerNotification,
    SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient};
use serde_json::{Value, json};

/// A client that keeps the resource updates it receives.
#[derive(Clone, Default)]
struct Updates(Arc<Mutex<Vec<String>>>);

impl ClientHandler for Updates {
    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.0.lock().unwrap().push(params.uri);
    }
}

type C = RunningService<RoleClient, Updates>;

async fn connect(env: &Env, era: Era) -> (C, Updates) {
    let u = Updates::default();
    (env.stdio_with(era, &[], u.clone()).await, u)
}

async fn tool(c: &C, name: &str, args: Value) -> Value {
    let r = c
        .call_tool(
            CallToolRequestParams::new(name.to_string())
                .with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{name}: {r:?}");
    r.structured_content.unwrap()
}

/// Three steps of 300 ms one after the other.
async fn slow_run(c: &C) -> String {
    tool(c, "create_workflow", json!({"name": "slow", "steps": [
        {"name": "a", "module": "core", "action": "sleep", "parameters": {"ms": 300}},
        {"name": "b", "module": "core", "action": "sleep", "parameters": {"ms": 300}, "dependencies": ["a"]},
        {"name": "c", "module": "core", "action": "sleep", "parameters": {"ms": 300}, "dependencies": ["b"]},
    ]}))
    .await;
    let r = tool(
        c,
        "execute_workflow",
        json!({"workflow_name": "slow", "wait_seconds": 0}),
    )
    .await;
    format!("myrmex://runs/{}", r["run_id"].as_str().unwrap())
}

async fn finish_run(c: &C, uri: &str) {
    let id = uri.rsplit('/').next().unwrap();
    let v = tool(
        c,
        "get_workflow_run",
        json!({"run_id": id, "wait_seconds": 30}),
    )
    .await;
    assert_eq!(v["status"], "succeeded");
}

#[tokio::test]
async fn resources_subscribe_sends_updates_as_a_run_progresses() {
    let env = Env::new();
    let (c, updates) = connect(&env, Era::Legacy).await;
    let uri = slow_run(&c).await;
    c.subscribe(SubscribeRequestParams::new(uri.clone()))
        .await
        .unwrap();
    finish_run(&c, &uri).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let n = updates
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|u| **u == uri)
        .count();
    assert!(n >= 3, "{n} updates for three steps and the run's end");

    // After unsubscribe, nothing more for that run.
    let second = slow_run(&c).await;
    c.subscribe(SubscribeRequestParams::new(second.clone()))
        .await
        .unwrap();
    c.unsubscribe(UnsubscribeRequestParams::new(second.clone()))
        .await
        .unwrap();
    finish_run(&c, &second).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!updates.0.lock().unwrap().contains(&second));

    // A resource the caller cannot read cannot be subscribed to.
    assert!(
        c.subscribe(SubscribeRequestParams::new("myrmex://runs/run_nope"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn subscriptions_listen_sends_updates_and_list_changes() {
    let env = Env::new();
    let (c, _) = connect(&env, Era::Modern).await;
    let uri = slow_run(&c).await;
    let mut sub = c
        .listen(
            SubscriptionFilter::builder()
                .resource_subscription(uri.clone())
                .resources_list_changed()
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(
        sub.acknowledged().resource_subscriptions.as_deref(),
        Some(&[uri.clone()][..])
    );
    let mut updated = 0;
    let mut list_changed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut defined = false;
    while (updated < 3 || !list_changed) && tokio::time::Instant::now() < deadline {
        if updated >= 3 && !defined {
            // A new definition changes the resource list.
            tool(
                &c,
                "create_workflow",
                json!({"name": "another", "steps": [
                {"name": "x", "module": "core", "action": "echo", "parameters": {}}]}),
            )
            .await;
            defined = true;
        }
        let next = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
        match next {
            Ok(Ok(Some(ServerNotification::ResourceUpdatedNotification(n)))) => {
                assert_eq!(n.params.uri, uri);
                updated += 1;
            }
            Ok(Ok(Some(ServerNotification::ResourceListChangedNotification(_)))) => {
                list_changed = true;
            }
            Ok(Ok(Some(_))) => {}
            other => {
                if !defined && updated < 3 {
                    panic!("the subscription ended: {other:?}");
                }
            }
        }
    }
    assert!(updated >= 3, "{updated} updates");
    assert!(list_changed, "a new workflow changes the list");
}

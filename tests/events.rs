//! The event log: every change of a session, run, step, task, allocation or
//! project is an event; get_events reads them from a cursor, filtered, and
//! the cursor holds across a restart; old events are pruned.

mod common;

use common::*;
use serde_json::{Value, json};

fn kinds_statuses(page: &Value) -> Vec<(String, String, String)> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["subject"].as_str().unwrap().to_string(),
                e["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every event after `since`, following next_cursor.
async fn drain(c: &Client, args: Value) -> (Vec<Value>, String) {
    let mut args = args;
    let mut all = Vec::new();
    loop {
        let page = ok(c, "get_events", args.clone()).await;
        all.extend(page["events"].as_array().unwrap().iter().cloned());
        args["since"] = page["next_cursor"].clone();
        if page["more"] != json!(true) {
            return (all, page["next_cursor"].as_str().unwrap().to_string());
        }
    }
}

/// [`drain`] once `done` holds for what it read. On PostgreSQL an event
/// becomes visible once every older transaction of the database server has
/// ended (a moment under load); it is never skipped (bounded wait).
async fn drain_until(
    c: &Client,
    args: Value,
    done: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, String) {
    for _ in 0..400 {
        let r = drain(c, args.clone()).await;
        if done(&r.0) {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the expected events never became visible: {args}");
}

/// Is there an event of this kind, subject and status?
fn has(events: &[Value], kind: &str, subject: &str, status: &str) -> bool {
    events
        .iter()
        .any(|e| e["kind"] == kind && e["subject"] == subject && e["status"] == status)
}

async fn define(c: &Client) {
    ok(
        c,
        "create_workflow",
        json!({"name": "pair", "scope": "global", "steps": [
            {"name": "a", "module": "core", "action": "echo", "parameters": {"x": 1}},
            {"name": "b", "module": "core", "action": "echo", "parameters": {}, "dependencies": ["a"]}
        ]}),
    )
    .await;
}

#[tokio::test]
async fn every_kind_of_change_is_an_event_in_order_and_filters_narrow_them() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &[]).await;
    define(&c).await;
    let s = ok(&c, "create_session", json!({"name": "watched"})).await;
    let sid = s["session_id"].clone();
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "pair", "session_id": sid, "wait_seconds": 30}),
    )
    .await;
    assert_eq!(run["status"], "succeeded");
    let rid = run["run_id"].as_str().unwrap().to_string();
    let t = ok(
        &c,
        "create_task",
        json!({"task": {"name": "manual"}, "session_id": sid}),
    )
    .await;
    let tid = t["task_id"].as_str().unwrap().to_string();
    let claim = ok(&c, "next_task", json!({"session_id": sid})).await;
    ok(
        &c,
        "complete_task",
        json!({"task_id": tid, "lease_id": claim["lease_id"], "result": {"ok": true}}),
    )
    .await;
    let a = ok(
        &c,
        "allocate_resources",
        json!({"requirements": {"cpu": 1}, "session_id": sid}),
    )
    .await;
    ok(
        &c,
        "release_resources",
        json!({"allocation_id": a["allocation_id"]}),
    )
    .await;
    ok(&c, "close_session", json!({"session_id": sid})).await;

    let (events, _) = drain_until(&c, json!({"session_id": sid, "limit": 3}), |e| {
        has(e, "session", sid.as_str().unwrap(), "closed")
    })
    .await;
    let seen: Vec<(String, String, String)> = kinds_statuses(&json!({"events": events}));
    let sid_s = sid.as_str().unwrap();
    assert!(has(&events, "session", sid_s, "active"), "{seen:?}");
    assert!(has(&events, "run", &rid, "pending"), "{seen:?}");
    assert!(has(&events, "run", &rid, "running"), "{seen:?}");
    assert!(has(&events, "run", &rid, "succeeded"), "{seen:?}");
    assert!(
        has(&events, "step", "a", "running") && has(&events, "step", "a", "succeeded"),
        "{seen:?}"
    );
    assert!(has(&events, "step", "b", "succeeded"), "{seen:?}");
    assert!(
        has(&events, "task", &tid, "ready") || has(&events, "task", &tid, "pending"),
        "{seen:?}"
    );
    assert!(has(&events, "task", &tid, "claimed"), "{seen:?}");
    assert!(has(&events, "task", &tid, "succeeded"), "{seen:?}");
    let aid = a["allocation_id"].as_str().unwrap();
    assert!(
        has(&events, "allocation", aid, "active") && has(&events, "allocation", aid, "released"),
        "{seen:?}"
    );
    assert!(has(&events, "session", sid_s, "closed"), "{seen:?}");
    // In the order things happened: a before b, the run ends after its steps, close last.
    let pos = |k: &str, subj: &str, st: &str| {
        seen.iter()
            .position(|(a, b, c)| a == k && b == subj && c == st)
            .unwrap()
    };
    assert!(pos("step", "a", "succeeded") < pos("step", "b", "running"));
    assert!(pos("step", "b", "succeeded") < pos("run", &rid, "succeeded"));
    assert_eq!(
        seen.last().unwrap(),
        &("session".into(), sid_s.into(), "closed".into())
    );
    // Every event names the session; step events their run; cursors grow.
    for e in &events {
        assert_eq!(e["session_id"], sid, "{e}");
        if e["kind"] == "step" {
            assert_eq!(e["run_id"], json!(rid));
        }
    }
    let step_a_done = events
        .iter()
        .find(|e| e["kind"] == "step" && e["subject"] == "a" && e["status"] == "succeeded")
        .unwrap();
    assert_eq!(step_a_done["data"]["attempts"], 1);

    // Filters: a run id matches the run and its steps; kinds narrow.
    let (of_run, _) = drain(&c, json!({"subject": rid})).await;
    assert!(!of_run.is_empty());
    assert!(
        of_run.iter().all(|e| e["run_id"] == json!(rid)),
        "{of_run:?}"
    );
    let (steps, _) = drain(&c, json!({"subject": rid, "kinds": ["step"]})).await;
    assert_eq!(
        steps.len(),
        of_run.iter().filter(|e| e["kind"] == "step").count()
    );
    assert!(steps.len() >= 4);
    let (tasks, _) = drain(&c, json!({"kinds": ["task"], "session_id": sid})).await;
    assert!(
        tasks
            .iter()
            .all(|e| e["kind"] == "task" && e["subject"] == json!(tid))
    );

    // A page never repeats or skips: pages of 3 give the same events as one call.
    let (one, _) = drain(&c, json!({"session_id": sid, "limit": 1000})).await;
    assert_eq!(one, events);

    // Bad input is refused with a hint.
    err(
        &c,
        "get_events",
        json!({"since": "yesterday"}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(&c, "get_events", json!({"limit": 0}), "INVALID_PARAMETERS").await;
    err(
        &c,
        "get_events",
        json!({"kinds": ["weather"]}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "get_events",
        json!({"session_id": "ses_nope"}),
        "NOT_FOUND",
    )
    .await;
    c.cancel().await.ok();
}

#[tokio::test]
async fn project_events_and_other_principals_see_nothing() {
    let env = Env::new();
    let tokens = env.two_principals();
    let srv = env.http(&["--config", tokens.to_str().unwrap()]).await;
    let alice = srv.client(Era::Legacy, Some(ALICE_TOKEN)).await;
    let bob = srv.client(Era::Modern, Some(BOB_TOKEN)).await;
    let p = ok(&alice, "create_project", json!({"name": format!("ev-{}", uuid::Uuid::new_v4().simple()), "template": "data_pipeline"})).await;
    let pid = p["project_id"].as_str().unwrap().to_string();
    let (mine, cursor) = drain_until(&alice, json!({"kinds": ["project"]}), |e| {
        has(e, "project", &pid, "planning")
    })
    .await;
    assert!(has(&mine, "project", &pid, "planning"), "{mine:?}");
    assert!(mine.iter().all(|e| e.get("session_id").is_none()));
    let (theirs, _) = drain(&bob, json!({})).await;
    assert!(
        theirs.iter().all(|e| e["subject"] != json!(pid)),
        "bob sees alice's project: {theirs:?}"
    );
    // Only what came after the cursor.
    let (after, _) = drain(&alice, json!({"since": cursor})).await;
    assert!(after.is_empty(), "{after:?}");
    drop(srv);
}

#[tokio::test]
async fn a_small_page_reads_past_other_principals_events_in_one_call() {
    let env = Env::new();
    let tokens = env.two_principals();
    let srv = env.http(&["--config", tokens.to_str().unwrap()]).await;
    let alice = srv.client(Era::Legacy, Some(ALICE_TOKEN)).await;
    let bob = srv.client(Era::Modern, Some(BOB_TOKEN)).await;
    // Bob's 60 task events come first; the windows a page reads grow past them.
    let tasks: Vec<Value> = (0..60).map(|i| json!({"name": format!("b{i}")})).collect();
    ok(&bob, "create_tasks", json!({"tasks": tasks})).await;
    let (bobs, _) = drain_until(&bob, json!({"kinds": ["task"]}), |e| e.len() >= 60).await;
    assert_eq!(bobs.len(), 60);
    let t = ok(&alice, "create_task", json!({"task": {"name": "mine"}})).await;
    let (mine, _) = drain_until(&alice, json!({"kinds": ["task"], "limit": 1}), |e| {
        !e.is_empty()
    })
    .await;
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["subject"], t["task_id"]);
    // One call with a page of one finds it behind bob's events.
    let page = ok(&alice, "get_events", json!({"kinds": ["task"], "limit": 1})).await;
    assert_eq!(page["events"][0]["subject"], t["task_id"], "{page}");
    drop(srv);
}

#[tokio::test]
async fn a_cursor_holds_across_a_restart() {
    let env = Env::new();
    let (before, cursor) = {
        let c = env.stdio(Era::Legacy, &[]).await;
        define(&c).await;
        let r = ok(
            &c,
            "execute_workflow",
            json!({"workflow_name": "pair", "wait_seconds": 30}),
        )
        .await;
        assert_eq!(r["status"], "succeeded");
        let (events, cursor) = drain_until(&c, json!({}), |e| {
            has(e, "run", r["run_id"].as_str().unwrap(), "succeeded")
        })
        .await;
        c.cancel().await.ok();
        (events, cursor)
    };
    assert!(!before.is_empty());
    let c = env.stdio(Era::Modern, &[]).await;
    // Nothing new yet: the cursor of the last call still points at the end.
    let (none, same) = drain(&c, json!({"since": cursor})).await;
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(same, cursor);
    let r = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "pair", "wait_seconds": 30}),
    )
    .await;
    let (after, _) = drain_until(&c, json!({"since": cursor}), |e| {
        has(e, "run", r["run_id"].as_str().unwrap(), "succeeded")
    })
    .await;
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|e| e["run_id"] == r["run_id"]),
        "{after:?}"
    );
    // The events of the first server are still kept, in front.
    let (all, _) = drain(&c, json!({})).await;
    assert_eq!(&all[..before.len()], &before[..]);
    assert_eq!(all.len(), before.len() + after.len());
    c.cancel().await.ok();
}

#[tokio::test]
async fn old_events_are_pruned() {
    let env = Env::new();
    let cfg = env.config("[events]\nretention_hours = 0.0003\nprune_interval_seconds = 1\n");
    let c = env
        .stdio(Era::Legacy, &["--config", cfg.to_str().unwrap()])
        .await;
    let s = ok(&c, "create_session", json!({"name": "short-lived"})).await;
    let (first, _) = drain_until(&c, json!({"session_id": s["session_id"]}), |e| {
        !e.is_empty()
    })
    .await;
    assert_eq!(first.len(), 1, "{first:?}");
    // Retention ~1 s, pruned every second: the event goes (bounded wait, no timing assertion).
    let mut gone = false;
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (now, _) = drain(&c, json!({"session_id": s["session_id"]})).await;
        if now.is_empty() {
            gone = true;
            break;
        }
    }
    assert!(gone, "the event was never pruned");
    c.cancel().await.ok();
}

#[tokio::test]
async fn a_page_of_events_stays_under_the_answer_limit() {
    let env = Env::new();
    let cfg = env.config("[limits]\nmax_result_bytes = 4096\n");
    let c = env
        .stdio(Era::Modern, &["--config", cfg.to_str().unwrap()])
        .await;
    let names: Vec<Value> = (0..120)
        .map(|i| json!({"name": format!("task-with-a-longish-name-{i:03}")}))
        .collect();
    ok(&c, "create_tasks", json!({"tasks": names})).await;
    // Following next_cursor gets every one, each once.
    let (all, _) = drain_until(&c, json!({"kinds": ["task"], "limit": 1000}), |e| {
        e.len() == 120
    })
    .await;
    let page = ok(&c, "get_events", json!({"kinds": ["task"], "limit": 1000})).await;
    let n = page["events"].as_array().unwrap().len();
    assert!(n > 0 && n < 120, "{n} events in one page");
    assert_eq!(page["more"], true);
    assert!(serde_json::to_string(&page).unwrap().len() <= 4096);

    assert_eq!(all.len(), 120);
    let mut subjects: Vec<&str> = all.iter().map(|e| e["subject"].as_str().unwrap()).collect();
    subjects.dedup();
    assert_eq!(subjects.len(), 120);
    c.cancel().await.ok();
}

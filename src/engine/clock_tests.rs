//! Leases, TTLs and idle timeouts on an injected clock: time moves when the
//! test says, nothing sleeps, and the boundary (one millisecond before and
//! at the end) is exact.

use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::resources::AllocateRequest;
use super::sessions::NewSession;
use super::tasks::NewTask;
use super::{Engine, Principal};
use crate::actions::Registry;
use crate::config::Config;
use crate::error::ErrorCode;
use crate::model::{AllocationStatus, Clock, ManualClock, Priority, SessionStatus};
use crate::store::memory::MemoryStore;

/// An engine on the memory store whose time is `clock` (no background
/// sweepers: the test calls them).
fn engine(clock: Arc<ManualClock>) -> Engine {
    let config = Config {
        store: "memory".into(),
        ..Config::default()
    };
    let registry = Registry::new(&config);
    Engine::with_clock(config, Arc::new(MemoryStore::default()), registry, clock)
}

#[tokio::test]
async fn an_expired_claim_goes_back_to_the_queue_and_its_lease_is_void() {
    let clock = Arc::new(ManualClock::new());
    let e = engine(clock.clone());
    let p = Principal::local();
    let session = e.sessions().resolve(&p, None).await.unwrap();
    let task = NewTask {
        name: "review".into(),
        ..NewTask::default()
    };
    e.tasks().create(&session, vec![task]).await.unwrap();
    let first = e
        .next_task(&p, None, Some("slow".into()), &[], Some(1), None)
        .await
        .unwrap();
    let id = first.task.as_ref().unwrap().task_id.clone();
    let lease = first.lease_id.unwrap();

    // One millisecond before the lease ends it still holds.
    clock.advance_ms(999);
    let none = e
        .next_task(&p, None, Some("fast".into()), &[], None, None)
        .await
        .unwrap();
    assert!(none.task.is_none(), "{}", none.reason);
    assert_eq!(none.counts.claimed_by_others, 1);

    // At its end the task is ready again, for another agent, attempt 2.
    clock.advance_ms(1);
    let again = e
        .next_task(&p, None, Some("fast".into()), &[], None, None)
        .await
        .unwrap();
    let t = again.task.expect("the expired claim is handed out again");
    assert_eq!(t.task_id, id);
    assert_eq!(t.attempts, 2);
    let late = e
        .tasks()
        .finish_claim(&e, &p, &id, &lease, Ok((Some(json!("done")), None)))
        .await
        .unwrap_err();
    assert_eq!(late.code, ErrorCode::LeaseNotHeld);
}

#[tokio::test]
async fn an_allocation_whose_lease_ends_is_reclaimed_and_cannot_be_renewed() {
    let clock = Arc::new(ManualClock::new());
    let e = engine(clock.clone());
    let p = Principal::local();
    let ask = AllocateRequest {
        requirements: json!({"cpu": 1}),
        user_id: None,
        session_id: None,
        ttl_seconds: Some(1),
        wait_seconds: None,
        priority: Priority::Normal,
    };
    let a = e
        .allocate(&p, ask, &CancellationToken::new())
        .await
        .unwrap();
    clock.advance_ms(600);
    // Renewed: the lease runs one second from now, not from the grant.
    e.resources()
        .renew(p.name(), &a.allocation_id, 1)
        .await
        .unwrap();
    clock.advance_ms(999);
    assert_eq!(e.resources().expire().await.unwrap(), 0);
    clock.advance_ms(1);
    assert_eq!(e.resources().expire().await.unwrap(), 1);
    let e2 = e
        .resources()
        .renew(p.name(), &a.allocation_id, 1)
        .await
        .unwrap_err();
    assert_eq!(e2.code, ErrorCode::Conflict);
    let expired = e
        .list_allocations(&p, None, Some(AllocationStatus::Expired), None, None)
        .await
        .unwrap();
    assert_eq!(expired.allocations.len(), 1);
    assert_eq!(expired.allocations[0].allocation_id, a.allocation_id);
}

#[tokio::test]
async fn an_idle_session_closes_at_its_ttl_and_its_work_stops() {
    let clock = Arc::new(ManualClock::new());
    let e = engine(clock.clone());
    let p = Principal::local();
    let idle = e
        .sessions()
        .create(
            &p,
            NewSession {
                idle_ttl_seconds: Some(1),
                ..NewSession::default()
            },
        )
        .await
        .unwrap();
    let ask = AllocateRequest {
        requirements: json!({"cpu": 1}),
        user_id: None,
        session_id: Some(idle.session_id.clone()),
        ttl_seconds: Some(3600),
        wait_seconds: None,
        priority: Priority::Normal,
    };
    e.allocate(&p, ask, &CancellationToken::new())
        .await
        .unwrap();
    clock.advance_ms(999);
    assert!(e.sessions().sweep(clock.now_ms()).await.unwrap().is_empty());
    clock.advance_ms(1);
    let closed = e.sessions().sweep(clock.now_ms()).await.unwrap();
    assert_eq!(closed, vec![idle.session_id.clone()]);
    for id in &closed {
        e.session_closed(id).await.unwrap();
    }
    let s = e.sessions().get(&p, &idle.session_id).await.unwrap();
    assert_eq!(s.status, SessionStatus::Closed);
    assert_eq!(s.close_reason.as_deref(), Some("idle_timeout"));
    let held = e
        .list_allocations(
            &p,
            Some(&idle.session_id),
            Some(AllocationStatus::Active),
            None,
            None,
        )
        .await
        .unwrap();
    assert!(
        held.allocations.is_empty(),
        "the closed session's allocation was released"
    );
}

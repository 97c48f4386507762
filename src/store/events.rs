//! The event log: every state change of a session, run, step, task,
//! allocation or project is one event, written by the store in the same
//! transaction as the change itself — an event is never recorded for a change
//! that was rolled back, and a change is never committed without its event.
//!
//! Positions: each event has a sequence number. On SQLite (one writer at a
//! time) sequence order is commit order. On PostgreSQL, transactions of
//! several processes commit in any order, so each event also carries its
//! transaction id (`xid`); readers order by `(xid, seq)` and only see events
//! of transactions older than every transaction still running
//! (`pg_snapshot_xmin`): a cursor never skips an event that commits later.

use std::fmt;

use super::{AllocationRecord, ProjectRecord, RunRecord, SessionRecord, StepRecord, TaskRecord};

/// One event to record. `principal` and `session_id` are None for step
/// events (they come from the step's run when read).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub at: i64,
    pub principal: Option<String>,
    pub session_id: Option<String>,
    /// The run of a run or step event.
    pub run_id: Option<String>,
    pub kind: &'static str,
    /// The id of what changed (the step name for a step event).
    pub subject: String,
    /// Its status after the change (`deleted` when it is gone).
    pub status: String,
    /// A small JSON object with the change's details.
    pub data: String,
}

/// A position in the event log. Opaque to callers: `"<xid>.<seq>"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor {
    pub xid: i64,
    pub seq: i64,
}

impl fmt::Display for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.xid, self.seq)
    }
}

impl std::str::FromStr for EventCursor {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (x, q) = s.split_once('.').ok_or(())?;
        let c = EventCursor {
            xid: x.parse().map_err(|_| ())?,
            seq: q.parse().map_err(|_| ())?,
        };
        if c.xid < 0 || c.seq < 0 {
            return Err(());
        }
        Ok(c)
    }
}

/// A recorded event, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub cursor: EventCursor,
    pub at: i64,
    pub principal: Option<String>,
    pub session_id: Option<String>,
    pub run_id: Option<String>,
    pub kind: String,
    pub subject: String,
    pub status: String,
    pub data: String,
}

/// A window of the log: the events after `after`, at most `scan` of them
/// (of every principal: the engine filters).
#[derive(Debug, Clone)]
pub struct EventWindow {
    pub after: EventCursor,
    pub scan: u32,
}

/// The `code` of a `{code, message}` error JSON.
fn error_code(error: &Option<String>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(error.as_deref()?).ok()?;
    v.get("code")?.as_str().map(str::to_string)
}

fn data(v: serde_json::Value) -> String {
    v.to_string()
}

impl EventRecord {
    pub fn session(s: &SessionRecord, at: i64) -> Self {
        Self {
            at,
            principal: Some(s.principal.clone()),
            session_id: Some(s.id.clone()),
            run_id: None,
            kind: "session",
            subject: s.id.clone(),
            status: s.status.to_string(),
            data: data(serde_json::json!({
                "name": s.name,
                "default": s.is_default,
                "reason": s.close_reason,
            })),
        }
    }

    /// A session closed by `close_session`.
    pub fn session_closed(id: &str, principal: String, at: i64, reason: &str) -> Self {
        Self {
            at,
            principal: Some(principal),
            session_id: Some(id.to_string()),
            run_id: None,
            kind: "session",
            subject: id.to_string(),
            status: "closed".into(),
            data: data(serde_json::json!({ "reason": reason })),
        }
    }

    pub fn run(r: &RunRecord) -> Self {
        Self {
            at: r.updated_at,
            principal: Some(r.principal.clone()),
            session_id: Some(r.session_id.clone()),
            run_id: Some(r.id.clone()),
            kind: "run",
            subject: r.id.clone(),
            status: r.status.to_string(),
            data: data(serde_json::json!({
                "workflow": r.workflow_name,
                "error": error_code(&r.error),
                "parent_run_id": r.parent_run_id,
            })),
        }
    }

    pub fn step(s: &StepRecord, at: i64) -> Self {
        Self {
            at,
            principal: None,
            session_id: None,
            run_id: Some(s.run_id.clone()),
            kind: "step",
            subject: s.name.clone(),
            status: s.status.to_string(),
            data: data(serde_json::json!({
                "attempts": s.attempts,
                "error": error_code(&s.error),
            })),
        }
    }

    pub fn task(t: &TaskRecord) -> Self {
        Self {
            at: t.updated_at,
            principal: Some(t.principal.clone()),
            session_id: Some(t.session_id.clone()),
            run_id: None,
            kind: "task",
            subject: t.id.clone(),
            status: t.status.to_string(),
            data: data(serde_json::json!({
                "name": t.name,
                "attempts": t.attempts,
                "claimed_by": t.claimed_by,
                "error": error_code(&t.error),
                "version": t.version,
            })),
        }
    }

    /// The event of a task update, None when only its lease or bookkeeping
    /// changed (a lease renewal is not a state change).
    pub fn task_change(old: Option<&TaskRecord>, new: &TaskRecord) -> Option<Self> {
        let same = old.is_some_and(|o| {
            let mut o = o.clone();
            o.lease_expires_at = new.lease_expires_at;
            o.lease_id = new.lease_id.clone();
            o.updated_at = new.updated_at;
            o.version = new.version;
            o == *new
        });
        (!same).then(|| Self::task(new))
    }

    pub fn allocation(a: &AllocationRecord, at: i64) -> Self {
        Self {
            at,
            principal: Some(a.principal.clone()),
            session_id: Some(a.session_id.clone()),
            run_id: None,
            kind: "allocation",
            subject: a.id.clone(),
            status: a.status.to_string(),
            data: data(serde_json::json!({
                "holder": a.holder,
                "owner": a.owner_kind.as_str(),
                "requirements": serde_json::from_str::<serde_json::Value>(&a.requirements).ok(),
                "reason": a.release_reason,
            })),
        }
    }

    pub fn project(p: &ProjectRecord) -> Self {
        Self {
            at: p.updated_at,
            principal: Some(p.principal.clone()),
            session_id: None,
            run_id: None,
            kind: "project",
            subject: p.id.clone(),
            status: p.status.to_string(),
            data: data(serde_json::json!({ "name": p.name, "type": p.kind })),
        }
    }

    pub fn project_deleted(id: &str, principal: String, at: i64) -> Self {
        Self {
            at,
            principal: Some(principal),
            session_id: None,
            run_id: None,
            kind: "project",
            subject: id.to_string(),
            status: "deleted".into(),
            data: "{}".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = EventCursor { xid: 7, seq: 42 };
        assert_eq!(c.to_string().parse::<EventCursor>(), Ok(c));
        for bad in ["", "7", "a.b", "-1.3", "1.-3", "1.2.3"] {
            assert!(bad.parse::<EventCursor>().is_err(), "{bad}");
        }
        assert!(EventCursor { xid: 1, seq: 0 } > EventCursor { xid: 0, seq: 99 });
    }
}

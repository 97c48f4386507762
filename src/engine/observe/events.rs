//! `get_events`: the event log (see `store::events`) as one caller sees it —
//! their sessions, runs, steps, tasks, allocations and projects — read from a
//! cursor, filtered, and kept within the answer size limit.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::engine::{Engine, Principal, iso, now_ms};
use crate::error::{Error, Result};
use crate::store::{EventCursor, EventWindow, StoredEvent};

/// Most events read from the store per window. The first window is the
/// page asked for (and one more); each next one four times the last: a
/// caller whose events are most of the log reads about what it gets.
const WINDOW: u32 = 2_000;
/// Most events one call looks at (its own and other callers'), so a call on
/// a busy server stays cheap; `more` says to call again.
const MAX_SCANNED: usize = 20_000;

/// What a caller asks for.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only this session's events (checked to be the caller's).
    pub session_id: Option<String>,
    /// A `next_cursor` of an earlier answer; None: the oldest kept event.
    pub since: Option<String>,
    /// Only these kinds; empty: all.
    pub kinds: Vec<String>,
    /// Only events about this id (a run id also matches its steps).
    pub subject: Option<String>,
    pub limit: u32,
}

/// One event.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EventView {
    /// Its position: pass as `since` to read what came after it.
    pub cursor: String,
    /// When (RFC 3339 UTC).
    pub at: String,
    /// session, run, step, task, allocation or project.
    pub kind: String,
    /// The id of what changed (the step name for a step).
    pub subject: String,
    /// Its status after the change (`deleted` when gone).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The run of a run or step event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Details: names, attempts, error code, holder, requirements...
    pub data: Value,
}

/// A page of events.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// Pass as `since` next time (also when `events` is empty: it skips what was looked at).
    pub next_cursor: String,
    /// True: more events may follow right away; call again with next_cursor.
    pub more: bool,
    /// How many events the log keeps (hours): a cursor older than that misses the pruned ones.
    pub retention_hours: f64,
}

impl Engine {
    /// The caller's events after `q.since`, oldest first.
    pub async fn events(&self, p: &Principal, q: EventQuery) -> Result<EventPage> {
        if let Some(id) = &q.session_id {
            self.sessions().get(p, id).await?;
        }
        let mut pos = match &q.since {
            None => EventCursor::default(),
            Some(s) => s.parse().map_err(|_| {
                Error::invalid(
                    format!("since '{s}' is not an event cursor"),
                    "Pass the next_cursor (or an event's cursor) of an earlier get_events answer, or omit since to start from the oldest kept event.",
                )
            })?,
        };
        let limit = q.limit.max(1) as usize;
        let wanted = |e: &StoredEvent| {
            e.principal.as_deref() == Some(p.name())
                && q.session_id
                    .as_ref()
                    .is_none_or(|s| e.session_id.as_ref() == Some(s))
                && (q.kinds.is_empty() || q.kinds.contains(&e.kind))
                && q.subject
                    .as_ref()
                    .is_none_or(|s| e.subject == *s || e.run_id.as_ref() == Some(s))
        };
        let (mut found, mut scanned, mut more) = (Vec::new(), 0, false);
        let mut scan = (limit as u32).saturating_add(1).min(WINDOW);
        'scan: loop {
            let window = self
                .store()
                .events(&EventWindow { after: pos, scan })
                .await?;
            let full = window.len() == scan as usize;
            scan = scan.saturating_mul(4).min(WINDOW);
            for e in window {
                pos = e.cursor;
                scanned += 1;
                if wanted(&e) {
                    found.push(e);
                    if found.len() == limit {
                        more = true;
                        break 'scan;
                    }
                }
            }
            if !full {
                break;
            }
            if scanned >= MAX_SCANNED {
                more = true;
                break;
            }
        }
        let cursors: Vec<EventCursor> = found.iter().map(|e| e.cursor).collect();
        let budget = self.config().limits.max_result_bytes * 9 / 10;
        let events = crate::engine::fitting(found.into_iter().map(view), budget);
        if events.len() < cursors.len() {
            // Fitting keeps at least one: continue after the last one answered.
            more = true;
            pos = cursors[events.len() - 1];
        }
        Ok(EventPage {
            events,
            next_cursor: pos.to_string(),
            more,
            retention_hours: self.config().events.retention_hours,
        })
    }

    /// Remove events older than the retention; how many went.
    pub async fn prune_events(&self) -> Result<u64> {
        let keep_ms = (self.config().events.retention_hours * 3_600_000.0) as i64;
        Ok(self.store().prune_events(now_ms() - keep_ms).await?)
    }
}

fn view(e: StoredEvent) -> EventView {
    EventView {
        cursor: e.cursor.to_string(),
        at: iso(e.at),
        kind: e.kind,
        subject: e.subject,
        status: e.status,
        session_id: e.session_id,
        run_id: e.run_id,
        data: serde_json::from_str(&e.data).unwrap_or(Value::Null),
    }
}

//! Logging to the client: `notifications/message` for clients that ask for
//! them — a 2025-11-25 session that called `logging/setLevel`, or a
//! 2026-07-28 request that carries a log level in its `_meta` (never
//! otherwise). What is logged: the steps of a run a call waits for (their
//! ends as `info`, failures as `warning`).
//!
//! MCP logging is deprecated by SEP-2577 (rmcp marks its types so); it is
//! still what clients of both eras use, hence the `allow` below.
#![allow(deprecated)]

use std::sync::{Arc, Mutex};

use rmcp::RoleServer;
use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
use rmcp::service::RequestContext;
use serde_json::json;

use crate::model::StepStatus;

/// Severity order of the MCP levels.
fn rank(l: LoggingLevel) -> u8 {
    match l {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// The level a 2025-11-25 session set, shared by the clones of its server.
#[derive(Clone, Default)]
pub struct ClientLog(Arc<Mutex<Option<LoggingLevel>>>);

impl ClientLog {
    pub fn set(&self, level: LoggingLevel) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(level);
    }

    /// What this request may be sent: its own `_meta` level (2026-07-28),
    /// else the session's (`logging/setLevel`); None sends nothing.
    pub fn threshold(&self, ctx: &RequestContext<RoleServer>) -> Option<Threshold> {
        ctx.meta
            .log_level()
            .or(*self.0.lock().unwrap_or_else(|p| p.into_inner()))
            .map(|l| Threshold(rank(l)))
    }
}

/// The least severe level a request wants.
#[derive(Debug, Clone, Copy)]
pub struct Threshold(u8);

/// A step's end, reported while a call waits for its run, as a log message
/// (failures are warnings); None when below the threshold.
pub fn step_message(
    t: Threshold,
    text: &str,
    done: usize,
    total: usize,
) -> Option<LoggingMessageNotificationParam> {
    // The text is "step '<name>' <status>".
    let bad = text
        .rsplit(' ')
        .next()
        .and_then(StepStatus::parse)
        .is_some_and(|s| s.is_failure() || s == StepStatus::Cancelled);
    let level = if bad {
        LoggingLevel::Warning
    } else {
        LoggingLevel::Info
    };
    (rank(level) >= t.0).then(|| {
        LoggingMessageNotificationParam::new(
            level,
            json!({"message": text, "steps_completed": done, "steps_total": total}),
        )
        .with_logger("myrmex.run")
    })
}

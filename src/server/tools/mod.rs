//! One file per tool group. Each tool does the same three moves: parse the
//! arguments, call one engine method, shape the result.

pub mod modules;
pub mod projects;
pub mod resources;
pub mod sessions;
pub mod system;
pub mod tasks;
pub mod workflows;

use schemars::JsonSchema;
use serde::Serialize;

/// An answer of one of the original module's tools: its own fields, and the
/// original's boolean `success`, so that scripts written against the
/// original keep their check (an error answers `success: false` too).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Answer<T> {
    /// true when the call did what it was asked; for a run or a task it
    /// executed, when that succeeded (false while it still runs).
    pub success: bool,
    #[serde(flatten)]
    pub answer: T,
}

impl<T> Answer<T> {
    /// A call that executed something: `success` when it ended `succeeded`.
    pub fn ran(answer: T, status: &str) -> Self {
        Self {
            success: status == "succeeded",
            answer,
        }
    }

    /// A call that did what it was asked.
    pub fn done(answer: T) -> Self {
        Self {
            success: true,
            answer,
        }
    }
}

//! Every status, priority and kind, each defined once: its variants, how it
//! is spelled in the store and on the wire (`as_str`, `parse`), and what it
//! means (`is_final`, `rank`). Store records carry these types; strings
//! exist only where a record is encoded or decoded, and in answers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `as_str` and `parse` for an enum whose variants are spelled as listed.
macro_rules! spelled {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The spelling in the store and on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }

            /// The variant spelled `s`, if any.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// For the server's own argument enums (one way to spell a variant).
pub(crate) use spelled;

/// Urgency of a step (or run, or task).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    Default,
)]
#[serde(rename_all = "lowercase")]
#[schemars(inline)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

spelled!(Priority { Low => "low", Normal => "normal", High => "high", Critical => "critical" });

impl Priority {
    /// Higher is more urgent (`low` 0 .. `critical` 3).
    pub fn rank(self) -> i64 {
        self as i64
    }

    /// A stored priority; anything unknown is `normal`.
    pub fn stored(s: &str) -> Self {
        Self::parse(s).unwrap_or_default()
    }
}

/// The state of a workflow step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepStatus {
    Pending,
    /// Its dependencies are done; it waits for a slot.
    Ready,
    Running,
    /// Failed an attempt; the next one starts after the backoff.
    Retrying,
    /// Ready, waiting for its resources to be granted.
    WaitingResources,
    /// An `agent.task` step: waiting for an agent to complete its task.
    WaitingAgent,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    TimedOut,
}

spelled!(StepStatus {
    Pending => "pending",
    Ready => "ready",
    Running => "running",
    Retrying => "retrying",
    WaitingResources => "waiting_resources",
    WaitingAgent => "waiting_agent",
    Succeeded => "succeeded",
    Failed => "failed",
    Skipped => "skipped",
    Cancelled => "cancelled",
    TimedOut => "timed_out",
});

impl StepStatus {
    /// A final state: the step will not change again in this run.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled | Self::TimedOut
        )
    }

    /// Started but not final: after a restart or takeover it goes again.
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            Self::Running
                | Self::Retrying
                | Self::Ready
                | Self::WaitingResources
                | Self::WaitingAgent
        )
    }

    /// An end that fails a run (under `fail_fast`, stops launching).
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::TimedOut)
    }
}

/// The state of a workflow run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

spelled!(RunStatus {
    Pending => "pending",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
    TimedOut => "timed_out",
});

impl RunStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }
}

/// The state of a task of a task graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Pending,
    Ready,
    /// An agent task held under a lease.
    Claimed,
    /// An auto task myrmex executes.
    Running,
    WaitingResources,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    TimedOut,
}

spelled!(TaskStatus {
    Pending => "pending",
    Ready => "ready",
    Claimed => "claimed",
    Running => "running",
    WaitingResources => "waiting_resources",
    Succeeded => "succeeded",
    Failed => "failed",
    Skipped => "skipped",
    Cancelled => "cancelled",
    TimedOut => "timed_out",
});

impl TaskStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled | Self::TimedOut
        )
    }

    /// Being worked on by myrmex (its slot is taken).
    pub fn is_in_flight(self) -> bool {
        matches!(self, Self::Running | Self::WaitingResources)
    }

    /// Ends that make dependents skipped.
    pub fn is_bad_end(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Skipped | Self::Cancelled | Self::TimedOut
        )
    }
}

/// How a session schedules its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
#[schemars(inline)]
pub enum SessionMode {
    /// One step or task at a time.
    Sequential,
    /// Up to the session's parallelism limits.
    Parallel,
    /// Higher-priority work first.
    Priority,
    /// Parallel, but only when resources can be allocated (the default).
    #[default]
    ResourceAware,
}

spelled!(SessionMode {
    Sequential => "sequential",
    Parallel => "parallel",
    Priority => "priority",
    ResourceAware => "resource_aware",
});

/// Lifecycle state of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(inline)]
pub enum SessionStatus {
    /// Open: accepts work.
    Active,
    /// Closed by `close_session`, the idle sweeper or its timeout. Final.
    Closed,
}

spelled!(SessionStatus { Active => "active", Closed => "closed" });

/// The state of a project (set by its owner; nothing final about any of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(inline)]
pub enum ProjectStatus {
    Planning,
    Active,
    Paused,
    Completed,
    Archived,
    Failed,
}

spelled!(ProjectStatus {
    Planning => "planning",
    Active => "active",
    Paused => "paused",
    Completed => "completed",
    Archived => "archived",
    Failed => "failed",
});

/// The state of a resource allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllocationStatus {
    Active,
    Released,
    Expired,
}

spelled!(AllocationStatus { Active => "active", Released => "released", Expired => "expired" });

/// What holds an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OwnerKind {
    /// `allocate_resources`.
    Api,
    Step,
    Task,
    /// An agent task's claim.
    Claim,
    Run,
}

spelled!(OwnerKind { Api => "api", Step => "step", Task => "task", Claim => "claim", Run => "run" });

impl OwnerKind {
    /// Held by work that starts again after a restart (and acquires anew).
    pub fn is_work(self) -> bool {
        matches!(self, Self::Step | Self::Task | Self::Run)
    }
}

/// Lock modes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Read,
    Write,
    Exclusive,
}

spelled!(LockMode { Read => "read", Write => "write", Exclusive => "exclusive" });

impl LockMode {
    pub fn compatible(self, other: LockMode) -> bool {
        matches!(
            (self, other),
            (LockMode::Read, LockMode::Read)
                | (LockMode::Read, LockMode::Write)
                | (LockMode::Write, LockMode::Read)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_round_trips_and_matches_serde() {
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Some(*p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        for s in StepStatus::ALL {
            assert_eq!(StepStatus::parse(s.as_str()), Some(*s));
        }
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(*s));
        }
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(*s));
        }
        for m in SessionMode::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
        for m in LockMode::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
        assert_eq!(Priority::stored("bogus"), Priority::Normal);
        assert!(Priority::Critical.rank() > Priority::Low.rank());
        assert!(Priority::Critical > Priority::High);
    }

    #[test]
    fn finality_is_defined_once_per_kind() {
        let final_steps: Vec<_> = StepStatus::ALL.iter().filter(|s| s.is_final()).collect();
        assert_eq!(final_steps.len(), 5);
        assert!(RunStatus::ALL.iter().filter(|s| s.is_final()).count() == 4);
        assert!(!TaskStatus::Claimed.is_final() && TaskStatus::Skipped.is_bad_end());
        assert!(!LockMode::Exclusive.compatible(LockMode::Read));
        assert!(LockMode::Read.compatible(LockMode::Write));
    }
}

//! The shared vocabulary, below every other layer: who calls (`Principal`),
//! ids, time (`Clock`), and every status, priority and kind as a type with
//! its one definition (what is final, what outranks what, how it is spelled
//! in the store and on the wire). No I/O, no async: `store`, `actions`,
//! `engine` and `server` all build on it, and it imports none of them.

pub mod bounds;
pub mod ids;
pub mod page;
pub mod time;
pub mod vocab;

pub use ids::{Principal, new_id};
pub use time::{Clock, ManualClock, SystemClock, iso, now_ms};
pub use vocab::{
    AllocationStatus, LockMode, OwnerKind, Priority, ProjectStatus, RunStatus, SessionMode,
    SessionStatus, StepStatus, TaskStatus,
};

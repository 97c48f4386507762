//! Watching the engine: the event log (`events`), metrics (`metrics`), health
//! and system status (`system`), the periodic background tasks and their
//! states (`background`), and the processes sharing the store (`peers`).

pub mod background;
pub mod events;
pub mod metrics;
pub mod peers;
pub mod system;

use std::collections::BTreeMap;

/// How many of `counts` (as the store counts them by status) have `status`.
pub(crate) fn count_of<T: PartialEq>(counts: &[(T, u64)], status: T) -> u64 {
    counts
        .iter()
        .find(|(s, _)| *s == status)
        .map_or(0, |(_, n)| *n)
}

/// Counts by status as answers spell them.
pub(crate) fn spelled_counts<T: std::fmt::Display>(
    counts: impl IntoIterator<Item = (T, u64)>,
) -> BTreeMap<String, u64> {
    counts
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect()
}

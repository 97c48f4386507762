//! Watching the engine: the event log (`events`), metrics (`metrics`), health
//! and system status (`system`), the periodic background tasks and their
//! states (`background`), and the processes sharing the store (`peers`).

pub mod background;
pub mod events;
pub mod metrics;
pub mod peers;
pub mod system;

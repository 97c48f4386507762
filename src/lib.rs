//! myrmex: an MCP server that gives AI agents a real project and workflow
//! orchestration engine.
//!
//! The crate is usable as a library; the `myrmex` binary is a thin CLI around
//! it. Arrows point one way: `server`/`commands` -> `engine` -> `store` and
//! `actions` -> `model` (the shared vocabulary), as `docs/architecture.md`
//! draws them and `tests/architecture.rs` checks.

pub mod actions;
pub mod commands;
pub mod config;
pub mod engine;
pub mod error;
pub mod model;
pub mod server;
pub mod store;
pub mod telemetry;

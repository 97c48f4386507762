//! myrmex: an MCP server that gives AI agents a real project and workflow
//! orchestration engine.
//!
//! The crate is usable as a library; the `myrmex` binary is a thin CLI around
//! it. Arrows point one way: `server -> engine -> store`.

pub mod actions;
pub mod commands;
pub mod config;
pub mod engine;
pub mod error;
pub mod model;
pub mod server;
pub mod store;
pub mod telemetry;

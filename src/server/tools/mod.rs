//! One file per tool group. Each tool does the same three moves: parse the
//! arguments, call one engine method, shape the result.

pub mod modules;
pub mod projects;
pub mod resources;
pub mod sessions;
pub mod system;
pub mod tasks;
pub mod workflows;

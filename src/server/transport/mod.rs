//! How MCP clients reach the server: stdio (`stdio`), Streamable HTTP at
//! `/mcp` (`http`, with the transport sessions of `mcp_sessions`), the legacy
//! HTTP+SSE transport (`sse`), one connection's limits (`conn`), and what
//! every HTTP route shares: tokens, Host/Origin checks, the body bound and
//! the refusal body (`auth`).

pub mod auth;
pub mod conn;
pub mod http;
pub mod mcp_sessions;
pub mod sse;
pub mod stdio;

//! MCP over stdio: the default for desktop clients. stdout carries protocol
//! messages only; the server ends when stdin closes or on shutdown.

use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use super::MyrmexServer;
use crate::engine::Engine;

pub async fn serve(engine: Engine, shutdown: CancellationToken) -> anyhow::Result<()> {
    let service = MyrmexServer::new(engine)
        .serve_with_ct(rmcp::transport::stdio(), shutdown.child_token())
        .await
        .map_err(|e| anyhow::anyhow!("stdio session failed to start: {e}"))?;
    tracing::info!("serving MCP over stdio");
    let reason = service.waiting().await?;
    tracing::info!(?reason, "stdio session ended");
    Ok(())
}

//! MCP over stdio: the default for desktop clients. stdout carries protocol
//! messages only; the server ends when stdin closes or on shutdown.

use rmcp::ServiceExt;
use rmcp::service::ServerInitializeError;
use tokio_util::sync::CancellationToken;

use super::MyrmexServer;
use crate::engine::Engine;

pub async fn serve(engine: Engine, shutdown: CancellationToken) -> anyhow::Result<()> {
    let service = match MyrmexServer::new(engine)
        .serve_with_ct(rmcp::transport::stdio(), shutdown.child_token())
        .await
    {
        Ok(service) => service,
        // Shut down, or the client went away, before the handshake finished:
        // nothing to serve, nothing failed.
        Err(ServerInitializeError::Cancelled) => return Ok(()),
        Err(ServerInitializeError::ConnectionClosed(why)) => {
            tracing::info!(%why, "stdin closed before the MCP handshake finished");
            return Ok(());
        }
        Err(e) => anyhow::bail!("stdio session failed to start: {e}"),
    };
    tracing::info!("serving MCP over stdio");
    let reason = service.waiting().await?;
    tracing::info!(?reason, "stdio session ended");
    Ok(())
}

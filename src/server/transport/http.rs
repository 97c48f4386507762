//! Streamable HTTP at `/mcp` (axum + rmcp's `StreamableHttpService`), serving
//! both protocol eras rmcp supports: 2025-11-25 (initialize + `Mcp-Session-Id`)
//! and 2026-07-28 (stateless, `server/discover`).
//!
//! Security, in request order: the Host and Origin checks and the bounded
//! body read of `auth::check` over every route, then bearer-token
//! authentication (401, `auth::authenticate`), then rmcp's own Host and
//! Origin checks on `/mcp`. A non-loopback bind without tokens is refused at start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::auth::{TokenTable, authenticate, error_response};
use crate::engine::{Engine, Principal};
use crate::server::MyrmexServer;

/// Liveness and store health for load balancers: 200 when healthy or
/// degraded, 503 when unhealthy. Carries no data beyond the levels.
async fn healthz(State(engine): State<Engine>) -> Response {
    let h = engine.health().await;
    let code = if h.overall_status == crate::engine::observe::system::HealthLevel::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        axum::Json(serde_json::json!({ "status": h.overall_status })),
    )
        .into_response()
}

/// Prometheus scrape (text format 0.0.4). Behind the same bearer tokens as
/// `/mcp`; with tokens configured only `auth.admin_principals` may read it
/// (it counts every principal's calls).
async fn metrics(State(engine): State<Engine>, req: Request) -> Response {
    let tokens = !engine.config().auth.tokens.is_empty();
    let principal = req.extensions().get::<Principal>();
    if tokens && !principal.is_some_and(|p| engine.is_admin(p)) {
        return error_response(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "/metrics counts every principal's work; this principal is not an administrator",
            "Scrape with the token of a principal listed in auth.admin_principals.",
        );
    }
    match engine.prometheus_text().await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.code.as_str(),
            &e.message,
            &e.hint,
        ),
    }
}

/// Build the axum application (exposed for tests and embedding).
pub fn app(
    engine: Engine,
    tokens: TokenTable,
    bind: SocketAddr,
    ct: CancellationToken,
) -> axum::Router {
    let cfg = &engine.config().http;
    let mut hosts = cfg.allowed_hosts.clone();
    let ip = bind.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        hosts.push(ip.to_string());
    }
    let keep_alive =
        (cfg.sse_keep_alive_seconds > 0).then(|| Duration::from_secs(cfg.sse_keep_alive_seconds));
    // One registry of MCP tasks for every session this transport serves.
    let mcp_tasks = std::sync::Arc::new(crate::server::mcp_tasks::TaskRegistry::default());
    let legacy = super::sse::SseState::new(engine.clone(), mcp_tasks.clone(), ct.clone());
    let legacy = axum::Router::new()
        .route(&cfg.legacy_sse_path, axum::routing::get(super::sse::open))
        .route(
            &cfg.legacy_messages_path,
            axum::routing::post(super::sse::post),
        )
        .layer(middleware::from_fn_with_state(tokens.clone(), authenticate))
        .with_state(legacy);
    // rmcp checks Host and Origin itself too; the guard layer below does it for every route.
    let rmcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts.clone())
        .with_allowed_origins(cfg.allowed_origins.clone())
        .enforce_origin_validation()
        .with_max_request_body_bytes(cfg.max_body_bytes)
        .with_sse_keep_alive(keep_alive)
        .with_cancellation_token(ct);
    let sessions = super::mcp_sessions::Sessions::new(engine.clone());
    let factory_engine = engine.clone();
    let mcp = StreamableHttpService::new(
        move || {
            Ok(MyrmexServer::with_tasks(
                factory_engine.clone(),
                mcp_tasks.clone(),
            ))
        },
        sessions.manager(),
        rmcp_config,
    );
    let mcp = axum::Router::new()
        .route_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(
            sessions,
            super::mcp_sessions::bind,
        ))
        .route(
            "/metrics",
            axum::routing::get(metrics).with_state(engine.clone()),
        )
        .layer(middleware::from_fn_with_state(tokens, authenticate));
    let guard = super::auth::Guard::new(hosts, cfg);
    axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .with_state(engine)
        .merge(mcp)
        .merge(legacy)
        // One layer over every route, this one and any added later.
        .layer(middleware::from_fn_with_state(guard, super::auth::check))
}

/// Serve until `shutdown` is cancelled; then stop accepting, let open
/// requests finish (at most 5 s) and return.
///
/// Connections are bounded: at most `http.max_connections` at once (more are
/// answered 503 and closed), request headers must arrive within
/// `http.header_read_timeout_seconds` (which also closes a keep-alive
/// connection that sends nothing), a connection with no request in flight
/// and no traffic for `http.idle_timeout_seconds` is closed, and bodies are
/// bounded by the guard layer.
pub async fn serve(
    engine: Engine,
    bind: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tokens = TokenTable::load(engine.config())?;
    if tokens.is_empty() && !bind.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve HTTP on {bind} without authentication: configure [[auth.tokens]] \
             (see `myrmex hash-token`) or bind a loopback address such as 127.0.0.1"
        );
    }
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, auth = !tokens.is_empty(), "serving MCP over Streamable HTTP at /mcp");
    tracing::info!(
        sse = %engine.config().http.legacy_sse_path,
        messages = %engine.config().http.legacy_messages_path,
        "serving the legacy HTTP+SSE transport"
    );
    let cfg = engine.config().http.clone();
    let app = app(engine, tokens, local, shutdown.child_token());
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(super::conn::refuse(stream, cfg.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = super::conn::Conn::new(&cfg, app.clone(), &graceful);
        tokio::spawn(async move {
            conn.serve(stream, peer).await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open HTTP connections did not finish within 5 s; exiting anyway");
    }
    Ok(())
}

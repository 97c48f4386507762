//! The legacy HTTP+SSE transport (protocol 2024-11-05), which rmcp no longer
//! ships: `GET /sse` opens an event stream whose first event (`endpoint`)
//! names `/messages?session_id=...`; the client POSTs its JSON-RPC messages
//! there and every response and notification comes back on the stream.
//!
//! Each stream is bridged to the same [`MyrmexServer`] handler and engine as
//! Streamable HTTP, through a pair of channels (rmcp takes any sink and
//! stream of JSON-RPC messages as a transport). The same bearer tokens,
//! Host and Origin checks (one layer over every route, `auth.rs`) and body
//! limit apply; a POST must come from the principal that opened the stream. When the client goes away the bridge
//! is removed and the MCP service cancelled, which cancels its in-flight calls.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use rmcp::RoleServer;
use rmcp::model::GetExtensions;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage, serve_server_with_ct};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::auth::error_response;
use crate::engine::{Engine, Principal};
use crate::server::MyrmexServer;

/// Messages a client may have queued towards the server before it reads them.
const INBOUND_QUEUE: usize = 256;

struct Bridge {
    principal: Principal,
    inbound: mpsc::Sender<RxJsonRpcMessage<RoleServer>>,
}

/// The open SSE bridges of this process.
#[derive(Clone)]
pub struct SseState {
    engine: Engine,
    mcp_tasks: Arc<crate::server::mcp_tasks::TaskRegistry>,
    bridges: Arc<Mutex<HashMap<String, Bridge>>>,
    messages_path: String,
    keep_alive: Option<Duration>,
    shutdown: CancellationToken,
}

impl SseState {
    pub fn new(
        engine: Engine,
        mcp_tasks: Arc<crate::server::mcp_tasks::TaskRegistry>,
        shutdown: CancellationToken,
    ) -> Self {
        let cfg = &engine.config().http;
        Self {
            messages_path: cfg.legacy_messages_path.clone(),
            keep_alive: (cfg.sse_keep_alive_seconds > 0)
                .then(|| Duration::from_secs(cfg.sse_keep_alive_seconds)),
            engine,
            mcp_tasks,
            bridges: Arc::new(Mutex::new(HashMap::new())),
            shutdown,
        }
    }

    fn bridges(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bridge>> {
        self.bridges.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes the bridge and stops its service when the event stream is dropped.
struct BridgeGuard {
    id: String,
    state: SseState,
    cancel: CancellationToken,
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        self.state.bridges().remove(&self.id);
        self.state
            .engine
            .metrics()
            .sse_streams
            .fetch_sub(1, Ordering::Relaxed);
        self.cancel.cancel();
        tracing::debug!(session = %self.id, "SSE stream closed");
    }
}

/// GET /sse: open a stream and bridge it to a new MCP service.
pub async fn open(State(state): State<SseState>, req: Request) -> Response {
    let Some(principal) = req.extensions().get::<Principal>().cloned() else {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "no principal",
            "Send a bearer token.",
        );
    };
    // Streams count against the transport session caps.
    let cfg = &state.engine.config().http;
    let (mine, all) = {
        let b = state.bridges();
        (
            b.values().filter(|b| b.principal == principal).count(),
            b.len(),
        )
    };
    if mine >= cfg.max_sessions_per_principal || all >= cfg.max_sessions {
        let (n, key) = if mine >= cfg.max_sessions_per_principal {
            (
                cfg.max_sessions_per_principal,
                "http.max_sessions_per_principal",
            )
        } else {
            (cfg.max_sessions, "http.max_sessions")
        };
        return error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "LIMIT_EXCEEDED",
            &format!("{n} SSE streams are open, the limit ({key})"),
            "Close a stream you no longer use, or use Streamable HTTP at /mcp.",
        );
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (in_tx, in_rx) = mpsc::channel::<RxJsonRpcMessage<RoleServer>>(INBOUND_QUEUE);
    let (out_tx, out_rx) = mpsc::channel::<TxJsonRpcMessage<RoleServer>>(INBOUND_QUEUE);
    let cancel = state.shutdown.child_token();
    state.bridges().insert(
        id.clone(),
        Bridge {
            principal,
            inbound: in_tx,
        },
    );
    state
        .engine
        .metrics()
        .sse_streams
        .fetch_add(1, Ordering::Relaxed);
    let server = MyrmexServer::with_tasks(state.engine.clone(), state.mcp_tasks.clone());
    let service_ct = cancel.clone();
    let sid = id.clone();
    tokio::spawn(async move {
        let sink = out_tx.sink_map_err(std::io::Error::other);
        match serve_server_with_ct(server, (sink, in_rx), service_ct).await {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(e) => {
                tracing::debug!(session = %sid, error = %e, "SSE session ended before it was initialized")
            }
        }
    });
    let endpoint = format!("{}?session_id={id}", state.messages_path);
    let guard = BridgeGuard {
        id: id.clone(),
        state: state.clone(),
        cancel: cancel.clone(),
    };
    tracing::debug!(session = %id, "SSE stream opened");
    let first = futures::stream::once(async move {
        Ok::<Event, Infallible>(Event::default().event("endpoint").data(endpoint))
    });
    let messages = out_rx
        .map(|m| {
            let data = serde_json::to_string(&m).unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot serialize an outbound message");
                String::new()
            });
            Ok(Event::default().event("message").data(data))
        })
        // The stream ends when the server stops (the service's sink is dropped).
        .take_until(async move { cancel.cancelled().await });
    let stream = first.chain(messages).map(move |e| {
        let _ = &guard;
        e
    });
    let sse = Sse::new(stream);
    let mut response = match state.keep_alive {
        // Comments on an idle stream keep proxies from closing it.
        Some(every) => sse
            .keep_alive(KeepAlive::new().interval(every))
            .into_response(),
        None => sse.into_response(),
    };
    response
        .headers_mut()
        .insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    response
}

#[derive(Deserialize)]
pub struct MessageQuery {
    session_id: Option<String>,
}

/// POST /messages?session_id=...: hand one JSON-RPC message to the stream's service.
pub async fn post(
    State(state): State<SseState>,
    Query(q): Query<MessageQuery>,
    req: Request,
) -> Response {
    let principal = req.extensions().get::<Principal>().cloned();
    let (parts, body) = req.into_parts();
    let Some(id) = q.session_id else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETERS",
            "session_id is missing",
            "POST to the endpoint the SSE stream's first event named.",
        );
    };
    let (owner, mut inbound) = match state.bridges().get(&id) {
        Some(b) => (b.principal.clone(), b.inbound.clone()),
        None => {
            return error_response(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no open SSE stream has this session_id",
                "Open a new stream with GET on the SSE path and use the endpoint it names.",
            );
        }
    };
    if principal.as_ref() != Some(&owner) {
        return error_response(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "this SSE session belongs to another principal",
            "Post with the token that opened the stream.",
        );
    }
    let limit = state.engine.config().http.max_body_bytes;
    let bytes: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "LIMIT_EXCEEDED",
                "the message is larger than http.max_body_bytes",
                "Send smaller messages.",
            );
        }
    };
    let mut message: RxJsonRpcMessage<RoleServer> = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETERS",
                &format!("not a JSON-RPC message: {e}"),
                "POST one JSON-RPC request, notification or response per call.",
            );
        }
    };
    // The tools read the caller from the HTTP request parts, as over Streamable HTTP.
    match &mut message {
        RxJsonRpcMessage::<RoleServer>::Request(r) => {
            r.request.extensions_mut().insert(parts);
        }
        RxJsonRpcMessage::<RoleServer>::Notification(n) => {
            n.notification.extensions_mut().insert(parts);
        }
        _ => {}
    }
    if inbound.send(message).await.is_err() {
        return error_response(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "the SSE session has ended",
            "Open a new stream with GET on the SSE path.",
        );
    }
    StatusCode::ACCEPTED.into_response()
}

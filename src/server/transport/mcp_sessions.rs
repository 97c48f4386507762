//! Streamable HTTP transport sessions (`Mcp-Session-Id`, protocol
//! 2025-11-25) belong to the principal that initialized them: any other
//! principal presenting the id gets 403 on every method (POST, GET streams,
//! DELETE), as on the legacy SSE transport. A DELETE of a live session
//! answers 204; of an unknown or ended one, 404. Sessions are capped per
//! principal (`http.max_sessions_per_principal`: the principal's least
//! recently used one is closed to make room, and a later request to it is
//! told so) and in total
//! (`http.max_sessions`: a new one is refused with 503), and rmcp closes a
//! session idle for `http.session_idle_seconds`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

use super::auth::error_response;
use crate::engine::Principal;

const HEADER: &str = "mcp-session-id";
/// How many evicted session ids are remembered to say why they are gone.
const EVICTED_KEPT: usize = 1024;

struct Owned {
    principal: Principal,
    last_used: Instant,
}

/// Who owns which transport session, and the caps.
pub struct Sessions {
    engine: crate::engine::Engine,
    manager: Arc<LocalSessionManager>,
    owners: Mutex<HashMap<String, Owned>>,
    /// Sessions closed to make room under the per-principal cap, newest last.
    evicted: Mutex<VecDeque<String>>,
    per_principal: usize,
    total: usize,
}

impl Sessions {
    pub fn new(engine: crate::engine::Engine) -> Arc<Self> {
        let cfg = &engine.config().http;
        let mut manager = LocalSessionManager::default();
        manager.session_config.keep_alive =
            Some(std::time::Duration::from_secs(cfg.session_idle_seconds));
        Arc::new(Self {
            manager: Arc::new(manager),
            owners: Mutex::new(HashMap::new()),
            evicted: Mutex::new(VecDeque::new()),
            per_principal: cfg.max_sessions_per_principal,
            total: cfg.max_sessions,
            engine: engine.clone(),
        })
    }

    pub fn manager(&self) -> Arc<LocalSessionManager> {
        self.manager.clone()
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, Owned>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publish the number of sessions (get_system_status, /metrics).
    fn counted(&self) {
        let n = self.owners().len();
        self.engine
            .metrics()
            .http_sessions
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Make room for one more session of `p`: forget sessions rmcp has
    /// closed, close `p`'s least recently used ones past its cap, and say
    /// whether the total allows another.
    async fn make_room(&self, p: &Principal) -> bool {
        let live: std::collections::HashSet<String> = self
            .manager
            .sessions
            .read()
            .await
            .keys()
            .map(|k| k.to_string())
            .collect();
        let evict: Vec<String> = {
            let mut owners = self.owners();
            owners.retain(|id, _| live.contains(id));
            let mut mine: Vec<(&String, Instant)> = owners
                .iter()
                .filter(|(_, o)| &o.principal == p)
                .map(|(id, o)| (id, o.last_used))
                .collect();
            mine.sort_by_key(|(_, at)| *at);
            let over = (mine.len() + 1).saturating_sub(self.per_principal);
            mine.iter()
                .take(over)
                .map(|(id, _)| (*id).clone())
                .collect()
        };
        for id in &evict {
            tracing::info!(session = %id, principal = %p.name(), "closing the least recently used MCP session (http.max_sessions_per_principal)");
            let _ = self.manager.close_session(&Arc::from(id.as_str())).await;
            self.owners().remove(id);
            let mut evicted = self.evicted.lock().unwrap_or_else(|p| p.into_inner());
            if evicted.len() == EVICTED_KEPT {
                evicted.pop_front();
            }
            evicted.push_back(id.clone());
        }
        self.counted();
        self.owners().len() < self.total
    }
}

/// Is this body an `initialize` request (the only one that opens a session)?
fn is_initialize(body: &[u8]) -> bool {
    // Most requests are not: look for the word before parsing.
    body.windows(12).any(|w| w == b"\"initialize\"")
        && serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .is_some_and(|v| v.get("method").and_then(|m| m.as_str()) == Some("initialize"))
}

fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such MCP session",
        "Initialize a new session (POST initialize without Mcp-Session-Id).",
    )
}

/// A session closed to make room for a newer one of the same principal.
fn evicted(per_principal: usize) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        &format!(
            "this MCP session was closed to make room: its principal opened more than {per_principal} (http.max_sessions_per_principal)"
        ),
        "Initialize a new session, reuse one session per client, or raise http.max_sessions_per_principal.",
    )
}

fn foreign() -> Response {
    error_response(
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        "this MCP session belongs to another principal",
        "Use the Mcp-Session-Id your own initialize returned.",
    )
}

/// The ownership and cap checks, around rmcp's Streamable HTTP service.
pub async fn bind(State(s): State<Arc<Sessions>>, req: Request, next: Next) -> Response {
    let Some(p) = req.extensions().get::<Principal>().cloned() else {
        return not_found();
    };
    let sid = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(id) = sid {
        {
            let mut owners = s.owners();
            match owners.get_mut(&id) {
                Some(o) if o.principal == p => o.last_used = Instant::now(),
                Some(_) => return foreign(),
                None => {
                    let evicted_here = s
                        .evicted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(&id);
                    return if evicted_here {
                        evicted(s.per_principal)
                    } else {
                        not_found()
                    };
                }
            }
        }
        if req.method() != Method::DELETE {
            return next.run(req).await;
        }
        // Ended here rather than by rmcp (which answers 202 whatever the
        // session's state): a live session's worker takes the close, 204; one
        // whose worker has already quit (idle past http.session_idle_seconds)
        // is as unknown as one never opened, 404.
        let handle = s.manager.sessions.write().await.remove(id.as_str());
        s.owners().remove(&id);
        s.counted();
        return match handle {
            Some(h) if h.close().await.is_ok() => StatusCode::NO_CONTENT.into_response(),
            _ => not_found(),
        };
    }
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    // The guard layer has read the body already: look at it for `initialize`.
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    if is_initialize(&bytes) && !s.make_room(&p).await {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "LIMIT_EXCEEDED",
            &format!(
                "the server holds {} MCP sessions, its limit (http.max_sessions)",
                s.total
            ),
            "Retry later, or end unused sessions with DELETE /mcp.",
        );
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if let Some(id) = response.headers().get(HEADER).and_then(|v| v.to_str().ok()) {
        s.owners().insert(
            id.to_string(),
            Owned {
                principal: p,
                last_used: Instant::now(),
            },
        );
        s.counted();
    }
    response
}

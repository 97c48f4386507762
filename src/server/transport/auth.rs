//! Who may call over HTTP, and what every HTTP route goes through first:
//! bearer tokens (`TokenTable`, `authenticate`: 401 without a valid one), and,
//! as one layer over the whole router (so a route added later gets it by
//! construction), the Host allowlist (DNS-rebinding protection), the Origin
//! allowlist (browsers) and a request body read within
//! `http.body_read_timeout_seconds` and `http.max_body_bytes` (`check`).
//! The HTTP refusals' body is `error_response`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use std::collections::HashMap;

use axum::response::IntoResponse;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::engine::Principal;

/// Bearer tokens by their SHA-256 (hex), mapped to principals.
#[derive(Clone, Default)]
pub struct TokenTable {
    by_hash: Arc<HashMap<String, Principal>>,
}

impl TokenTable {
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let mut by_hash = HashMap::new();
        for t in &config.auth.tokens {
            let hash = match (&t.token_sha256, &t.token_file) {
                (Some(h), _) => h.to_ascii_lowercase(),
                (None, Some(path)) => {
                    let raw = std::fs::read_to_string(path).map_err(|e| {
                        anyhow::anyhow!(
                            "auth token '{}': cannot read {}: {e}",
                            t.name,
                            path.display()
                        )
                    })?;
                    let token = raw.trim();
                    if token.is_empty() {
                        anyhow::bail!("auth token '{}': {} is empty", t.name, path.display());
                    }
                    sha256_hex(token)
                }
                (None, None) => anyhow::bail!(
                    "auth token '{}' has neither token_sha256 nor token_file",
                    t.name
                ),
            };
            if by_hash.insert(hash, Principal(t.name.clone())).is_some() {
                anyhow::bail!(
                    "auth token '{}': the same token is configured twice",
                    t.name
                );
            }
        }
        Ok(Self {
            by_hash: Arc::new(by_hash),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    fn principal(&self, token: &str) -> Option<Principal> {
        self.by_hash.get(&sha256_hex(token)).cloned()
    }
}

pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Authenticate the request and record its principal for the tools.
pub(crate) async fn authenticate(
    State(tokens): State<TokenTable>,
    mut req: Request,
    next: Next,
) -> Response {
    let principal = if tokens.is_empty() {
        Some(Principal::local())
    } else {
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .and_then(|t| tokens.principal(t.trim()))
    };
    match principal {
        Some(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        None => {
            let mut r = error_response(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "missing or invalid bearer token",
                "Send `Authorization: Bearer <token>` with a token configured in [[auth.tokens]].",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

/// An HTTP-level refusal with the tools' error body: `{"error": {code, message, hint}}`.
pub(crate) fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    hint: &str,
) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message, "hint": hint}})),
    )
        .into_response()
}

/// The lists and limits the checks use.
#[derive(Clone)]
pub struct Guard {
    hosts: Arc<Vec<String>>,
    origins: Arc<Vec<String>>,
    max_body: usize,
    body_timeout: Duration,
}

impl Guard {
    pub fn new(hosts: Vec<String>, cfg: &crate::config::HttpConfig) -> Self {
        Self {
            hosts: Arc::new(hosts),
            origins: Arc::new(cfg.allowed_origins.clone()),
            max_body: cfg.max_body_bytes,
            body_timeout: Duration::from_secs(cfg.body_read_timeout_seconds),
        }
    }
}

/// Host and Origin checks, then the body read whole within its time and size
/// limits (every route takes JSON bodies; none streams a request).
pub async fn check(State(g): State<Guard>, req: Request, next: Next) -> Response {
    if !host_allowed(req.headers(), &g.hosts) {
        return error_response(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Host header is not allowed",
            "Add the host to http.allowed_hosts.",
        );
    }
    if !origin_allowed(req.headers(), &g.origins) {
        return error_response(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Origin header is not allowed",
            "Add the origin to http.allowed_origins.",
        );
    }
    // Read up to the limit even when Content-Length says more: a client that
    // is still writing its body then reads the 413 instead of a broken pipe.
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(g.body_timeout, axum::body::to_bytes(body, g.max_body))
        .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            // A length-limit error or a broken body.
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                return too_large(g.max_body);
            }
            return error_response(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETERS",
                &format!("cannot read the request body: {e}"),
                "Send the whole body.",
            );
        }
        Err(_) => {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                "TIMEOUT_EXCEEDED",
                &format!(
                    "the request body did not arrive within {} s (http.body_read_timeout_seconds)",
                    g.body_timeout.as_secs()
                ),
                "Send the body at once.",
            );
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large(max: usize) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "LIMIT_EXCEEDED",
        &format!("the request body is larger than {max} bytes (http.max_body_bytes)"),
        "Send a smaller request.",
    )
}

fn split_host_port(s: &str) -> (String, Option<u16>) {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (h.to_ascii_lowercase(), port);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_ascii_lowercase(), p.parse().ok()),
        _ => (s.to_ascii_lowercase(), None),
    }
}

fn host_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (h, port) = split_host_port(host);
    allowed.iter().any(|a| {
        let (ah, ap) = split_host_port(a);
        ah == h && ap.is_none_or(|p| Some(p) == port)
    })
}

/// Requests without Origin (non-browser clients) pass.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let parse = |s: &str| -> Option<(String, String, Option<u16>)> {
        let (scheme, rest) = s.trim().split_once("://")?;
        let (h, p) = split_host_port(rest.trim_end_matches('/'));
        Some((scheme.to_ascii_lowercase(), h, p))
    };
    parse(origin).is_some_and(|(scheme, host, port)| {
        let default = match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        };
        allowed.iter().any(|a| {
            let (a, any_port) = match a.strip_suffix(":*") {
                Some(base) => (base, true),
                None => (a.as_str(), false),
            };
            parse(a).is_some_and(|(s, h, p)| {
                s == scheme && h == host && (any_port || p.is_none() || p == port.or(default))
            })
        })
    })
}

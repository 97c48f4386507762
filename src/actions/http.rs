//! `http.request`: one HTTP request under the policy of `[modules.http]`.
//!
//! Only hosts in `allowed_hosts` are reached. Loopback, private, link-local
//! and other non-public addresses are refused unless `allowed_private` lists
//! them; the check runs on the resolved addresses (before the request and
//! again in the client's resolver, so a name cannot change its answer in
//! between) and on every redirect, which is followed by hand for that reason.
//! Bodies are read up to a byte limit; JSON responses are parsed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use ipnet::IpNet;
use reqwest::Url;
use serde_json::{Map, Value, json};

use super::{ActionCtx, ActionError, ActionSpec, Module};
use crate::config::HttpModuleConfig;
use crate::error::ErrorCode;

/// Where requests may go.
#[derive(Debug, Default)]
struct Policy {
    allowed_hosts: Vec<String>,
    private_nets: Vec<IpNet>,
    private_names: Vec<String>,
}

impl Policy {
    fn new(c: &HttpModuleConfig) -> Self {
        let mut p = Policy {
            allowed_hosts: c
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            ..Default::default()
        };
        for e in &c.allowed_private {
            let e = e.trim();
            if let Ok(n) = e.parse::<IpNet>() {
                p.private_nets.push(n);
            } else if let Ok(ip) = e.trim_matches(['[', ']']).parse::<IpAddr>() {
                p.private_nets.push(IpNet::from(ip));
            } else {
                p.private_names.push(e.to_ascii_lowercase());
            }
        }
        p
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.allowed_hosts.iter().any(|a| {
            a == "*"
                || *a == host
                || a.strip_prefix("*.")
                    .is_some_and(|suffix| host.ends_with(&format!(".{suffix}")))
        })
    }

    /// None when the address may be reached for `name`; otherwise why not.
    fn address_refused(&self, name: &str, ip: IpAddr) -> Option<String> {
        let kind = non_public(ip)?;
        let name = name.trim_matches(['[', ']']).to_ascii_lowercase();
        if self.private_nets.iter().any(|n| n.contains(&ip)) || self.private_names.contains(&name) {
            return None;
        }
        Some(format!(
            "{name} resolves to {ip}, a {kind} address; list it in [modules.http] allowed_private to allow"
        ))
    }
}

/// What kind of non-public address this is, or None for a public one.
fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if v4.is_broadcast() || v4.is_multicast() || o[0] >= 240 {
                Some("reserved")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("shared (carrier-grade NAT)")
            } else if v4.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("private (unique local)")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() || (s[0] == 0x2001 && s[1] == 0x0db8) {
                Some("reserved")
            } else {
                None
            }
        }
    }
}

/// The client's resolver: refuses names whose addresses the policy refuses.
struct GuardedResolver {
    policy: Arc<Policy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolve_checked(&policy, &host)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.message.into() })?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Resolve a host name and check every address.
async fn resolve_checked(policy: &Policy, host: &str) -> Result<Vec<SocketAddr>, ActionError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| {
            ActionError::new(
                ErrorCode::ActionFailed,
                format!("cannot resolve {host}: {e}"),
            )
        })?
        .collect();
    if addrs.is_empty() {
        return Err(ActionError::new(
            ErrorCode::ActionFailed,
            format!("{host} has no address"),
        ));
    }
    for a in &addrs {
        if let Some(why) = policy.address_refused(host, a.ip()) {
            return Err(ActionError::new(ErrorCode::PermissionDenied, why));
        }
    }
    Ok(addrs)
}

pub struct Http {
    config: HttpModuleConfig,
    policy: Arc<Policy>,
    /// Built on the first request, not at start: building loads the system's
    /// CA certificates (~150 files), which a server whose http module is
    /// never used (it is off by default) should not pay for.
    client: std::sync::OnceLock<Result<reqwest::Client, String>>,
}

impl Http {
    pub fn new(config: &HttpModuleConfig) -> Self {
        let policy = Arc::new(Policy::new(config));
        Self {
            config: config.clone(),
            policy,
            client: std::sync::OnceLock::new(),
        }
    }

    /// The client, built once on first use.
    fn client(&self) -> &Result<reqwest::Client, String> {
        self.client.get_or_init(|| {
            super::tls_ready();
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                // Direct connections only: a proxy would resolve names where the policy cannot see.
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver {
                    policy: self.policy.clone(),
                }))
                .user_agent(concat!("myrmex/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| e.to_string())
        })
    }

    /// Check one URL (the first or a redirect target) against the policy.
    async fn check_url(&self, url: &Url) -> Result<(), ActionError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ActionError::new(
                ErrorCode::PermissionDenied,
                format!("{url}: only http and https URLs are allowed"),
            ));
        }
        let host = url.host_str().ok_or_else(|| {
            ActionError::new(ErrorCode::InvalidParameters, format!("{url} has no host"))
        })?;
        if !self.policy.host_allowed(host) {
            return Err(ActionError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "{host} is not in [modules.http] allowed_hosts ({})",
                    self.config.allowed_hosts.join(", ")
                ),
            ));
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(host, IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(host, IpAddr::V6(ip)),
            _ => resolve_checked(&self.policy, host).await.map(|_| ()),
        }
    }

    fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), ActionError> {
        match self.policy.address_refused(host, ip) {
            Some(why) => Err(ActionError::new(ErrorCode::PermissionDenied, why)),
            None => Ok(()),
        }
    }

    fn params_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "minLength": 1, "maxLength": 8192, "description": "http:// or https:// URL."},
                "method": {"type": "string", "enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"], "description": "Default GET."},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Request headers."},
                "query": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}, "description": "Query parameters added to the URL."},
                "json": {"description": "A JSON body (sets content-type: application/json)."},
                "body": {"type": "string", "description": "A text body."},
                "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": self.config.max_timeout_seconds, "description": "Time limit of the whole exchange (default [modules.http] default_timeout_seconds)."},
                "max_response_bytes": {"type": "integer", "minimum": 0, "maximum": self.config.max_response_bytes, "description": "Fail when the body is larger."},
                "follow_redirects": {"type": "boolean", "description": "Follow redirects (default true; each target is checked like the first URL)."},
                "fail_on_status": {"type": "boolean", "description": "Fail on a 4xx or 5xx status (default true)."}
            },
            "required": ["url"],
            "not": {"required": ["json", "body"]},
            "additionalProperties": false
        })
    }

    async fn request(&self, p: &Value) -> Result<Value, ActionError> {
        let client = self.client().as_ref().map_err(|e| {
            ActionError::new(
                ErrorCode::InternalError,
                format!("the HTTP client could not be built: {e}"),
            )
        })?;
        let mut url = Url::parse(p["url"].as_str().unwrap_or_default())
            .map_err(|e| ActionError::new(ErrorCode::InvalidParameters, format!("url: {e}")))?;
        if let Some(q) = p.get("query").and_then(Value::as_object) {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in q {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                pairs.append_pair(k, &v);
            }
        }
        let mut method = reqwest::Method::from_bytes(
            p.get("method")
                .and_then(Value::as_str)
                .unwrap_or("GET")
                .as_bytes(),
        )
        .map_err(|e| ActionError::new(ErrorCode::InvalidParameters, format!("method: {e}")))?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(h) = p.get("headers").and_then(Value::as_object) {
            for (k, v) in h {
                let name = reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| {
                    ActionError::new(ErrorCode::InvalidParameters, format!("header '{k}': {e}"))
                })?;
                let value = reqwest::header::HeaderValue::from_str(v.as_str().unwrap_or_default())
                    .map_err(|e| {
                        ActionError::new(ErrorCode::InvalidParameters, format!("header '{k}': {e}"))
                    })?;
                headers.insert(name, value);
            }
        }
        let mut body: Option<(Vec<u8>, Option<&'static str>)> = match (p.get("json"), p.get("body"))
        {
            (Some(j), _) => Some((j.to_string().into_bytes(), Some("application/json"))),
            (_, Some(Value::String(b))) => Some((b.clone().into_bytes(), None)),
            _ => None,
        };
        let timeout = Duration::from_secs(
            p.get("timeout_seconds")
                .and_then(Value::as_u64)
                .unwrap_or(self.config.default_timeout_seconds),
        );
        let limit = p
            .get("max_response_bytes")
            .and_then(Value::as_u64)
            .unwrap_or(self.config.default_max_response_bytes as u64);
        let follow = p
            .get("follow_redirects")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let fail_on_status = p
            .get("fail_on_status")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut redirects: Vec<String> = Vec::new();
        let resp = loop {
            self.check_url(&url).await?;
            let mut req = client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some((b, ct)) = &body {
                if let Some(ct) = ct
                    && !headers.contains_key(reqwest::header::CONTENT_TYPE)
                {
                    req = req.header(reqwest::header::CONTENT_TYPE, *ct);
                }
                req = req.body(b.clone());
            }
            let resp = tokio::time::timeout_at(deadline, req.send())
                .await
                .map_err(|_| timed_out(&url, timeout))?
                .map_err(|e| send_error(&url, &e))?;
            let status = resp.status();
            if !(follow && status.is_redirection()) {
                break resp;
            }
            let Some(loc) = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
            else {
                break resp;
            };
            if redirects.len() as u32 >= self.config.max_redirects {
                return Err(ActionError::new(
                    ErrorCode::ActionFailed,
                    format!(
                        "more than {} redirects ([modules.http] max_redirects); last: {url}",
                        self.config.max_redirects
                    ),
                ));
            }
            let next = url.join(loc).map_err(|e| {
                ActionError::new(
                    ErrorCode::ActionFailed,
                    format!("bad redirect Location '{loc}': {e}"),
                )
            })?;
            if next.origin() != url.origin() {
                // Credentials are for the origin (scheme, host and port) they were
                // given for: another port of the same host is another server.
                headers.remove(reqwest::header::AUTHORIZATION);
                headers.remove(reqwest::header::PROXY_AUTHORIZATION);
                headers.remove(reqwest::header::COOKIE);
            }
            if status == reqwest::StatusCode::SEE_OTHER
                || (matches!(status.as_u16(), 301 | 302) && method == reqwest::Method::POST)
            {
                method = reqwest::Method::GET;
                body = None;
            }
            redirects.push(next.to_string());
            url = next;
        };
        let status = resp.status();
        let final_url = resp.url().to_string();
        let mut out_headers = Map::new();
        for (k, v) in resp.headers() {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            match out_headers.get_mut(k.as_str()) {
                Some(Value::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(&v);
                }
                _ => {
                    out_headers.insert(k.as_str().to_string(), Value::String(v));
                }
            }
        }
        let is_json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .is_some_and(|c| {
                let c = c
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                c == "application/json" || c.ends_with("+json")
            });
        let mut resp = resp;
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            let chunk = tokio::time::timeout_at(deadline, resp.chunk())
                .await
                .map_err(|_| timed_out(&url, timeout))?
                .map_err(|e| send_error(&url, &e))?;
            let Some(chunk) = chunk else { break };
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(ActionError::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "the response of {final_url} is larger than {limit} bytes (max_response_bytes, [modules.http] max_response_bytes)"
                    ),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        let (text, encoding) = match String::from_utf8(bytes) {
            Ok(s) => (s, "utf8"),
            Err(e) => (
                base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                "base64",
            ),
        };
        let parsed = if is_json && encoding == "utf8" {
            serde_json::from_str::<Value>(&text).ok()
        } else {
            None
        };
        if fail_on_status && (status.is_client_error() || status.is_server_error()) {
            let snippet: String = text.chars().take(300).collect();
            return Err(ActionError::new(
                ErrorCode::ActionFailed,
                format!("{method} {final_url} answered {status}: {snippet}"),
            ));
        }
        Ok(json!({
            "status": status.as_u16(),
            "ok": status.is_success(),
            "url": final_url,
            "headers": out_headers,
            "body": text,
            "body_encoding": encoding,
            "json": parsed,
            "redirects": redirects,
            "duration_ms": started.elapsed().as_millis() as u64,
        }))
    }
}

fn timed_out(url: &Url, t: Duration) -> ActionError {
    ActionError::new(
        ErrorCode::TimeoutExceeded,
        format!("{url} did not answer within {} s", t.as_secs()),
    )
}

/// A transport error with its causes (the resolver's refusal among them).
fn send_error(url: &Url, e: &reqwest::Error) -> ActionError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    let code = if msg.contains("allowed_private") {
        ErrorCode::PermissionDenied
    } else {
        ErrorCode::ActionFailed
    };
    ActionError::new(code, format!("request to {url} failed: {msg}"))
}

#[async_trait]
impl Module for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn description(&self) -> &'static str {
        "HTTP requests to allowed hosts; non-public addresses refused unless allowed."
    }

    fn disabled(&self) -> Option<String> {
        (!self.config.enabled).then(|| {
            "the http module is disabled; set [modules.http] enabled = true (and allowed_hosts, allowed_private as needed) in the server's configuration".to_string()
        })
    }

    fn actions(&self) -> Vec<ActionSpec> {
        vec![ActionSpec {
            module: "http",
            action: "request",
            description: "Make one HTTP request. Output {status, ok, url, headers, body, body_encoding, json (parsed JSON body or null), redirects, duration_ms}; a 4xx/5xx fails unless fail_on_status is false.",
            params_schema: self.params_schema(),
            output_schema: json!({
                "type": "object",
                "properties": {
                    "status": {"type": "integer"},
                    "ok": {"type": "boolean"},
                    "url": {"type": "string"},
                    "headers": {"type": "object"},
                    "body": {"type": "string"},
                    "body_encoding": {"type": "string", "enum": ["utf8", "base64"]},
                    "json": {},
                    "redirects": {"type": "array", "items": {"type": "string"}},
                    "duration_ms": {"type": "integer"}
                }
            }),
        }]
    }

    async fn call(&self, action: &str, p: Value, ctx: ActionCtx) -> Result<Value, ActionError> {
        if action != "request" {
            return Err(ActionError::new(
                ErrorCode::ModuleNotFound,
                format!("http has no action '{action}'"),
            ));
        }
        tokio::select! {
            r = self.request(&p) => r,
            _ = ctx.cancel.cancelled() => Err(ActionError::cancelled()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(non_public(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(non_public(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    #[test]
    fn allow_lists() {
        let p = Policy::new(&HttpModuleConfig {
            allowed_hosts: vec!["api.example.com".into(), "*.internal.test".into()],
            allowed_private: vec!["10.0.0.0/8".into(), "127.0.0.1".into(), "db.local".into()],
            ..Default::default()
        });
        assert!(p.host_allowed("api.example.com"));
        assert!(p.host_allowed("a.internal.test"));
        assert!(!p.host_allowed("internal.test"));
        assert!(!p.host_allowed("example.com"));
        assert!(
            p.address_refused("x", "10.9.9.9".parse().unwrap())
                .is_none()
        );
        assert!(
            p.address_refused("x", "127.0.0.1".parse().unwrap())
                .is_none()
        );
        assert!(
            p.address_refused("x", "127.0.0.2".parse().unwrap())
                .is_some()
        );
        assert!(
            p.address_refused("db.local", "192.168.0.5".parse().unwrap())
                .is_none()
        );
        assert!(p.address_refused("x", "8.8.8.8".parse().unwrap()).is_none());
    }
}

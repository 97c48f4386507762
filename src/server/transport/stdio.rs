//! MCP over stdio: the default for desktop clients. stdout carries protocol
//! messages only; the server ends when stdin closes or on shutdown.
//!
//! The transport is myrmex's own (rmcp's line codec drops what it cannot
//! parse without a word): every line gets an answer or is a notification.
//! A line longer than `limits.max_message_bytes` is skipped unread and
//! answered `-32600` (id null); one that is not JSON (NaN, nested past 128
//! levels, truncated) `-32700` (id null); JSON that is not a JSON-RPC message
//! `-32600` with its id when it has one. Malformed notifications get no
//! answer (JSON-RPC never answers a notification).

use std::sync::Arc;

use futures::SinkExt;
use rmcp::ServiceExt;
use rmcp::model::{ErrorCode, ErrorData, JsonRpcMessage, NumberOrString, RequestId};
use rmcp::service::{RoleServer, RxJsonRpcMessage, ServerInitializeError, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::JsonRpcMessageCodec;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::server::MyrmexServer;

pub async fn serve(engine: Engine, shutdown: CancellationToken) -> anyhow::Result<()> {
    let max = engine.config().limits.max_message_bytes;
    let (read, write) = rmcp::transport::stdio_pipes();
    let transport = LineTransport::new(read, write, max);
    let service = match MyrmexServer::new(engine)
        .serve_with_ct(transport, shutdown.child_token())
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

type Writer<W> = FramedWrite<W, JsonRpcMessageCodec<TxJsonRpcMessage<RoleServer>>>;

/// Newline-delimited JSON-RPC over a reader and a writer, answering every
/// line it cannot deliver.
pub struct LineTransport<R, W> {
    read: BufReader<R>,
    line: Vec<u8>,
    max: usize,
    /// Skipping the rest of a line already refused as too long.
    discarding: bool,
    write: Arc<tokio::sync::Mutex<Option<Writer<W>>>>,
}

/// One read from the input.
enum Line {
    Whole,
    TooLong,
    Eof,
}

impl<R, W> LineTransport<R, W>
where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    pub fn new(read: R, write: W, max: usize) -> Self {
        Self {
            read: BufReader::new(read),
            line: Vec::new(),
            max,
            discarding: false,
            write: Arc::new(tokio::sync::Mutex::new(Some(FramedWrite::new(
                write,
                JsonRpcMessageCodec::default(),
            )))),
        }
    }

    /// Read one line into `self.line`, never holding more than `max` bytes of
    /// it. Cancellation-safe: a partial line stays buffered for the next call.
    async fn read_line(&mut self) -> std::io::Result<Line> {
        loop {
            let (used, done) = {
                let buf = self.read.fill_buf().await?;
                if buf.is_empty() {
                    return Ok(Line::Eof);
                }
                let newline = buf.iter().position(|b| *b == b'\n');
                let take = newline.map_or(buf.len(), |i| i + 1);
                if self.discarding {
                    if newline.is_some() {
                        self.discarding = false;
                    }
                    (take, None)
                } else if self.line.len() + take > self.max + 1 {
                    // +1: the newline itself does not count.
                    self.line.clear();
                    self.discarding = newline.is_none();
                    (take, Some(Line::TooLong))
                } else {
                    self.line.extend_from_slice(&buf[..take]);
                    (take, newline.map(|_| Line::Whole))
                }
            };
            self.read.consume(used);
            if let Some(l) = done {
                return Ok(l);
            }
        }
    }
}

/// Write an error answer (outside any request rmcp knows of).
async fn answer<W: AsyncWrite + Send + Unpin + 'static>(
    write: Arc<tokio::sync::Mutex<Option<Writer<W>>>>,
    error: ErrorData,
    id: Option<RequestId>,
) -> bool {
    let mut w = write.lock().await;
    let Some(w) = w.as_mut() else { return false };
    if id.is_some() {
        return w.send(JsonRpcMessage::error(error, id)).await.is_ok();
    }
    // JSON-RPC wants `"id": null` when the id could not be read; rmcp's
    // message type leaves the key out, so this one is written as it is.
    use tokio::io::AsyncWriteExt as _;
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": error.code.0, "message": error.message},
    });
    let mut bytes = body.to_string().into_bytes();
    bytes.push(b'\n');
    if w.flush().await.is_err() {
        return false;
    }
    let out = w.get_mut();
    out.write_all(&bytes).await.is_ok() && out.flush().await.is_ok()
}

/// What to do with a line that did not parse as a message.
fn refusal(line: &[u8], e: &serde_json::Error) -> Option<(ErrorData, Option<RequestId>)> {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => Some((
            ErrorData::new(
                ErrorCode::PARSE_ERROR,
                format!("parse error: {}", crate::error::excerpt(&e.to_string())),
                None,
            ),
            None,
        )),
        Category::Data => {
            let v: serde_json::Value = serde_json::from_slice(line).ok()?;
            let id = match v.get("id") {
                // Not an object (a batch, a bare value): no id to answer to.
                _ if !v.is_object() => None,
                // A notification: never answered.
                None => return None,
                Some(serde_json::Value::Number(n)) => n.as_i64().map(NumberOrString::Number),
                Some(serde_json::Value::String(s)) => {
                    Some(NumberOrString::String(s.as_str().into()))
                }
                Some(_) => None,
            };
            Some((
                ErrorData::new(
                    ErrorCode::INVALID_REQUEST,
                    format!(
                        "not a JSON-RPC 2.0 message: {}",
                        crate::error::excerpt(&e.to_string())
                    ),
                    None,
                ),
                id,
            ))
        }
    }
}

impl<R, W> Transport<RoleServer> for LineTransport<R, W>
where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let lock = self.write.clone();
        async move {
            let mut w = lock.lock().await;
            match w.as_mut() {
                Some(w) => w.send(item).await.map_err(Into::into),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the transport is closed",
                )),
            }
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            match self.read_line().await {
                Ok(Line::Whole) => {}
                Ok(Line::TooLong) => {
                    tracing::warn!(
                        limit = self.max,
                        "a message over limits.max_message_bytes was skipped"
                    );
                    let e = ErrorData::new(
                        ErrorCode::INVALID_REQUEST,
                        format!(
                            "the message is longer than {} bytes (limits.max_message_bytes); it was not read",
                            self.max
                        ),
                        None,
                    );
                    if !answer(self.write.clone(), e, None).await {
                        return None;
                    }
                    continue;
                }
                Ok(Line::Eof) => return None,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read stdin");
                    return None;
                }
            }
            let line = std::mem::take(&mut self.line);
            let mut text = line.strip_suffix(b"\n").unwrap_or(&line);
            text = text.strip_suffix(b"\r").unwrap_or(text);
            text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
            if text.iter().all(u8::is_ascii_whitespace) {
                self.line = line;
                self.line.clear();
                continue;
            }
            let parsed = serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(text);
            let refused = match &parsed {
                Ok(_) => None,
                Err(e) => Some(refusal(text, e)),
            };
            self.line = line;
            self.line.clear();
            match (parsed, refused) {
                (Ok(msg), _) => return Some(msg),
                (Err(_), Some(Some((error, id)))) => {
                    tracing::debug!(message = %error.message, "refused an incoming line");
                    if !answer(self.write.clone(), error, id).await {
                        return None;
                    }
                }
                (Err(e), _) => tracing::debug!(error = %e, "ignored a malformed notification"),
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        drop(self.write.lock().await.take());
        Ok(())
    }
}

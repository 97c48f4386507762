//! One HTTP connection: hyper's HTTP/1 and HTTP/2 server over the TCP
//! stream, with the header read timeout, an idle timeout and graceful
//! shutdown; and the refusal of a connection past the cap.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt as _;

/// What one connection has been doing.
struct Activity {
    started: Instant,
    /// Milliseconds after `started` of the last byte read or written.
    last: AtomicU64,
    /// Requests whose response has not been sent to the end.
    busy: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// A stream that records when bytes last moved.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a request as in flight until its response body is dropped (sent
/// to the end, or abandoned with the connection).
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Self {
        a.busy.fetch_add(1, Ordering::Relaxed);
        Self(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A response body that holds its request's [`Busy`] mark.
struct Marked {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Marked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How one connection is served.
pub struct Conn {
    app: axum::Router,
    header_timeout: Duration,
    idle_timeout: Duration,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Conn {
    pub fn new(
        cfg: &crate::config::HttpConfig,
        app: axum::Router,
        graceful: &hyper_util::server::graceful::GracefulShutdown,
    ) -> Self {
        Self {
            app,
            header_timeout: Duration::from_secs(cfg.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs(cfg.idle_timeout_seconds),
            watcher: graceful.watcher(),
        }
    }

    pub async fn serve(self, stream: TcpStream, peer: std::net::SocketAddr) {
        let activity = Arc::new(Activity {
            started: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        });
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let app = self.app;
        let marks = activity.clone();
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let busy = Busy::new(&marks);
                let app = app.clone();
                async move {
                    let response = app.oneshot(req.map(Body::new)).await?;
                    Ok::<_, std::convert::Infallible>(
                        response.map(|inner| Body::new(Marked { inner, _busy: busy })),
                    )
                }
            });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .keep_alive(true);
        builder.http2().timer(TokioTimer::new());
        let conn = self.watcher.watch(
            builder
                .serve_connection_with_upgrades(io, service)
                .into_owned(),
        );
        let idle_timeout = self.idle_timeout;
        let idle = async {
            let every =
                (idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                tokio::time::sleep(every).await;
                if activity.busy.load(Ordering::Relaxed) == 0 && activity.idle_for() >= idle_timeout
                {
                    return;
                }
            }
        };
        tokio::select! {
            r = conn => if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            },
            _ = idle => tracing::debug!(%peer, "idle HTTP connection closed (http.idle_timeout_seconds)"),
        }
    }
}

/// Answer 503 to a connection past `http.max_connections` and close it.
pub async fn refuse(mut stream: TcpStream, max: usize) {
    let body = serde_json::json!({"error": {
        "code": "LIMIT_EXCEEDED",
        "message": format!("the server has {max} open connections, its limit (http.max_connections)"),
        "hint": "Retry in a moment; reuse connections (keep-alive) rather than opening many."
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    tracing::warn!(max, "connection refused: http.max_connections reached");
}

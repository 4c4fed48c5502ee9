//! The accept loop: HTTP/1.1 (with TLS when configured) on hyper, with the limits a
//! server exposed to a network needs — a connection cap (`http.max_connections`: past
//! it, new connections wait to be accepted), a deadline for the TLS handshake and the
//! request headers (`http.header_read_timeout`, so a client trickling a header line at
//! a time is cut off), and an idle deadline (`http.idle_timeout`: a connection that
//! carries no bytes either way is closed; a request in progress is let finish).

use crate::core::config::HttpLimits;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// A stream that notes when it last carried a byte.
struct Tracked<S> {
    inner: S,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long a connection has carried no bytes.
struct Idle {
    started: Instant,
    last: Arc<AtomicU64>,
}

impl Idle {
    fn quiet_ms(&self) -> u64 {
        (self.started.elapsed().as_millis() as u64)
            .saturating_sub(self.last.load(Ordering::Relaxed))
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets open connections finish
/// for up to `grace`. `tls`, when set, is asked for its current configuration for every
/// new connection (so a reloaded certificate takes effect at once).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    limits: HttpLimits,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // The server speaks no HTTP/2: ALPN offers HTTP/1.1 only.
    let tls = tls.map(|config| super::tls::Alpn::new(config, &[b"http/1.1"]));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (router, tls, shutdown) = (router.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            connection(stream, peer, router, tls, limits, shutdown, grace).await;
            drop(permit);
        });
    }
    // Every connection hands its permit back when it is done.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace, permits.acquire_many(all)).await;
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    tls: Option<super::tls::Alpn>,
    limits: HttpLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let tracked = Tracked {
        inner: stream,
        started,
        last: last.clone(),
    };
    let idle = Idle { started, last };
    match tls {
        None => http(tracked, peer, router, limits, idle, shutdown, grace).await,
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tracked)).await {
                Ok(Ok(stream)) => http(stream, peer, router, limits, idle, shutdown, grace).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    idle: Idle,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let mut router = router.clone();
            async move { router.call(request.map(axum::body::Body::new)).await }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let idle_ms = limits.idle_timeout.as_millis() as u64;
    let check = (limits.idle_timeout / 4).max(Duration::from_millis(50));
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            () = tokio::time::sleep(check) => {
                let quiet = idle.quiet_ms();
                match closing {
                    None if quiet >= idle_ms => {
                        tracing::debug!(%peer, "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                    // A connection that does not finish after being asked to goes.
                    Some(since) if since.elapsed() >= grace.max(limits.idle_timeout) => return,
                    _ => {}
                }
            }
        }
    }
}

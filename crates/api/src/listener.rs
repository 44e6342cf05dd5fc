//! The HTTP listener under both `serve` and `route`: hyper's HTTP/1 connections with
//! a header-read timeout (a client that connects and sends nothing, or trickles its
//! headers, is cut off), a bound on open connections (one more gets an immediate
//! 503 instead of a file descriptor), and graceful shutdown: on the signal it stops
//! accepting and lets each connection finish its response.
//!
//! axum's own `serve` offers neither limit, hence this small accept loop.

use crate::errors::ApiError;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Limits of the listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Time a connection has to send a request's complete headers (also bounds an
    /// idle keep-alive connection).
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and
/// asks every connection to close after its response in progress. Returns once
/// every connection has closed (the caller bounds the wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let app = app.clone();
                let closing = closing_rx.clone();
                tokio::spawn(async move {
                    connection(stream, app, limits.header_read_timeout, closing).await;
                    drop(slot);
                });
            }
            Err(_) => {
                tokio::spawn(refuse(stream, limits.max_connections));
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    // Every slot back: every connection has finished.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// Errors that concern one connection only (the listener itself is fine).
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

async fn connection(
    stream: TcpStream,
    app: Router,
    header_read_timeout: Duration,
    mut closing: watch::Receiver<bool>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            changed = closing.changed() => {
                conn.as_mut().graceful_shutdown();
                if changed.is_err() {
                    // The listener is gone; keep serving the response in progress.
                    let _ = conn.as_mut().await;
                    return;
                }
            }
        }
    }
}

/// Answers a connection over the limit with a 503 (OpenAI-shaped) and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = ApiError::Unavailable(format!(
        "too many open connections (--max-connections {max}); retry later"
    ))
    .body()
    .to_string();
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(msg.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

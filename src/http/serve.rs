//! The HTTP server loop. axum's own `serve` reads headers for as long as a client
//! cares to send them and takes every connection offered; this one bounds both: a
//! connection slot is needed to be accepted (`http.max_connections`; the rest wait in
//! the kernel's backlog), a connection serves one request, and its first byte and then
//! its headers must each arrive within `http.header_timeout_secs`. Request time limits are a layer on the router
//! ([`super::router`]).

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` until `shutdown` turns true, then lets open requests finish (bounded).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let mut builder = Builder::new(TokioExecutor::new());
    // One request per connection: a kept-alive connection would hold its slot while
    // idle, unbounded. The API's callers (probes, scrapes, subscribers, uploads) are few
    // and far between, so reconnecting costs nothing that matters.
    builder
        .http1()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = turned_true(&mut shutdown) => break,
        };
        let (stream, _peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = turned_true(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        // The loop ends only on shutdown: that is when open connections wind down too.
        let mut closing = shutdown.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            // hyper times the headers from their first byte: a client that connects and
            // sends nothing must not hold a slot either.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "HTTP connection ended with an error.");
                    }
                    return;
                }
                _ = turned_true(&mut closing) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    // Every connection holds a slot: when all are back, every request has been answered.
    let _ = tokio::time::timeout(Duration::from_secs(30), slots.acquire_many(max as u32)).await;
    Ok(())
}

/// Resolves once the flag is true (or its sender is gone).
async fn turned_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

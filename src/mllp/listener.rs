//! The MLLP listener: accepts connections, reads frames, hands each to [`Ingest`], and
//! writes its ACK before reading the next frame, so ACKs leave in order per connection.
//!
//! Limits, because a listener facing a hospital network must not be the thing that
//! falls over: a connection cap (a semaphore; excess connections are closed at once and
//! counted) and one per peer address, an idle timeout, a time limit on each frame once
//! begun, TCP keepalive, and the codec's frame size cap.
//!
//! Shutdown: stop accepting; each connection handles the complete frames it has already
//! received (including bytes still in the socket buffer), answers them, and closes.

use super::codec::{FrameDecoder, FrameError, Quirks};
use super::tls::Allowed;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

#[derive(Clone)]
pub struct ListenerOptions {
    /// TLS on every connection of this listener (plain TCP when `None`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// With mutual TLS: which MSH-4 values each client certificate may send.
    pub senders: super::tls::Senders,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub idle_timeout: Duration,
    /// A frame begun must end within this.
    pub frame_timeout: Duration,
    pub tcp_keepalive: Duration,
    pub drain_timeout: Duration,
}

/// Runs until `shutdown` turns true, then drains connections (bounded by `drain_timeout`).
pub async fn run(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    metrics: Arc<Metrics>,
    opts: ListenerOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(opts.max_connections));
    let per_peer = Arc::new(PerPeer::default());
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(v) => v,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "MLLP accept failed.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    metrics.connections_refused.with_label_values(&["max_connections"]).inc();
                    tracing::warn!(%peer, max = opts.max_connections, "MLLP connection refused: too many open connections.");
                    drop(stream);
                    continue;
                };
                let Some(peer_slot) = per_peer.take(peer.ip(), opts.max_connections_per_peer) else {
                    metrics.connections_refused.with_label_values(&["per_peer"]).inc();
                    tracing::warn!(%peer, max = opts.max_connections_per_peer, "MLLP connection refused: too many open connections from this address.");
                    drop(stream);
                    continue;
                };
                configure(&stream, &opts);
                metrics.connections_total.inc();
                let (ingest, metrics, opts, shutdown) = (ingest.clone(), metrics.clone(), opts.clone(), shutdown.clone());
                conns.spawn(async move {
                    metrics.open_connections.inc();
                    tracing::info!(%peer, tls = opts.tls.is_some(), "MLLP connection opened.");
                    let why = match &opts.tls {
                        None => serve(stream, peer, None, &ingest, &metrics, &opts, shutdown).await,
                        Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                // Which facilities this client certificate may send for.
                                let allowed = opts.senders.enabled().then(|| {
                                    let ids = tls
                                        .get_ref()
                                        .1
                                        .peer_certificates()
                                        .and_then(|c| c.first())
                                        .map(|c| super::tls::identities(c.as_ref()))
                                        .unwrap_or_default();
                                    let a = opts.senders.allowed(&ids);
                                    tracing::info!(%peer, identity = %a.identity, facilities = ?a.facilities, "MLLP client certificate mapped.");
                                    a
                                });
                                serve(tls, peer, allowed.as_ref(), &ingest, &metrics, &opts, shutdown).await
                            }
                            Ok(Err(e)) => {
                                metrics.frame_errors.with_label_values(&["tls_handshake"]).inc();
                                tracing::warn!(%peer, error = %e, "MLLP TLS handshake failed.");
                                "tls_handshake_failed"
                            }
                            Err(_) => {
                                metrics.frame_errors.with_label_values(&["tls_handshake"]).inc();
                                tracing::warn!(%peer, "MLLP TLS handshake timed out.");
                                "tls_handshake_timeout"
                            }
                        },
                    };
                    metrics.open_connections.dec();
                    tracing::info!(%peer, reason = why, "MLLP connection closed.");
                    drop(peer_slot);
                    drop(permit);
                });
            }
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!(
        open = conns.len(),
        "MLLP listener stopped accepting; draining connections."
    );
    let drained = tokio::time::timeout(opts.drain_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = conns.len(),
            "MLLP drain timed out; closing remaining connections."
        );
        conns.abort_all();
    }
}

/// Open connections per peer address.
#[derive(Default)]
struct PerPeer(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One of a peer's connection slots, given back when dropped.
struct PeerSlot {
    peers: Arc<PerPeer>,
    ip: std::net::IpAddr,
}

impl PerPeer {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

fn configure(stream: &TcpStream, opts: &ListenerOptions) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    let ka = socket2::TcpKeepalive::new()
        .with_time(opts.tcp_keepalive)
        .with_interval(opts.tcp_keepalive);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "Could not set TCP keepalive.");
    }
}

/// A peer that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection (plain or TLS); returns why it ended.
#[allow(clippy::too_many_arguments)]
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    allowed: Option<&Allowed>,
    ingest: &Ingest,
    metrics: &Metrics,
    opts: &ListenerOptions,
    mut shutdown: watch::Receiver<bool>,
) -> &'static str {
    let peer_s = peer.to_string();
    let mut dec = FrameDecoder::new(opts.max_frame_bytes);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // When the frame now open began (as near as the reads tell).
    let mut frame_began: Option<Instant> = None;
    loop {
        // Answer every complete frame already buffered, in order.
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    // The frame that may follow began with this read, not the last one.
                    frame_began = None;
                    let t0 = Instant::now();
                    if let Err(why) = respond(&mut stream, ingest, &frame, &peer_s, allowed).await {
                        return why;
                    }
                    metrics.ack_latency.observe(t0.elapsed().as_secs_f64());
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { max }) => {
                    metrics.frame_errors.with_label_values(&["oversize"]).inc();
                    tracing::warn!(%peer, max, "MLLP frame exceeds mllp.max_frame_bytes; dropping it and closing the connection.");
                    return "oversize";
                }
            }
        }
        count_quirks(metrics, dec.take_quirks());
        frame_began = match (dec.in_frame(), frame_began) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, began) => began,
        };
        if *shutdown.borrow() {
            // Take what has already arrived, answer complete frames, then close.
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(20), stream.read_buf(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
            }
            while let Ok(Some(frame)) = dec.decode(&mut buf) {
                if respond(&mut stream, ingest, &frame, &peer_s, allowed)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = stream.shutdown().await;
            return "shutdown";
        }
        let wait = match frame_began {
            Some(t) => opts.frame_timeout.saturating_sub(t.elapsed()),
            None => opts.idle_timeout,
        };
        tokio::select! {
            read = tokio::time::timeout(wait, stream.read_buf(&mut buf)) => match read {
                Ok(Ok(0)) => {
                    dec.finish(&buf);
                    count_quirks(metrics, dec.take_quirks());
                    return "peer_closed";
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return "read_error",
                Err(_) if frame_began.is_some() => {
                    metrics.frame_errors.with_label_values(&["frame_timeout"]).inc();
                    tracing::warn!(%peer, limit_secs = opts.frame_timeout.as_secs(), "MLLP frame not finished in time; closing the connection.");
                    return "frame_timeout";
                }
                Err(_) => {
                    metrics.frame_errors.with_label_values(&["idle_timeout"]).inc();
                    return "idle_timeout";
                }
            },
            _ = shutdown.changed() => {}
        }
    }
}

/// Handles one frame and writes its answer. `Err` says why the connection must close:
/// the ACK could not be written, or storage failed and the sender is to see the
/// connection close (`mllp.on_storage_failure = "close"`) and resend.
async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    ingest: &Ingest,
    frame: &[u8],
    peer: &str,
    allowed: Option<&Allowed>,
) -> Result<(), &'static str> {
    let answer = ingest.handle(frame, peer, allowed).await;
    if answer.close {
        ingest.answered(answer, false).await;
        return Err("storage_failure");
    }
    let written = match &answer.ack {
        None => true,
        Some(ack) => match stream.write_all(ack).await {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(%peer, error = %e, "Could not write ACK; the sender will resend.");
                false
            }
        },
    };
    ingest.answered(answer, written).await;
    if written {
        Ok(())
    } else {
        Err("write_error")
    }
}

fn count_quirks(metrics: &Metrics, q: Quirks) {
    for (kind, n) in q.iter() {
        metrics.frame_errors.with_label_values(&[kind]).inc_by(n);
    }
}

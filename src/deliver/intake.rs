//! The Direct report intake: a small SMTP server (RFC 5321, the subset a relaying MTA
//! uses) where our HISP delivers the MDNs and DSNs addressed to our Direct address.
//! Each message is kept and applied ([`super::direct::Mdns::apply`]) before the `250`,
//! so a report the HISP was told we have is never lost; a store failure answers `451`
//! and the HISP tries again later.
//!
//! Only configured HISP peers may connect (`direct.inbound_allow`, loopback by
//! default); with a certificate it offers STARTTLS and takes no mail before it. Every
//! resource a peer could grow is capped: connections, line length (an over-long line
//! closes the connection, read in bounded pieces), message size and session time.

use super::direct::{Mdns, ReportError};
use crate::metrics::Metrics;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512; be generous).
const MAX_LINE: usize = 2048;
/// Longest message line (RFC 5322 says 998 plus CRLF; be generous).
const MAX_DATA_LINE: usize = 8192;
const IDLE: Duration = Duration::from_secs(300);

/// The intake's settings and what it reports to.
pub struct Intake {
    pub mdns: Arc<Mdns>,
    pub metrics: Arc<Metrics>,
    pub max_bytes: usize,
    /// HISP peers that may connect.
    pub allow: Vec<ipnet::IpNet>,
    /// STARTTLS, required before MAIL when set.
    pub tls: Option<TlsAcceptor>,
    pub max_connections: usize,
    pub session: Duration,
}

impl Intake {
    fn allowed(&self, ip: IpAddr) -> bool {
        // An IPv4 peer may arrive as ::ffff:a.b.c.d on a dual-stack socket.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow.iter().any(|n| n.contains(&ip))
    }

    fn refused(&self, reason: &str) {
        self.metrics
            .direct_intake_refused
            .with_label_values(&[reason])
            .inc();
    }
}

/// Accepts connections until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    intake: Arc<Intake>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(intake.max_connections));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((mut stream, peer)) => {
                    if !intake.allowed(peer.ip()) {
                        intake.refused("peer");
                        tracing::warn!(peer = %peer.ip(), "Direct intake: a connection from an address not in direct.inbound_allow was refused.");
                        tokio::spawn(async move {
                            let _ = stream.write_all(b"554 5.7.1 not a configured HISP peer\r\n").await;
                        });
                        continue;
                    }
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        intake.refused("connections");
                        tracing::warn!(peer = %peer.ip(), "Direct intake: direct.inbound_max_connections reached; a connection was refused.");
                        tokio::spawn(async move {
                            let _ = stream.write_all(b"421 4.7.0 too many connections; try again later\r\n").await;
                        });
                        continue;
                    };
                    let intake = intake.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        match tokio::time::timeout(intake.session, run(stream, &intake)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::debug!(error = %e, "Direct intake session ended."),
                            Err(_) => {
                                intake.refused("session_time");
                                tracing::warn!(peer = %peer.ip(), "Direct intake: a session outlasted direct.inbound_session_secs and was closed.");
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Direct intake accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// One connection: a plain session, and after STARTTLS a fresh one inside TLS.
async fn run(stream: TcpStream, intake: &Intake) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    if let Next::StartTls(plain) = session(stream, intake, false).await? {
        let Some(acceptor) = &intake.tls else {
            return Ok(());
        };
        let tls = match acceptor.accept(plain).await {
            Ok(t) => t,
            Err(e) => {
                intake.refused("tls");
                return Err(e);
            }
        };
        session(tls, intake, true).await?;
    }
    Ok(())
}

enum Next<S> {
    Done,
    /// The peer asked for STARTTLS and was told to go ahead: the bare stream, with
    /// anything it pipelined after the command thrown away (RFC 3207 §4.2).
    StartTls(S),
}

/// How one line read ended.
enum Line {
    End,
    Complete,
    TooLong,
}

/// Reads one line, its CRLF kept, of at most `max` bytes within the idle limit. Memory
/// stays bounded: an over-long line is reported, not read to its end.
async fn raw_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let n = tokio::time::timeout(IDLE, (&mut *r).take(max as u64 + 2).read_until(b'\n', buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"))??;
    Ok(match (n, buf.ends_with(b"\n")) {
        (0, _) => Line::End,
        (_, true) => Line::Complete,
        (n, false) if n >= max + 2 => Line::TooLong,
        (_, false) => Line::End,
    })
}

/// [`raw_line`] without its CRLF: a command line.
async fn line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    let got = raw_line(r, buf, max).await?;
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(got)
}

/// Answers an over-long line and counts it; the caller then closes the connection.
async fn too_long<W: AsyncWrite + Unpin>(w: &mut W, intake: &Intake) -> std::io::Result<()> {
    intake.refused("line");
    w.write_all(b"500 5.5.2 line too long; closing\r\n").await
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    intake: &Intake,
    secure: bool,
) -> std::io::Result<Next<S>> {
    let mut rd = BufReader::new(stream);
    if !secure {
        rd.get_mut()
            .write_all(b"220 adt-router Direct report intake ESMTP\r\n")
            .await?;
    }
    let offer_tls = intake.tls.is_some() && !secure;
    let mut buf = Vec::with_capacity(256);
    let mut have_from = false;
    let mut rcpts = 0usize;
    loop {
        match line(&mut rd, &mut buf, MAX_LINE).await? {
            Line::End => return Ok(Next::Done),
            Line::TooLong => {
                too_long(rd.get_mut(), intake).await?;
                return Ok(Next::Done);
            }
            Line::Complete => {}
        }
        let upper = String::from_utf8_lossy(&buf).to_ascii_uppercase();
        let verb = upper.split_whitespace().next().unwrap_or("");
        let wr = rd.get_mut();
        let reply: &[u8] = match verb {
            "EHLO" => {
                let r = format!(
                    "250-adt-router\r\n250-8BITMIME\r\n250-PIPELINING\r\n{}250 SIZE {}\r\n",
                    if offer_tls { "250-STARTTLS\r\n" } else { "" },
                    intake.max_bytes
                );
                wr.write_all(r.as_bytes()).await?;
                continue;
            }
            "HELO" => b"250 adt-router\r\n",
            "STARTTLS" if offer_tls => {
                wr.write_all(b"220 2.0.0 ready to start TLS\r\n").await?;
                wr.flush().await?;
                return Ok(Next::StartTls(rd.into_inner()));
            }
            "STARTTLS" if secure => b"503 5.5.1 TLS already active\r\n",
            "MAIL" if offer_tls => b"530 5.7.0 must issue a STARTTLS command first\r\n",
            "MAIL" if upper.starts_with("MAIL FROM:") => {
                let too_big = upper
                    .split_whitespace()
                    .find_map(|p| p.strip_prefix("SIZE="))
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n > intake.max_bytes);
                if too_big {
                    b"552 5.3.4 message too big\r\n"
                } else {
                    have_from = true;
                    rcpts = 0;
                    b"250 2.1.0 OK\r\n"
                }
            }
            "RCPT" if upper.starts_with("RCPT TO:") => {
                if !have_from {
                    b"503 5.5.1 MAIL first\r\n"
                } else if rcpts >= 100 {
                    b"452 4.5.3 too many recipients\r\n"
                } else {
                    rcpts += 1;
                    b"250 2.1.5 OK\r\n"
                }
            }
            "DATA" => {
                if rcpts == 0 {
                    b"503 5.5.1 RCPT first\r\n"
                } else {
                    wr.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                    let Some(answer) = data(&mut rd, intake).await? else {
                        return Ok(Next::Done);
                    };
                    have_from = false;
                    rcpts = 0;
                    rd.get_mut().write_all(answer.as_bytes()).await?;
                    continue;
                }
            }
            "RSET" => {
                have_from = false;
                rcpts = 0;
                b"250 2.0.0 OK\r\n"
            }
            "NOOP" => b"250 2.0.0 OK\r\n",
            "VRFY" => b"252 2.1.5 cannot verify\r\n",
            "QUIT" => {
                wr.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(Next::Done);
            }
            _ => b"502 5.5.2 command not recognized\r\n",
        };
        rd.get_mut().write_all(reply).await?;
    }
}

/// Reads a message body up to `<CRLF>.<CRLF>` (undoing dot-stuffing), keeps and applies
/// it, and returns the reply; `None` when the connection must close (an over-long line,
/// already answered).
async fn data<S: AsyncRead + AsyncWrite + Unpin>(
    rd: &mut BufReader<S>,
    intake: &Intake,
) -> std::io::Result<Option<String>> {
    let mut msg = Vec::new();
    let mut buf = Vec::new();
    let mut too_big = false;
    loop {
        match raw_line(rd, &mut buf, MAX_DATA_LINE).await? {
            Line::Complete => {}
            Line::End => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Line::TooLong => {
                too_long(rd.get_mut(), intake).await?;
                return Ok(None);
            }
        }
        if buf == b".\r\n" || buf == b".\n" {
            break;
        }
        if too_big {
            continue;
        }
        let body = if buf.starts_with(b".") {
            &buf[1..]
        } else {
            &buf[..]
        };
        msg.extend_from_slice(body);
        if msg.len() > intake.max_bytes {
            too_big = true;
            msg = Vec::new();
        }
    }
    if too_big {
        intake.refused("size");
        return Ok(Some("552 5.3.4 message too big\r\n".into()));
    }
    Ok(Some(match intake.mdns.apply(&msg).await {
        Ok(effect) => {
            let effect: String = effect
                .chars()
                .filter(|c| c.is_ascii() && !c.is_control())
                .take(120)
                .collect();
            format!("250 2.0.0 kept: {effect}\r\n")
        }
        Err(ReportError::TooEarly) => {
            "451 4.3.0 the message is still being sent; try again\r\n".into()
        }
        Err(ReportError::Store(e)) => {
            tracing::warn!(error = %e, "Keeping a Direct report failed; the HISP will resend.");
            "451 4.3.0 cannot keep the report now; try again\r\n".into()
        }
    }))
}

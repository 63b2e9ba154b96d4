//! The Direct report intake: a small SMTP server (RFC 5321, the subset a relaying MTA
//! uses) where our HISP delivers the MDNs and DSNs addressed to our Direct address.
//! Each message is kept and applied ([`super::direct::Mdns::apply`]) before the `250`,
//! so a report the HISP was told we have is never lost; a store failure answers `451`
//! and the HISP tries again later.
//!
//! Plain SMTP only: bind it to the network the HISP connection arrives on (loopback, a
//! private link or a TLS-terminating proxy); the reports themselves carry no PHI beyond
//! the Direct addresses.

use super::direct::{Mdns, ReportError};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512; be generous).
const MAX_LINE: usize = 2048;
const IDLE: Duration = Duration::from_secs(300);

/// Accepts connections until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    mdns: Arc<Mdns>,
    max_bytes: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let mdns = mdns.clone();
                    tokio::spawn(async move {
                        if let Err(e) = session(stream, &mdns, max_bytes).await {
                            tracing::debug!(error = %e, "Direct intake session ended.");
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

/// Reads one line (without CRLF) within the idle limit; `None` at end of stream.
async fn line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let n = tokio::time::timeout(
        IDLE,
        (&mut *r).take(MAX_LINE as u64 + 2).read_until(b'\n', buf),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"))??;
    if n == 0 {
        return Ok(None);
    }
    let complete = buf.ends_with(b"\n");
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(Some(complete))
}

async fn session(stream: TcpStream, mdns: &Mdns, max_bytes: usize) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    wr.write_all(b"220 adt-router Direct report intake ESMTP\r\n")
        .await?;
    let mut buf = Vec::with_capacity(256);
    let mut have_from = false;
    let mut rcpts = 0usize;
    loop {
        let Some(complete) = line(&mut rd, &mut buf).await? else {
            return Ok(());
        };
        if !complete {
            // Over-long line: skip the rest of it.
            while !line(&mut rd, &mut buf).await?.unwrap_or(true) {}
            wr.write_all(b"500 5.5.2 line too long\r\n").await?;
            continue;
        }
        let text = String::from_utf8_lossy(&buf).to_string();
        let upper = text.to_ascii_uppercase();
        let verb = upper.split_whitespace().next().unwrap_or("");
        let reply: &[u8] = match verb {
            "EHLO" => {
                let r = format!(
                    "250-adt-router\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 SIZE {max_bytes}\r\n"
                );
                wr.write_all(r.as_bytes()).await?;
                continue;
            }
            "HELO" => b"250 adt-router\r\n",
            "MAIL" if upper.starts_with("MAIL FROM:") => {
                let too_big = upper
                    .split_whitespace()
                    .find_map(|p| p.strip_prefix("SIZE="))
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n > max_bytes);
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
                    let answer = data(&mut rd, mdns, max_bytes).await?;
                    have_from = false;
                    rcpts = 0;
                    wr.write_all(answer.as_bytes()).await?;
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
                return Ok(());
            }
            _ => b"502 5.5.2 command not recognized\r\n",
        };
        wr.write_all(reply).await?;
    }
}

/// Reads a message body up to `<CRLF>.<CRLF>` (undoing dot-stuffing), keeps and applies
/// it, and returns the reply.
async fn data<R: tokio::io::AsyncBufRead + Unpin>(
    rd: &mut R,
    mdns: &Mdns,
    max_bytes: usize,
) -> std::io::Result<String> {
    let mut msg = Vec::new();
    let mut buf = Vec::new();
    let mut too_big = false;
    loop {
        buf.clear();
        let n = tokio::time::timeout(IDLE, rd.read_until(b'\n', &mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
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
        if msg.len() > max_bytes {
            too_big = true;
            msg = Vec::new();
        }
    }
    if too_big {
        return Ok("552 5.3.4 message too big\r\n".into());
    }
    Ok(match mdns.apply(&msg).await {
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
    })
}

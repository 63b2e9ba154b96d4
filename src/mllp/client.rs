//! A small MLLP client: one message in flight, wait for its ACK. Used by `adt-router
//! send`, the benchmark and the tests.

use super::codec::{encode_frame, FrameDecoder};
use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no ACK within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before an ACK arrived")]
    Closed,
    #[error("ACK frame too large")]
    Frame,
}

pub struct MllpClient {
    stream: TcpStream,
    buf: BytesMut,
    dec: FrameDecoder,
    frame: Vec<u8>,
}

impl MllpClient {
    pub async fn connect(addr: &str) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        stream.set_nodelay(true)?;
        Ok(MllpClient {
            stream,
            buf: BytesMut::with_capacity(8192),
            dec: FrameDecoder::new(16 * 1024 * 1024),
            frame: Vec::with_capacity(4096),
        })
    }

    /// Sends one payload and returns the ACK payload.
    pub async fn send(&mut self, payload: &[u8], timeout: Duration) -> Result<Bytes, ClientError> {
        self.frame.clear();
        encode_frame(payload, &mut self.frame);
        self.stream.write_all(&self.frame).await?;
        self.recv(timeout).await
    }

    /// Sends raw bytes as they are (for tests of framing quirks).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    pub async fn recv(&mut self, timeout: Duration) -> Result<Bytes, ClientError> {
        let fut = async {
            loop {
                if let Some(f) = self
                    .dec
                    .decode(&mut self.buf)
                    .map_err(|_| ClientError::Frame)?
                {
                    return Ok(f);
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(ClientError::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }
}

/// MSA-1, MSA-2 and MSA-3 (or ERR-7 diagnostic if present) of an ACK.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckSummary {
    pub code: String,
    pub control_id: String,
    pub text: String,
}

pub fn summarize_ack(ack: &[u8]) -> AckSummary {
    let text = String::from_utf8_lossy(ack);
    let mut out = AckSummary::default();
    let fs = text.as_bytes().get(3).map(|&b| b as char).unwrap_or('|');
    for seg in text.split(['\r', '\n']) {
        let f: Vec<&str> = seg.split(fs).collect();
        match f.first().copied() {
            Some("MSA") => {
                out.code = f.get(1).unwrap_or(&"").to_string();
                out.control_id = f.get(2).unwrap_or(&"").to_string();
                out.text = f.get(3).unwrap_or(&"").to_string();
            }
            Some("ERR") if out.text.is_empty() || f.get(7).is_some() => {
                if let Some(d) = f.get(7).filter(|d| !d.is_empty()) {
                    out.text = d.to_string();
                }
            }
            _ => {}
        }
    }
    out
}

/// Splits a file into messages: segments may end in CR, LF or CRLF; a new MSH starts a
/// new message; batch envelope segments (FHS, BHS, BTS, FTS) are dropped.
pub fn split_messages(bytes: &[u8]) -> Vec<Vec<u8>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out: Vec<Vec<u8>> = Vec::new();
    for line in bytes.split(|&b| b == b'\r' || b == b'\n') {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let id = &line[..line.len().min(3)];
        if matches!(id, b"FHS" | b"BHS" | b"BTS" | b"FTS") {
            continue;
        }
        if id == b"MSH" || out.is_empty() {
            out.push(Vec::new());
        }
        let cur = out.last_mut().expect("pushed above");
        cur.extend_from_slice(line);
        cur.push(b'\r');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_batches_and_newlines() {
        let f = b"FHS|^~\\&\nBHS|^~\\&\nMSH|a\nPID|1\n\nMSH|b\r\nPV1|1\r\nBTS|2\nFTS|1\n";
        let m = split_messages(f);
        assert_eq!(
            m,
            vec![b"MSH|a\rPID|1\r".to_vec(), b"MSH|b\rPV1|1\r".to_vec()]
        );
    }

    #[test]
    fn summarizes_acks() {
        let s = summarize_ack(b"MSH|^~\\&|R|R|S|S|1||ACK^A01^ACK|9|P|2.5.1\rMSA|AE|C1|short\rERR||PID^1^3|101^x^HL70357|E|||long diagnostic\r");
        assert_eq!(
            (s.code.as_str(), s.control_id.as_str(), s.text.as_str()),
            ("AE", "C1", "long diagnostic")
        );
    }
}

//! MLLP framing (standards §1): `0x0B` payload `0x1C 0x0D`.
//!
//! Pure and incremental: feed it whatever the socket gave you and take frames out.
//! Lenient about what real senders do, and strict about memory:
//! - bytes before a start block are skipped (counted as `junk_before_start`);
//! - a start block inside an open frame restarts the frame (`start_inside_frame`);
//! - an end block followed by LF (`end_block_lf`) or by anything else or nothing
//!   (`missing_trailer`) still ends the frame. A frame is handed out as soon as its end
//!   block arrives, so a sender that never sends the trailer CR is not left waiting;
//! - a frame longer than `max_frame` is an error: the caller drops the connection.

use bytes::{Buf, Bytes, BytesMut};

pub const SB: u8 = 0x0b;
pub const EB: u8 = 0x1c;
pub const CR: u8 = 0x0d;
pub const LF: u8 = 0x0a;

/// Wraps a payload in an MLLP block.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + 3);
    out.push(SB);
    out.extend_from_slice(payload);
    out.push(EB);
    out.push(CR);
}

/// A payload wrapped in an MLLP block, as a new buffer.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(payload, &mut out);
    out
}

/// Framing quirks seen, by kind. The listener turns them into metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    pub junk_before_start: u64,
    pub start_inside_frame: u64,
    pub end_block_lf: u64,
    pub missing_trailer: u64,
    /// The connection closed in the middle of a frame.
    pub truncated_frame: u64,
}

impl Quirks {
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("junk_before_start", self.junk_before_start),
            ("start_inside_frame", self.start_inside_frame),
            ("end_block_lf", self.end_block_lf),
            ("missing_trailer", self.missing_trailer),
            ("truncated_frame", self.truncated_frame),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame exceeds the {max} byte limit")]
    TooLarge { max: usize },
}

#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: usize,
    in_frame: bool,
    /// An end block was the last byte seen; the next byte may be its CR (or LF).
    pending_trailer: bool,
    /// How far into the open frame we have already searched.
    scanned: usize,
    quirks: Quirks,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            max_frame,
            in_frame: false,
            pending_trailer: false,
            scanned: 0,
            quirks: Quirks::default(),
        }
    }

    /// Takes the quirks counted since the last call.
    pub fn take_quirks(&mut self) -> Quirks {
        std::mem::take(&mut self.quirks)
    }

    /// True while part of a frame is buffered (used to decide what a close means).
    pub fn in_frame(&self) -> bool {
        self.in_frame
    }

    /// Returns the next complete frame's payload, `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] once an open frame passes `max_frame`; the buffer is then
    /// in an undefined state and the connection should be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            if self.pending_trailer {
                match buf.first() {
                    None => return Ok(None),
                    Some(&CR) => buf.advance(1),
                    Some(&LF) => {
                        self.quirks.end_block_lf += 1;
                        buf.advance(1);
                    }
                    Some(_) => self.quirks.missing_trailer += 1,
                }
                self.pending_trailer = false;
            }
            if !self.in_frame {
                match buf.iter().position(|&b| b == SB) {
                    Some(i) => {
                        self.note_discarded(&buf[..i]);
                        buf.advance(i + 1);
                        self.in_frame = true;
                        self.scanned = 0;
                    }
                    None => {
                        self.note_discarded(buf);
                        buf.clear();
                        return Ok(None);
                    }
                }
            }
            let from = self.scanned;
            match buf[from..].iter().position(|&b| b == EB || b == SB) {
                Some(off) => {
                    let at = from + off;
                    if at > self.max_frame {
                        return Err(FrameError::TooLarge {
                            max: self.max_frame,
                        });
                    }
                    if buf[at] == SB {
                        // A new frame starts before the old one ended: drop the partial.
                        self.quirks.start_inside_frame += 1;
                        buf.advance(at + 1);
                        self.scanned = 0;
                        continue;
                    }
                    let payload = buf.split_to(at).freeze();
                    buf.advance(1);
                    self.in_frame = false;
                    self.scanned = 0;
                    self.pending_trailer = true;
                    return Ok(Some(payload));
                }
                None => {
                    if buf.len() > self.max_frame {
                        return Err(FrameError::TooLarge {
                            max: self.max_frame,
                        });
                    }
                    self.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    /// Call when the peer closed: counts a frame cut short or a trailer never sent.
    pub fn finish(&mut self, buf: &BytesMut) {
        if self.in_frame && !buf.is_empty() {
            self.quirks.truncated_frame += 1;
        }
        if self.pending_trailer {
            self.quirks.missing_trailer += 1;
            self.pending_trailer = false;
        }
    }

    fn note_discarded(&mut self, bytes: &[u8]) {
        // CR/LF between frames is common and harmless; anything else is junk.
        if bytes.iter().any(|b| !b.is_ascii_whitespace()) {
            self.quirks.junk_before_start += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(stream: &[u8], chunks: &[usize], max: usize) -> (Vec<Bytes>, Quirks) {
        let mut d = FrameDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut quirks = Quirks::default();
        let feed = |buf: &mut BytesMut, d: &mut FrameDecoder, out: &mut Vec<Bytes>| {
            while let Some(f) = d.decode(buf).unwrap() {
                out.push(f);
            }
        };
        for &c in chunks {
            let end = (pos + c).min(stream.len());
            buf.extend_from_slice(&stream[pos..end]);
            pos = end;
            feed(&mut buf, &mut d, &mut out);
        }
        buf.extend_from_slice(&stream[pos..]);
        feed(&mut buf, &mut d, &mut out);
        d.finish(&buf);
        let q = d.take_quirks();
        quirks.junk_before_start += q.junk_before_start;
        quirks.start_inside_frame += q.start_inside_frame;
        quirks.end_block_lf += q.end_block_lf;
        quirks.missing_trailer += q.missing_trailer;
        quirks.truncated_frame += q.truncated_frame;
        (out, quirks)
    }

    fn stream_of(msgs: &[&[u8]]) -> Vec<u8> {
        let mut s = Vec::new();
        for m in msgs {
            encode_frame(m, &mut s);
        }
        s
    }

    #[test]
    fn every_split_point_yields_the_same_frames() {
        let msgs: [&[u8]; 3] = [b"MSH|one\rPID|1", b"MSH|two", b"MSH|three\r"];
        let s = stream_of(&msgs);
        for i in 0..=s.len() {
            let (out, q) = frames(&s, &[i], 1024);
            assert_eq!(out, msgs.to_vec(), "split at {i}");
            assert_eq!(q, Quirks::default(), "split at {i}");
        }
    }

    #[test]
    fn quirks_are_tolerated_and_counted() {
        let mut s = b"junk\r\n".to_vec();
        s.extend_from_slice(b"\x0bMSH|a\x1c\n"); // LF trailer
        s.extend_from_slice(b"\x0bMSH|partial\x0bMSH|b\x1c\r"); // restart
        s.extend_from_slice(b"\x0bMSH|c\x1c"); // no trailer, then next frame
        s.extend_from_slice(b"\x0bMSH|d\x1c"); // no trailer at close
        let (out, q) = frames(&s, &[], 1024);
        let want: Vec<&[u8]> = vec![b"MSH|a", b"MSH|b", b"MSH|c", b"MSH|d"];
        assert_eq!(out, want);
        assert_eq!(
            q,
            Quirks {
                junk_before_start: 1,
                start_inside_frame: 1,
                end_block_lf: 1,
                missing_trailer: 2,
                truncated_frame: 0
            }
        );
    }

    #[test]
    fn oversized_frame_is_an_error_even_without_an_end_block() {
        let mut d = FrameDecoder::new(10);
        let mut buf = BytesMut::from(&b"\x0b0123456789AB"[..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::TooLarge { max: 10 }));
        let mut d = FrameDecoder::new(10);
        let mut buf = BytesMut::from(&b"\x0b0123456789AB\x1c\r"[..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::TooLarge { max: 10 }));
        let mut d = FrameDecoder::new(10);
        let mut buf = BytesMut::from(&b"\x0b0123456789\x1c\r"[..]);
        assert_eq!(d.decode(&mut buf).unwrap().unwrap(), &b"0123456789"[..]);
    }

    #[test]
    fn truncated_frame_at_close_is_counted_and_not_emitted() {
        let (out, q) = frames(b"\x0bMSH|half", &[], 1024);
        assert!(out.is_empty());
        assert_eq!(q.truncated_frame, 1);
    }

    proptest! {
        #[test]
        fn random_chunking_preserves_frames(
            msgs in proptest::collection::vec(
                proptest::collection::vec(any::<u8>().prop_filter("no framing bytes", |b| *b != SB && *b != EB), 0..200),
                1..8),
            chunks in proptest::collection::vec(1usize..64, 0..40),
        ) {
            let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
            let s = stream_of(&refs);
            let (out, _) = frames(&s, &chunks, 4096);
            let want: Vec<Bytes> = msgs.iter().map(|m| Bytes::from(m.clone())).collect();
            prop_assert_eq!(out, want);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_respect_the_cap(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            chunk in 1usize..97,
        ) {
            let mut d = FrameDecoder::new(256);
            let mut buf = BytesMut::new();
            for c in data.chunks(chunk) {
                buf.extend_from_slice(c);
                loop {
                    match d.decode(&mut buf) {
                        Ok(Some(f)) => prop_assert!(f.len() <= 256),
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
                prop_assert!(buf.len() <= 256 + chunk + 1);
            }
        }
    }
}

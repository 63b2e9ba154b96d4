//! MLLP framing quirks and limits, over a real socket.

use crate::support::*;
use adt_router::mllp::client::{summarize_ack, MllpClient};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn msg(id: &str) -> Vec<u8> {
    format!("MSH|^~\\&|A|F|R|R|20260101||ADT^A04|{id}|P|2.5.1\rPID|1||P{id}^^^F\rPV1|1|E\r")
        .into_bytes()
}

async fn acks(c: &mut MllpClient, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let s = summarize_ack(&c.recv(Duration::from_secs(10)).await.unwrap());
        out.push((s.code, s.control_id));
    }
    out
}

#[tokio::test]
async fn quirky_framing_is_tolerated_counted_and_answered_in_order() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    let mut stream = Vec::new();
    stream.extend_from_slice(b"garbage before\r\n");
    for (id, tail) in [("Q1", &b"\x1c\r"[..]), ("Q2", b"\x1c\n"), ("Q3", b"\x1c")] {
        stream.push(0x0b);
        stream.extend_from_slice(&msg(id));
        stream.extend_from_slice(tail);
    }
    // A start block inside an open frame: the partial is dropped, Q4 is answered.
    stream.extend_from_slice(b"\x0bMSH|^~\\&|A|F|R|R|2026||ADT^A04|LOST");
    stream.push(0x0b);
    stream.extend_from_slice(&msg("Q4"));
    stream.extend_from_slice(b"\x1c\r");
    // An empty frame gets no answer.
    stream.extend_from_slice(b"\x0b\r\x1c\r");
    // Two frames pipelined in one write.
    for id in ["Q5", "Q6"] {
        stream.extend_from_slice(&adt_router::mllp::codec::frame(&msg(id)));
    }
    c.send_raw(&stream).await.unwrap();
    // One frame split into single bytes.
    for b in adt_router::mllp::codec::frame(&msg("Q7")) {
        c.send_raw(&[b]).await.unwrap();
    }
    let got = acks(&mut c, 7).await;
    let ids: Vec<&str> = got.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids, ["Q1", "Q2", "Q3", "Q4", "Q5", "Q6", "Q7"]);
    assert!(got.iter().all(|(code, _)| code == "AA"));
    for (kind, n) in [
        ("junk_before_start", 1.0),
        ("end_block_lf", 1.0),
        ("missing_trailer", 1.0),
        ("start_inside_frame", 1.0),
        ("empty_frame", 1.0),
    ] {
        assert_eq!(
            server.metric(&format!(
                "adt_router_mllp_frame_errors_total{{kind=\"{kind}\"}}"
            )),
            n,
            "{kind}"
        );
    }
    assert_eq!(server.export(&[]).len(), 7);
}

#[tokio::test]
async fn not_hl7_gets_ar_with_err_and_is_quarantined() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    let ack = c
        .send(b"this is not an HL7 message", Duration::from_secs(5))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&ack);
    assert!(text.contains("MSA|AR|"), "{text}");
    assert!(
        text.contains("ERR||MSH^1|100^Segment sequence error^HL70357|E"),
        "{text}"
    );
    let ack = c
        .send(
            b"MSH|^~\\&|A|F|R|R|2026||ADT^A01||P|2.5\rPID|1||X",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&ack);
    assert!(
        text.contains("MSA|AR|") && text.contains("MSH^1^10|101^"),
        "{text}"
    );
    // The connection stays usable and nothing reached the event log.
    let s = summarize_ack(&c.send(&msg("OK1"), Duration::from_secs(5)).await.unwrap());
    assert_eq!(s.code, "AA");
    assert_eq!(server.export(&[]).len(), 1);
    assert_eq!(
        server.metric("adt_router_quarantined_total{reason=\"not_hl7\"}"),
        1.0
    );
    assert_eq!(
        server.metric("adt_router_quarantined_total{reason=\"missing_control_id\"}"),
        1.0
    );
    let store = adt_router::store::Store::connect(&adt_router::store::StoreOptions {
        url: format!("sqlite://{}/data/adt-router.db", dir.path().display()),
        max_connections: 2,
        busy_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    assert_eq!(store.counts().await.unwrap(), (1, 2));
}

#[tokio::test]
async fn oversized_frame_closes_the_connection_only() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[("ADT_ROUTER__MLLP__MAX_FRAME_BYTES", "4096")]);
    let mut s = tokio::net::TcpStream::connect(&server.mllp).await.unwrap();
    let mut big = vec![0x0b];
    big.extend(std::iter::repeat_n(b'A', 10_000));
    let _ = s.write_all(&big).await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "expected close, got {n:?}");
    assert_eq!(
        server.metric("adt_router_mllp_frame_errors_total{kind=\"oversize\"}"),
        1.0
    );
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    assert_eq!(
        summarize_ack(&c.send(&msg("after"), Duration::from_secs(5)).await.unwrap()).code,
        "AA"
    );
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_and_idle_ones_closed() {
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER__MLLP__MAX_CONNECTIONS", "2"),
            ("ADT_ROUTER__MLLP__IDLE_TIMEOUT_SECS", "2"),
        ],
    );
    let mut a = MllpClient::connect(&server.mllp).await.unwrap();
    let mut b = MllpClient::connect(&server.mllp).await.unwrap();
    // Make sure both are accepted before the third arrives.
    a.send(&msg("C1"), Duration::from_secs(5)).await.unwrap();
    b.send(&msg("C2"), Duration::from_secs(5)).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(&server.mllp).await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("refused in time");
    assert!(matches!(r, Ok(0) | Err(_)));
    assert_eq!(
        server.metric("adt_router_mllp_connections_refused_total{reason=\"max_connections\"}"),
        1.0
    );
    assert_eq!(server.metric("adt_router_mllp_open_connections"), 2.0);
    // After the idle timeout both are closed by the server.
    wait_for(Duration::from_secs(10), "idle connections closed", || {
        server.metric("adt_router_mllp_open_connections") == 0.0
    });
    assert!(a.send(&msg("C3"), Duration::from_secs(2)).await.is_err());
    assert_eq!(
        server.metric("adt_router_mllp_frame_errors_total{kind=\"idle_timeout\"}"),
        2.0
    );
}

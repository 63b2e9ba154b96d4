//! SIGTERM: stop accepting, answer what was received, exit 0. Plus the CLI contract.

use crate::support::*;
use adt_router::mllp::client::{summarize_ack, MllpClient};
use std::process::Command;
use std::time::Duration;

/// The server turns transparent huge pages off for itself (the kernel zeroing 2 MiB pages
/// that mimalloc asked for cost 8-9% of routing's CPU), unless mimalloc's own switch is
/// set. Read from the kernel's view of the process, `/proc/PID/status`.
#[test]
fn the_server_runs_without_transparent_huge_pages_unless_told() {
    let thp = |env: &[(&str, &str)]| {
        let dir = tempdir();
        let server = Server::start(dir.path(), env);
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("THP_enabled:"))
            .map(|l| l.split_whitespace().last().unwrap_or_default().to_string());
        drop(server);
        line
    };
    assert_eq!(thp(&[]).as_deref(), Some("0"));
    assert_eq!(thp(&[("MIMALLOC_ALLOW_THP", "1")]).as_deref(), Some("1"));
}

#[tokio::test]
async fn sigterm_answers_frames_already_received_then_exits_zero() {
    let dir = tempdir();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    let mut burst = Vec::new();
    for i in 0..200 {
        let m =
            format!("MSH|^~\\&|A|F|R|R|20260101||ADT^A01|T{i}|P|2.5.1\rPID|1||P{i}^^^F\rPV1|1|I\r");
        adt_router::mllp::codec::encode_frame(m.as_bytes(), &mut burst);
    }
    c.send_raw(&burst).await.unwrap();
    let first = summarize_ack(&c.recv(Duration::from_secs(10)).await.unwrap());
    assert_eq!(first.control_id, "T0");
    let status = tokio::task::spawn_blocking(move || {
        let st = server.sigterm();
        (st, server)
    });
    let mut answered = 1;
    while let Ok(ack) = c.recv(Duration::from_secs(20)).await {
        let s = summarize_ack(&ack);
        assert_eq!(s.code, "AA");
        assert_eq!(s.control_id, format!("T{answered}"));
        answered += 1;
    }
    let (st, server) = status.await.unwrap();
    assert!(st.success(), "exit status {st:?}");
    assert_eq!(answered, 200, "every frame sent before SIGTERM is answered");
    assert!(
        std::net::TcpStream::connect(&server.mllp).is_err(),
        "still accepting after shutdown"
    );
    assert_eq!(server.export(&[]).len(), 200);
    assert!(server.log().contains("Shutdown complete."));
}

#[test]
fn every_subcommand_has_help_and_bad_config_fails_clearly() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["send", "--help"],
        vec!["messages", "export", "--help"],
        vec!["bench", "--help"],
        vec!["check-config", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    let out = Command::new(BIN)
        .arg("check-config")
        .env("ADT_ROUTER__MLLP__LISTEN", "nonsense")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mllp.listen"));
    let out = Command::new(BIN)
        .arg("check-config")
        .env("ADT_ROUTER__MLLP__LISTNE", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt key must not be ignored");
    for (key, value, named) in [
        ("ADT_ROUTER__KAFKA__BUSY_AT", "0", "kafka.busy_at"),
        (
            "ADT_ROUTER__KAFKA__BUSY_LINGER_MS",
            "-1",
            "kafka.busy_linger_ms",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("check-config")
            .env("ADT_ROUTER__KAFKA__BROKERS", "127.0.0.1:9")
            .env(key, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}={value} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{key}={value}: {err}");
    }
    let dir = tempdir();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[mllp]\nlisten = \"127.0.0.1:12575\"\n[hl7]\nrequired_fields = [\"PID-3\", \"PV1\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("ADT_ROUTER__HTTP__LISTEN", "127.0.0.1:18080")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("127.0.0.1:12575")
            && text.contains("127.0.0.1:18080")
            && text.contains("PV1"),
        "{text}"
    );
    // librdkafka options: printed by key only (they may hold passwords); the ones the
    // delivery guarantees rest on are refused.
    std::fs::write(
        &cfg,
        "[kafka.librdkafka_options]\n\"sasl.password\" = \"hunter2-secret\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("sasl.password") && !text.contains("hunter2"),
        "{text}"
    );
    std::fs::write(&cfg, "[kafka.librdkafka_options]\nacks = \"1\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kafka.librdkafka_options") && err.contains("acks"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["send", "--to", "127.0.0.1:1", "/nonexistent.hl7"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
}

#[tokio::test]
async fn health_ready_and_metrics_answer() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.get("/healthz").0, 200);
    let (code, body) = server.get("/readyz");
    assert_eq!(code, 200, "{body}");
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    c.send(
        b"MSH|^~\\&|A|GENHOSP|R|R|2026||ADT^A03|M1|P|2.5\rPID|1||X^^^F\rPV1|1|I\r",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // Counted once the ACK is written, which may be just after the client has read it.
    server.assert_metric_sum(
        "adt_router_messages_received_total",
        "ack_code=\"AA\",sending_facility=\"GENHOSP\",trigger_event=\"A03\"",
        1.0,
    );
    // Observed once the ACK is written, which may be just after the client has read it.
    wait_for(
        Duration::from_secs(5),
        "the ACK latency observation",
        || server.metric("adt_router_ack_latency_seconds_count") >= 1.0,
    );
    assert_eq!(server.metric("adt_router_ack_latency_seconds_count"), 1.0);
    assert_eq!(
        server.metric("adt_router_event_log_commit_batch_size_count"),
        1.0
    );
    assert_eq!(server.metric("adt_router_mllp_open_connections"), 1.0);
}

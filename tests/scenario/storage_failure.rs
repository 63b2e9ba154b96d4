//! The event log cannot commit. With `mllp.on_storage_failure = "close"` (the default)
//! the sender gets no answer and a closed connection, which every engine retries; with
//! `"nack"` it gets AR (original) / CE (enhanced) with ERR 207. Never AA/CA. The listener
//! recovers by itself when storage returns, and the record says what each sender heard:
//! checked against the log of an engine-like sender built on python-hl7
//! (`tests/peers/engine_sender.py`).

use crate::support::*;
use adt_router::mllp::client::{summarize_ack, ClientError, MllpClient};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn msg(id: &str, enhanced: bool) -> Vec<u8> {
    let ack = if enhanced { "|||AL|NE" } else { "" };
    format!("MSH|^~\\&|A|F|R|R|20260101||ADT^A01|{id}|P|2.5.1{ack}\rPID|1||P{id}^^^F\rPV1|1|I\r")
        .into_bytes()
}

pub async fn send_code(c: &mut MllpClient, m: &[u8]) -> (String, String) {
    let ack = c.send(m, Duration::from_secs(20)).await.unwrap();
    let s = summarize_ack(&ack);
    (s.code, s.text)
}

/// `nack` mode while storage is down: AR / CE with ERR 207.
pub async fn assert_rejects_while_down(c: &mut MllpClient, prefix: &str) {
    let (code, text) = send_code(c, &msg(&format!("{prefix}-down-1"), false)).await;
    assert_eq!(code, "AR", "{text}");
    assert!(
        text.contains("not stored") || text.contains("not accepted"),
        "{text}"
    );
    let (code, _) = send_code(c, &msg(&format!("{prefix}-down-2"), true)).await;
    assert_eq!(code, "CE");
}

/// `close` mode while storage is down: no answer, and the connection is closed.
pub async fn assert_closes_while_down(addr: &str, prefix: &str) {
    for (i, enhanced) in [false, true].into_iter().enumerate() {
        let mut c = MllpClient::connect(addr).await.unwrap();
        let got = c
            .send(
                &msg(&format!("{prefix}-down-{i}"), enhanced),
                Duration::from_secs(20),
            )
            .await;
        assert!(
            matches!(got, Err(ClientError::Closed) | Err(ClientError::Io(_))),
            "expected the connection to close without an answer, got {got:?}"
        );
    }
}

pub async fn wait_until_accepting(addr: &str, prefix: &str) {
    for i in 0..100 {
        if let Ok(mut c) = MllpClient::connect(addr).await {
            if let Ok(ack) = c
                .send(
                    &msg(&format!("{prefix}-up-{i}"), false),
                    Duration::from_secs(20),
                )
                .await
            {
                if summarize_ack(&ack).code == "AA" {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("listener did not recover after storage returned");
}

/// Another process holding SQLite's write lock until dropped.
pub struct SqliteLock(Child);

impl SqliteLock {
    pub fn take(db: &std::path::Path) -> SqliteLock {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        SqliteLock(child)
    }
}

impl Drop for SqliteLock {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

fn stored_ids(server: &Server) -> Vec<String> {
    server
        .export(&[])
        .iter()
        .map(|r| r["control_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn locked_sqlite_nack_mode_gets_ar_ce_and_recovers() {
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER__DATABASE__BUSY_TIMEOUT_MS", "300"),
            ("ADT_ROUTER__EVENT_LOG__COMMIT_TIMEOUT_MS", "2000"),
            ("ADT_ROUTER__MLLP__ON_STORAGE_FAILURE", "nack"),
        ],
    );
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    assert_eq!(send_code(&mut c, &msg("S-before", false)).await.0, "AA");

    let lock = SqliteLock::take(&dir.path().join("data/adt-router.db"));
    assert_rejects_while_down(&mut c, "S").await;
    assert!(server.metric("adt_router_event_log_append_errors_total{kind=\"unavailable\"}") >= 2.0);
    drop(lock);
    wait_until_accepting(&server.mllp, "S").await;
    let ids = stored_ids(&server);
    assert!(
        !ids.iter().any(|i| i.contains("down")),
        "a rejected message was stored: {ids:?}"
    );
    assert_eq!(ids[0], "S-before");
    assert!(server.metric_sum("adt_router_messages_received_total", "ack_code=\"AR\"") >= 1.0);
}

#[tokio::test]
async fn locked_sqlite_close_mode_closes_without_an_answer_and_recovers() {
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER__DATABASE__BUSY_TIMEOUT_MS", "300"),
            ("ADT_ROUTER__EVENT_LOG__COMMIT_TIMEOUT_MS", "2000"),
        ],
    );
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    assert_eq!(send_code(&mut c, &msg("C-before", false)).await.0, "AA");
    let lock = SqliteLock::take(&dir.path().join("data/adt-router.db"));
    assert_closes_while_down(&server.mllp, "C").await;
    drop(lock);
    wait_until_accepting(&server.mllp, "C").await;
    let ids = stored_ids(&server);
    assert!(!ids.iter().any(|i| i.contains("down")), "{ids:?}");
    // Nothing was written to those senders, and the metrics say so.
    server.assert_metric_sum(
        "adt_router_messages_received_total",
        "ack_code=\"none\"",
        2.0,
    );
    assert_eq!(
        server.metric_sum("adt_router_messages_received_total", "ack_code=\"AR\"")
            + server.metric_sum("adt_router_messages_received_total", "ack_code=\"CE\""),
        0.0
    );
}

/// What the engine-like sender wrote about its run.
#[derive(Debug)]
pub struct EngineLog {
    /// (control id, what it heard: "AA", "AR", ..., or "none"), in order.
    pub attempts: Vec<(String, String)>,
    /// Control id to SENT, ERROR or QUEUED (gave up).
    pub last: HashMap<String, String>,
}

/// Starts `tests/peers/engine_sender.py` against `addr`; `wait_engine` reads its log.
pub fn start_engine(addr: &str, args: &[&str]) -> Child {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/engine_sender.py");
    Command::new("python3")
        .arg(path)
        .args([host, port])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 engine_sender.py")
}

pub async fn wait_engine(child: Child) -> EngineLog {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "engine_sender failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("engine log is JSON");
    EngineLog {
        attempts: v["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["control_id"].as_str().unwrap().to_string(),
                    a["heard"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
        last: v["final"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect(),
    }
}

/// Waits (bounded) until `n` rows are stored.
pub async fn wait_rows(server: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.export(&[]).len() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} rows stored in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The engine lost nothing, and adt-router's record agrees with the engine's log:
/// - every message ended SENT;
/// - every message is stored exactly once as a first copy (so routed once); any other
///   copy is flagged duplicate;
/// - each stored row's `ack_code` is something the engine heard for that message, and
///   every AA/CA the engine heard is on a row;
/// - the metrics count exactly the engine's attempts, by the code it heard.
pub fn assert_record_matches_engine(server: &Server, log: &EngineLog, prefix: &str) {
    let not_sent: Vec<_> = log.last.iter().filter(|(_, s)| *s != "SENT").collect();
    assert!(
        not_sent.is_empty(),
        "the engine did not deliver: {not_sent:?}"
    );
    let rows = server.export(&[]);
    let mut stored: HashMap<&str, Vec<(&str, bool)>> = HashMap::new();
    for r in &rows {
        let id = r["control_id"].as_str().unwrap();
        if id.starts_with(prefix) {
            stored.entry(id).or_default().push((
                r["ack_code"].as_str().unwrap(),
                r["duplicate"].as_bool().unwrap(),
            ));
        }
    }
    let mut heard: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_code: HashMap<&str, usize> = HashMap::new();
    for (id, h) in &log.attempts {
        heard.entry(id).or_default().push(h);
        *by_code.entry(h).or_default() += 1;
    }
    assert_eq!(
        stored.len(),
        log.last.len(),
        "stored ids vs the engine's messages"
    );
    for (id, copies) in &stored {
        let firsts = copies.iter().filter(|(_, dup)| !dup).count();
        assert_eq!(firsts, 1, "{id}: stored {copies:?}, heard {:?}", heard[id]);
        let mut left = heard[id].clone();
        for (code, _) in copies {
            let i = left.iter().position(|h| h == code).unwrap_or_else(|| {
                panic!("{id}: a row says {code}, the engine heard {:?}", heard[id])
            });
            left.remove(i);
        }
        assert!(
            !left.iter().any(|h| matches!(*h, "AA" | "CA")),
            "{id}: an accept the engine heard is on no row (rows {copies:?}, heard {:?})",
            heard[id]
        );
    }
    for (code, n) in &by_code {
        // The metrics count the answers the engine heard, code by code.
        let label = format!("ack_code=\"{code}\"");
        server.assert_metric_sum("adt_router_messages_received_total", &label, *n as f64);
    }
}

/// A stock engine (AR is an error, never resent) against a write lock held for 3 s:
/// the commit in flight outlives its deadline and lands late (recorded "none"), the
/// queued resends are abandoned before their commit begins, and the engine, seeing
/// closed connections, resends until it hears AA. Nothing lost, nothing routed twice.
#[tokio::test]
async fn engine_loses_nothing_when_sqlite_is_locked_close_mode() {
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        &[("ADT_ROUTER__EVENT_LOG__COMMIT_TIMEOUT_MS", "1000")],
    );
    let engine = start_engine(
        &server.mllp,
        &["--count", "50", "--prefix", "L", "--rate", "25"],
    );
    wait_rows(&server, 10).await;
    let lock = SqliteLock::take(&dir.path().join("data/adt-router.db"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(lock);
    let log = wait_engine(engine).await;
    assert_record_matches_engine(&server, &log, "L-");
    assert!(
        server.metric("adt_router_event_log_ack_corrections_total{reason=\"late_commit\"}") >= 1.0,
        "the lock should have made a commit land after its deadline"
    );
    let rows = server.export(&[]);
    assert!(rows
        .iter()
        .any(|r| r["ack_code"] == "none" && r["duplicate"] == false));
    assert!(server.log().contains("committed after its sender was told"));
}

/// `nack` mode with an engine set to resend AR: the late commit is recorded as "AR",
/// the resend is the duplicate.
#[tokio::test]
async fn engine_that_resends_ar_loses_nothing_when_sqlite_is_locked_nack_mode() {
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER__EVENT_LOG__COMMIT_TIMEOUT_MS", "1000"),
            ("ADT_ROUTER__MLLP__ON_STORAGE_FAILURE", "nack"),
        ],
    );
    let engine = start_engine(
        &server.mllp,
        &[
            "--count",
            "50",
            "--prefix",
            "N",
            "--rate",
            "25",
            "--retry-codes",
            "AR",
        ],
    );
    wait_rows(&server, 10).await;
    let lock = SqliteLock::take(&dir.path().join("data/adt-router.db"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(lock);
    let log = wait_engine(engine).await;
    assert_record_matches_engine(&server, &log, "N-");
    assert!(log.attempts.iter().any(|(_, h)| h == "AR"));
    assert!(
        server.metric("adt_router_event_log_ack_corrections_total{reason=\"late_commit\"}") >= 1.0
    );
    let rows = server.export(&[]);
    assert!(rows
        .iter()
        .any(|r| r["ack_code"] == "AR" && r["duplicate"] == false));
}

/// A sender that resets its connection right after sending never hears the AA: the
/// row says "none", and the metrics agree with the rows.
#[tokio::test]
async fn an_ack_that_cannot_be_written_is_recorded_as_none() {
    use std::io::Write;
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let mut tries = 0;
    while server.metric("adt_router_event_log_ack_corrections_total{reason=\"ack_not_written\"}")
        < 1.0
    {
        tries += 1;
        assert!(tries <= 50, "no ACK write failed in 50 resets");
        let mut s = std::net::TcpStream::connect(&server.mllp).unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        s.write_all(&adt_router::mllp::codec::frame(&msg(
            &format!("W-{tries}"),
            false,
        )))
        .unwrap();
        drop(s); // RST: the server's ACK write fails
        wait_rows(&server, tries).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.metric_sum(
            "adt_router_messages_received_total",
            "trigger_event=\"A01\"",
        ) < tries as f64
        {
            assert!(Instant::now() < deadline, "the answer was never counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Corrections are queued behind the appends: wait for the row to say so.
    let none_rows = || {
        server
            .export(&[])
            .iter()
            .filter(|r| r["ack_code"] == "none")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while none_rows() < 1 {
        assert!(
            Instant::now() < deadline,
            "the correction never reached the row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows = server.export(&[]);
    let none = none_rows() as f64;
    assert!(rows
        .iter()
        .all(|r| r["ack_code"] == "AA" || r["ack_code"] == "none"));
    assert_eq!(
        none,
        server.metric("adt_router_event_log_ack_corrections_total{reason=\"ack_not_written\"}")
    );
    server.assert_metric_sum(
        "adt_router_messages_received_total",
        "ack_code=\"none\"",
        none,
    );
}

//! The event log cannot commit: senders hear AR (original) or CE (enhanced), never
//! AA/CA, and the listener recovers by itself when storage returns.

use crate::helpers::*;
use adt_router::mllp::client::{summarize_ack, MllpClient};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

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

/// While storage is down: AR / CE with ERR 207. Returns the ids answered AR/CE.
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

pub async fn wait_until_accepting(c: &mut MllpClient, prefix: &str) {
    for i in 0..100 {
        let (code, _) = send_code(c, &msg(&format!("{prefix}-up-{i}"), false)).await;
        if code == "AA" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("listener did not recover after storage returned");
}

#[tokio::test]
async fn locked_sqlite_gets_ar_ce_and_recovers() {
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER__DATABASE__BUSY_TIMEOUT_MS", "300"),
            ("ADT_ROUTER__EVENT_LOG__COMMIT_TIMEOUT_MS", "2000"),
        ],
    );
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    assert_eq!(send_code(&mut c, &msg("S-before", false)).await.0, "AA");

    // Another process takes the database's write lock and holds it.
    let db = dir.path().join("data/adt-router.db");
    let mut locker = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()")
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(locker.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");

    assert_rejects_while_down(&mut c, "S").await;
    assert!(server.metric("adt_router_event_log_append_errors_total{kind=\"unavailable\"}") >= 2.0);

    drop(locker.stdin.take());
    locker.wait().unwrap();
    wait_until_accepting(&mut c, "S").await;
    let ids: Vec<String> = server
        .export(&[])
        .iter()
        .map(|r| r["control_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !ids.iter().any(|i| i.contains("down")),
        "a rejected message was stored: {ids:?}"
    );
    assert_eq!(ids[0], "S-before");
}

//! The shared HL7 corpus through three clients: `adt-router send`, python-hl7's
//! `mllp_send` (written by others), and raw bytes, checking ACKs and stored bytes.

use crate::support::*;
use adt_router::mllp::client::{summarize_ack, MllpClient};
use adt_router::mllp::codec::frame;
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

#[test]
fn corpus_through_adt_router_send_gets_the_expected_acks() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let files = corpus_files();
    let out = Command::new(BIN)
        .args(["send", "--to", &server.mllp, "--quiet-ms", "300"])
        .args(&files)
        .output()
        .expect("run send");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: HashMap<String, Vec<String>> = stdout
        .lines()
        .map(|l| {
            let cols: Vec<String> = l.split('\t').map(String::from).collect();
            (cols[0].trim_end_matches("#1").to_string(), cols)
        })
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let want = expect_for(&bytes);
        let cols = lines
            .get(&f.display().to_string())
            .unwrap_or_else(|| panic!("no line for {}\n{stdout}", f.display()));
        assert_eq!(
            cols[1],
            want.code.unwrap_or("-"),
            "{}: {cols:?}",
            f.display()
        );
        assert_eq!(cols[2], control_id_of(&bytes), "{}: MSA-2", f.display());
        if matches!(want.code, Some("AE" | "AR" | "CR")) {
            assert!(
                !cols[3].is_empty(),
                "{}: an error ACK must say why",
                f.display()
            );
        }
        *counts.entry(want.code.unwrap_or("none")).or_default() += 1;
    }
    // Some corpus messages are rejected on purpose, so send must report failure.
    assert_eq!(out.status.code(), Some(1));
    eprintln!("corpus ACKs by code: {counts:?}");
    // 28 corpus files are unit-test fragments with an empty MSH-10 (AR, quarantined) and
    // 11 lack PID-3 (AE, stored); everything else is accepted.
    assert!(counts["AA"] + counts["CA"] >= 100, "{counts:?}");
}

type Expected = Vec<(std::path::PathBuf, Expect, String)>;

/// Runs python-hl7's `mllp_send` (`mode` "--loose", or "--strict" for its default) on
/// `input` against `server`, bounded by `timeout`, and checks one answer per expected
/// message, in order, with the expected code and MSA-2.
fn mllp_send_answers(server: &Server, mode: &str, input: &std::path::Path, expected: &Expected) {
    let port = server.mllp.rsplit(':').next().unwrap().to_string();
    let mut cmd = Command::new("timeout");
    cmd.args(["120", "mllp_send"]);
    if mode == "--loose" {
        cmd.arg("--loose");
    }
    let out = cmd
        .arg("-f")
        .arg(input)
        .args(["-p", &port, "127.0.0.1"])
        .output()
        .expect("mllp_send not found: the test command installs it with `pip install hl7`");
    assert!(
        out.status.success(),
        "mllp_send {mode} failed or waited forever: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // mllp_send prints each ACK with its MLLP block characters.
    let acks: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split('\x1c')
        .filter(|l| l.contains("MSA"))
        .map(|l| l.trim_matches(['\x0b', '\x1c', '\r', '\n']).to_string())
        .collect();
    assert_eq!(acks.len(), expected.len(), "one answer per message");
    for ((f, want, ctrl), ack) in expected.iter().zip(&acks) {
        let s = summarize_ack(ack.as_bytes());
        assert_eq!(Some(s.code.as_str()), want.code, "{}: {ack:?}", f.display());
        assert_eq!(&s.control_id, ctrl, "{}", f.display());
    }
}

#[test]
fn corpus_through_python_mllp_send_gets_the_expected_acks() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    // --loose needs the standard delimiters, so it gets the messages that use `|^~\&`.
    let mut expected = Vec::new();
    let mut blob = Vec::new();
    for f in corpus_files() {
        let bytes = std::fs::read(&f).unwrap();
        let want = expect_for(&bytes);
        if bytes.starts_with(b"MSH|^~\\&|") {
            expected.push((f, want, control_id_of(&bytes)));
            blob.extend_from_slice(&bytes);
            blob.extend_from_slice(b"\r\n");
        }
    }
    let input = dir.path().join("all.hl7");
    std::fs::write(&input, &blob).unwrap();
    mllp_send_answers(&server, "--loose", &input, &expected);
    assert!(expected.len() >= 100);
}

/// python-hl7's `mllp_send` in strict mode: the whole corpus as one MLLP stream, each
/// message sent as it is and each answer awaited before the next. It finishes only
/// because every frame is answered (MSH-15 NE/ER included), as MLLP senders expect.
#[test]
fn corpus_through_python_mllp_send_strict_gets_an_answer_for_every_message() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let mut expected = Vec::new();
    let mut stream = Vec::new();
    for f in corpus_files() {
        let bytes = std::fs::read(&f).unwrap();
        expected.push((f, expect_for(&bytes), control_id_of(&bytes)));
        stream.extend_from_slice(&frame(&bytes));
    }
    let input = dir.path().join("all.mllp");
    std::fs::write(&input, &stream).unwrap();
    mllp_send_answers(&server, "--strict", &input, &expected);
}

/// Sends each file's exact bytes and checks the event log kept them unchanged, and
/// that each row's `ack_code` is the code that came back (or "none").
pub async fn corpus_bytes_are_stored_unchanged(server: &Server) {
    corpus_stored_unchanged_with(server, false).await
}

pub async fn corpus_stored_unchanged_with(server: &Server, honour_msh15: bool) {
    let mut client = MllpClient::connect(&server.mllp).await.unwrap();
    let mut want_stored = HashSet::new();
    let mut heard: HashMap<String, &str> = HashMap::new();
    let mut by_code: HashMap<&str, usize> = HashMap::new();
    let mut rejected = 0;
    let files = corpus_files();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let want = expect_with(&bytes, honour_msh15);
        client.send_raw(&frame(&bytes)).await.unwrap();
        if let Some(code) = want.code {
            let ack = client.recv(Duration::from_secs(30)).await.unwrap();
            let s = summarize_ack(&ack);
            assert_eq!(s.code, code, "{}", f.display());
            assert_eq!(s.control_id, control_id_of(&bytes));
        }
        *by_code.entry(want.code.unwrap_or("none")).or_default() += 1;
        if want.stored {
            want_stored.insert(sha256_hex(&bytes));
            heard.insert(sha256_hex(&bytes), want.code.unwrap_or("none"));
        } else {
            rejected += 1;
        }
    }
    // Messages without an ACK (MSH-15=NE/ER) are committed before the next frame is
    // read, but give the last one a moment to land.
    wait_for(Duration::from_secs(10), "all messages stored", || {
        server.export(&[]).len() == files.len() - rejected
    });
    let exported = server.export(&[]);
    let stored: HashSet<String> = exported
        .iter()
        .map(|m| m["sha256"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        stored, want_stored,
        "stored SHA-256 set differs from the files'"
    );
    // The record and the metrics say what the sender heard, "none" included.
    for m in &exported {
        let sha = m["sha256"].as_str().unwrap();
        assert_eq!(m["ack_code"].as_str(), Some(heard[sha]), "{m}");
    }
    for (code, n) in &by_code {
        let label = format!("ack_code=\"{code}\"");
        server.assert_metric_sum("adt_router_messages_received_total", &label, *n as f64);
    }
    let quarantined = server.metric("adt_router_quarantined_total{reason=\"unsupported_version\"}")
        + server.metric("adt_router_quarantined_total{reason=\"missing_control_id\"}");
    assert_eq!(quarantined, rejected as f64);
    // No PHI in the log: family names from PID-5 must not appear.
    let log = server.log();
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).to_string();
        for seg in text.split(['\r', '\n']).filter(|s| s.starts_with("PID|")) {
            if let Some(family) = seg.split('|').nth(5).and_then(|n| n.split('^').next()) {
                let family = family.split('&').next().unwrap_or("");
                if family.len() >= 5 && family.chars().all(|c| c.is_ascii_alphabetic()) {
                    assert!(!log.contains(family), "PHI ({family}) in the server log");
                }
            }
        }
    }
}

#[tokio::test]
async fn corpus_bytes_are_stored_unchanged_on_sqlite() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    corpus_bytes_are_stored_unchanged(&server).await;
    // The default database is where the contract says.
    assert!(dir.path().join("data/adt-router.db").exists());
}

#[tokio::test]
async fn duplicates_are_acked_again_and_recorded() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let msg = b"MSH|^~\\&|EPIC|GENHOSP|R|R|20260101||ADT^A04|DUP-1|P|2.5.1\rPID|1||MRN9^^^GENHOSP^MR\rPV1|1|E\r";
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    for _ in 0..3 {
        let s = summarize_ack(&c.send(msg, Duration::from_secs(10)).await.unwrap());
        assert_eq!((s.code.as_str(), s.control_id.as_str()), ("AA", "DUP-1"));
    }
    let rows = server.export(&[]);
    let dups: Vec<bool> = rows
        .iter()
        .map(|r| r["duplicate"].as_bool().unwrap())
        .collect();
    assert_eq!(dups, vec![false, true, true]);
    assert_eq!(server.metric("adt_router_duplicates_total"), 2.0);
    // Same control id from another facility is not a duplicate.
    let other = String::from_utf8_lossy(msg).replace("GENHOSP|R", "OTHERHOSP|R");
    let s = summarize_ack(
        &c.send(other.as_bytes(), Duration::from_secs(10))
            .await
            .unwrap(),
    );
    assert_eq!(s.code, "AA");
    assert_eq!(server.export(&[]).last().unwrap()["duplicate"], false);

    // Embedded mode: replay reports what is there and re-drives nothing (the log is the
    // store); --from-offset needs Kafka and says so.
    let v = server.run_json(&["replay", "--since", "2000-01-01T00:00:00Z"]);
    assert_eq!(
        (
            v["mode"].as_str(),
            v["messages_since"].as_u64(),
            v["redriven"].as_u64()
        ),
        (Some("embedded"), Some(4), Some(0))
    );
    let out = server.run(&["replay", "--from-offset", "0:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Kafka"));
}

/// The same sender, facility and control id with other bytes is not a resend: it is
/// stored, routed and flagged as a control-id collision, and counted. Only a byte-for-byte
/// resend is a duplicate.
#[tokio::test]
async fn a_reused_control_id_with_new_content_is_routed_and_flagged() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    let first = b"MSH|^~\\&|EPIC|GENHOSP|R|R|20260101||ADT^A01|REUSED-1|P|2.5.1\rPID|1||MRN1^^^GENHOSP^MR\rPV1|1|I\r";
    let other = b"MSH|^~\\&|EPIC|GENHOSP|R|R|20260102||ADT^A03|REUSED-1|P|2.5.1\rPID|1||MRN2^^^GENHOSP^MR\rPV1|1|I\r";
    for m in [&first[..], &first[..], &other[..], &other[..]] {
        let s = summarize_ack(&c.send(m, Duration::from_secs(10)).await.unwrap());
        assert_eq!((s.code.as_str(), s.control_id.as_str()), ("AA", "REUSED-1"));
    }
    let rows = server.export(&[]);
    let flags: Vec<(bool, bool)> = rows
        .iter()
        .map(|r| {
            (
                r["duplicate"].as_bool().unwrap(),
                r["control_id_collision"].as_bool().unwrap(),
            )
        })
        .collect();
    // first, its resend, the new content (a collision), its resend.
    assert_eq!(
        flags,
        vec![(false, false), (true, false), (false, true), (true, false)]
    );
    assert_eq!(server.metric("adt_router_control_id_collisions_total"), 1.0);
    assert_eq!(server.metric("adt_router_duplicates_total"), 2.0);
    // Both contents are routed; neither resend is.
    wait_for(Duration::from_secs(30), "both messages routed", || {
        server.metric("adt_router_routed_messages_total{outcome=\"routed\"}") >= 2.0
    });
    wait_for(Duration::from_secs(30), "the resends skipped", || {
        server.metric("adt_router_routed_messages_total{outcome=\"skipped\"}") >= 2.0
    });
    assert_eq!(
        server.metric("adt_router_routed_messages_total{outcome=\"routed\"}"),
        2.0
    );
    assert!(server.log().contains("flagged as a collision"));
}

#[tokio::test]
async fn charsets_are_decoded_and_raw_bytes_kept() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    // Undeclared windows-1252 (é = 0xE9), declared 8859/1, and UTF-8 with a BOM.
    let cp1252 =
        b"MSH|^~\\&|A|F\xe9C|R|R|20260101||ADT^A01|CS-1|P|2.5\rPID|1||M1^^^F\rPV1|1|I\r".to_vec();
    let latin1 =
        b"MSH|^~\\&|A|FAC|R|R|20260101||ADT^A01|CS-2|P|2.5||||||8859/1\rPID|1||M2^^^F||M\xdcLLER\r"
            .to_vec();
    let bom = b"\xEF\xBB\xBFMSH|^~\\&|A|FAC|R|R|20260101||ADT^A01|CS-3|P|2.5||||||UNICODE UTF-8\rPID|1||M3^^^F\r".to_vec();
    for m in [&cp1252, &latin1, &bom] {
        let ack = c.send(m, Duration::from_secs(10)).await.unwrap();
        assert_eq!(summarize_ack(&ack).code, "AA");
    }
    // The ACK echoes the facility in the sender's own charset.
    let ack = c
        .send(
            &cp1252
                .iter()
                .map(|&b| if b == b'1' { b'9' } else { b })
                .collect::<Vec<_>>(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(
        ack.windows(4).any(|w| w == b"F\xe9C|"),
        "ACK not in windows-1252: {ack:?}"
    );
    let rows = server.export(&["--with-body"]);
    let by_id: HashMap<&str, &serde_json::Value> = rows
        .iter()
        .map(|r| (r["control_id"].as_str().unwrap(), r))
        .collect();
    assert_eq!(by_id["CS-1"]["charset"], "windows-1252");
    assert_eq!(by_id["CS-1"]["sending_facility"], "FéC");
    assert_eq!(by_id["CS-2"]["charset"], "windows-1252"); // WHATWG name for 8859/1
    assert!(by_id["CS-2"]["body"].as_str().unwrap().contains("MÜLLER"));
    assert_eq!(by_id["CS-3"]["charset"], "UTF-8");
    assert_eq!(by_id["CS-1"]["sha256"], sha256_hex(&cp1252));
    assert_eq!(by_id["CS-3"]["sha256"], sha256_hex(&bom));
}

#[tokio::test]
async fn corpus_with_msh15_honoured_gets_no_ack_where_it_asks_for_none() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[("ADT_ROUTER__MLLP__ACCEPT_ACK", "honour")]);
    corpus_stored_unchanged_with(&server, true).await;
}

#[tokio::test]
async fn enhanced_mode_honours_msh15_when_told_to() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[("ADT_ROUTER__MLLP__ACCEPT_ACK", "honour")]);
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    let msg = |id: &str, ack: &str, pid: &str| {
        format!(
            "MSH|^~\\&|A|F|R|R|20260101||ADT^A01|{id}|P|2.5.1|||{ack}|NE\rPID|1||{pid}\rPV1|1|I\r"
        )
        .into_bytes()
    };
    let s = summarize_ack(
        &c.send(&msg("E1", "AL", "P1"), Duration::from_secs(5))
            .await
            .unwrap(),
    );
    assert_eq!(s.code, "CA");
    // Content error in enhanced mode: stored, CA with a warning ERR.
    let ack = c
        .send(&msg("E2", "AL", ""), Duration::from_secs(5))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&ack);
    assert!(
        text.contains("MSA|CA|E2") && text.contains("ERR||PID^1^3|101^") && text.contains("|W|"),
        "{text}"
    );
    // NE: nothing comes back, but the message is stored; the next AL message is answered.
    c.send_raw(&frame(&msg("E3", "NE", "P3"))).await.unwrap();
    let s = summarize_ack(
        &c.send(&msg("E4", "SU", "P4"), Duration::from_secs(5))
            .await
            .unwrap(),
    );
    assert_eq!((s.code.as_str(), s.control_id.as_str()), ("CA", "E4"));
    // ER: success is silent; a reject is answered CR.
    c.send_raw(&frame(&msg("E5", "ER", "P5"))).await.unwrap();
    let bad = String::from_utf8(msg("E6", "ER", "P6"))
        .unwrap()
        .replace("|2.5.1|", "|3.0|");
    let s = summarize_ack(
        &c.send(bad.as_bytes(), Duration::from_secs(5))
            .await
            .unwrap(),
    );
    assert_eq!((s.code.as_str(), s.control_id.as_str()), ("CR", "E6"));
    let ids: Vec<String> = server
        .export(&[])
        .iter()
        .map(|r| r["control_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["E1", "E2", "E3", "E4", "E5"]);
    let codes: Vec<String> = server
        .export(&[])
        .iter()
        .map(|r| r["ack_code"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes, vec!["CA", "CA", "none", "CA", "none"]);
}

/// The default: every frame is answered, whatever MSH-15 asks, because MLLP senders
/// wait for an answer (Open Integration Engine's TCP Sender resends forever otherwise).
#[tokio::test]
async fn every_frame_is_answered_by_default_whatever_msh15_says() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    let msg = |id: &str, ack: &str, version: &str| {
        format!("MSH|^~\\&|A|F|R|R|20260101||ADT^A01|{id}|P|{version}|||{ack}|NE\rPID|1||P{id}\rPV1|1|I\r")
            .into_bytes()
    };
    for (id, accept, version, want) in [
        ("N1", "NE", "2.5.1", "CA"),
        ("N2", "ER", "2.5.1", "CA"),
        ("N3", "SU", "3.0", "CR"),
        ("N4", "NE", "3.0", "CR"),
    ] {
        let s = summarize_ack(
            &c.send(&msg(id, accept, version), Duration::from_secs(5))
                .await
                .unwrap(),
        );
        assert_eq!((s.code.as_str(), s.control_id.as_str()), (want, id));
    }
    // A resend after a lost answer is flagged and never routed twice.
    let s = summarize_ack(
        &c.send(&msg("N1", "NE", "2.5.1"), Duration::from_secs(5))
            .await
            .unwrap(),
    );
    assert_eq!(s.code, "CA");
    let rows = server.export(&[]);
    let got: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| {
            (
                r["control_id"].as_str().unwrap().to_string(),
                r["ack_code"].as_str().unwrap().to_string(),
                r["duplicate"].as_bool().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, String, bool)> =
        [("N1", "CA", false), ("N2", "CA", false), ("N1", "CA", true)]
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
            .collect();
    assert_eq!(got, want);
}

//! kill -9 under load: every control id that was answered AA survives the restart.

use crate::support::*;
use adt_router::mllp::client::{summarize_ack, MllpClient};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Runs `conns` senders against `server` until they fail; returns the ids answered AA.
pub fn load_until_killed(
    server: &mut Server,
    conns: usize,
    kill_after: usize,
) -> (Vec<String>, usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (addr, acked, sent) = (server.mllp.clone(), acked.clone(), sent.clone());
        tasks.push(rt.spawn(async move {
            let Ok(mut client) = MllpClient::connect(&addr).await else { return };
            for i in 0.. {
                let id = format!("K{c}-{i}");
                let m = format!("MSH|^~\\&|LOAD|GENHOSP|R|R|20260101||ADT^A01|{id}|P|2.5.1\rPID|1||P{c}x{i}^^^GENHOSP^MR\rPV1|1|I\r");
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match client.send(m.as_bytes(), Duration::from_secs(10)).await {
                    Ok(ack) => {
                        let s = summarize_ack(&ack);
                        assert_eq!(s.control_id, id);
                        if s.code == "AA" {
                            acked.lock().unwrap().push(id);
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    wait_for(Duration::from_secs(120), "load to build up", || {
        acked.lock().unwrap().len() >= kill_after
    });
    server.kill9();
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    });
    let ids = acked.lock().unwrap().clone();
    (ids, sent.load(std::sync::atomic::Ordering::Relaxed))
}

pub fn assert_survived(server: &Server, acked: &[String]) {
    let stored: HashSet<String> = server
        .export(&[])
        .iter()
        .map(|m| m["control_id"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} AA'd messages lost after kill -9, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

#[test]
fn kill_9_under_load_loses_no_acked_message_sqlite() {
    let dir = tempdir();
    let mut server = Server::start(dir.path(), &[]);
    let (acked, sent) = load_until_killed(&mut server, 8, 3000);
    eprintln!("sent {sent}, AA'd {} before kill -9", acked.len());
    let server = Server::start(dir.path(), &[]);
    assert_survived(&server, &acked);
}

/// The shared neutral load client (`mllp-bench`, built by scripts/test.sh) against the
/// real server: every ACK is AA/CA for its own control id, and every id it saw
/// accepted is in the export.
#[test]
fn neutral_load_client_sees_every_message_accepted() {
    let bench = std::env::var("MLLP_BENCH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/mllp-bench/release/mllp-bench")
        });
    assert!(
        bench.exists(),
        "mllp-bench not built at {}: run scripts/test.sh",
        bench.display()
    );
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let acked_log = dir.path().join("acked.txt");
    let out = std::process::Command::new(&bench)
        .args([
            "load",
            "--addr",
            &server.mllp,
            "--conns",
            "4",
            "--n",
            "4000",
            "--max-seconds",
            "120",
            "--acked-log",
        ])
        .arg(&acked_log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], 4000, "{report}");
    assert_eq!(report["nack"], 0);
    assert_eq!(report["mismatch"], 0);
    let acked: Vec<String> = std::fs::read_to_string(&acked_log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(acked.len(), 4000);
    assert_survived(&server, &acked);
}

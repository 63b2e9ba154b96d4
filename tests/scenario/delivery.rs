//! Step 5, delivery (REST webhooks): an admission routed to three providers whose
//! webhook receivers (written against the official Standard Webhooks library, which
//! verifies every signature) misbehave in three ways: one fails twice with 503 and
//! Retry-After, one answers 410, one hangs. SQLite and PostgreSQL.

use crate::support::*;
use adt_router::directory::npi::Npi;
use serde_json::Value;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub(crate) fn npi(n: u32) -> String {
    Npi::from_base(400_000_000 + n).to_string()
}

pub(crate) struct Receiver {
    child: Child,
    pub port: u16,
    log: std::path::PathBuf,
}

impl Receiver {
    pub fn start(dir: &Path) -> Receiver {
        let log = dir.join("receiver.jsonl");
        let (child, port) = spawn_peer(
            "webhook_receiver.py",
            &[SECRET.to_string(), log.display().to_string()],
            &[],
        );
        Receiver { child, port, log }
    }

    pub fn requests(&self, path: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["path"] == path)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Directory overrides (provider `n` at receiver path) and a roster attributing them
/// all to each patient; returns the server's environment.
pub(crate) fn setup(
    dir: &Path,
    db_url: Option<&str>,
    rx: &Receiver,
    patients: &[&str],
    providers: &[(u32, &str, &str)],
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let cli = Cli::new(
        dir,
        db_url,
        &[
            ("ADT_ROUTER__DELIVERY__REQUIRE_HTTPS", "false"),
            ("ADT_ROUTER__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true"),
        ],
    );
    let mut roster =
        "patient_id,assigning_authority,family,given,birth_date,sex,provider_npi,relationship\n"
            .to_string();
    for (n, path, relationship) in providers {
        cli.json(&[
            "directory",
            "override",
            "--npi",
            &npi(*n),
            "--type",
            "REST",
            "--endpoint",
            &format!("http://127.0.0.1:{}/{path}", rx.port),
            "--secret",
            SECRET,
        ]);
        for p in patients {
            roster.push_str(&format!(
                "{p},GENHOSP,Doe,Jane,1970-01-01,F,{},{relationship}\n",
                npi(*n)
            ));
        }
    }
    let file = dir.join("roster.csv");
    std::fs::write(&file, roster).unwrap();
    cli.json(&[
        "roster",
        "import",
        file.to_str().unwrap(),
        "--source",
        "practices",
    ]);
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("routing-rules");
    let mut env: Vec<(String, String)> = [
        ("ADT_ROUTER__ROUTING__RULES_DIR", rules.to_str().unwrap()),
        ("ADT_ROUTER__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true"),
        ("ADT_ROUTER__DELIVERY__REQUIRE_HTTPS", "false"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(u) = db_url {
        env.push(("ADT_ROUTER__DATABASE__URL".into(), u.to_string()));
    }
    env
}

pub(crate) fn start(dir: &Path, env: &[(String, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start(dir, &env)
}

/// Sends an admission for each patient.
pub(crate) fn admit(server: &Server, dir: &Path, patients: &[&str]) {
    admit_by(server, dir, patients, "")
}

/// Sends an admission for each patient, with `attending` (an XCN) in PV1-7.
pub(crate) fn admit_by(server: &Server, dir: &Path, patients: &[&str], attending: &str) {
    let msgs: Vec<String> = patients
        .iter()
        .map(|p| {
            format!(
                "MSH|^~\\&|EPIC|GENHOSP|ADTR|HIE|202611280800||ADT^A01|A-{p}|P|2.5.1\r\
EVN|A01|202611280800\r\
PID|1||{p}^^^GENHOSP^MR||DOE^JANE||19700101|F\r\
PV1|1|I|4W^1^A^GENHOSP||||{attending}||||||||||||||V-{p}\r"
            )
        })
        .collect();
    let msg = dir.join("a01.hl7");
    std::fs::write(&msg, msgs.join("\n\n")).unwrap();
    let out = server.run(&["send", "--to", &server.mllp, msg.to_str().unwrap()]);
    assert!(out.status.success());
}

pub(crate) fn export(server: &Server) -> Vec<Value> {
    let out = server.run(&["notifications", "export", "--format", "jsonl"]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn row(ns: &[Value], n: u32) -> Value {
    ns.iter()
        .find(|x| x["recipient_npi"] == npi(n))
        .cloned()
        .unwrap_or(Value::Null)
}

fn webhooks(dir: &Path, db_url: Option<&str>) {
    let rx = Receiver::start(dir);
    let env = setup(
        dir,
        db_url,
        &rx,
        &["MRN-W"],
        &[
            (1, "flaky", "pcp"),
            (2, "gone", "post_acute"),
            (3, "hang", "care_manager"),
        ],
        &[("ADT_ROUTER__DELIVERY__TIMEOUT_MS", "20000")],
    );
    let server = start(dir, &env);
    let started = Instant::now();
    admit(&server, dir, &["MRN-W"]);
    let export = || export(&server);
    // Both outcomes, each in its own time: the 410's attempt runs alongside the flaky
    // one's, but on a loaded machine its answer can be recorded after the other's.
    wait_for(
        Duration::from_secs(20),
        "the flaky receiver's delivery and the 410's failure",
        || {
            let ns = export();
            row(&ns, 1)["status"] == "delivered" && row(&ns, 2)["status"] != "sending"
        },
    );
    let took = started.elapsed();
    let ns = export();

    // Delivered once, after two 503s, every attempt recorded and signed the same way.
    let pcp = row(&ns, 1);
    assert_eq!(pcp["attempts"], 3, "{pcp}");
    assert_eq!(pcp["proof"]["http_status"], 200, "{pcp}");
    assert!(pcp["delivered_at"].is_string());
    let reqs = rx.requests("/flaky");
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert!(
        reqs.iter().all(|r| r["verified"] == true),
        "signatures: {reqs:?}"
    );
    assert!(reqs
        .iter()
        .all(|r| r["webhook_id"] == pcp["idempotency_key"]));
    assert!(reqs
        .iter()
        .all(|r| r["body_sha256"] == reqs[0]["body_sha256"]));
    assert_eq!(pcp["proof"]["request_sha256"], reqs[0]["body_sha256"]);
    // Retry-After: 1 was honoured (no retry sooner than a second).
    for w in reqs.windows(2) {
        let gap = w[1]["at"].as_f64().unwrap() - w[0]["at"].as_f64().unwrap();
        assert!(
            gap >= 0.95,
            "retried after {gap:.3} s despite Retry-After: 1"
        );
    }

    // 410: failed at once, one attempt, with the reason.
    let gone = row(&ns, 2);
    assert_eq!(gone["status"], "failed", "{gone}");
    assert_eq!(gone["attempts"], 1);
    assert!(
        gone["last_error"].as_str().unwrap().contains("HTTP 410"),
        "{gone}"
    );
    assert_eq!(rx.requests("/gone").len(), 1);

    // The hanging receiver did not hold the others up: the flaky one was done in about
    // its two one-second waits while the hanging request was still open.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let hang = row(&ns, 3);
    assert_eq!(hang["status"], "sending", "{hang}");
    assert!(
        rx.requests("/hang").is_empty(),
        "the hanging request never finished"
    );

    assert!(
        server.metric("adt_router_delivery_attempts_total{channel=\"REST\",outcome=\"retry\"}")
            >= 2.0
    );
    assert!(
        server.metric("adt_router_delivery_attempts_total{channel=\"REST\",outcome=\"delivered\"}")
            >= 1.0
    );
}

on_both_backends!(webhooks_retry_fail_and_do_not_wait_on_each_other, webhooks);

/// kill -9 while a request is open: after the restart the notification is sent again
/// with the same idempotency key (the receiver can tell it is a repeat) and delivered.
fn crash_mid_send(dir: &Path, db_url: Option<&str>) {
    let rx = Receiver::start(dir);
    let env = setup(
        dir,
        db_url,
        &rx,
        &["MRN-W"],
        &[(11, "hang-once", "pcp")],
        &[("ADT_ROUTER__DELIVERY__TIMEOUT_MS", "1500")],
    );
    let mut server = start(dir, &env);
    admit(&server, dir, &["MRN-W"]);
    wait_for(
        Duration::from_secs(20),
        "the first request to arrive",
        || !rx.requests("/hang-once").is_empty(),
    );
    server.kill9();
    let server = start(dir, &env);
    wait_for(
        Duration::from_secs(30),
        "delivery after the restart",
        || row(&export(&server), 11)["status"] == "delivered",
    );
    let reqs = rx.requests("/hang-once");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0]["status"], "hung");
    assert_eq!(reqs[1]["status"], 200);
    assert_eq!(reqs[0]["webhook_id"], reqs[1]["webhook_id"]);
    assert!(reqs.iter().all(|r| r["verified"] == true));
    let n = row(&export(&server), 11);
    assert_eq!(n["idempotency_key"], reqs[0]["webhook_id"]);
    assert_eq!(n["attempts"], 2, "{n}");
}

on_both_backends!(crash_mid_send_resends_with_the_same_key, crash_mid_send);

/// A dead endpoint opens its circuit after a few failures; its notifications wait (no
/// more requests, not dead), while another endpoint's go out untouched.
fn circuit_breaker(dir: &Path, db_url: Option<&str>) {
    let rx = Receiver::start(dir);
    let patients = ["MRN-B1", "MRN-B2", "MRN-B3", "MRN-B4", "MRN-B5", "MRN-B6"];
    let env = setup(
        dir,
        db_url,
        &rx,
        &patients,
        &[(21, "down", "pcp"), (22, "ok", "care_manager")],
        &[
            ("ADT_ROUTER__DELIVERY__BREAKER_FAILURES", "2"),
            ("ADT_ROUTER__DELIVERY__BREAKER_COOLDOWN_SECS", "600"),
            ("ADT_ROUTER__DELIVERY__PER_ENDPOINT_CONCURRENCY", "1"),
            ("ADT_ROUTER__DELIVERY__RETRY_BASE_MS", "50"),
        ],
    );
    let server = start(dir, &env);
    admit(&server, dir, &patients);
    wait_for(
        Duration::from_secs(20),
        "every notification to the healthy endpoint",
        || {
            export(&server)
                .iter()
                .filter(|n| n["recipient_npi"] == npi(22) && n["status"] == "delivered")
                .count()
                == patients.len()
        },
    );
    wait_for(Duration::from_secs(20), "the circuit to open", || {
        server.metric("adt_router_delivery_circuit_opens_total") >= 1.0
    });
    // Give the deliverer time to (wrongly) keep trying, then count.
    std::thread::sleep(Duration::from_millis(1500));
    let down = rx.requests("/down");
    assert!(
        (2..=3).contains(&down.len()),
        "the dead endpoint got {} requests; the circuit should have stopped them at 2 (one may have been in flight)",
        down.len()
    );
    let waiting: Vec<Value> = export(&server)
        .into_iter()
        .filter(|n| n["recipient_npi"] == npi(21))
        .collect();
    assert_eq!(waiting.len(), patients.len());
    assert!(
        waiting.iter().all(|n| n["status"] == "pending"),
        "{waiting:?}"
    );
    assert!(server.log().contains("circuit open"));
}

on_both_backends!(circuit_breaker, circuit_breaker);

/// A permanent failure on the rule's first channel hands the notification to the next
/// one (same content, its own key); the failed row says so.
fn fallback(dir: &Path, db_url: Option<&str>) {
    let rx = Receiver::start(dir);
    let rules = tempdir();
    std::fs::write(
        rules.path().join("rules.toml"),
        "[[rule]]\nid = \"rest-then-direct\"\naction = \"notify\"\nmatch.events = [\"admission\"]\n\
         recipients = [\"any\"]\nchannels = [\"REST\", \"DIRECT\"]\n",
    )
    .unwrap();
    let env = setup(
        dir,
        db_url,
        &rx,
        &["MRN-F"],
        &[(31, "gone", "pcp")],
        &[(
            "ADT_ROUTER__ROUTING__RULES_DIR",
            rules.path().to_str().unwrap(),
        )],
    );
    // `setup` put the shipped rules first; the later setting wins.
    Cli::new(dir, db_url, &[]).json(&[
        "directory",
        "override",
        "--npi",
        &npi(31),
        "--type",
        "DIRECT",
        "--endpoint",
        "intake@direct.clinic.example.org",
    ]);
    let server = start(dir, &env);
    admit(&server, dir, &["MRN-F"]);
    wait_for(Duration::from_secs(20), "the fallback row", || {
        export(&server).len() == 2
    });
    let ns = export(&server);
    let (rest, direct) = (&ns[0], &ns[1]);
    assert_eq!(
        (rest["channel"].as_str(), rest["status"].as_str()),
        (Some("REST"), Some("failed")),
        "{rest}"
    );
    assert!(
        rest["last_error"]
            .as_str()
            .unwrap()
            .contains("falling back to DIRECT"),
        "{rest}"
    );
    assert_eq!(direct["channel"], "DIRECT");
    assert_eq!(direct["endpoint"], "intake@direct.clinic.example.org");
    assert_eq!(
        direct["status"], "pending",
        "Direct is not configured here: it waits"
    );
    assert_eq!(direct["kind"], rest["kind"]);
    assert_eq!(direct["transition_key"], rest["transition_key"]);
    assert_ne!(direct["idempotency_key"], rest["idempotency_key"]);
}

on_both_backends!(fallback_to_the_next_channel, fallback);

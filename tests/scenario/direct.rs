//! Step 5, Direct secure email: admissions routed to providers whose Direct addresses
//! sit behind a HISP stand-in built on aiosmtpd (tests/peers/hisp.py). It stores each
//! message, reads it back with Python's `email` parser, and answers as the recipient's
//! HISP would: processed and dispatched MDNs, a processed MDN only, a failure DSN, a
//! failed MDN, nothing at all, or an SMTP 550. SQLite and PostgreSQL.

use crate::delivery::{admit, export, npi, setup, start, Receiver};
use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

const FROM: &str = "router@direct.hospital.example";

struct Hisp {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Hisp {
    fn start(dir: &Path, intake: u16) -> Hisp {
        Hisp::start_with(dir, intake, &[])
    }

    /// With environment for the stand-in (STARTTLS and AUTH, see hisp.py).
    fn start_with(dir: &Path, intake: u16, env: &[(&str, String)]) -> Hisp {
        let log = dir.join("hisp.jsonl");
        let maildir = dir.join("maildir");
        let (child, port) = spawn_peer(
            "hisp.py",
            &[
                maildir.display().to_string(),
                log.display().to_string(),
                format!("127.0.0.1:{intake}"),
            ],
            env,
        );
        Hisp { child, port, log }
    }

    /// The router's settings for submitting to this stand-in and taking its reports at
    /// `intake`.
    fn router_env(&self, intake: u16) -> Vec<(&'static str, String)> {
        vec![
            (
                "ADT_ROUTER__DIRECT__SMTP_URL",
                format!("smtp://127.0.0.1:{}", self.port),
            ),
            ("ADT_ROUTER__DIRECT__FROM", FROM.to_string()),
            ("ADT_ROUTER__DIRECT__ALLOW_INSECURE", "true".to_string()),
            (
                "ADT_ROUTER__DIRECT__INBOUND_LISTEN",
                format!("127.0.0.1:{intake}"),
            ),
        ]
    }

    /// The messages it received, as Python's email parser read them.
    fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|m| m.get("message_id").is_some())
            .collect()
    }
}

/// `base` and then `more`, as the borrowed pairs `setup` takes.
fn with<'a>(
    base: &'a [(&'static str, String)],
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    base.iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(more.iter().copied())
        .collect()
}

impl Drop for Hisp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn of(ns: &[Value], n: u32, channel: &str) -> Value {
    ns.iter()
        .find(|x| x["recipient_npi"] == npi(n) && x["channel"] == channel)
        .cloned()
        .unwrap_or(Value::Null)
}

fn direct(dir: &Path, db_url: Option<&str>) {
    let intake = free_port();
    let hisp = Hisp::start(dir, intake);
    let rx = Receiver::start(dir);
    // Provider 43 also has a REST endpoint (its fallback); `setup` gives every listed
    // provider one, so only 43 is listed there.
    let env = setup(
        dir,
        db_url,
        &rx,
        &["MRN-D"],
        &[(43, "ok", "care_manager")],
        &with(
            &hisp.router_env(intake),
            &[
                ("ADT_ROUTER__DIRECT__PROCESSED_TIMEOUT_SECS", "3"),
                ("ADT_ROUTER__DIRECT__DISPATCHED_TIMEOUT_SECS", "3"),
            ],
        ),
    );
    let cli = Cli::new(dir, db_url, &[]);
    let providers = [
        (41, "ok", "pcp"),
        (42, "dsn", "post_acute"),
        (43, "silent", "care_manager"),
        (44, "processed-only", "specialist"),
        (45, "reject", "specialist"),
        (46, "denied", "specialist"),
    ];
    let mut roster =
        "patient_id,assigning_authority,family,given,birth_date,sex,provider_npi,relationship\n"
            .to_string();
    for (n, local, rel) in providers {
        cli.json(&[
            "directory",
            "override",
            "--npi",
            &npi(n),
            "--type",
            "DIRECT",
            "--endpoint",
            &format!("{local}@direct.practice.example"),
        ]);
        roster.push_str(&format!(
            "MRN-D,GENHOSP,Doe,Jane,1970-01-01,F,{},{rel}\n",
            npi(n)
        ));
    }
    cli.roster("roster-direct.csv", &roster, "direct-practices");
    let server = start(dir, &env);
    admit(&server, dir, &["MRN-D"]);
    let settled = |ns: &[Value]| {
        providers.iter().all(|(n, _, _)| {
            matches!(
                of(ns, *n, "DIRECT")["status"].as_str(),
                Some("delivered" | "failed" | "dead")
            )
        }) && of(ns, 43, "REST")["status"] == "delivered"
    };
    wait_for(
        Duration::from_secs(40),
        "every Direct notification to settle",
        || settled(&export(&server)),
    );
    let ns = export(&server);
    let msgs = hisp.messages();

    // ok@: SMTP 250, processed, dispatched (timely and reliable): delivered, with the
    // proof of each step.
    let ok = of(&ns, 41, "DIRECT");
    assert_eq!(ok["status"], "delivered", "{ok}");
    assert_eq!(ok["attempts"], 1, "{ok}");
    assert_eq!(ok["proof"]["smtp_code"], 250, "{ok}");
    assert!(ok["proof"]["smtp_reply"]
        .as_str()
        .unwrap()
        .contains("queued as"));
    assert_eq!(ok["proof"]["mdn_processed"]["disposition"], "processed");
    assert_eq!(ok["proof"]["mdn_dispatched"]["disposition"], "dispatched");
    assert_eq!(
        ok["proof"]["mdn_dispatched"]["final_destination_delivery"],
        true
    );
    assert!(ok["delivered_at"].is_string());

    // The message as the HISP stored and parsed it.
    let key = ok["idempotency_key"].as_str().unwrap();
    let m = msgs
        .iter()
        .find(|m| m["to"] == "ok@direct.practice.example")
        .unwrap_or_else(|| panic!("no message to ok@ in {msgs:?}"));
    // <key.nonce@our domain>: the nonce (128 bits) is what a report must quote.
    let id = m["message_id"].as_str().unwrap();
    let nonce = id
        .strip_prefix(&format!("<{key}."))
        .and_then(|r| r.strip_suffix("@direct.hospital.example>"))
        .unwrap_or_else(|| panic!("{id}"));
    assert!(
        nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(ok["proof"]["message_id"], m["message_id"]);
    assert_eq!(m["from"], FROM);
    assert_eq!(
        m["disposition_notification_options"],
        "X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true"
    );
    assert_eq!(m["content_type"], "multipart/mixed");
    assert_eq!(m["defects"], serde_json::json!([]), "{m}");
    let subject = m["subject"].as_str().unwrap();
    assert!(subject.starts_with("Event notification: "), "{subject}");
    assert!(
        !subject.to_uppercase().contains("DOE"),
        "no PHI in the subject"
    );
    let parts = m["parts"].as_array().unwrap();
    let body = &parts[0];
    assert_eq!(body["content_type"], "text/plain");
    let text = body["text"].as_str().unwrap();
    for want in [
        "Event: Inpatient admission",
        "Patient: JANE DOE",
        "Sending facility: GENHOSP",
    ] {
        assert!(text.contains(want), "{want:?} not in body:\n{text}");
    }
    let json = parts
        .iter()
        .find(|p| p["filename"] == "notification.json")
        .expect("notification.json");
    assert_eq!(json["content_type"], "application/json");
    let payload: Value = serde_json::from_str(json["text"].as_str().unwrap()).unwrap();
    assert_eq!(payload["idempotency_key"], key);
    assert_eq!(payload["schema"], "adt-router.notification/v1");
    let meta = parts
        .iter()
        .find(|p| p["filename"] == "metadata.txt")
        .expect("metadata.txt");
    assert_eq!(meta["content_id"], m["x_direct_context"]);
    let meta_text = meta["text"].as_str().unwrap();
    for want in [
        "version: 1.0",
        "type: general/notification",
        "purpose: treatment",
        "patient: givenName=JANE; surname=DOE",
    ] {
        assert!(meta_text.contains(want), "{want:?} not in:\n{meta_text}");
    }
    // Standard content: the HL7 v2 message is not attached (only `full` carries it).
    assert!(parts.iter().all(|p| p["filename"] != "notification.hl7"));

    // dsn@: a failure DSN fails it, with the status.
    let dsn = of(&ns, 42, "DIRECT");
    assert_eq!(dsn["status"], "failed", "{dsn}");
    assert!(
        dsn["last_error"].as_str().unwrap().contains("5.1.1"),
        "{dsn}"
    );
    // denied@: a failed MDN.
    let denied = of(&ns, 46, "DIRECT");
    assert_eq!(denied["status"], "failed", "{denied}");
    assert!(
        denied["last_error"]
            .as_str()
            .unwrap()
            .contains("certificate not trusted"),
        "{denied}"
    );
    // silent@: no MDN in time: failed, and the next channel (REST) delivered it.
    let silent = of(&ns, 43, "DIRECT");
    assert_eq!(silent["status"], "failed", "{silent}");
    let why = silent["last_error"].as_str().unwrap();
    assert!(why.contains("no processed MDN within 3 s"), "{why}");
    assert!(why.contains("falling back to REST"), "{why}");
    let rest = of(&ns, 43, "REST");
    assert_eq!(rest["status"], "delivered", "{rest}");
    assert_eq!(rest["transition_key"], silent["transition_key"]);
    assert_eq!(rx.requests("/ok").len(), 1);
    // processed-only@: processed, then no dispatched MDN in time.
    let half = of(&ns, 44, "DIRECT");
    assert_eq!(half["status"], "failed", "{half}");
    assert!(
        half["last_error"]
            .as_str()
            .unwrap()
            .contains("no dispatched MDN"),
        "{half}"
    );
    assert_eq!(half["proof"]["mdn_processed"]["disposition"], "processed");
    // reject@: SMTP 550 at the HISP: failed at once, never stored.
    let rejected = of(&ns, 45, "DIRECT");
    assert_eq!(rejected["status"], "failed", "{rejected}");
    assert_eq!(rejected["attempts"], 1);
    assert!(
        rejected["last_error"].as_str().unwrap().contains("550"),
        "{rejected}"
    );
    assert!(msgs
        .iter()
        .all(|m| m["to"] != "reject@direct.practice.example"));

    assert!(
        server.metric("adt_router_direct_reports_total{effect=\"applied\",kind=\"mdn\"}") >= 4.0
    );
    assert!(
        server.metric("adt_router_direct_reports_total{effect=\"applied\",kind=\"dsn\"}") >= 1.0
    );
    assert!(
        server.metric("adt_router_delivery_attempts_total{channel=\"DIRECT\",outcome=\"timeout\"}")
            >= 2.0
    );
}

on_both_backends!(direct_mdns_dsns_timeouts_and_fallback, direct);

/// The report intake is an SMTP server facing the network: wrong order, unknown
/// commands, over-long lines and oversized messages get SMTP errors, and a message
/// that is not a report (or names no notification of ours) is still kept.
#[test]
fn intake_answers_bad_smtp_with_errors_and_keeps_every_message() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempdir();
    let intake = free_port();
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER__DIRECT__SMTP_URL", "smtp://127.0.0.1:9"),
            ("ADT_ROUTER__DIRECT__FROM", FROM),
            ("ADT_ROUTER__DIRECT__ALLOW_INSECURE", "true"),
            (
                "ADT_ROUTER__DIRECT__INBOUND_LISTEN",
                &format!("127.0.0.1:{intake}"),
            ),
            ("ADT_ROUTER__DIRECT__INBOUND_MAX_BYTES", "4096"),
            ("ADT_ROUTER__ROUTING__ENABLED", "false"),
        ],
    );
    let connect = || {
        let s = std::net::TcpStream::connect(("127.0.0.1", intake)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    };
    // One reply (multi-line replies end with "NNN text").
    let exchange = |s: &mut std::net::TcpStream,
                    r: &mut BufReader<std::net::TcpStream>,
                    send: &[u8]|
     -> String {
        s.write_all(send).unwrap();
        let mut all = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            all.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return all;
            }
        }
    };
    let (mut s, mut r) = connect();
    let mut reply = |send: &[u8]| exchange(&mut s, &mut r, send);
    assert!(reply(b"").starts_with("220 "));
    assert!(reply(b"EHLO hisp.test\r\n").contains("250 SIZE 4096"));
    assert!(reply(b"HELLO\r\n").starts_with("502 "));
    assert!(reply(b"DATA\r\n").starts_with("503 "), "DATA before RCPT");
    assert!(
        reply(b"RCPT TO:<a@b>\r\n").starts_with("503 "),
        "RCPT before MAIL"
    );
    // An over-long line is answered and the connection closed.
    let long = format!("NOOP {}\r\n", "x".repeat(5000));
    assert!(reply(long.as_bytes()).starts_with("500 "), "over-long line");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed after the over-long line");
    let (mut s, mut r) = connect();
    let mut reply = |send: &[u8]| exchange(&mut s, &mut r, send);
    assert!(reply(b"").starts_with("220 "));
    assert!(reply(b"MAIL FROM:<h@x> SIZE=999999\r\n").starts_with("552 "));
    // Oversized body: refused after the data, the session goes on.
    assert!(reply(b"MAIL FROM:<h@x>\r\n").starts_with("250 "));
    assert!(reply(b"RCPT TO:<router@direct.hospital.example>\r\n").starts_with("250 "));
    assert!(reply(b"DATA\r\n").starts_with("354 "));
    let line = format!("{}\r\n", "y".repeat(78));
    let big = format!("Subject: big\r\n\r\n{}.\r\n", line.repeat(100));
    assert!(reply(big.as_bytes()).starts_with("552 "));
    // Not a report (with a dot-stuffed line): kept, matched to nothing.
    assert!(reply(b"MAIL FROM:<h@x>\r\n").starts_with("250 "));
    assert!(reply(b"RCPT TO:<router@direct.hospital.example>\r\n").starts_with("250 "));
    assert!(reply(b"DATA\r\n").starts_with("354 "));
    let kept = reply(b"Subject: hello\r\n\r\n..a stuffed line\r\njust mail\r\n.\r\n");
    assert!(
        kept.starts_with("250 ") && kept.contains("unmatched"),
        "{kept}"
    );
    // An MDN for a message we never sent: kept, unmatched.
    assert!(reply(b"MAIL FROM:<h@x>\r\n").starts_with("250 "));
    assert!(reply(b"RCPT TO:<router@direct.hospital.example>\r\n").starts_with("250 "));
    assert!(reply(b"DATA\r\n").starts_with("354 "));
    let mdn = "Content-Type: multipart/report; report-type=disposition-notification; boundary=\"b\"\r\n\r\n\
        --b\r\nContent-Type: message/disposition-notification\r\n\r\n\
        Original-Message-ID: <nobody@direct.hospital.example>\r\n\
        Disposition: automatic-action/MDN-sent-automatically; processed\r\n\r\n--b--\r\n.\r\n";
    let forged = reply(mdn.as_bytes());
    assert!(
        forged.contains("refused") && forged.contains("nonce"),
        "{forged}"
    );
    assert!(reply(b"QUIT\r\n").starts_with("221 "));
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed after QUIT");
    assert_eq!(
        server.metric("adt_router_direct_reports_total{effect=\"unmatched\",kind=\"other\"}"),
        1.0
    );
    assert_eq!(
        server.metric("adt_router_direct_reports_total{effect=\"forged\",kind=\"mdn\"}"),
        1.0
    );
    assert_eq!(
        server.metric("adt_router_direct_intake_refused_total{reason=\"line\"}"),
        1.0
    );
    assert!(server.log().contains("Direct report not applied"));
}

/// End to end: the whole shared corpus in over MLLP, a roster that attributes every
/// corpus patient to two providers (one with a REST webhook, one with a Direct address
/// behind the HISP stand-in), and every notification out with its proof in
/// `notifications export`. Patient names never reach the log.
fn corpus_end_to_end(dir: &Path, db_url: Option<&str>) {
    let intake = free_port();
    let hisp = Hisp::start(dir, intake);
    let rx = Receiver::start(dir);
    let env = setup(
        dir,
        db_url,
        &rx,
        &[],
        &[(51, "ok", "pcp")],
        &with(&hisp.router_env(intake), &[]),
    );
    let cli = Cli::new(dir, db_url, &[]);
    cli.json(&[
        "directory",
        "override",
        "--npi",
        &npi(52),
        "--type",
        "DIRECT",
        "--endpoint",
        "ok@direct.practice.example",
    ]);
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut roster =
        "patient_id,assigning_authority,family,given,birth_date,sex,provider_npi,relationship\n"
            .to_string();
    let mut names = std::collections::BTreeSet::new();
    let files: Vec<PathBuf> = corpus_files()
        .into_iter()
        .filter(|f| !f.parent().unwrap().ends_with("invalid"))
        .collect();
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        let Ok(ev) = adt_router::hl7::adt::AdtEvent::parse(&text) else {
            continue;
        };
        let Some(id) = ev.pid.identifiers.first() else {
            continue;
        };
        let authority = if id.authority_namespace.is_empty() {
            &id.authority_universal
        } else {
            &id.authority_namespace
        };
        if authority.is_empty() {
            continue; // cannot be attributed by identifier (the roster refuses it)
        }
        // Distinctive surnames only (not words a log line could hold for other reasons).
        let f = &ev.pid.family;
        if f.len() >= 6 && f.chars().all(|c| c.is_ascii_uppercase()) && f.chars().any(|c| c != 'X')
        {
            names.insert(ev.pid.family.clone());
        }
        for (n, rel) in [(51, "pcp"), (52, "care_manager")] {
            roster.push_str(&format!(
                "{},{},{},{},{},{},{},{rel}\n",
                q(&id.id),
                q(authority),
                q(&ev.pid.family),
                q(&ev.pid.given),
                ev.pid.birth_date.clone().unwrap_or_default(),
                // A roster carries M, F, U, O or X only (some senders put codes here).
                if ["M", "F", "U", "O", "X"].contains(&ev.pid.sex.as_str()) {
                    ev.pid.sex.as_str()
                } else {
                    ""
                },
                npi(n)
            ));
        }
    }
    cli.roster("roster-corpus.csv", &roster, "corpus");
    let server = start(dir, &env);
    let mut args = vec!["send", "--to", &server.mllp, "--quiet-ms", "300"];
    let paths: Vec<String> = corpus_files()
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    args.extend(paths.iter().map(String::as_str));
    let _ = server.run(&args); // invalid/ files are rejected on purpose
    let done = |ns: &[Value]| {
        !ns.is_empty()
            && ns.iter().all(|n| {
                matches!(
                    n["status"].as_str(),
                    Some("delivered" | "failed" | "dead" | "suppressed")
                )
            })
    };
    wait_for(
        Duration::from_secs(90),
        "every corpus notification to settle",
        || done(&export(&server)),
    );
    let ns = export(&server);
    let rest: Vec<&Value> = ns.iter().filter(|n| n["channel"] == "REST").collect();
    let direct: Vec<&Value> = ns.iter().filter(|n| n["channel"] == "DIRECT").collect();
    // 20 at the time of writing: most corpus messages are updates, registrations and
    // other events the CoP rule does not notify, or patients without an authority.
    assert!(rest.len() >= 15, "{} REST notifications", rest.len());
    assert_eq!(
        rest.len(),
        direct.len(),
        "both providers hear of each event"
    );
    for n in &rest {
        assert_eq!(n["status"], "delivered", "{n}");
        assert_eq!(n["proof"]["http_status"], 200, "{n}");
    }
    for n in &direct {
        assert_eq!(n["status"], "delivered", "{n}");
        assert_eq!(n["proof"]["smtp_code"], 250, "{n}");
        assert_eq!(
            n["proof"]["mdn_dispatched"]["disposition"], "dispatched",
            "{n}"
        );
    }
    // What the peers received matches the export, one for one.
    let hooks: std::collections::BTreeSet<String> = rx
        .requests("/ok")
        .iter()
        .filter(|r| r["verified"] == true)
        .map(|r| r["webhook_id"].as_str().unwrap().to_string())
        .collect();
    let keys: std::collections::BTreeSet<String> = rest
        .iter()
        .map(|n| n["idempotency_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hooks, keys);
    let mails: std::collections::BTreeSet<String> = hisp
        .messages()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_string())
        .collect();
    let ids: std::collections::BTreeSet<String> = direct
        .iter()
        .map(|n| n["proof"]["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(mails, ids);
    let log = server.log();
    assert!(!log.contains("panicked"));
    assert!(names.len() >= 4, "{names:?}");
    for name in &names {
        assert!(
            !log.contains(name.as_str()),
            "patient name {name} in the log"
        );
    }
}

on_both_backends!(
    corpus_end_to_end_webhook_and_direct_with_proof,
    corpus_end_to_end
);

/// The HISP's submission port as it is in production: STARTTLS required (a certificate
/// from a private CA that `direct.tls_ca_file` trusts) and SMTP AUTH over it.
#[test]
fn direct_over_starttls_with_auth() {
    let dir = tempdir();
    crate::tls::make_pki(dir.path());
    let intake = free_port();
    let hisp = Hisp::start_with(
        dir.path(),
        intake,
        &[
            (
                "HISP_TLS_CERT",
                dir.path().join("server.pem").display().to_string(),
            ),
            (
                "HISP_TLS_KEY",
                dir.path().join("server.key").display().to_string(),
            ),
            ("HISP_AUTH", "router:correct-horse".to_string()),
        ],
    );
    let cli = Cli::new(dir.path(), None, &[]);
    cli.json(&[
        "directory",
        "override",
        "--npi",
        &npi(81),
        "--type",
        "DIRECT",
        "--endpoint",
        "ok@direct.practice.example",
    ]);
    cli.roster(
        "roster-tls.csv",
        &format!(
            "patient_id,assigning_authority,family,given,birth_date,sex,provider_npi,relationship\n\
             MRN-T1,GENHOSP,Doe,Jane,1970-01-01,F,{0},pcp\n",
            npi(81)
        ),
        "tls",
    );
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("routing-rules");
    let env = |password: &str| -> Vec<(String, String)> {
        [
            (
                "ADT_ROUTER__ROUTING__RULES_DIR",
                rules.display().to_string(),
            ),
            (
                "ADT_ROUTER__DIRECT__SMTP_URL",
                format!("smtp://localhost:{}?tls=required", hisp.port),
            ),
            ("ADT_ROUTER__DIRECT__FROM", FROM.to_string()),
            ("ADT_ROUTER__DIRECT__USERNAME", "router".to_string()),
            ("ADT_ROUTER__DIRECT__PASSWORD", password.to_string()),
            (
                "ADT_ROUTER__DIRECT__TLS_CA_FILE",
                dir.path().join("ca.pem").display().to_string(),
            ),
            (
                "ADT_ROUTER__DIRECT__INBOUND_LISTEN",
                format!("127.0.0.1:{intake}"),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    };
    let server = start(dir.path(), &env("correct-horse"));
    admit(&server, dir.path(), &["MRN-T1"]);
    wait_for(Duration::from_secs(30), "delivery over STARTTLS", || {
        export(&server).iter().any(|n| n["status"] == "delivered")
    });
    let n = export(&server)
        .into_iter()
        .find(|n| n["status"] == "delivered")
        .unwrap();
    assert_eq!(
        n["proof"]["mdn_dispatched"]["disposition"], "dispatched",
        "{n}"
    );
    let log = std::fs::read_to_string(&hisp.log).unwrap();
    assert!(log.contains("\"ok\": true"), "AUTH over TLS: {log}");

    // A wrong password: lettre never returns after the HISP's 535 over TLS, so the
    // submission's own time limit ends the attempt, which is recorded and retried
    // (the slot is not held until the lease runs out).
    let mut server = server;
    server.kill9();
    let mut wrong = env("wrong");
    wrong.push(("ADT_ROUTER__DELIVERY__TIMEOUT_MS".into(), "2000".into()));
    let server = start(dir.path(), &wrong);
    let out = server.run(&["resend", "--notification", &n["id"].to_string()]);
    assert!(out.status.success());
    wait_for(
        Duration::from_secs(20),
        "the stalled submission to be recorded",
        || {
            export(&server)[0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("no answer from the HISP within 2000 ms"))
        },
    );
    assert!(std::fs::read_to_string(&hisp.log)
        .unwrap()
        .contains("\"ok\": false"));
}

/// Sends one message to the intake over raw SMTP; the reply to its DATA.
fn submit_report(intake: u16, text: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", intake)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut last = String::new();
    for cmd in [
        String::new(),
        "HELO hisp.test\r\n".into(),
        "MAIL FROM:<hisp@direct.practice.example>\r\n".into(),
        format!("RCPT TO:<{FROM}>\r\n"),
        "DATA\r\n".into(),
        format!("{text}\r\n.\r\n"),
    ] {
        s.write_all(cmd.as_bytes()).unwrap();
        last.clear();
        r.read_line(&mut last).unwrap();
    }
    last
}

fn forged_mdn(original_id: &str, final_recipient: Option<&str>, disposition: &str) -> String {
    format!(
        "From: hisp@direct.practice.example\r\nTo: {FROM}\r\nSubject: forged\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=disposition-notification; boundary=\"f\"\r\n\r\n\
         --f\r\nContent-Type: text/plain\r\n\r\nforged\r\n\
         --f\r\nContent-Type: message/disposition-notification\r\n\r\n\
         {}Original-Message-ID: {original_id}\r\n\
         Disposition: automatic-action/MDN-sent-automatically; {disposition}\r\n\
         X-DIRECT-FINAL-DESTINATION-DELIVERY: \r\n\r\n--f--",
        final_recipient.map_or(String::new(), |f| format!("Final-Recipient: rfc822; {f}\r\n"))
    )
}

/// Proof cannot be forged: a notification waiting for its dispatched MDN is not moved by
/// a report naming its key without our nonce (the key is in every message we send), by
/// one for another domain, or by one with the real Message-ID but another (or no)
/// Final-Recipient. Each is kept, counted and changes nothing; the genuine report then
/// delivers it. Refused reports are kept bounded (`direct.inbound_max_refused`).
#[test]
fn forged_reports_move_nothing() {
    let dir = tempdir();
    let dir = dir.path();
    let intake = free_port();
    let hisp = Hisp::start(dir, intake);
    let rx = Receiver::start(dir);
    let env = setup(
        dir,
        None,
        &rx,
        &["MRN-F"],
        &[],
        &with(
            &hisp.router_env(intake),
            &[
                ("ADT_ROUTER__DIRECT__INBOUND_MAX_REFUSED", "3"),
                ("ADT_ROUTER__DIRECT__DISPATCHED_TIMEOUT_SECS", "600"),
            ],
        ),
    );
    let cli = Cli::new(dir, None, &[]);
    cli.json(&[
        "directory",
        "override",
        "--npi",
        &npi(47),
        "--type",
        "DIRECT",
        "--endpoint",
        "processed-only@direct.practice.example",
    ]);
    cli.roster(
        "roster-forge.csv",
        &format!(
            "patient_id,assigning_authority,family,given,birth_date,sex,provider_npi,relationship\n\
             MRN-F,GENHOSP,Doe,Jane,1970-01-01,F,{},pcp\n",
            npi(47)
        ),
        "forge",
    );
    let server = start(dir, &env);
    admit(&server, dir, &["MRN-F"]);
    wait_for(Duration::from_secs(30), "the processed MDN", || {
        of(&export(&server), 47, "DIRECT")["status"] == "processed"
    });
    let before = of(&export(&server), 47, "DIRECT");
    let key = before["idempotency_key"].as_str().unwrap().to_string();
    let real = hisp
        .messages()
        .iter()
        .find(|m| m["to"] == "processed-only@direct.practice.example")
        .map(|m| m["message_id"].as_str().unwrap().to_string())
        .unwrap();
    let recipient = "processed-only@direct.practice.example";
    let foreign = real.replace("@direct.hospital.example", "@evil.example");
    let attacks = [
        (
            format!("<{key}@direct.hospital.example>"),
            Some(recipient),
            "nonce",
        ),
        (
            format!("<{key}.{}@direct.hospital.example>", "0".repeat(32)),
            Some(recipient),
            "nonce",
        ),
        (foreign, Some(recipient), "not of our domain"),
        (
            real.clone(),
            Some("attacker@evil.example"),
            "Final-Recipient",
        ),
        (real.clone(), None, "Final-Recipient"),
    ];
    for (id, to, says) in &attacks {
        let answer = submit_report(intake, &forged_mdn(id, *to, "dispatched"));
        assert!(
            answer.starts_with("250 ") && answer.contains("refused") && answer.contains(says),
            "{id} {to:?}: {answer}"
        );
    }
    // Nothing moved: the same status and proof as before the attacks.
    let after = of(&export(&server), 47, "DIRECT");
    assert_eq!(after["status"], "processed", "{after}");
    assert_eq!(after["proof"], before["proof"]);
    assert_eq!(
        server.metric("adt_router_direct_reports_total{effect=\"forged\",kind=\"mdn\"}"),
        2.0
    );
    assert_eq!(
        server.metric("adt_router_direct_reports_total{effect=\"foreign\",kind=\"mdn\"}"),
        1.0
    );
    assert_eq!(
        server.metric("adt_router_direct_reports_total{effect=\"wrong_recipient\",kind=\"mdn\"}"),
        2.0
    );
    // Kept, but only the newest three of the five refused.
    let count = |clause: &str| -> i64 {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])",
                dir.join("data/adt-router.db").to_str().unwrap(),
                &format!("SELECT COUNT(*) FROM direct_report WHERE {clause}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{out:?}"))
    };
    assert_eq!(count("refused"), 3);
    assert_eq!(
        count("refused AND effect LIKE '%Final-Recipient%'"),
        2,
        "the newest kept"
    );
    // The genuine report still works.
    let answer = submit_report(intake, &forged_mdn(&real, Some(recipient), "dispatched"));
    assert!(answer.contains("processed -> delivered"), "{answer}");
    assert_eq!(of(&export(&server), 47, "DIRECT")["status"], "delivered");
    assert_eq!(count("NOT refused"), 2, "the processed and dispatched MDNs");
}

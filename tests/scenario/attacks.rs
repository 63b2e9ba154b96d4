//! Attacks on the trust boundaries, against the real binary over the network (issue 19;
//! docs/security.md). Each test asserts that the attack fails and nothing changed.

use crate::support::*;
use adt_router::mllp::client::{summarize_ack, MllpClient};
use std::time::Duration;

/// A sender inventing 10,000 sending facilities cannot grow `/metrics` without bound:
/// the first `metrics.max_label_values` (200) keep their series, the rest count as
/// `other`, and every message is still stored and answered.
#[tokio::test]
async fn ten_thousand_invented_facilities_leave_the_metric_series_capped() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let per_conn = 1250;
    let mut tasks = Vec::new();
    for conn in 0..8 {
        let addr = server.mllp.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = MllpClient::connect(&addr).await.unwrap();
            for i in 0..per_conn {
                let n = conn * per_conn + i;
                let m = format!(
                    "MSH|^~\\&|APP|FAC{n:05}|R|R|20260101||ADT^A01|C{n}|P|2.5.1\rPID|1||M{n}^^^F\r"
                );
                let ack = c.send(m.as_bytes(), Duration::from_secs(30)).await.unwrap();
                assert_eq!(summarize_ack(&ack).code, "AA");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, body) = server.get("/metrics");
    let series: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("adt_router_messages_received_total{"))
        .collect();
    assert!(series.len() <= 201, "{} series", series.len());
    server.assert_metric_sum(
        "adt_router_messages_received_total",
        "sending_facility=\"other\"",
        9800.0,
    );
    server.assert_metric_sum(
        "adt_router_messages_received_total",
        "ack_code=\"AA\"",
        10000.0,
    );
    assert_eq!(server.export(&[]).len(), 10000);
}

/// A peer that begins a frame and trickles its bytes is closed after
/// `mllp.frame_timeout_secs`, however steadily it sends; nothing is stored for it.
#[tokio::test]
async fn a_slow_drip_frame_is_closed_after_the_frame_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempdir();
    let server = Server::start(dir.path(), &[("ADT_ROUTER__MLLP__FRAME_TIMEOUT_SECS", "1")]);
    let mut s = tokio::net::TcpStream::connect(&server.mllp).await.unwrap();
    let msg = b"\x0bMSH|^~\\&|A|F|R|R|20260101||ADT^A01|DRIP-1|P|2.5.1\rPID|1||M1^^^F\r";
    let started = std::time::Instant::now();
    let mut closed = false;
    for b in msg.iter().cycle().take(200) {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 16];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            assert!(matches!(r, Ok(0) | Err(_)), "no answer is due: {r:?}");
            closed = true;
            break;
        }
    }
    assert!(closed, "the server kept a trickling frame open for 10 s");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    assert_eq!(
        server.metric("adt_router_mllp_frame_errors_total{kind=\"frame_timeout\"}"),
        1.0
    );
    assert!(server.export(&[]).is_empty());
    // A sender that finishes its frames in time is unaffected.
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    let ok = c.send(&msg[1..], Duration::from_secs(5)).await.unwrap();
    assert_eq!(summarize_ack(&ok).code, "AA");
}

/// One address cannot take every connection slot: past `mllp.max_connections_per_peer`
/// its connections are closed at once, while another address still gets in.
#[tokio::test]
async fn one_peer_cannot_take_every_connection() {
    use tokio::io::AsyncReadExt;
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        &[("ADT_ROUTER__MLLP__MAX_CONNECTIONS_PER_PEER", "2")],
    );
    let msg = b"MSH|^~\\&|A|F|R|R|20260101||ADT^A01|PEER-1|P|2.5.1\rPID|1||M1^^^F\r";
    let mut a = MllpClient::connect(&server.mllp).await.unwrap();
    let mut b = MllpClient::connect(&server.mllp).await.unwrap();
    a.send(msg, Duration::from_secs(5)).await.unwrap();
    b.send(msg, Duration::from_secs(5)).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(&server.mllp).await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)));
    assert_eq!(
        server.metric("adt_router_mllp_connections_refused_total{reason=\"per_peer\"}"),
        1.0
    );
    // Another loopback address is another peer.
    let mut other = {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        sock.connect(server.mllp.parse().unwrap()).await.unwrap()
    };
    use tokio::io::AsyncWriteExt;
    other
        .write_all(&adt_router::mllp::codec::frame(msg))
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), other.read(&mut buf))
        .await
        .expect("answered in time")
        .unwrap();
    assert!(n > 0, "the other address was refused");
    // A closed connection gives its slot back.
    drop(a);
    wait_for(Duration::from_secs(5), "a's slot given back", || {
        server.metric("adt_router_mllp_open_connections") <= 2.0
    });
    let mut again = MllpClient::connect(&server.mllp).await.unwrap();
    assert_eq!(
        summarize_ack(&again.send(msg, Duration::from_secs(5)).await.unwrap()).code,
        "AA"
    );
}

/// `check-config` prints the effective configuration for an operator to read or paste
/// into a ticket: no secret from the file or the environment may appear in it.
#[test]
fn check_config_prints_no_secret() {
    let dir = tempdir();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[direct]\nsmtp_url = \"smtps://hisp-user:url-secret-4711@127.0.0.1:465\"\nfrom = \"hosp@direct.example.org\"\n\
         [kafka]\nbrokers = \"127.0.0.1:9\"\n[kafka.librdkafka_options]\n\"sasl.password\" = \"kafka-secret-4711\"\n\
         [[auth.tokens]]\ntoken = \"token-secret-4711-abcdef\"\nrole = \"admin\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("ADT_ROUTER__DIRECT__PASSWORD", "smtp-secret-4711")
        .env(
            "ADT_ROUTER__DATABASE__URL",
            "postgres://adt:db-secret-4711@127.0.0.1:5432/adt",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("secret-4711"),
        "a secret was printed:\n{text}"
    );
    // What an operator needs is still there.
    assert!(
        text.contains("postgres://adt:***@127.0.0.1:5432/adt"),
        "{text}"
    );
    assert!(
        text.contains("smtps://hisp-user:***@127.0.0.1:465"),
        "{text}"
    );
    assert!(text.contains("sasl.password"), "{text}");
}

/// `serve` with secrets in its file and environment logs none of them, and warns that
/// its configuration file (and a key) can be read by any user on the host.
#[test]
fn serve_logs_no_secret_and_warns_of_readable_secret_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    crate::tls::make_pki(dir.path());
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[direct]\nsmtp_url = \"smtps://hisp-user:url-secret-4711@127.0.0.1:465\"\nfrom = \"hosp@direct.example.org\"\n\
         [[auth.tokens]]\ntoken = \"token-secret-4711-abcdef\"\nrole = \"admin\"\n",
    )
    .unwrap();
    let key = dir.path().join("server.key");
    for f in [&cfg, &key] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER_CONFIG", cfg.to_str().unwrap()),
            ("ADT_ROUTER__DIRECT__PASSWORD", "smtp-secret-4711"),
            (
                "ADT_ROUTER__MLLP__TLS_CERT",
                dir.path().join("server.pem").to_str().unwrap(),
            ),
            ("ADT_ROUTER__MLLP__TLS_KEY", key.to_str().unwrap()),
        ],
    );
    let (status, _) = server.get("/readyz");
    assert_eq!(status, 200);
    let log = server.log();
    assert!(!log.contains("secret-4711"), "a secret was logged:\n{log}");
    assert!(log.contains("smtps://hisp-user:***@127.0.0.1:465"), "{log}");
    for what in ["the configuration file", "mllp.tls_key"] {
        assert!(
            log.lines().any(|l| l.contains(what)
                && l.contains("can be read by any user")
                && l.contains("644")),
            "no warning for {what}:\n{log}"
        );
    }
}

/// PHI at rest is readable by the service's user only: the data directory is created
/// 0700 and the database 0600, its WAL included.
#[tokio::test]
async fn the_data_directory_and_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    let m = b"MSH|^~\\&|A|F|R|R|20260101||ADT^A01|PRIV-1|P|2.5.1\rPID|1||M1^^^F\r";
    assert_eq!(
        summarize_ack(&c.send(m, Duration::from_secs(5)).await.unwrap()).code,
        "AA"
    );
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("data"), 0o700);
    assert_eq!(mode("data/adt-router.db"), 0o600);
    assert_eq!(mode("data/adt-router.db-wal"), 0o600);
}

/// Direct submission without TLS would put PHI and the SMTP password on the wire in
/// clear: refused at start unless `direct.allow_insecure` says it is a test stand-in.
#[test]
fn plain_smtp_to_the_hisp_is_refused_unless_allowed() {
    let run = |url: &str, allow: &str| {
        std::process::Command::new(BIN)
            .arg("check-config")
            .env("ADT_ROUTER__DIRECT__SMTP_URL", url)
            .env("ADT_ROUTER__DIRECT__FROM", "hosp@direct.example.org")
            .env("ADT_ROUTER__DIRECT__ALLOW_INSECURE", allow)
            .output()
            .unwrap()
    };
    for url in [
        "smtp://127.0.0.1:25",
        "smtp://127.0.0.1:25?tls=opportunistic",
    ] {
        let out = run(url, "false");
        assert!(!out.status.success(), "{url} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("direct.allow_insecure"), "{err}");
    }
    for (url, allow) in [
        ("smtp://127.0.0.1:25", "true"),
        ("smtp://127.0.0.1:587?tls=required", "false"),
        ("smtps://127.0.0.1:465", "false"),
    ] {
        let out = run(url, allow);
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A webhook endpoint that answers 307 to a loopback address cannot steer the PHI
/// there: the redirect is not followed, the receiver it points at sees nothing, and the
/// notification fails with the status and the target host recorded.
#[test]
fn a_webhook_redirect_is_not_followed() {
    use crate::delivery::{admit, export, setup, start, Receiver};
    let dir = tempdir();
    let rx = Receiver::start(dir.path());
    let env = setup(
        dir.path(),
        None,
        &rx,
        &["MRN-R"],
        &[(61, "redirect", "pcp")],
        &[],
    );
    let server = start(dir.path(), &env);
    admit(&server, dir.path(), &["MRN-R"]);
    wait_for(Duration::from_secs(20), "the redirect's failure", || {
        export(&server)
            .iter()
            .any(|n| n["status"] == "failed" || n["status"] == "dead")
    });
    let n = export(&server)
        .into_iter()
        .find(|n| n["status"] == "failed" || n["status"] == "dead")
        .unwrap();
    assert_eq!(n["attempts"], 1, "{n}");
    let err = n["last_error"].as_str().unwrap();
    assert!(
        err.contains("HTTP 307") && err.contains("127.0.0.1") && err.contains("not followed"),
        "{n}"
    );
    assert_eq!(rx.requests("/redirect").len(), 1);
    assert!(
        rx.requests("/redirected").is_empty(),
        "the redirect was followed"
    );
}

/// The frame timeout is per frame: a sender that keeps frames flowing, each read ending
/// in the middle of the next frame, is never closed for it.
#[tokio::test]
async fn pipelined_frames_split_across_reads_are_not_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempdir();
    let server = Server::start(dir.path(), &[("ADT_ROUTER__MLLP__FRAME_TIMEOUT_SECS", "1")]);
    let mut s = tokio::net::TcpStream::connect(&server.mllp).await.unwrap();
    let frames: Vec<u8> = (0..8)
        .flat_map(|i| {
            adt_router::mllp::codec::frame(
                format!("MSH|^~\\&|A|F|R|R|20260101||ADT^A01|PIPE-{i}|P|2.5.1\rPID|1||M{i}^^^F\r")
                    .as_bytes(),
            )
        })
        .collect();
    // Each write ends mid-frame; together they take well over the frame timeout.
    let mut answers = Vec::new();
    for chunk in frames.chunks(frames.len() / 8 + 7) {
        s.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await {
            assert!(n > 0, "closed mid-stream");
            answers.extend_from_slice(&buf[..n]);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while answers.iter().filter(|&&b| b == 0x1c).count() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "not every frame answered"
        );
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before every frame was answered");
        answers.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        server.metric("adt_router_mllp_frame_errors_total{kind=\"frame_timeout\"}"),
        0.0
    );
}

/// A FHIR Subscription belongs to the token that created it. A practice sharing an NPI
/// with another, or with a hospital subscription, cannot read, search, change, delete
/// or read the status and events of either; the hospital's channel secrets are never
/// shown; and the per-token limit and minimum heartbeat hold. Nothing the attacker
/// tried changed anything.
#[test]
fn a_practice_reaches_only_its_own_subscriptions() {
    use crate::delivery::npi;
    use crate::fhir::{http_request_json, subscription};
    use serde_json::{json, Value};
    let dir = tempdir();
    let config = dir.path().join("tokens.toml");
    let (admin, a, b) = (
        "Authorization: Bearer admin-token-attack-0123456789",
        "Authorization: Bearer practice-a-token-0123456789",
        "Authorization: Bearer practice-b-token-0123456789",
    );
    // Practices A and B share an NPI: sharing one is not owning the other's.
    std::fs::write(
        &config,
        format!(
            "[fhir]\nmax_subscriptions_per_token = 2\n\n\
             [[auth.tokens]]\ntoken = \"admin-token-attack-0123456789\"\nrole = \"admin\"\n\n\
             [[auth.tokens]]\ntoken = \"practice-a-token-0123456789\"\nid = \"practice-a\"\nrole = \"practice\"\nnpis = [\"{0}\"]\n\n\
             [[auth.tokens]]\ntoken = \"practice-b-token-0123456789\"\nrole = \"practice\"\nnpis = [\"{0}\", \"{1}\"]\n",
            npi(71),
            npi(72)
        ),
    )
    .unwrap();
    let server = Server::start(
        dir.path(),
        &[("ADT_ROUTER_CONFIG", config.to_str().unwrap())],
    );
    let base = format!("http://{}/fhir", server.http);
    let call = |method: &str, path: &str, auth: &str, body: &Value| {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let (status, _, v) = http_request_json(&server.http, method, path, auth, &bytes);
        (status, v)
    };

    // The hospital's subscription: every admission, with its own secret header.
    let mut hospital = subscription(
        &base,
        "admission",
        &format!("Encounter?attributed-organization={}", npi(71)),
        "https://hie.example.org/notify",
    );
    hospital["channel"]["header"] = json!(["X-Hospital-Secret: hospital-s3cret-value"]);
    let (status, h) = call("POST", "/fhir/Subscription", admin, &hospital);
    assert_eq!(status, 201, "{h}");
    let hid = h["id"].as_str().unwrap().to_string();
    assert!(!h.to_string().contains("hospital-s3cret-value"), "{h}");
    // Practice A's own.
    let (status, mine) = call(
        "POST",
        "/fhir/Subscription",
        a,
        &subscription(
            &base,
            "discharge",
            &format!("Encounter?attributed-practitioner={}", npi(71)),
            "https://a.example.org/notify",
        ),
    );
    assert_eq!(status, 201, "{mine}");
    let aid = mine["id"].as_str().unwrap().to_string();
    let before = |id: &str| {
        call(
            "GET",
            &format!("/fhir/Subscription/{id}"),
            admin,
            &Value::Null,
        )
    };
    let (hospital_before, a_before) = (before(&hid), before(&aid));

    // Practice B attacks both: the hospital's, and A's (which shares its NPI).
    for id in [&hid, &aid] {
        let mut takeover = h.clone();
        takeover["id"] = json!(id);
        takeover["channel"]["endpoint"] = json!("https://b.example.org/steal");
        takeover["_criteria"] = Value::Null;
        let attempts = [
            ("GET", format!("/fhir/Subscription/{id}"), Value::Null),
            ("PUT", format!("/fhir/Subscription/{id}"), takeover),
            ("DELETE", format!("/fhir/Subscription/{id}"), Value::Null),
            (
                "GET",
                format!("/fhir/Subscription/{id}/$status"),
                Value::Null,
            ),
            (
                "GET",
                format!("/fhir/Subscription/{id}/$events"),
                Value::Null,
            ),
        ];
        for (method, path, body) in attempts {
            let (status, oo) = call(method, &path, b, &body);
            assert_eq!(status, 404, "{method} {path}: {oo}");
            assert!(!oo.to_string().contains("s3cret"), "{oo}");
        }
    }
    for path in ["/fhir/Subscription", "/fhir/Subscription/$status"] {
        let (status, found) = call("GET", path, b, &Value::Null);
        assert_eq!(status, 200);
        assert!(
            found["entry"].as_array().is_none_or(|e| e.is_empty()),
            "{path}: {found}"
        );
    }
    // Nothing changed: both read the same to the hospital as before the attack.
    assert_eq!(before(&hid), hospital_before);
    assert_eq!(before(&aid), a_before);
    // The hospital sees every subscription, and never a header value.
    let (status, all) = call("GET", "/fhir/Subscription", admin, &Value::Null);
    assert_eq!((status, all["total"].as_i64()), (200, Some(2)), "{all}");
    let shown = all.to_string();
    assert!(shown.contains("X-Hospital-Secret: ***"), "{shown}");
    assert!(
        !shown.contains("hospital-s3cret-value") && !shown.contains("s3cret\""),
        "{shown}"
    );

    // Practice A changes its own (the owner may), within its limits.
    let mut update = a_before.1.clone();
    update["channel"]["endpoint"] = json!("https://a.example.org/notify2");
    let (status, updated) = call("PUT", &format!("/fhir/Subscription/{aid}"), a, &update);
    assert_eq!(status, 200, "{updated}");
    let mut fast = subscription(
        &base,
        "transfer",
        &format!("Encounter?attributed-practitioner={}", npi(71)),
        "https://a.example.org/notify",
    );
    fast["channel"]["extension"][0]["valueUnsignedInt"] = json!(5);
    let (status, oo) = call("POST", "/fhir/Subscription", a, &fast);
    assert_eq!(status, 422, "{oo}");
    assert!(oo.to_string().contains("fhir.min_heartbeat_secs"), "{oo}");
    fast["channel"]["extension"][0]["valueUnsignedInt"] = json!(60);
    let (status, second) = call("POST", "/fhir/Subscription", a, &fast);
    assert_eq!(status, 201, "{second}");
    let (status, oo) = call("POST", "/fhir/Subscription", a, &fast);
    assert_eq!(status, 422, "a third: {oo}");
    assert!(
        oo.to_string().contains("max_subscriptions_per_token"),
        "{oo}"
    );
    // A deleted one frees its place.
    let (status, _) = call(
        "DELETE",
        &format!("/fhir/Subscription/{aid}"),
        a,
        &Value::Null,
    );
    assert_eq!(status, 204);
    let (status, third) = call("POST", "/fhir/Subscription", a, &fast);
    assert_eq!(status, 201, "{third}");
}

/// The Direct report intake, attacked as a network neighbour would: an address not in
/// `direct.inbound_allow` is refused at once; a listed peer meets STARTTLS before any
/// mail (Python's smtplib, with the test CA, gets through); connections beyond the cap
/// are refused and sessions end at the time limit; a 100 MB line closes the connection
/// while the server's memory stays where it was.
#[tokio::test]
async fn the_report_intake_takes_only_its_peers_and_bounded_input() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempdir();
    crate::tls::make_pki(dir.path());
    let intake = free_port();
    let at = format!("127.0.0.1:{intake}");
    let pem = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER__DIRECT__SMTP_URL", "smtp://127.0.0.1:9"),
            ("ADT_ROUTER__DIRECT__FROM", "router@direct.hospital.example"),
            ("ADT_ROUTER__DIRECT__ALLOW_INSECURE", "true"),
            ("ADT_ROUTER__DIRECT__INBOUND_LISTEN", &at),
            ("ADT_ROUTER__DIRECT__INBOUND_ALLOW", "127.0.0.2/32"),
            (
                "ADT_ROUTER__DIRECT__INBOUND_TLS_CERT",
                pem.to_str().unwrap(),
            ),
            ("ADT_ROUTER__DIRECT__INBOUND_TLS_KEY", key.to_str().unwrap()),
            ("ADT_ROUTER__DIRECT__INBOUND_MAX_CONNECTIONS", "2"),
            ("ADT_ROUTER__DIRECT__INBOUND_SESSION_SECS", "3"),
            ("ADT_ROUTER__ROUTING__ENABLED", "false"),
        ],
    );
    let from = |ip: &'static str| {
        let at = at.clone();
        async move {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            s.connect(at.parse().unwrap()).await.unwrap()
        }
    };
    let read_all = |mut s: tokio::net::TcpStream| async move {
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(r.is_ok(), "not closed: {}", String::from_utf8_lossy(&out));
        String::from_utf8_lossy(&out).to_string()
    };
    // Not a listed peer: refused, closed.
    let said = read_all(from("127.0.0.1").await).await;
    assert!(said.starts_with("554 5.7.1"), "{said}");
    assert_eq!(
        server.metric("adt_router_direct_intake_refused_total{reason=\"peer\"}"),
        1.0
    );

    // A listed peer: STARTTLS offered, mail refused before it.
    let mut s = from("127.0.0.2").await;
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"220 "));
    assert!(exchange(&mut s, b"EHLO hisp.test\r\n")
        .await
        .contains("250-STARTTLS"));
    let said = exchange(&mut s, b"MAIL FROM:<h@x>\r\n").await;
    assert!(said.starts_with("530 "), "{said}");
    // A second connection fills the cap; a third is refused.
    let s2 = from("127.0.0.2").await;
    let said = read_all(from("127.0.0.2").await).await;
    assert!(said.starts_with("421 "), "{said}");
    assert_eq!(
        server.metric("adt_router_direct_intake_refused_total{reason=\"connections\"}"),
        1.0
    );
    // Both held sessions end at the session limit (3 s), freeing their slots.
    let started = std::time::Instant::now();
    read_all(s).await;
    read_all(s2).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        server.metric("adt_router_direct_intake_refused_total{reason=\"session_time\"}") >= 2.0
    );

    // A real client through STARTTLS: Python's smtplib, verifying our certificate.
    let ca = dir.path().join("ca.pem");
    let script = "import smtplib, ssl, sys\n\
        ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
        s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), source_address=('127.0.0.2', 0), timeout=10)\n\
        s.starttls(context=ctx)\n\
        s.sendmail('hisp@direct.practice.example', ['router@direct.hospital.example'], b'Subject: hi\\r\\n\\r\\nnot a report\\r\\n')\n\
        print(s.version if hasattr(s, 'version') else 'sent')\n\
        s.quit()\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script, &intake.to_string(), ca.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        server.metric("adt_router_direct_reports_total{effect=\"unmatched\",kind=\"other\"}"),
        1.0
    );

    // 100 MB in one line: the connection closes early and memory stays put.
    let hwm = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let before = hwm(server.pid());
    let mut s = from("127.0.0.2").await;
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"220 "));
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_secs(10), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    assert!(sent < 100 << 20, "the server read all 100 MB of one line");
    let grew = hwm(server.pid()).saturating_sub(before);
    assert!(grew < 16 * 1024, "peak memory grew {grew} kB");
    assert_eq!(
        server.metric("adt_router_direct_intake_refused_total{reason=\"line\"}"),
        1.0
    );
}

/// Writes `send` and reads what comes back in one read.
async fn exchange(s: &mut tokio::net::TcpStream, send: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 1024];
    s.write_all(send).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// Stages are supervised: when routing, delivery or the Direct report intake dies (a
/// panic injected by the debug-build failpoint), `/readyz` answers 503 naming it, the
/// failure is counted, and `serve` exits non-zero so a supervisor restarts it.
#[test]
fn a_killed_stage_turns_readyz_red_and_the_process_exits() {
    for stage in ["routing", "delivery", "report intake"] {
        let dir = tempdir();
        let intake = format!("127.0.0.1:{}", free_port());
        let server_env = [
            ("ADT_ROUTER_FAILPOINT", stage),
            ("ADT_ROUTER__DIRECT__SMTP_URL", "smtp://127.0.0.1:9"),
            ("ADT_ROUTER__DIRECT__FROM", "router@direct.hospital.example"),
            ("ADT_ROUTER__DIRECT__ALLOW_INSECURE", "true"),
            ("ADT_ROUTER__DIRECT__INBOUND_LISTEN", intake.as_str()),
        ];
        let mut server = Server::start(dir.path(), &server_env);
        let mut seen = String::new();
        wait_for(Duration::from_secs(10), "/readyz to turn red", || {
            let (status, body) = server.get("/readyz");
            seen = body;
            status == 503
        });
        assert!(seen.contains(&format!("the {stage} stage ended")), "{seen}");
        assert_eq!(
            server.metric(&format!(
                "adt_router_stage_failures_total{{stage=\"{stage}\"}}"
            )),
            1.0
        );
        let status = server.wait_exit(Duration::from_secs(30));
        assert!(!status.success(), "{stage}: exited {status:?}");
        let log = server.log();
        assert!(
            log.contains("failpoint") && log.contains("A stage ended"),
            "{log}"
        );
    }
}

/// The HTTP API against slow and greedy clients: headers trickled past
/// `http.header_timeout_secs` close the connection unanswered; idle connections
/// holding every slot (`http.max_connections`) delay others only until the header
/// timeout frees them; a roster body trickled past `http.upload_timeout_secs` gets 408;
/// and one larger than `http.max_upload_bytes` gets 413 with nothing loaded (the body
/// is streamed to a capped temporary file, never held in memory).
#[test]
fn the_http_api_bounds_slow_clients_connections_and_uploads() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let dir = tempdir();
    let config = dir.path().join("tokens.toml");
    std::fs::write(
        &config,
        "[[auth.tokens]]\ntoken = \"admin-token-http-attack-0123\"\nrole = \"admin\"\n",
    )
    .unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER_CONFIG", config.to_str().unwrap()),
            ("ADT_ROUTER__HTTP__HEADER_TIMEOUT_SECS", "2"),
            ("ADT_ROUTER__HTTP__UPLOAD_TIMEOUT_SECS", "2"),
            ("ADT_ROUTER__HTTP__MAX_CONNECTIONS", "2"),
            ("ADT_ROUTER__HTTP__MAX_UPLOAD_BYTES", "1000"),
        ],
    );
    let connect = || {
        let s = TcpStream::connect(&server.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    // Slow headers: one header line every 300 ms is closed after 2 s, unanswered.
    let mut s = connect();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for i in 0..40 {
        std::thread::sleep(Duration::from_millis(300));
        if s.write_all(format!("X-Drip-{i}: y\r\n").as_bytes())
            .is_err()
        {
            closed = true;
            break;
        }
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        let r = s.read(&mut buf);
        s.set_nonblocking(false).unwrap();
        match r {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                let said = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(
                    !said.contains("200 OK"),
                    "answered a trickled request: {said}"
                );
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "a trickling client kept its connection for 12 s");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

    // Two silent connections take both slots; a third request waits, then is answered
    // once the header timeout frees a slot.
    let held: Vec<TcpStream> = (0..2).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = connect();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        third.read(&mut buf).is_err(),
        "served past the connection limit"
    );
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    third.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);

    // A roster body trickled past the upload time limit: 408.
    let mut s = connect();
    s.write_all(
        b"POST /rosters/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token-http-attack-0123\r\n\
          Content-Type: text/csv\r\nContent-Length: 900\r\nConnection: close\r\n\r\npatient_id,",
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Larger than the cap: 413, nothing loaded.
    let mut csv = String::from(
        "patient_id,assigning_authority,family,given,birth_date,sex,provider_npi,relationship\n",
    );
    while csv.len() < 5000 {
        csv.push_str("MRN-X,GENHOSP,Doe,Jane,1970-01-01,F,1234567893,pcp\n");
    }
    let (status, body) = http_post(
        &server.http,
        "/rosters/big",
        &[
            "Authorization: Bearer admin-token-http-attack-0123",
            "Content-Type: text/csv",
        ],
        csv.as_bytes(),
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("max_upload_bytes"), "{body}");
    assert_eq!(
        server.metric("adt_router_roster_uploads_total{outcome=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        server.metric("adt_router_roster_uploads_total{outcome=\"loaded\"}"),
        0.0
    );
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("adt-router-roster-")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

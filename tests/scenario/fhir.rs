//! Step 6, the FHIR API (Subscriptions, R5 Backport IG on R4): every resource the server
//! answers with passes two validators written by others (FHIR.js and the official R4
//! JSON schema, tests/peers/fhir_validate.js), and bad subscriptions get a useful
//! OperationOutcome with the right status.

use crate::delivery::npi;
use crate::support::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ADMIN: &str = "Authorization: Bearer admin-token-fhir-0123456789";
const PRACTICE: &str = "Authorization: Bearer practice-token-fhir-0123456789";
const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition";

/// Where test.sh installed the npm validators.
fn node_path() -> PathBuf {
    std::env::var_os("ADT_ROUTER_NODE_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/adt-router/npm/node_modules")
        })
}

/// Errors per resource from both validators: `(fhirjs, schema)`.
fn validate(dir: &Path, resources: &[Value]) -> Vec<(Vec<String>, Vec<String>)> {
    let file = dir.join("to-validate.json");
    std::fs::write(&file, serde_json::to_vec(resources).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/fhir_validate.js");
    let out = Command::new("node")
        .arg(script)
        .arg(&file)
        .env("NODE_PATH", node_path())
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "validator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    v.iter()
        .map(|r| {
            let list = |k: &str| {
                r[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e.as_str().unwrap().to_string())
                    .collect()
            };
            (list("fhirjs"), list("schema"))
        })
        .collect()
}

fn assert_valid(dir: &Path, resources: &[Value]) {
    for (r, (js, schema)) in resources.iter().zip(validate(dir, resources)) {
        assert!(
            js.is_empty() && schema.is_empty(),
            "{}: FHIR.js {js:?}, schema {schema:?}\n{r}",
            r["resourceType"]
        );
    }
}

pub(crate) fn subscription(base: &str, topic: &str, filter: &str, endpoint: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Encounter notifications for our attributed patients",
        "criteria": format!("{base}/SubscriptionTopic/{topic}"),
        "_criteria": { "extension": [{ "url": format!("{BACKPORT}/backport-filter-criteria"), "valueString": filter }] },
        "channel": {
            "extension": [
                { "url": format!("{BACKPORT}/backport-heartbeat-period"), "valueUnsignedInt": 3600 },
                { "url": format!("{BACKPORT}/backport-timeout"), "valueUnsignedInt": 30 }
            ],
            "type": "rest-hook",
            "endpoint": endpoint,
            "header": ["X-Practice-Secret: s3cret"],
            "payload": "application/fhir+json",
            "_payload": { "extension": [{ "url": format!("{BACKPORT}/backport-payload-content"), "valueCode": "id-only" }] }
        }
    })
}

#[test]
fn subscriptions_api_validates_and_refuses_with_operation_outcomes() {
    let dir = tempdir();
    let config = dir.path().join("tokens.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\ntoken = \"admin-token-fhir-0123456789\"\nrole = \"admin\"\n\n\
             [[auth.tokens]]\ntoken = \"practice-token-fhir-0123456789\"\nrole = \"practice\"\nnpis = [\"{}\"]\n\n\
             [[auth.tokens]]\ntoken = \"auditor-token-fhir-0123456789\"\nrole = \"auditor\"\n",
            npi(61)
        ),
    )
    .unwrap();
    let cli = Cli::new(dir.path(), None, &[]);
    cli.roster(
        "roster.csv",
        &format!(
            "patient_id,assigning_authority,family,given,birth_date,sex,provider_npi,relationship\n\
             MRN-F1,GENHOSP,Doe,Jane,1970-01-01,F,{},pcp\nMRN-F2,GENHOSP,Roe,Rick,1960-02-02,M,{},pcp\n",
            npi(61),
            npi(62)
        ),
        "fhir",
    );
    let server = Server::start(
        dir.path(),
        &[("ADT_ROUTER_CONFIG", config.to_str().unwrap())],
    );
    let base = format!("http://{}/fhir", server.http);
    let req = |method: &str, path: &str, auth: Option<&str>, body: &Value| {
        let mut h = vec!["Content-Type: application/fhir+json"];
        h.extend(auth);
        let body = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(body).unwrap()
        };
        let (status, head, body) = http_request(&server.http, method, path, &h, &body);
        let v = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status, head, v)
    };
    let mut emitted = Vec::new();

    // The CapabilityStatement names the topics and the backport profile.
    let (status, head, cs) = req("GET", "/fhir/metadata", None, &Value::Null);
    assert_eq!(status, 200);
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: application/fhir+json"));
    let topics: Vec<&str> = cs["rest"][0]["resource"][0]["extension"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["valueCanonical"].as_str().unwrap())
        .collect();
    for t in ["admission", "ed-registration", "transfer", "discharge"] {
        assert!(
            topics.contains(&format!("{base}/SubscriptionTopic/{t}").as_str()),
            "{topics:?}"
        );
    }
    emitted.push(cs);

    // A practice subscribes for its own NPI, and for one of its attributed patients.
    let mine = subscription(
        &base,
        "admission",
        &format!(
            "Encounter?attributed-practitioner=http://hl7.org/fhir/sid/us-npi|{}",
            npi(61)
        ),
        "https://practice.example.org/fhir/notify",
    );
    let (status, head, created) = req("POST", "/fhir/Subscription", Some(PRACTICE), &mine);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(
        head.contains(&format!("{base}/Subscription/{id}")),
        "{head}"
    );
    assert_eq!(created["status"], "requested");
    emitted.push(created.clone());
    let patient = subscription(
        &base,
        "discharge",
        "Encounter?patient.identifier=GENHOSP|MRN-F1",
        "https://practice.example.org/fhir/notify",
    );
    let (status, _, p) = req("POST", "/fhir/Subscription", Some(PRACTICE), &patient);
    assert_eq!(status, 201, "{p}");

    // Read, search and $status.
    let (status, _, got) = req(
        "GET",
        &format!("/fhir/Subscription/{id}"),
        Some(PRACTICE),
        &Value::Null,
    );
    assert_eq!(status, 200);
    assert_eq!(
        got["criteria"],
        format!("{base}/SubscriptionTopic/admission")
    );
    emitted.push(got);
    let (status, _, found) = req(
        "GET",
        "/fhir/Subscription?status=requested",
        Some(PRACTICE),
        &Value::Null,
    );
    assert_eq!(status, 200);
    assert_eq!(found["total"], 2);
    emitted.push(found);
    let (status, _, st) = req(
        "GET",
        &format!("/fhir/Subscription/{id}/$status"),
        Some(PRACTICE),
        &Value::Null,
    );
    assert_eq!(status, 200);
    let params = &st["entry"][0]["resource"];
    assert_eq!(params["resourceType"], "Parameters");
    let param = |name: &str| {
        params["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(param("type")["valueCode"], "query-status");
    assert_eq!(param("events-since-subscription-start")["valueString"], "0");
    emitted.push(st.clone());
    // Type-level $status: every subscription the caller sees, narrowed by id / status.
    let count = |path: &str| {
        let (status, _, b) = req("GET", path, Some(PRACTICE), &Value::Null);
        assert_eq!(status, 200, "{path}: {b}");
        b["entry"].as_array().map_or(0, |e| e.len())
    };
    assert_eq!(count("/fhir/Subscription/$status"), 2);
    assert_eq!(count(&format!("/fhir/Subscription/$status?id={id}")), 1);
    assert_eq!(
        count(&format!(
            "/fhir/Subscription/$status?id={id},nope&status=requested"
        )),
        1
    );
    assert_eq!(count("/fhir/Subscription/$status?status=active,error"), 0);
    let (status, _, all) = req(
        "GET",
        "/fhir/Subscription/$status",
        Some(PRACTICE),
        &Value::Null,
    );
    assert_eq!(
        all["entry"][0]["resource"]["parameter"][3]["valueCode"],
        "query-status"
    );
    emitted.push(all);
    let (status_bad, _, oo) = req(
        "GET",
        "/fhir/Subscription/$status?topic=x",
        Some(PRACTICE),
        &Value::Null,
    );
    assert_eq!((status, status_bad), (200, 400), "{oo}");
    emitted.push(oo);

    // Refusals, each with an OperationOutcome that says why.
    let cases: Vec<(Value, Option<&str>, u16, &str)> = vec![
        (
            subscription(
                &base,
                "birthdays",
                "Encounter?attributed-practitioner=1234567893",
                "https://p.example.org/n",
            ),
            Some(ADMIN),
            422,
            "unknown topic",
        ),
        (
            subscription(
                &base,
                "admission",
                &format!("Encounter?attributed-practitioner={}", npi(61)),
                "http://practice.example.org/n",
            ),
            Some(PRACTICE),
            422,
            "https",
        ),
        (
            {
                let mut s = subscription(
                    &base,
                    "admission",
                    &format!("Encounter?attributed-practitioner={}", npi(61)),
                    "https://p.example.org/n",
                );
                s.as_object_mut().unwrap().remove("channel");
                s
            },
            Some(PRACTICE),
            422,
            "channel is required",
        ),
        (
            subscription(
                &base,
                "admission",
                &format!("Encounter?attributed-practitioner={}", npi(62)),
                "https://p.example.org/n",
            ),
            Some(PRACTICE),
            403,
            "does not speak for NPI",
        ),
        (
            subscription(
                &base,
                "admission",
                "Encounter?patient.identifier=GENHOSP|MRN-F2",
                "https://p.example.org/n",
            ),
            Some(PRACTICE),
            403,
            "not attributed to this practice",
        ),
        (
            subscription(
                &base,
                "admission",
                "Encounter?diagnosis=flu",
                "https://p.example.org/n",
            ),
            Some(ADMIN),
            422,
            "not supported",
        ),
        (
            subscription(
                &base,
                "admission",
                "Encounter?attributed-practitioner=1234567893",
                "https://10.0.0.5/n",
            ),
            Some(ADMIN),
            422,
            "private",
        ),
        (mine.clone(), None, 401, "Bearer"),
        (
            mine.clone(),
            Some("Authorization: Bearer auditor-token-fhir-0123456789"),
            403,
            "only admin and practice",
        ),
    ];
    for (body, auth, want, says) in cases {
        let (status, _, oo) = req("POST", "/fhir/Subscription", auth, &body);
        assert_eq!(status, want, "{oo}");
        assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
        let text = oo.to_string();
        assert!(text.contains(says), "{says:?} not in {text}");
        emitted.push(oo);
    }
    let (status, _, oo) = http_request_json(
        &server.http,
        "POST",
        "/fhir/Subscription",
        PRACTICE,
        b"{not json",
    );
    assert_eq!(status, 400);
    emitted.push(oo);

    // Another practice's subscription is invisible; delete; then 410.
    let (status, _, admin_sub) = req(
        "POST",
        "/fhir/Subscription",
        Some(ADMIN),
        &subscription(
            &base,
            "transfer",
            &format!("Encounter?attributed-organization={}", npi(62)),
            "https://hie.example.org/n",
        ),
    );
    assert_eq!(status, 201);
    let other = admin_sub["id"].as_str().unwrap();
    let (status, _, nf) = req(
        "GET",
        &format!("/fhir/Subscription/{other}"),
        Some(PRACTICE),
        &Value::Null,
    );
    assert_eq!(status, 404);
    emitted.push(nf);
    let (status, _, _) = req(
        "DELETE",
        &format!("/fhir/Subscription/{id}"),
        Some(PRACTICE),
        &Value::Null,
    );
    assert_eq!(status, 204);
    let (status, _, gone) = req(
        "GET",
        &format!("/fhir/Subscription/{id}"),
        Some(PRACTICE),
        &Value::Null,
    );
    assert_eq!(status, 410);
    emitted.push(gone);

    // Every resource the server emitted passes both validators...
    assert_valid(dir.path(), &emitted);
    // ...and the validators are not asleep: a broken status bundle fails both.
    let mut broken = st;
    broken["type"] = json!("not-a-bundle-type");
    broken["entry"][0]["resource"]["parameter"][0]["valueFoo"] = json!(1);
    let verdict = validate(dir.path(), &[broken]);
    assert!(!verdict[0].0.is_empty(), "FHIR.js missed it");
    assert!(!verdict[0].1.is_empty(), "the schema missed it");
}

pub(crate) fn http_request_json(
    addr: &str,
    method: &str,
    path: &str,
    auth: &str,
    body: &[u8],
) -> (u16, String, Value) {
    let (status, head, body) = http_request(
        addr,
        method,
        path,
        &["Content-Type: application/fhir+json", auth],
        body,
    );
    (
        status,
        head,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

crate::support::on_both_backends!(
    handshake_activates_and_heartbeats_follow,
    handshake_scenario
);

/// The lifecycle through the delivery engine: a handshake (with the subscription's own
/// header) makes the subscription active, heartbeats follow at its period, and an
/// endpoint that refuses puts its subscription in error; the subscriber reactivates one
/// and turns another off. Every bundle passes both validators. On SQLite and PostgreSQL.
fn handshake_scenario(dir: &Path, db_url: Option<&str>) {
    let config = dir.join("tokens.toml");
    std::fs::write(
        &config,
        "[[auth.tokens]]\ntoken = \"admin-token-fhir-0123456789\"\nrole = \"admin\"\n",
    )
    .unwrap();
    let log = dir.join("subscriber.jsonl");
    let (child, port) = spawn_peer("fhir_subscriber.py", &[log.display().to_string()], &[]);
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _subscriber = Kill(child);
    let mut env = vec![
        ("ADT_ROUTER_CONFIG", config.to_str().unwrap()),
        ("ADT_ROUTER__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true"),
        ("ADT_ROUTER__DELIVERY__REQUIRE_HTTPS", "false"),
        ("ADT_ROUTER__DELIVERY__MAX_ATTEMPTS", "2"),
        ("ADT_ROUTER__DELIVERY__RETRY_BASE_MS", "100"),
        // Heartbeats a second apart, below the 60 s default minimum.
        ("ADT_ROUTER__FHIR__MIN_HEARTBEAT_SECS", "1"),
    ];
    if let Some(u) = db_url {
        env.push(("ADT_ROUTER__DATABASE__URL", u));
    }
    let server = Server::start(dir, &env);
    let base = format!("http://{}/fhir", server.http);
    let mut ok = subscription(
        &base,
        "admission",
        "Encounter?attributed-practitioner=1234567893",
        &format!("http://127.0.0.1:{port}/hook"),
    );
    ok["channel"]["extension"][0]["valueUnsignedInt"] = json!(1);
    let read = |id: &str| {
        http_request_json(
            &server.http,
            "GET",
            &format!("/fhir/Subscription/{id}"),
            ADMIN,
            b"",
        )
        .2
    };
    let (status, _, created) = http_request_json(
        &server.http,
        "POST",
        "/fhir/Subscription",
        ADMIN,
        ok.to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let received = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let kind = |n: &Value| {
        n["bundle"]["entry"][0]["resource"]["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "type")
            .map(|p| p["valueCode"].as_str().unwrap().to_string())
            .unwrap()
    };
    wait_for(
        Duration::from_secs(20),
        "the handshake and two heartbeats",
        || {
            let r = received();
            r.iter().filter(|n| kind(n) == "heartbeat").count() >= 2
        },
    );
    let r = received();
    assert_eq!(kind(&r[0]), "handshake", "the handshake comes first");
    assert!(r
        .iter()
        .all(|n| n["content_type"] == "application/fhir+json"));
    assert!(
        r.iter().all(|n| n["secret"] == "s3cret"),
        "the subscription's header on every POST"
    );
    let (_, _, now) = http_request_json(
        &server.http,
        "GET",
        &format!("/fhir/Subscription/{id}"),
        ADMIN,
        b"",
    );
    assert_eq!(now["status"], "active", "{now}");
    // Heartbeats a period (a second) apart, never a burst. Judged by the Bundle's
    // timestamp, the instant the router queued each one: the receiver's clock adds the
    // delivery loop's jitter, which on a loaded CI machine once put two 0.84 s apart.
    use time::format_description::well_known::Rfc3339;
    let beats: Vec<i128> = r
        .iter()
        .filter(|n| kind(n) == "heartbeat")
        .map(|n| {
            let at = n["bundle"]["timestamp"].as_str().unwrap();
            time::OffsetDateTime::parse(at, &Rfc3339)
                .unwrap_or_else(|e| panic!("heartbeat timestamp {at}: {e}"))
                .unix_timestamp_nanos()
        })
        .collect();
    for w in beats.windows(2) {
        let apart = w[1] - w[0];
        assert!(apart >= 1_000_000_000, "heartbeats queued {apart} ns apart");
    }
    let bundles: Vec<Value> = r.iter().take(3).map(|n| n["bundle"].clone()).collect();
    assert_eq!(bundles[0]["type"], "history");
    assert_valid(dir, &bundles);

    // An endpoint that answers 410 to the handshake: error, with the reason.
    let gone = subscription(
        &base,
        "discharge",
        "Encounter?attributed-practitioner=1234567893",
        &format!("http://127.0.0.1:{port}/gone"),
    );
    let (status, _, created) = http_request_json(
        &server.http,
        "POST",
        "/fhir/Subscription",
        ADMIN,
        gone.to_string().as_bytes(),
    );
    assert_eq!(status, 201);
    let gid = created["id"].as_str().unwrap().to_string();
    wait_for(
        Duration::from_secs(20),
        "the refused handshake to put it in error",
        || read(&gid)["status"] == "error",
    );
    let s = read(&gid);
    assert!(s["error"].as_str().unwrap().contains("410"), "{s}");

    // An endpoint's answer never reaches what the subscriber reads: only the status and
    // a fixed reason (the answer's text stays in the attempt log).
    let talker = subscription(
        &base,
        "discharge",
        "Encounter?attributed-practitioner=1234567893",
        &format!("http://127.0.0.1:{port}/gone-with-body"),
    );
    let (status, _, created) = http_request_json(
        &server.http,
        "POST",
        "/fhir/Subscription",
        ADMIN,
        talker.to_string().as_bytes(),
    );
    assert_eq!(status, 201);
    let tid = created["id"].as_str().unwrap().to_string();
    wait_for(
        Duration::from_secs(20),
        "the talkative refusal to put it in error",
        || read(&tid)["status"] == "error",
    );
    let t = read(&tid);
    assert!(t["error"].as_str().unwrap().contains("HTTP 410"), "{t}");
    assert!(!t.to_string().contains("SECRET-BODY"), "{t}");
    let (_, _, st) = http_request_json(
        &server.http,
        "GET",
        &format!("/fhir/Subscription/{tid}/$status"),
        ADMIN,
        b"",
    );
    assert!(!st.to_string().contains("SECRET-BODY"), "{st}");
    // Channel header values are the subscriber's secrets: shown by name only.
    assert_eq!(
        t["channel"]["header"],
        json!(["X-Practice-Secret: ***"]),
        "{t}"
    );
    assert!(!created.to_string().contains("s3cret"), "{created}");

    // An endpoint nobody listens on: the handshake runs out of retries (2 here), error.
    let closed = free_port();
    let nobody = subscription(
        &base,
        "transfer",
        "Encounter?attributed-practitioner=1234567893",
        &format!("http://127.0.0.1:{closed}/hook"),
    );
    let (status, _, created) = http_request_json(
        &server.http,
        "POST",
        "/fhir/Subscription",
        ADMIN,
        nobody.to_string().as_bytes(),
    );
    assert_eq!(status, 201);
    let nid = created["id"].as_str().unwrap().to_string();
    wait_for(
        Duration::from_secs(20),
        "the unanswered handshake to put it in error",
        || read(&nid)["status"] == "error",
    );
    let n = read(&nid);
    assert!(
        n["error"].as_str().unwrap().contains("out of retries"),
        "{n}"
    );

    // backport-timeout: 1 s per attempt, though the engine allows 10 s; an endpoint
    // that takes 3 s times out on both attempts.
    let mut slow = subscription(
        &base,
        "transfer",
        "Encounter?attributed-practitioner=1234567893",
        &format!("http://127.0.0.1:{port}/slow"),
    );
    slow["channel"]["extension"][1]["valueUnsignedInt"] = json!(1);
    let (status, _, created) = http_request_json(
        &server.http,
        "POST",
        "/fhir/Subscription",
        ADMIN,
        slow.to_string().as_bytes(),
    );
    assert_eq!(status, 201);
    let sid = created["id"].as_str().unwrap().to_string();
    wait_for(
        Duration::from_secs(20),
        "the slow endpoint's handshake to time out twice",
        || read(&sid)["status"] == "error",
    );
    let e = read(&sid);
    assert!(e["error"].as_str().unwrap().contains("timed out"), "{e}");
    assert_valid(dir, &[s.clone(), n.clone()]);

    // Recovery per the IG: the subscriber fixes its endpoint and asks for reactivation
    // (status requested); a new handshake reaches the new endpoint and it is active.
    let put = |id: &str, body: &Value| {
        http_request_json(
            &server.http,
            "PUT",
            &format!("/fhir/Subscription/{id}"),
            ADMIN,
            body.to_string().as_bytes(),
        )
    };
    let mut fixed = s.clone();
    fixed["status"] = json!("requested");
    fixed["channel"]["endpoint"] = json!(format!("http://127.0.0.1:{port}/hook"));
    let (status, _, updated) = put(&gid, &fixed);
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["status"], "requested");
    assert!(
        updated.get("error").is_none(),
        "the error is cleared: {updated}"
    );
    wait_for(
        Duration::from_secs(20),
        "the reactivated subscription to be active",
        || read(&gid)["status"] == "active",
    );
    let handshakes = received()
        .into_iter()
        .filter(|n| kind(n) == "handshake" && n["path"] == "/hook")
        .filter(|n| {
            n["bundle"]["entry"][0]["resource"]["parameter"][0]["valueReference"]["reference"]
                .as_str()
                .is_some_and(|r| r.ends_with(&gid))
        })
        .count();
    assert_eq!(
        handshakes, 1,
        "one handshake reached /hook for the reactivated one"
    );
    // The update sent the header back as it was shown (`***`): it kept its value.
    assert_eq!(s["channel"]["header"], json!(["X-Practice-Secret: ***"]));
    assert!(received()
        .into_iter()
        .filter(|n| kind(n) == "handshake" && n["path"] == "/hook")
        .all(|n| n["secret"] == "s3cret"));
    // Turning one off: it stays off, and its queued notifications are not sent.
    let mut off = n.clone();
    off["status"] = json!("off");
    let (status, _, turned) = put(&nid, &off);
    assert_eq!(status, 200, "{turned}");
    assert_eq!(read(&nid)["status"], "off");
    // Refused updates, each with an OperationOutcome naming the element.
    let mut other_id = fixed.clone();
    other_id["id"] = json!("someone-else");
    let (status, _, oo) = put(&gid, &other_id);
    assert_eq!(status, 400, "{oo}");
    assert_eq!(oo["issue"][0]["expression"][0], "Subscription.id");
    let mut new_topic = fixed.clone();
    new_topic["criteria"] = json!(format!("{base}/SubscriptionTopic/admission"));
    new_topic["status"] = json!("error");
    let (status, _, oo) = put(&gid, &new_topic);
    assert_eq!(status, 422, "{oo}");
    let at: Vec<&str> = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    assert_eq!(at, ["Subscription.criteria", "Subscription.status"], "{oo}");
    assert_valid(dir, &[updated, turned, oo, read(&gid)]);
}

/// Event notifications: admissions routed to a practice's NPI reach its full-resource
/// subscription numbered 1, 2, 3 with the Encounter and Patient; while the subscriber
/// is down two more happen; `$status` says 5 and `$events` gives 4 and 5 back.
#[test]
fn events_are_numbered_and_missed_ones_recovered() {
    let dir = tempdir();
    let config = dir.path().join("tokens.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\ntoken = \"practice-token-fhir-0123456789\"\nrole = \"practice\"\nnpis = [\"{}\"]\n\
             [[auth.tokens]]\ntoken = \"other-practice-token-0123456789\"\nrole = \"practice\"\nnpis = [\"{}\"]\n",
            npi(71),
            npi(99)
        ),
    )
    .unwrap();
    let log = dir.path().join("subscriber.jsonl");
    let start_subscriber = |port: u16| {
        spawn_peer(
            "fhir_subscriber.py",
            &[log.display().to_string(), port.to_string()],
            &[],
        )
    };
    let (mut subscriber, port) = start_subscriber(0);
    let patients = ["MRN-E1", "MRN-E2", "MRN-E3", "MRN-E4", "MRN-E5"];
    let cli = Cli::new(dir.path(), None, &[]);
    let mut roster =
        "patient_id,assigning_authority,family,given,birth_date,sex,provider_npi,relationship\n"
            .to_string();
    for p in patients {
        // As `admit` sends them: DOE^JANE, born 1970-01-01.
        roster.push_str(&format!(
            "{p},GENHOSP,Doe,Jane,1970-01-01,F,{},pcp\n",
            npi(71)
        ));
    }
    cli.roster("roster.csv", &roster, "ehr");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("routing-rules");
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER_CONFIG", config.to_str().unwrap()),
            ("ADT_ROUTER__ROUTING__RULES_DIR", rules.to_str().unwrap()),
            ("ADT_ROUTER__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true"),
            ("ADT_ROUTER__DELIVERY__REQUIRE_HTTPS", "false"),
            ("ADT_ROUTER__DELIVERY__RETRY_BASE_MS", "200"),
            ("ADT_ROUTER__DELIVERY__RETRY_CAP_SECS", "1"),
            ("ADT_ROUTER__DELIVERY__BREAKER_COOLDOWN_SECS", "1"),
        ],
    );
    let base = format!("http://{}/fhir", server.http);
    let mut sub = subscription(
        &base,
        "admission",
        &format!("Encounter?attributed-practitioner={}", npi(71)),
        &format!("http://127.0.0.1:{port}/hook"),
    );
    sub["channel"]["_payload"]["extension"][0]["valueCode"] = json!("full-resource");
    let (status, _, created) = http_request_json(
        &server.http,
        "POST",
        "/fhir/Subscription",
        PRACTICE,
        sub.to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let get = |path: &str| http_request_json(&server.http, "GET", path, PRACTICE, b"").2;
    wait_for(
        Duration::from_secs(20),
        "the subscription to be active",
        || get(&format!("/fhir/Subscription/{id}"))["status"] == "active",
    );
    let received = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["bundle"].clone())
            .filter(|b| b["entry"].as_array().map_or(0, |e| e.len()) > 1)
            .collect()
    };
    let number = |b: &Value| -> Vec<String> {
        b["entry"][0]["resource"]["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == "notification-event")
            .map(|p| p["part"][0]["valueString"].as_str().unwrap().to_string())
            .collect()
    };
    // The attending (PV1-7) becomes the Practitioner; the facility the Organization.
    let attending = format!("{}^KILDARE^JAMES^^^DR^^^NPI", npi(72));
    crate::delivery::admit_by(&server, dir.path(), &patients[..3], &attending);
    wait_for(Duration::from_secs(30), "three event notifications", || {
        received().len() >= 3
    });
    let first: Vec<Value> = received();
    let numbers: Vec<String> = first.iter().flat_map(number).collect();
    assert_eq!(
        numbers,
        ["1", "2", "3"],
        "in order, none skipped or repeated"
    );
    let enc = &first[0]["entry"][1]["resource"];
    assert_eq!(enc["resourceType"], "Encounter");
    assert_eq!(enc["status"], "in-progress");
    assert_eq!(enc["class"]["code"], "IMP");
    let pat = &first[0]["entry"][2]["resource"];
    assert_eq!(pat["resourceType"], "Patient");
    assert_eq!(pat["name"][0]["family"], "DOE");
    let doc = &first[0]["entry"][3]["resource"];
    assert_eq!(doc["resourceType"], "Practitioner");
    assert_eq!(doc["identifier"][0]["value"], npi(72).as_str());
    assert!(
        doc["name"][0]["text"].as_str().unwrap().contains("KILDARE"),
        "{doc}"
    );
    assert_eq!(
        enc["participant"][0]["individual"]["reference"],
        format!("Practitioner/{}", doc["id"].as_str().unwrap()).as_str()
    );
    let org = &first[0]["entry"][4]["resource"];
    assert_eq!(org["resourceType"], "Organization");
    assert_eq!(org["name"], "GENHOSP");
    assert_eq!(
        enc["serviceProvider"]["reference"],
        format!("Organization/{}", org["id"].as_str().unwrap()).as_str()
    );
    assert_valid(dir.path(), &first);
    // The resources a notification refers to can be read back (what an id-only
    // subscriber does), by the practice it was sent to and nobody else.
    let read_as =
        |token: &str, path: &str| http_request_json(&server.http, "GET", path, token, b"");
    for r in [enc, pat, doc, org] {
        let path = format!(
            "/fhir/{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        );
        let (status, _, got) = read_as(PRACTICE, &path);
        assert_eq!((status, &got), (200, r), "{path}");
        let (status, _, oo) = read_as(
            "Authorization: Bearer other-practice-token-0123456789",
            &path,
        );
        assert_eq!(status, 404, "another practice: {oo}");
    }
    let (status, _, oo) = read_as(PRACTICE, "/fhir/Condition/1");
    assert_eq!(status, 404);
    assert_eq!(oo["issue"][0]["code"], "not-supported");

    // The subscriber goes down; two more admissions happen.
    let _ = subscriber.kill();
    let _ = subscriber.wait();
    crate::delivery::admit_by(&server, dir.path(), &patients[3..], &attending);
    wait_for(
        Duration::from_secs(30),
        "the server to count five events",
        || {
            let st = get(&format!("/fhir/Subscription/{id}/$status"));
            st["entry"][0]["resource"]["parameter"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "events-since-subscription-start" && p["valueString"] == "5")
        },
    );
    assert_eq!(
        received().len(),
        3,
        "nothing reached the subscriber while it was down"
    );
    // It recovers the gap by number.
    let missed = get(&format!(
        "/fhir/Subscription/{id}/$events?eventsSinceNumber=4&eventsUntilNumber=5"
    ));
    assert_eq!(number(&missed), ["4", "5"], "{missed}");
    let kinds: Vec<&str> = missed["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "Parameters",
            "Encounter",
            "Patient",
            "Practitioner",
            "Organization",
            "Encounter",
            "Patient",
            "Practitioner",
            "Organization"
        ]
    );
    let (_, _, posted) = http_request_json(
        &server.http,
        "POST",
        &format!("/fhir/Subscription/{id}/$events"),
        PRACTICE,
        json!({"resourceType": "Parameters", "parameter": [{"name": "eventsSinceNumber", "valueString": "2"}]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(number(&posted), ["2", "3", "4", "5"]);
    assert_valid(dir.path(), &[missed, posted]);
    let (mut back, _) = start_subscriber(port);
    wait_for(
        Duration::from_secs(30),
        "the retried notifications once it is back",
        || received().iter().flat_map(number).count() >= 5,
    );
    let all: Vec<String> = received().iter().flat_map(number).collect();
    assert_eq!(
        all,
        ["1", "2", "3", "4", "5"],
        "in order, after the retries"
    );
    // Each event's proof of delivery records the event number it carried.
    let proven = || -> Vec<String> {
        let mut n: Vec<String> = crate::delivery::export(&server)
            .iter()
            .filter(|r| r["channel"] == "FHIR" && r["status"] == "delivered")
            .map(|r| r["proof"].clone())
            .filter(|p| p["fhir"]["type"] == "event-notification")
            .flat_map(|p| {
                p["fhir"]["event_numbers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        n.sort();
        n
    };
    wait_for(
        Duration::from_secs(10),
        "proofs naming events 1 to 5",
        || proven() == ["1", "2", "3", "4", "5"],
    );
    let _ = back.kill();
    let _ = back.wait();
}

/// A private key made by openssl (`genpkey` with these options) in `dir`.
fn openssl_key(dir: &Path, name: &str, opts: &[&str]) -> String {
    let path = dir.join(name);
    let ok = Command::new("openssl")
        .args(["genpkey", "-quiet", "-out", path.to_str().unwrap()])
        .args(opts)
        .status()
        .expect("openssl");
    assert!(ok.success(), "openssl genpkey {opts:?}");
    path.display().to_string()
}

/// SMART Backend Services against a token endpoint stand-in that checks assertions with
/// PyJWT: subscriptions on endpoints registered with an RS384 and an ES384 key get every
/// notification with a token issued to that client (the stand-in fetched our keys from
/// `/.well-known/jwks.json` and checked signature, alg, kid, iss/sub, aud, exp and jti),
/// the token is cached (fewer requests than notifications) and renewed when it expires
/// (3 s here); a static Authorization header is replaced by the token. A client whose
/// registered key is not ours is refused by the stand-in, and nothing is sent to its
/// endpoint: the reason is on the notification, which is retried.
#[test]
fn smart_backend_services_tokens_reach_the_subscriber() {
    let dir = tempdir();
    let rsa = openssl_key(
        dir.path(),
        "rsa.pem",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let ec = openssl_key(
        dir.path(),
        "ec.pem",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    );
    // A key the stand-in has on file for "router-wrong"; adt-router signs with `ec`.
    let other = openssl_key(
        dir.path(),
        "other.pem",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    );
    let other_pub = dir.path().join("other.pub.pem");
    assert!(Command::new("openssl")
        .args(["pkey", "-in", &other, "-pubout", "-out"])
        .arg(&other_pub)
        .status()
        .unwrap()
        .success());

    let http_port = free_port();
    let jwks = format!("http://127.0.0.1:{http_port}/.well-known/jwks.json");
    let token_log = dir.path().join("tokens.jsonl");
    let (token_peer, token_port) = spawn_peer(
        "smart_token.py",
        &[
            token_log.display().to_string(),
            format!("router-rs=jwks:{jwks}"),
            format!("router-es=jwks:{jwks}"),
            format!("router-wrong=pem:{}", other_pub.display()),
        ],
        &[("EXPIRES_IN", "3".to_string())],
    );
    let log = dir.path().join("subscriber.jsonl");
    let (subscriber, port) = spawn_peer("fhir_subscriber.py", &[log.display().to_string()], &[]);
    struct Kill(Vec<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let _peers = Kill(vec![token_peer, subscriber]);

    let client = |name: &str, key: &str| {
        format!(
            "[[delivery.smart]]\nendpoint_prefix = \"http://127.0.0.1:{port}/{name}/\"\n\
             token_url = \"http://127.0.0.1:{token_port}/token\"\nclient_id = \"router-{name}\"\n\
             key_file = \"{key}\"\nkid = \"key-{name}\"\nscope = \"system/Encounter.rs\"\n"
        )
    };
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\ntoken = \"admin-token-fhir-0123456789\"\nrole = \"admin\"\n{}{}{}",
            client("rs", &rsa),
            client("es", &ec),
            client("wrong", &ec)
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{http_port}");
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER_CONFIG", config.to_str().unwrap()),
            ("ADT_ROUTER__HTTP__LISTEN", &listen),
            ("ADT_ROUTER__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true"),
            ("ADT_ROUTER__DELIVERY__REQUIRE_HTTPS", "false"),
            ("ADT_ROUTER__DELIVERY__RETRY_BASE_MS", "200"),
            ("ADT_ROUTER__FHIR__MIN_HEARTBEAT_SECS", "1"),
        ],
    );
    let (status, body) = server.get("/.well-known/jwks.json");
    assert_eq!(status, 200);
    let set: Value = serde_json::from_str(&body).unwrap();
    let mut kids: Vec<&str> = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    kids.sort();
    assert_eq!(kids, ["key-es", "key-rs", "key-wrong"], "{set}");

    let base = format!("http://{}/fhir", server.http);
    let mut ids = Vec::new();
    for name in ["rs", "es", "wrong"] {
        let mut s = subscription(
            &base,
            "admission",
            "Encounter?attributed-practitioner=1234567893",
            &format!("http://127.0.0.1:{port}/{name}/hook"),
        );
        s["channel"]["extension"][0]["valueUnsignedInt"] = json!(1);
        s["channel"]["header"] =
            json!(["X-Practice-Secret: s3cret", "Authorization: Bearer static"]);
        let (status, _, created) = http_request_json(
            &server.http,
            "POST",
            "/fhir/Subscription",
            ADMIN,
            s.to_string().as_bytes(),
        );
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    let lines = |p: &Path| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let to = |name: &str| -> Vec<Value> {
        lines(&log)
            .into_iter()
            .filter(|n| {
                n["path"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("/{name}/"))
            })
            .collect()
    };
    // A handshake and five heartbeats a second apart: more than one token lifetime.
    wait_for(
        Duration::from_secs(30),
        "six notifications to each SMART endpoint",
        || to("rs").len() >= 6 && to("es").len() >= 6,
    );
    let tokens = lines(&token_log);
    for (name, alg) in [("rs", "RS384"), ("es", "ES384")] {
        let client_id = format!("router-{name}");
        let issued: Vec<&Value> = tokens
            .iter()
            .filter(|t| t["client_id"] == client_id.as_str())
            .collect();
        assert!(
            issued.iter().all(|t| t["ok"] == true
                && t["alg"] == alg
                && t["kid"] == format!("key-{name}").as_str()
                && t["scope"] == "system/Encounter.rs"),
            "{issued:?}"
        );
        let got = to(name);
        for n in &got {
            let auth = n["authorization"].as_str().unwrap_or_default();
            let token = auth
                .strip_prefix("Bearer ")
                .unwrap_or_else(|| panic!("{auth:?}"));
            assert!(
                issued.iter().any(|t| t["token"] == token),
                "{name}: {auth} was issued to {client_id}"
            );
            assert_eq!(n["secret"], "s3cret", "the other static header is kept");
        }
        assert!(
            issued.len() >= 2 && issued.len() < got.len(),
            "{name}: {} tokens for {} notifications (cached, and renewed on expiry)",
            issued.len(),
            got.len()
        );
        let (_, _, s) = http_request_json(
            &server.http,
            "GET",
            &format!(
                "/fhir/Subscription/{}",
                ids[if name == "rs" { 0 } else { 1 }]
            ),
            ADMIN,
            b"",
        );
        assert_eq!(s["status"], "active", "{s}");
    }
    // No jti was ever used twice (the stand-in refuses reuse; none was refused).
    let jtis: std::collections::BTreeSet<&str> =
        tokens.iter().filter_map(|t| t["jti"].as_str()).collect();
    assert_eq!(jtis.len(), tokens.len());

    // The client whose registered key is not ours: refused on the signature, nothing sent.
    let wrong: Vec<&Value> = tokens
        .iter()
        .filter(|t| t["client_id"] == "router-wrong")
        .collect();
    assert!(!wrong.is_empty());
    assert!(
        wrong.iter().all(|t| t["ok"] == false
            && t["error"] == "invalid_client"
            && t["why"].as_str().unwrap().contains("Signature")),
        "{wrong:?}"
    );
    assert!(to("wrong").is_empty(), "no request without a token");
    let (_, _, s) = http_request_json(
        &server.http,
        "GET",
        &format!("/fhir/Subscription/{}", ids[2]),
        ADMIN,
        b"",
    );
    assert_eq!(
        s["status"], "requested",
        "still waiting for its handshake: {s}"
    );
    let out = server.run(&["notifications", "export", "--format", "jsonl"]);
    assert!(out.status.success());
    let pending: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|n: &Value| {
            n["endpoint"]
                .as_str()
                .unwrap_or_default()
                .contains("/wrong/")
        })
        .collect();
    assert_eq!(pending.len(), 1, "the handshake");
    assert!(server.metric("adt_router_smart_token_requests_total{outcome=\"issued\"}") >= 4.0);
    assert!(server.metric("adt_router_smart_token_requests_total{outcome=\"refused\"}") >= 1.0);
    let why = pending[0]["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("HTTP 401")
            && why.contains("invalid_client")
            && pending[0]["status"] != "dead",
        "{}",
        pending[0]
    );
}

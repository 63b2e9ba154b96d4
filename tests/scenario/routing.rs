//! Step 4, routing: scripted encounters sent over MLLP to the real server, routed with
//! the shipped default rules (plus test-specific ones), and the exact notifications read
//! back with `adt-router notifications export`. SQLite and PostgreSQL.

use crate::postgres::TestDb;
use crate::support::*;
use adt_router::directory::npi::Npi;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn npi(n: u32) -> String {
    Npi::from_base(300_000_000 + n).to_string()
}

const PCP: u32 = 1;
const SNF: u32 = 2;

/// An ADT message for patient `mrn` of the practice's PCP (PD1-4, attending).
fn adt(trigger: &str, mrn: &str) -> AdtMessage {
    let msg = AdtMessage::new(trigger).patient(mrn).pcp(&npi(PCP));
    // Only the SNF's roster patient shares the roster's birth date, so nobody else
    // matches that roster by demographics.
    match mrn {
        "MRN-SNF" => msg.born("19800505"),
        _ => msg,
    }
}

/// PV1 fields after PV1-19, up to PV1-36 (discharge disposition).
fn disposition(code: &str) -> String {
    format!("{}{code}", "|".repeat(17))
}

/// A local directory override: provider `n` is reached by `kind` at `value`.
fn set_endpoint(cli: &Cli, n: u32, kind: &str, value: &str) {
    cli.json(&[
        "directory",
        "override",
        "--npi",
        &npi(n),
        "--type",
        kind,
        "--endpoint",
        value,
    ]);
}

fn rules_dir(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempdir();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("routing-rules");
    for f in ["10-cop.toml", "20-privacy.toml"] {
        std::fs::copy(shipped.join(f), d.path().join(f)).unwrap();
    }
    std::fs::copy(
        shipped.join("examples/part2-unit.toml"),
        d.path().join("30-part2.toml"),
    )
    .unwrap();
    for (name, text) in extra {
        std::fs::write(d.path().join(name), text).unwrap();
    }
    d
}

struct Harness {
    server: Server,
    sent: usize,
    n: usize,
    dir: PathBuf,
}

impl Harness {
    fn start(dir: &Path, rules: &Path, db_url: Option<&str>) -> Harness {
        let mut env = vec![
            (
                "ADT_ROUTER__ROUTING__RULES_DIR",
                rules.to_str().unwrap().to_string(),
            ),
            ("ADT_ROUTER__ROUTING__RELOAD_SECS", "1".to_string()),
            // These tests read what routing wrote; delivery has tests of its own.
            ("ADT_ROUTER__DELIVERY__ENABLED", "false".to_string()),
            (
                "ADT_ROUTER__DELIVERY__ALLOW_PRIVATE_NETWORKS",
                "true".to_string(),
            ),
        ];
        if let Some(u) = db_url {
            env.push(("ADT_ROUTER__DATABASE__URL", u.to_string()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let cli = Cli::new(dir, db_url, &[]);
        // The PCP can take REST; the SNF (a post-acute provider on a roster) Direct.
        set_endpoint(&cli, PCP, "REST", "https://pcp.example.org/adt");
        set_endpoint(&cli, SNF, "DIRECT", "intake@direct.snf.example.org");
        let roster = dir.join("roster.csv");
        std::fs::write(
            &roster,
            format!(
                "patient_id,assigning_authority,family,given,birth_date,sex,provider_npi,relationship\n\
                 MRN-SNF,GENHOSP,Doe,Jane,1980-05-05,F,{},post_acute\n",
                npi(SNF)
            ),
        )
        .unwrap();
        cli.json(&[
            "roster",
            "import",
            roster.to_str().unwrap(),
            "--source",
            "snf-net",
        ]);
        Harness {
            server: Server::start(dir, &env),
            sent: 0,
            n: 0,
            dir: dir.to_path_buf(),
        }
    }

    /// Sends messages in order (each ACKed before the next) and waits until the router
    /// has read them all.
    fn send(&mut self, msgs: &[String]) {
        let mut files = Vec::new();
        for m in msgs {
            self.n += 1;
            let f = self.dir.join(format!("m{}.hl7", self.n));
            std::fs::write(&f, m).unwrap();
            files.push(f.to_str().unwrap().to_string());
        }
        let mut args = vec!["send", "--to", &self.server.mllp];
        args.extend(files.iter().map(String::as_str));
        let out = self.server.run(&args);
        assert!(
            out.status.success(),
            "send: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        self.sent += msgs.len();
        let want = self.sent as f64;
        wait_for(
            Duration::from_secs(30),
            "the router to read every message",
            || {
                self.server
                    .metric("adt_router_routed_messages_total{outcome=\"routed\"}")
                    + self
                        .server
                        .metric("adt_router_routed_messages_total{outcome=\"skipped\"}")
                    >= want
            },
        );
    }

    fn notifications(&self) -> Vec<Value> {
        let out = self
            .server
            .run(&["notifications", "export", "--format", "jsonl"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// (kind, recipient, status) of each notification for one encounter, in the order the
/// kinds were written, recipients sorted within a kind.
fn of(ns: &[Value], encounter: &str) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = ns
        .iter()
        .filter(|n| n["encounter"] == format!("GENHOSP|{encounter}"))
        .map(|n| {
            (
                n["kind"].as_str().unwrap().to_string(),
                n["recipient_npi"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut kinds: Vec<String> = Vec::new();
    for r in &rows {
        if !kinds.contains(&r.0) {
            kinds.push(r.0.clone());
        }
    }
    rows.sort_by_key(|r| (kinds.iter().position(|k| *k == r.0), r.1.clone()));
    rows
}

fn row(kind: &str, who: u32, status: &str) -> (String, String, String) {
    (kind.to_string(), npi(who), status.to_string())
}

/// A harness with the default rules and MRN-OPT on the opt-out list.
fn harness(dir: &Path, db_url: Option<&str>) -> (Harness, tempfile::TempDir) {
    let rules = rules_dir(&[("opt-outs.csv", OPT_OUTS)]);
    (Harness::start(dir, rules.path(), db_url), rules)
}

const OPT_OUTS: &str = "patient_id,assigning_authority\nMRN-OPT,GENHOSP\n";

/// An inpatient message of `mrn`'s visit `visit` on 4W.
fn inpatient(trigger: &str, mrn: &str, id: &str, at: &str, visit: &str) -> AdtMessage {
    adt(trigger, mrn)
        .id(id)
        .at(at)
        .visit(visit)
        .class("I")
        .unit("4W")
}

fn an_ed_visit_admission_and_discharge_to_a_snf_reach_the_pcp_and_the_snf(
    dir: &Path,
    db_url: Option<&str>,
) {
    let (mut h, _rules) = harness(dir, db_url);
    h.send(&[
        adt("A04", "MRN-SNF")
            .id("E1")
            .at("202611280800")
            .visit("V1")
            .class("E")
            .unit("ED")
            .text(),
        adt("A06", "MRN-SNF")
            .id("E2")
            .at("202611281000")
            .visit("V1")
            .unit("4W")
            .text(),
        adt("A02", "MRN-SNF")
            .id("E3")
            .at("202611281200")
            .visit("V1")
            .unit("ICU")
            .text(),
        adt("A03", "MRN-SNF")
            .id("E4")
            .at("202611300900")
            .visit("V1")
            .unit("ICU")
            .pv1_after_visit(&disposition("03"))
            .text(),
    ]);
    let ns = h.notifications();
    // The internal transfer (A02) tells nobody; the discharge to a SNF is a transfer.
    assert_eq!(
        of(&ns, "V1"),
        [
            row("ed-registration", PCP, "pending"),
            row("ed-registration", SNF, "pending"),
            row("admission", PCP, "pending"),
            row("admission", SNF, "pending"),
            row("transfer", PCP, "pending"),
            row("transfer", SNF, "pending"),
        ]
    );
    let v1 = ns
        .iter()
        .find(|n| n["encounter"] == "GENHOSP|V1" && n["recipient_npi"] == npi(PCP))
        .unwrap();
    assert_eq!(v1["channel"], "REST");
    assert_eq!(v1["endpoint"], "https://pcp.example.org/adt");
    assert_eq!(v1["control_id"], "E1");
    assert_eq!(v1["sending_facility"], "GENHOSP");
    assert_eq!(v1["rule_ids"], serde_json::json!(["cop-events"]));
    assert_eq!(v1["idempotency_key"].as_str().unwrap().len(), 32);
    // The log names no patient.
    let log = h.server.log();
    assert!(
        !log.contains("DOE") && !log.contains("MRN-"),
        "PHI in the log"
    );
}
on_both_backends!(an_ed_visit_admission_and_discharge_to_a_snf_reach_the_pcp_and_the_snf);

fn a_cancelled_admission_is_retracted_from_whoever_was_told(dir: &Path, db_url: Option<&str>) {
    let (mut h, _rules) = harness(dir, db_url);
    h.send(&[
        inpatient("A01", "MRN-C", "C1", "202611280800", "V2").text(),
        inpatient("A11", "MRN-C", "C2", "202611280900", "V2").text(),
    ]);
    assert_eq!(
        of(&h.notifications(), "V2"),
        [
            row("admission", PCP, "pending"),
            row("retraction", PCP, "pending")
        ]
    );
}
on_both_backends!(a_cancelled_admission_is_retracted_from_whoever_was_told);

fn an_a08_storm_makes_one_update_for_the_one_real_change(dir: &Path, db_url: Option<&str>) {
    let (mut h, _rules) = harness(dir, db_url);
    let mut storm = vec![inpatient("A01", "MRN-S", "S0", "202611280800", "V3").text()];
    for i in 0..20 {
        let (id, at) = (format!("S{}", i + 1), format!("2026112809{i:02}"));
        storm.push(inpatient("A08", "MRN-S", &id, &at, "V3").text());
    }
    storm.push(
        inpatient("A08", "MRN-S", "S99", "202611281000", "V3")
            .unit("5E")
            .text(),
    );
    h.send(&storm);
    assert_eq!(
        of(&h.notifications(), "V3"),
        [
            row("admission", PCP, "pending"),
            row("update", PCP, "pending")
        ]
    );
}
on_both_backends!(an_a08_storm_makes_one_update_for_the_one_real_change);

fn a_discharge_before_its_admission_and_its_resend_tell_the_pcp_once(
    dir: &Path,
    db_url: Option<&str>,
) {
    let (mut h, _rules) = harness(dir, db_url);
    let discharge = |id: &str| {
        inpatient("A03", "MRN-R", id, "202611300900", "V4")
            .pv1_after_visit(&disposition("01"))
            .text()
    };
    h.send(&[
        discharge("R1"),
        inpatient("A01", "MRN-R", "R2", "202611280800", "V4").text(),
        discharge("R3"),
    ]);
    // The admission, arriving after the discharge it precedes, tells nobody.
    assert_eq!(
        of(&h.notifications(), "V4"),
        [row("discharge", PCP, "pending")]
    );
}
on_both_backends!(a_discharge_before_its_admission_and_its_resend_tell_the_pcp_once);

/// An opted-out patient's admission (V5) and one to a Part 2 unit (V6).
fn suppressed_admissions() -> [String; 2] {
    [
        inpatient("A01", "MRN-OPT", "O1", "202611280800", "V5").text(),
        inpatient("A01", "MRN-P", "P1", "202611280800", "V6")
            .unit("SUD1")
            .text(),
    ]
}

fn opted_out_and_part2_patients_are_suppressed_naming_the_rule(dir: &Path, db_url: Option<&str>) {
    let (mut h, _rules) = harness(dir, db_url);
    h.send(&suppressed_admissions());
    let ns = h.notifications();
    assert_eq!(of(&ns, "V5"), [row("admission", PCP, "suppressed")]);
    let opted_out = ns.iter().find(|n| n["encounter"] == "GENHOSP|V5").unwrap();
    assert!(opted_out["rule_ids"]
        .as_array()
        .unwrap()
        .contains(&"patient-opt-out".into()));
    assert!(opted_out["last_error"]
        .as_str()
        .unwrap()
        .contains("opted out"));
    let part2 = ns.iter().find(|n| n["encounter"] == "GENHOSP|V6").unwrap();
    assert_eq!(part2["status"], "suppressed");
    assert!(part2["rule_ids"]
        .as_array()
        .unwrap()
        .contains(&"part2-program".into()));
}
on_both_backends!(opted_out_and_part2_patients_are_suppressed_naming_the_rule);

fn a_message_sent_twice_with_one_control_id_is_routed_once(dir: &Path, db_url: Option<&str>) {
    let (mut h, _rules) = harness(dir, db_url);
    let ed = || {
        adt("A04", "MRN-D")
            .id("D1")
            .at("202611280800")
            .visit("V7")
            .class("E")
            .unit("ED")
            .text()
    };
    h.send(&[ed()]);
    h.send(&[ed()]);
    let ns = h.notifications();
    assert_eq!(of(&ns, "V7"), [row("ed-registration", PCP, "pending")]);
    let mut keys: Vec<&str> = ns
        .iter()
        .map(|n| n["idempotency_key"].as_str().unwrap())
        .collect();
    let before = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), before, "duplicate notification keys");
}
on_both_backends!(a_message_sent_twice_with_one_control_id_is_routed_once);

fn rules_reload_without_a_restart_and_a_broken_file_keeps_the_last_good_ones(
    dir: &Path,
    db_url: Option<&str>,
) {
    let (mut h, rules) = harness(dir, db_url);
    std::fs::write(
        rules.path().join("90-broken.toml"),
        "[[rule]]\nid = \"x\"\naction = \"nope\"\n",
    )
    .unwrap();
    wait_for(
        Duration::from_secs(30),
        "the invalid reload to be counted",
        || {
            h.server
                .metric("adt_router_routing_rule_loads_total{outcome=\"invalid\"}")
                >= 1.0
        },
    );
    assert!(
        h.server.log().contains("90-broken.toml:3"),
        "{}",
        h.server.log()
    );
    h.send(&[inpatient("A01", "MRN-K", "K1", "202611280800", "V8").text()]);
    assert_eq!(
        of(&h.notifications(), "V8"),
        [row("admission", PCP, "pending")]
    );

    // A valid change takes effect without a restart: opting MRN-K2 out.
    std::fs::remove_file(rules.path().join("90-broken.toml")).unwrap();
    std::fs::write(
        rules.path().join("opt-outs.csv"),
        format!("{OPT_OUTS}MRN-K2,GENHOSP\n"),
    )
    .unwrap();
    let ok_before = h
        .server
        .metric("adt_router_routing_rule_loads_total{outcome=\"ok\"}");
    wait_for(Duration::from_secs(30), "the reload", || {
        h.server
            .metric("adt_router_routing_rule_loads_total{outcome=\"ok\"}")
            > ok_before
    });
    h.send(&[inpatient("A01", "MRN-K2", "K2", "202611280800", "V9").text()]);
    assert_eq!(
        of(&h.notifications(), "V9"),
        [row("admission", PCP, "suppressed")]
    );
}
on_both_backends!(rules_reload_without_a_restart_and_a_broken_file_keeps_the_last_good_ones);

fn rules_simulate_shows_what_candidate_rules_would_change_and_writes_nothing(
    dir: &Path,
    db_url: Option<&str>,
) {
    let (mut h, _rules) = harness(dir, db_url);
    let mut admissions = suppressed_admissions().to_vec();
    admissions.push(inpatient("A01", "MRN-K", "K1", "202611280800", "V8").text());
    h.send(&admissions);
    // Without the opt-out and Part 2 rules, the PCP would gain exactly the two
    // suppressed admissions.
    let candidate = rules_dir(&[]);
    std::fs::remove_file(candidate.path().join("20-privacy.toml")).unwrap();
    std::fs::remove_file(candidate.path().join("30-part2.toml")).unwrap();
    let before = h.notifications().len();
    let sim = h.server.run_json(&[
        "rules",
        "simulate",
        "--since",
        "2000-01-01T00:00:00Z",
        "--rules",
        candidate.path().to_str().unwrap(),
    ]);
    let change = &sim["changes_per_recipient"][npi(PCP)];
    let gained: Vec<&str> = change["gained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert_eq!(gained.len(), 2, "{sim}");
    assert!(gained.iter().all(|g| g.starts_with("admission:")), "{sim}");
    assert!(change["lost"].as_array().unwrap().is_empty(), "{sim}");
    assert_eq!(h.notifications().len(), before);
}
on_both_backends!(rules_simulate_shows_what_candidate_rules_would_change_and_writes_nothing);

fn a_merge_moves_the_encounter_to_the_surviving_identifier(dir: &Path, db_url: Option<&str>) {
    let (mut h, _rules) = harness(dir, db_url);
    h.send(&[inpatient("A01", "MRN-OLD", "M1", "202611280800", "V10").text()]);
    h.send(&[
        ("MSH|^~\\&|EPIC|GENHOSP|ADTR|HIE|202611281200||ADT^A40^ADT_A39|M2|P|2.5.1\r\
EVN|A40|202611281200\r\
PID|1||MRN-NEW^^^GENHOSP^MR||DOE^JANE||19700101|F\r\
MRG|MRN-OLD^^^GENHOSP^MR\r")
            .to_string(),
    ]);
    let url = db_url
        .map(String::from)
        .unwrap_or_else(|| format!("sqlite://{}/data/adt-router.db", dir.display()));
    let owner = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = adt_router::store::Store::connect(&adt_router::store::StoreOptions {
                url,
                max_connections: 2,
                busy_timeout: Duration::from_secs(5),
                acquire_timeout: Duration::from_secs(5),
            })
            .await
            .unwrap();
            let row = store
                .text_row(
                    "SELECT patient_key FROM encounter WHERE facility = $1 AND visit_number = $2",
                    vec!["GENHOSP".into(), "V10".into()],
                    1,
                )
                .await
                .unwrap();
            store.close().await;
            row[0].clone()
        });
    assert_eq!(owner, "MRN-NEW^GENHOSP");
}
on_both_backends!(a_merge_moves_the_encounter_to_the_surviving_identifier);

#[test]
fn rules_check_and_explain() {
    let dir = tempdir();
    let cli = Cli::new(dir.path(), None, &[]);
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("routing-rules");
    let ok = cli.json(&["rules", "check", shipped.to_str().unwrap()]);
    assert_eq!(ok["valid"], true);
    let ids: Vec<&str> = ok["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"cop-events") && ids.contains(&"patient-opt-out"),
        "{ids:?}"
    );

    let bad = tempdir();
    std::fs::write(
        bad.path().join("a.toml"),
        "[[rule]]\nid = \"fine\"\naction = \"notify\"\nrecipients = [\"pcp\"]\n\n[[rule]]\nid = \"typo\"\naction = \"notify\"\nrecipients = [\"pcp\"]\nmatch.events = [\"admision\"]\n",
    )
    .unwrap();
    let err = cli.fails(&["rules", "check", bad.path().to_str().unwrap()]);
    assert!(
        err.contains("a.toml:6") && err.contains("unknown event 'admision'"),
        "{err}"
    );

    // explain: the admission transition, the rule that fired, and why the PCP gets it.
    set_endpoint(&cli, PCP, "REST", "https://pcp.example.org/adt");
    let f = dir.path().join("a01.hl7");
    std::fs::write(
        &f,
        adt("A01", "MRN-X")
            .id("X1")
            .at("202611280800")
            .visit("V9")
            .class("I")
            .unit("4W")
            .text(),
    )
    .unwrap();
    let plan = cli.json(&[
        "rules",
        "explain",
        f.to_str().unwrap(),
        "--rules",
        shipped.to_str().unwrap(),
    ]);
    assert_eq!(plan["transitions"][0]["kind"], "admission");
    assert_eq!(plan["status_after"], "inpatient");
    assert!(plan["rules_fired"]
        .as_array()
        .unwrap()
        .contains(&"cop-events".into()));
    let r = &plan["recipients"][0];
    assert_eq!(r["npi"], npi(PCP));
    assert_eq!(r["outcome"], "notify");
    assert_eq!(r["channel"], "REST");
    // explain writes nothing.
    let out = cli.run(&["notifications", "export", "--format", "jsonl"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

/// The whole shared corpus routes without a panic: every stored message is read by the
/// router, and triggers with no routing meaning are recorded as `unknown`, not dropped.
#[test]
fn whole_corpus_routes() {
    let dir = tempdir();
    let rules = rules_dir(&[]);
    let server = Server::start(
        dir.path(),
        &[(
            "ADT_ROUTER__ROUTING__RULES_DIR",
            rules.path().to_str().unwrap(),
        )],
    );
    let files = corpus_files();
    let mut args = vec!["send", "--to", &server.mllp, "--quiet-ms", "300"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let _ = server.run(&args); // some corpus files are rejected on purpose
    let stored = server.export(&[]).len() as f64;
    assert!(stored >= 100.0, "{stored}");
    wait_for(
        Duration::from_secs(60),
        "every stored message routed",
        || {
            server.metric("adt_router_routed_messages_total{outcome=\"routed\"}")
                + server.metric("adt_router_routed_messages_total{outcome=\"skipped\"}")
                >= stored
        },
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
    let routed = server.metric("adt_router_routed_messages_total{outcome=\"routed\"}");
    let rows = server.export(&[]);
    let dups = rows.iter().filter(|m| m["duplicate"] == true).count() as f64;
    let no_pid3 = rows
        .iter()
        .filter(|m| m["duplicate"] == false && m["status"] == "content_error")
        .count() as f64;
    // Resends and messages without PID-3 (stored as content errors) are skipped; every
    // other message is routed, control-id collisions included (the corpus reuses ids).
    assert_eq!(
        routed,
        stored - dups - no_pid3,
        "routed {routed} of {stored} ({dups} duplicates, {no_pid3} without PID-3)"
    );

    let known = [
        "A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A12", "A13", "A14", "A21",
        "A22", "A28", "A31", "A40",
    ];
    let mut unknown_seen = 0;
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        let Some(msh) = text.lines().next().filter(|l| l.starts_with("MSH")) else {
            continue;
        };
        let (fs, cs) = (
            msh.chars().nth(3).unwrap_or('|'),
            msh.chars().nth(4).unwrap_or('^'),
        );
        let trigger = msh
            .split(fs)
            .nth(8)
            .and_then(|t| t.split(cs).nth(1))
            .unwrap_or("")
            .to_string();
        // Every file through the whole routing path (explain plans without writing).
        let out = server.run(&[
            "rules",
            "explain",
            f.to_str().unwrap(),
            "--rules",
            rules.path().to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        if known.contains(&trigger.as_str()) {
            continue;
        }
        if plan["skipped"].is_null() {
            assert_eq!(
                plan["transitions"][0]["kind"],
                "unknown",
                "{}: {plan}",
                f.display()
            );
            assert_eq!(plan["transitions"][0]["notifiable"], false);
            unknown_seen += 1;
        }
    }
    assert!(
        unknown_seen > 0,
        "the corpus has triggers with no routing meaning"
    );
}

/// Stores `msgs` (as files `m0.hl7`, `m1.hl7`, ...) through a server with routing off,
/// routes them all with `route drain`, and returns the notifications it wrote.
fn store_then_drain(cli: &Cli, dir: &Path, env: &[(&str, &str)], msgs: &[String]) -> Vec<Value> {
    {
        let mut env = env.to_vec();
        env.push(("ADT_ROUTER__ROUTING__ENABLED", "false"));
        let server = Server::start(dir, &env);
        let mut files = Vec::new();
        for (n, m) in msgs.iter().enumerate() {
            let f = dir.join(format!("m{n}.hl7"));
            std::fs::write(&f, m).unwrap();
            files.push(f.to_str().unwrap().to_string());
        }
        let mut args = vec!["send", "--to", &server.mllp];
        args.extend(files.iter().map(String::as_str));
        let out = server.run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let drained = cli.json(&["route", "drain"]);
    assert_eq!(drained["messages"], msgs.len(), "{drained}");
    // The time per stage: every page was planned and committed.
    for stage in ["plan", "commit"] {
        let secs = drained["stage_seconds"][stage].as_f64().unwrap_or(0.0);
        assert!(secs > 0.0, "{stage}: {drained}");
    }
    assert!(
        drained["stage_seconds"]["wait"].as_f64().is_some(),
        "{drained}"
    );
    let out = cli.run(&["notifications", "export", "--format", "jsonl"]);
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Pages change nothing: the same messages routed one per page (each committed before
/// the next is planned) and three per page (encounters split across pages, each page
/// planned while the one before is still being committed, cancels retracting what a page
/// in flight sent) give exactly the same notifications.
#[test]
fn page_size_changes_no_notification() {
    let rules = rules_dir(&[]);
    let rules_path = rules.path().to_str().unwrap().to_string();
    let steps = [
        ("A04", "E", "ED", String::new()),
        ("A01", "I", "4W", String::new()),
        ("A08", "I", "ICU", String::new()),
        ("A11", "I", "ICU", String::new()),
        ("A01", "I", "4W", String::new()),
        ("A03", "I", "4W", disposition("01")),
    ];
    // Round robin: every page holds several encounters.
    let mut msgs = Vec::new();
    for (i, (trigger, class, unit, extra)) in steps.iter().enumerate() {
        for e in 0..4 {
            msgs.push(
                adt(trigger, &format!("MRN-PG{e}"))
                    .id(&format!("PG{e}-{i}"))
                    .at(&format!("202611{:02}{:02}0000", 20 + e, 8 + i))
                    .visit(&format!("VPG{e}"))
                    .class(class)
                    .unit(unit)
                    .pv1_after_visit(extra)
                    .text(),
            );
        }
    }
    let mut results = Vec::new();
    for page_size in ["1", "3"] {
        let dir = tempdir();
        let cli = Cli::new(
            dir.path(),
            None,
            &[
                ("ADT_ROUTER__ROUTING__RULES_DIR", &rules_path),
                ("ADT_ROUTER__ROUTING__PAGE_SIZE", page_size),
            ],
        );
        set_endpoint(&cli, PCP, "REST", "https://pcp.example.org/adt");
        let mut rows: Vec<String> = store_then_drain(
            &cli,
            dir.path(),
            &[("ADT_ROUTER__ROUTING__RULES_DIR", &rules_path)],
            &msgs,
        )
        .iter()
        .map(|n| {
            format!(
                "{} {} {} {} {} {}",
                n["encounter"],
                n["kind"],
                n["recipient_npi"],
                n["status"],
                n["rule_ids"],
                n["idempotency_key"]
            )
        })
        .collect();
        rows.sort();
        results.push(rows);
    }
    // Per encounter, all to the PCP: ED registration, admission, update (unit), the
    // cancel (A11) retracting the visit's ED registration and admission, the new
    // admission, discharge.
    assert_eq!(results[0].len(), 4 * 7, "{:#?}", results[0]);
    for (kind, n) in [
        ("ed-registration", 4),
        ("admission", 8),
        ("update", 4),
        ("retraction", 8),
        ("discharge", 4),
    ] {
        let found = results[0]
            .iter()
            .filter(|r| r.contains(&format!("\"{kind}\"")))
            .count();
        assert_eq!(found, n, "{kind}: {:#?}", results[0]);
    }
    assert_eq!(results[0], results[1]);
}

/// Demographic matching as routing does it (it leaves out roster rows of the other sex,
/// and builds no row scoring below threshold - margin, when they cannot change the
/// decision) on both backends: twins with one name and birth date but different sex
/// are told apart by the message's sex, and a message that gives no sex matches neither
/// (ambiguous), so nobody is notified from the roster. Below the threshold but within
/// the margin still counts: PARK^S scores 10 against Sam and 9 against Sue (sex not
/// known), ambiguous; PARK^SAM scores 12 against Sam and 5 against Sue, a match.
fn twins_by_demographics(db_url: Option<&str>) {
    let rules = rules_dir(&[]);
    let rules_path = rules.path().to_str().unwrap().to_string();
    let dir = tempdir();
    let mut env = vec![("ADT_ROUTER__ROUTING__RULES_DIR", rules_path.as_str())];
    if let Some(u) = db_url {
        env.push(("ADT_ROUTER__DATABASE__URL", u));
    }
    let cli = Cli::new(dir.path(), db_url, &env);
    set_endpoint(&cli, PCP, "REST", "https://sister.example.org/adt");
    set_endpoint(&cli, SNF, "REST", "https://brother.example.org/adt");
    cli.roster(
        "twins.csv",
        &format!(
            "patient_id,assigning_authority,family,given,birth_date,sex,postal_code,provider_npi,relationship\n\
             T-1,NET,Lee,Jordan,2010-03-03,F,62701,{pcp},pcp\n\
             T-2,NET,Lee,Jordan,2010-03-03,M,62701,{snf},pcp\n\
             A-1,NET,Park,Sam,2012-05-05,F,99999,{pcp},pcp\n\
             A-2,NET,Park,Sue,2012-05-05,,99999,{snf},pcp\n\
             A-3,NET,Kim,Alex,2012-05-05,F,62701,{snf},pcp\n",
            pcp = npi(PCP),
            snf = npi(SNF)
        ),
        "net",
    );
    // Hospital MRNs the roster does not know: only demographics can match.
    let msgs: Vec<String> = [
        ("TW-F", "LEE^JORDAN", "20100303", "F"),
        ("TW-M", "LEE^JORDAN", "20100303", "M"),
        ("TW-U", "LEE^JORDAN", "20100303", ""),
        ("TW-A", "PARK^S", "20120505", "F"),
        ("TW-B", "PARK^SAM", "20120505", "F"),
    ]
    .iter()
    .map(|(id, name, dob, sex)| {
        format!(
            "MSH|^~\\&|EPIC|GENHOSP|ADTR|HIE|202611280900||ADT^A01|{id}|P|2.5.1\r\
                 EVN|A01|202611280900\r\
                 PID|1||H-{id}^^^GENHOSP^MR||{name}||{dob}|{sex}|||1 MAIN ST^^X^IL^62701^USA^H\r\
                 PV1|1|I|4W^1^A^GENHOSP||||||||MED|||||||||V-{id}\r"
        )
    })
    .collect();
    let mut got: Vec<(String, String)> = store_then_drain(&cli, dir.path(), &env, &msgs)
        .iter()
        .map(|n| {
            (
                n["control_id"].as_str().unwrap_or_default().to_string(),
                n["recipient_npi"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("TW-B".to_string(), npi(PCP)),
            ("TW-F".to_string(), npi(PCP)),
            ("TW-M".to_string(), npi(SNF)),
        ]
    );
    // What `attribution explain` (which reads every row) says of the n-th message.
    let explain = |n: usize| {
        let m = dir.path().join(format!("m{n}.hl7"));
        cli.json(&[
            "attribution",
            "explain",
            m.to_str().unwrap(),
            "--format",
            "json",
        ])
    };
    // The message with no sex: ambiguous between the twins.
    let explained = explain(2);
    assert_eq!(
        explained["rosters"][0]["outcome"], "ambiguous",
        "{explained}"
    );
    // PARK^S: ambiguous between Sam (10) and Sue (9); explain lists Kim too (-1).
    let explained = explain(3);
    let scores: Vec<f64> = explained["rosters"][0]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["score"].as_f64().unwrap())
        .collect();
    assert_eq!(scores, vec![10.0, 9.0, -1.0], "{explained}");
    assert_eq!(
        explained["rosters"][0]["outcome"], "ambiguous",
        "{explained}"
    );
}

#[test]
fn twins_by_demographics_sqlite() {
    twins_by_demographics(None);
}

#[tokio::test(flavor = "multi_thread")]
async fn twins_by_demographics_postgres() {
    let db = TestDb::create().await;
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || twins_by_demographics(Some(&url)))
        .await
        .unwrap();
}

//! Step 3, attribution: rosters loaded through the CLI and over HTTP, patients matched by
//! identifier and by demographics (tricky names, twins, identifier collisions across
//! assigning authorities), providers named in PD1/ROL, and the explanation that says
//! why each provider was chosen. SQLite and PostgreSQL.

use crate::postgres::TestDb;
use crate::support::*;
use adt_router::directory::npi::Npi;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn npi(n: u32) -> String {
    Npi::from_base(200_000_000 + n).to_string()
}

fn roster_acme() -> String {
    let rows = [
        format!(
            "123,hosp_a,Doe,Jane,1980-05-05,F,62701,{},pcp,,,blue",
            npi(1)
        ),
        format!(
            "123,HOSP_B,Roe,Richard,1990-01-01,M,62702,{},pcp,,,",
            npi(2)
        ),
        format!(
            ",,O'Brien-Smith,Anne Marie,1965-04-12,F,62701,{},care_manager,,,",
            npi(3)
        ),
        format!(",,García,María,2001-06-01,F,62701,{},pcp,,,", npi(4)),
        format!(",,García,Marta,2001-06-01,F,62701,{},pcp,,,", npi(5)),
        format!("777,HOSP_A,Conflict,Carl,1970-07-07,M,,{},pcp,,,", npi(6)),
        format!(
            ",,Old,Olive,1950-01-01,F,,{},pcp,2000-01-01,2010-12-31,",
            npi(7)
        ),
    ];
    format!(
        "Patient_ID,Assigning_Authority,Family,Given,Birth_Date,Sex,Postal_Code,Provider_NPI,Relationship,Effective_From,Effective_To,Favourite_Colour\n{}\n",
        rows.join("\n")
    )
}

fn roster_payer() -> String {
    format!(
        "family,given,birth_date,sex,postal_code,provider_npi,relationship\nDoe,Jane,1980-05-05,F,62701,{},specialist\n",
        npi(8)
    )
}

/// An A01 with the given PID-3, name, birth date and sex, plus extra segments.
fn message(
    dir: &Path,
    name: &str,
    pid3: &str,
    pid5: &str,
    dob: &str,
    sex: &str,
    extra: &[String],
) -> PathBuf {
    let mut m = format!(
        "MSH|^~\\&|EPIC|GENHOSP|R|F|20261128093000||ADT^A01^ADT_A01|{name}|P|2.5.1\rEVN|A01|20261128093000\rPID|1||{pid3}||{pid5}||{dob}|{sex}|||1 MAIN ST^^SPRINGFIELD^IL^62701^USA^H\r"
    );
    for s in extra {
        m.push_str(s);
        m.push('\r');
    }
    m.push_str("PV1|1|I|4W^401^A\r");
    let p = dir.join(format!("{name}.hl7"));
    std::fs::write(&p, m).unwrap();
    p
}

fn explain(cli: &Cli, file: &Path) -> Value {
    cli.json(&[
        "attribution",
        "explain",
        file.to_str().unwrap(),
        "--format",
        "json",
    ])
}

fn npis(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["npi"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

fn decision<'a>(v: &'a Value, source: &str) -> &'a Value {
    v["rosters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source"] == source)
        .unwrap_or_else(|| panic!("no decision for {source}: {v}"))
}

fn load(cli: &Cli, body: &str, source: &str, replace: bool) -> Value {
    let f = cli.dir.join(format!("roster-{source}.csv"));
    std::fs::write(&f, body).unwrap();
    let mut args = vec!["roster", "import", f.to_str().unwrap(), "--source", source];
    if replace {
        args.push("--replace");
    }
    cli.json(&args)
}

fn scenario(cli: &Cli, unlabelled_ok: &Cli) {
    let d = &cli.dir;
    let report = load(cli, &roster_acme(), "acme-aco", false);
    assert_eq!(report["rows"], 7);
    assert!(
        report["warnings"][0]
            .as_str()
            .unwrap()
            .contains("favourite_colour"),
        "{report}"
    );
    load(cli, &roster_payer(), "payer-x", false);

    // Identifier + authority decides; the same id in another authority is someone else.
    let v = explain(
        cli,
        &message(d, "M1", "123^^^HOSP_A^MR", "DOE^JANE", "19800505", "F", &[]),
    );
    assert_eq!(npis(&v), {
        let mut e = vec![npi(1), npi(8)];
        e.sort();
        e
    });
    assert_eq!(decision(&v, "acme-aco")["outcome"], "identifier");
    let p1 = v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["npi"] == npi(1))
        .unwrap();
    assert_eq!(p1["provenance"][0]["source"], "acme-aco");
    assert_eq!(p1["provenance"][0]["roster_line"], 2);
    assert_eq!(p1["provenance"][0]["matched_by"], "identifier");
    let payer = decision(&v, "payer-x");
    assert_eq!(payer["outcome"], "demographic");
    assert!(payer["candidates"][0]["score"].as_f64().unwrap() >= 10.0);
    // The authority may also be named by its universal id (HD-2).
    let v = explain(
        cli,
        &message(
            d,
            "M1b",
            "123^^^&HOSP_B&L^MR",
            "ROE^RICHARD",
            "19900101",
            "M",
            &[],
        ),
    );
    assert_eq!(npis(&v), vec![npi(2)]);

    // Demographic fallback with apostrophes, hyphens, accents, a middle name, swapped fields.
    for (i, pid5) in [
        "OBRIEN SMITH^ANNE",
        "O'BRIEN-SMITH^ANNE^MARIE",
        "ANNE MARIE^O'BRIEN-SMITH",
        "O’Brien^Anne",
    ]
    .iter()
    .enumerate()
    {
        let v = explain(
            cli,
            &message(
                d,
                &format!("M2{i}"),
                "555^^^HOSP_C",
                pid5,
                "19650412",
                "F",
                &[],
            ),
        );
        assert_eq!(npis(&v), vec![npi(3)], "{pid5}: {v}");
        let dd = decision(&v, "acme-aco");
        assert_eq!(dd["outcome"], "demographic");
        assert!(!dd["candidates"][0]["reasons"]
            .as_array()
            .unwrap()
            .is_empty());
        assert_eq!(v["providers"][0]["relationships"][0], "care_manager");
    }
    // Twins: the full given name picks one; an initial picks nobody, and says so.
    let v = explain(
        cli,
        &message(d, "M3", "9^^^HOSP_C", "GARCIA^MARIA", "20010601", "F", &[]),
    );
    assert_eq!(npis(&v), vec![npi(4)]);
    let v = explain(
        cli,
        &message(d, "M3b", "9^^^HOSP_C", "GARCIA^M", "20010601", "F", &[]),
    );
    assert!(npis(&v).is_empty(), "{v}");
    let dd = decision(&v, "acme-aco");
    assert_eq!(dd["outcome"], "ambiguous");
    assert_eq!(dd["candidates"].as_array().unwrap().len(), 2);
    // Identifier matches, birth date contradicts: not used.
    let v = explain(
        cli,
        &message(
            d,
            "M4",
            "777^^^HOSP_A",
            "CONFLICT^CARL",
            "19710101",
            "M",
            &[],
        ),
    );
    assert!(npis(&v).is_empty());
    assert_eq!(decision(&v, "acme-aco")["outcome"], "conflict");
    // A roster row that ended years ago attributes nobody.
    let v = explain(
        cli,
        &message(d, "M5", "1^^^X", "OLD^OLIVE", "19500101", "F", &[]),
    );
    assert!(npis(&v).is_empty(), "{v}");
    // Nobody like this patient: no provider, and the reason.
    let v = explain(
        cli,
        &message(d, "M6", "1^^^X", "NOBODY^NEMO", "19990909", "M", &[]),
    );
    assert!(npis(&v).is_empty());

    // Providers named in the message: PD1-4 and ROL PP with an NPI label count; an
    // unlabelled id and an unconfigured role do not, and say why.
    let extra = vec![
        format!("PD1|||CLINIC|{}^WELBY^MARCUS^^^DR^MD^^NPI", npi(10)),
        format!(
            "ROL|1|AD|PP^Primary Care Provider^HL70443|{}^HOUSE^GREG^^^^^^^^^^NPI",
            npi(11)
        ),
        format!(
            "ROL|2|AD|PP^Primary Care Provider^HL70443|{}^LOCAL^ID",
            npi(12)
        ),
        format!("ROL|3|AD|CP^Consulting^HL70443|{}^X^Y^^^^^^NPI", npi(13)),
        "ROL|4|AD|PP^Primary Care Provider^HL70443|12345^BAD^NPI^^^^^^NPI".to_string(),
    ];
    cli.json(&[
        "directory",
        "override",
        "--npi",
        &npi(10),
        "--type",
        "DIRECT",
        "--endpoint",
        "welby@direct.clinic.example.org",
    ]);
    let f = message(
        d,
        "M7",
        "123^^^HOSP_A^MR",
        "DOE^JANE",
        "19800505",
        "F",
        &extra,
    );
    let v = explain(cli, &f);
    let mut expected = vec![npi(1), npi(8), npi(10), npi(11)];
    expected.sort();
    assert_eq!(npis(&v), expected);
    let p10 = v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["npi"] == npi(10))
        .unwrap();
    assert_eq!(p10["provenance"][0]["field"], "PD1-4");
    assert_eq!(p10["provenance"][0]["segment_index"], 4);
    assert_eq!(
        p10["directory"]["chosen"]["value"],
        "welby@direct.clinic.example.org"
    );
    assert_eq!(p10["directory"]["chosen"]["source"], "override");
    let p11 = v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["npi"] == npi(11))
        .unwrap();
    assert_eq!(p11["provenance"][0]["field"], "ROL-4");
    assert!(p11["directory"]["no_endpoint_reason"]
        .as_str()
        .unwrap()
        .contains("not in the directory"));
    let unused: Vec<String> = v["unused_message_providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(unused.len(), 3, "{unused:?}");
    assert!(unused[0].contains("does not say NPI"));
    assert!(unused[1].contains("'CP'"));
    assert!(unused[2].contains("not an NPI"));
    // Configurable: accept ids that pass the NPI check without a label.
    let v = explain(unlabelled_ok, &f);
    assert!(npis(&v).contains(&npi(12)));

    // A bad roster changes nothing, even with --replace.
    let before = explain(
        cli,
        &message(d, "M8", "9^^^HOSP_C", "GARCIA^MARIA", "20010601", "F", &[]),
    );
    let bad = format!(
        "{}{},,Bad,Row,2001-13-01,F,,{},pcp,,,\n,,X,Y,2000-01-01,Q,,1234567890,pcp,,,\n",
        roster_acme(),
        "",
        npi(9)
    );
    let f = cli.dir.join("bad.csv");
    std::fs::write(&f, bad).unwrap();
    let err = cli.fails(&[
        "roster",
        "import",
        f.to_str().unwrap(),
        "--source",
        "acme-aco",
        "--replace",
    ]);
    assert!(
        err.contains("line 9") && err.contains("2001-13-01"),
        "{err}"
    );
    assert!(
        err.contains("line 10") && err.contains("check digit"),
        "{err}"
    );
    let after = explain(
        cli,
        &message(d, "M8", "9^^^HOSP_C", "GARCIA^MARIA", "20010601", "F", &[]),
    );
    assert_eq!(npis(&before), npis(&after));
    // Upsert keeps other rows; --replace drops them.
    load(
        cli,
        &format!(
            "patient_id,assigning_authority,provider_npi,relationship\n123,HOSP_A,{},specialist\n",
            npi(14)
        ),
        "acme-aco",
        false,
    );
    let v = explain(
        cli,
        &message(d, "M9", "123^^^HOSP_A^MR", "DOE^JANE", "19800505", "F", &[]),
    );
    assert!(npis(&v).contains(&npi(1)) && npis(&v).contains(&npi(14)));
    let r = load(
        cli,
        &format!(
            "patient_id,assigning_authority,provider_npi,relationship\n123,HOSP_A,{},specialist\n",
            npi(14)
        ),
        "acme-aco",
        true,
    );
    assert_eq!(r["replaced_rows"], 8);
    let v = explain(
        cli,
        &message(d, "M10", "9^^^HOSP_C", "GARCIA^MARIA", "20010601", "F", &[]),
    );
    assert!(!npis(&v).contains(&npi(4)));
}

#[test]
fn attribution_sqlite() {
    let dir = tempdir();
    scenario(
        &Cli::new(dir.path(), None, &[]),
        &Cli::new(
            dir.path(),
            None,
            &[("ADT_ROUTER__ATTRIBUTION__ACCEPT_UNLABELLED_NPI", "true")],
        ),
    );
}

#[tokio::test]
async fn attribution_postgres() {
    let db = TestDb::create().await;
    let dir = tempdir();
    scenario(
        &Cli::new(dir.path(), Some(&db.url), &[]),
        &Cli::new(
            dir.path(),
            Some(&db.url),
            &[("ADT_ROUTER__ATTRIBUTION__ACCEPT_UNLABELLED_NPI", "true")],
        ),
    );
}

/// Every corpus message: explain succeeds, and every PD1-4 / ROL-4 provider id in the
/// raw text is accounted for, either attributed or listed as unused with a reason.
#[test]
fn corpus_messages_are_explained() {
    let dir = tempdir();
    let cli = Cli::new(dir.path(), None, &[]);
    let mut with_providers = 0;
    for f in corpus_files() {
        if f.parent().is_some_and(|p| p.ends_with("invalid")) {
            continue;
        }
        let out = cli.run(&["attribution", "explain", f.to_str().unwrap()]);
        let exp = expect_for(&std::fs::read(&f).unwrap());
        if !out.status.success() {
            // Only messages ingest itself rejects may fail, and with a clear error.
            assert!(
                !exp.stored,
                "{}: {}",
                f.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stderr).contains("not an acceptable HL7 message"));
            continue;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let raw = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).replace('\n', "\r");
        let mut named = 0;
        for seg in raw.split('\r') {
            let fields: Vec<&str> = seg.split('|').collect();
            let field = match fields[0] {
                "PD1" => fields.get(4),
                "ROL" => fields.get(4),
                _ => None,
            };
            if let Some(x) = field {
                named += x
                    .split('~')
                    .filter(|r| {
                        !r.split('^')
                            .next()
                            .unwrap_or("")
                            .split('&')
                            .next()
                            .unwrap_or("")
                            .trim()
                            .is_empty()
                    })
                    .count();
            }
        }
        let from_message: usize = v["providers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p["provenance"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|x| x["kind"] == "message")
                    .count()
            })
            .sum();
        let unused = v["unused_message_providers"].as_array().unwrap().len();
        assert_eq!(from_message + unused, named, "{}: {v}", f.display());
        if named > 0 {
            with_providers += 1;
        }
    }
    assert!(
        with_providers >= 20,
        "corpus messages with PD1/ROL providers: {with_providers}"
    );
}

/// Roster upload over HTTP: bearer tokens, a practice limited to its own sources and its
/// own NPIs (checked on the records the import loads, so a Latin-1 byte does not slip a
/// foreign NPI past it), and the same all-or-nothing checks as the CLI.
#[test]
fn roster_upload_over_http() {
    let dir = tempdir();
    let config = dir.path().join("adt-router.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\ntoken = \"admin-token-0123456789\"\nrole = \"admin\"\n\n[[auth.tokens]]\ntoken = \"practice-token-0123456789\"\nrole = \"practice\"\nnpis = [\"{}\"]\nroster_sources = [\"my-practice\"]\n",
            npi(1)
        ),
    )
    .unwrap();
    let server = Server::start(
        dir.path(),
        &[("ADT_ROUTER_CONFIG", config.to_str().unwrap())],
    );
    let post = |token: Option<&str>, path: &str, body: &str| {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let headers: Vec<&str> = auth
            .iter()
            .map(String::as_str)
            .chain(["Content-Type: text/csv"])
            .collect();
        http_post(&server.http, path, &headers, body.as_bytes())
    };
    let (status, _) = post(None, "/rosters/acme", &roster_acme());
    assert_eq!(status, 401);
    let (status, _) = post(
        Some("wrong-token-0123456789"),
        "/rosters/acme",
        &roster_acme(),
    );
    assert_eq!(status, 401);
    // A practice may not load another source, even with its own providers only.
    let (status, body) = post(
        Some("practice-token-0123456789"),
        "/rosters/acme?replace=true",
        &format!(
            "patient_id,assigning_authority,provider_npi\n9,HOSP_A,{}\n",
            npi(1)
        ),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("does not belong"), "{body}");
    // Nor attribute patients to providers it does not speak for, in its own source.
    let (status, body) = post(
        Some("practice-token-0123456789"),
        "/rosters/my-practice",
        &roster_acme(),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("provider_npi"), "{body}");
    // A Latin-1 byte in the row does not hide the foreign NPI from the check.
    let mut latin1 =
        b"patient_id,assigning_authority,family,provider_npi\n77,HOSP_A,M\xdcLLER,".to_vec();
    latin1.extend_from_slice(npi(2).as_bytes());
    latin1.push(b'\n');
    let (status, body) = http_post(
        &server.http,
        "/rosters/my-practice",
        &[
            "Authorization: Bearer practice-token-0123456789",
            "Content-Type: text/csv",
        ],
        &latin1,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(&npi(2)), "{body}");
    assert_eq!(
        server.metric("adt_router_roster_uploads_total{outcome=\"forbidden\"}"),
        3.0
    );
    let own = format!(
        "patient_id,assigning_authority,provider_npi\n123,HOSP_A,{}\n",
        npi(1)
    );
    let (status, body) = post(
        Some("practice-token-0123456789"),
        "/rosters/my-practice",
        &own,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        Some("admin-token-0123456789"),
        "/rosters/acme?replace=true",
        &roster_acme(),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["rows"], 7);
    assert_eq!(v["mode"], "replace");
    let (status, body) = post(
        Some("admin-token-0123456789"),
        "/rosters/acme?replace=true",
        "patient_id,assigning_authority,provider_npi\n1,A,42\n",
    );
    assert_eq!(status, 422, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["bad_rows"][0]["line"], 2);
    assert_eq!(
        server.metric("adt_router_roster_uploads_total{outcome=\"loaded\"}"),
        2.0
    );
    assert_eq!(
        server.metric("adt_router_roster_uploads_total{outcome=\"rejected\"}"),
        1.0
    );
    // What was uploaded is what attribution sees (the rejected upload changed nothing).
    let cli = Cli::new(dir.path(), None, &[]);
    let v = explain(
        &cli,
        &message(
            dir.path(),
            "H1",
            "123^^^HOSP_A^MR",
            "DOE^JANE",
            "19800505",
            "F",
            &[],
        ),
    );
    assert_eq!(npis(&v), vec![npi(1)]);
    assert_eq!(
        v["providers"][0]["provenance"].as_array().unwrap().len(),
        2,
        "{v}"
    );
}

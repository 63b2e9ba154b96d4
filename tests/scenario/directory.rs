//! Step 3, provider directory: the real NPPES sample rows imported through the CLI on
//! SQLite and PostgreSQL, malformed files refused with the directory untouched, weekly
//! incremental files, overrides, and endpoint checks.

use crate::postgres::TestDb;
use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn nppes() -> PathBuf {
    shared().join("corpus/nppes")
}

fn npidata_sample() -> PathBuf {
    nppes().join("npidata/npidata_pfile_fixture__lantern.csv")
}

/// The endpoint sample is a header file and a one-row file; a real endpoint_pfile starts
/// with its header, so join them (in the test's own directory).
fn endpoint_sample(dir: &Path) -> PathBuf {
    let mut bytes =
        std::fs::read(nppes().join("endpoint/endpoint_pfile_header__lantern_readme.csv")).unwrap();
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes.extend(
        std::fs::read(nppes().join("endpoint/endpoint_pfile_row_from_lantern_test_comment.csv"))
            .unwrap(),
    );
    let p = dir.join("endpoint_pfile_sample.csv");
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The sample's rows, read by header name with the csv crate.
fn sample_rows() -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(npidata_sample()).unwrap();
    let h = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            h.iter()
                .zip(rec.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn show(cli: &Cli, npi: &str) -> Value {
    cli.json(&["directory", "show", npi, "--format", "json"])
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn real_samples(cli: &Cli) {
    let ep = endpoint_sample(&cli.dir);
    let report = cli.json(&[
        "nppes",
        "import",
        "--npidata",
        p(&npidata_sample()),
        "--endpoints",
        p(&ep),
        "--quiet",
    ]);
    let rows = sample_rows();
    assert_eq!(report["files"][0]["rows"], rows.len() as u64, "{report}");
    assert_eq!(report["files"][0]["bad_rows"], 0);
    assert_eq!(report["files"][1]["rows"], 1);
    for row in &rows {
        let npi = &row["NPI"];
        let v = show(cli, npi);
        let prov = &v["provider"];
        assert_eq!(prov["npi"], *npi);
        let org = &row["Provider Organization Name (Legal Business Name)"];
        if !org.is_empty() {
            assert_eq!(prov["name"], *org, "{npi}");
        } else {
            let name = prov["name"].as_str().unwrap();
            assert!(
                name.contains(row["Provider Last Name (Legal Name)"].as_str()),
                "{npi}: {name}"
            );
        }
        // The primary taxonomy is the one whose switch says Y.
        let primary = (1..=15)
            .find(|n| row[&format!("Healthcare Provider Primary Taxonomy Switch_{n}")] == "Y")
            .map(|n| row[&format!("Healthcare Provider Taxonomy Code_{n}")].clone());
        if let Some(t) = primary {
            assert_eq!(prov["primary_taxonomy"], t, "{npi}");
        }
        assert_eq!(
            prov["practice_address"]["city"],
            row["Provider Business Practice Location Address City Name"].as_str()
        );
        assert_eq!(prov["source"]["kind"], "nppes");
        assert!(prov["source"]["line"].as_i64().unwrap() >= 2);
    }
    // The endpoint row: kept with its source, but OTHERS is not a delivery channel.
    let v = show(cli, "1427051648");
    assert_eq!(v["endpoints"][0]["type"], "OTHERS");
    assert_eq!(v["endpoints"][0]["value"], "https://foobar.com/metadata/");
    assert_eq!(v["endpoints"][0]["source"]["line"], 2);
    assert_eq!(v["endpoints"][0]["usable"], false);
    assert!(v["chosen"].is_null());
    assert!(
        v["no_endpoint_reason"].as_str().unwrap().contains("OTHERS"),
        "{v}"
    );
}

/// Every way a file can be wrong: the import exits 1 with a line number and reason, and
/// `directory show` answers exactly as before.
fn malformed_files_change_nothing(cli: &Cli) {
    let ep = endpoint_sample(&cli.dir);
    cli.json(&[
        "nppes",
        "import",
        "--npidata",
        p(&npidata_sample()),
        "--endpoints",
        p(&ep),
        "--quiet",
    ]);
    let npis: Vec<String> = sample_rows().iter().map(|r| r["NPI"].clone()).collect();
    let snapshot = |cli: &Cli| -> Vec<Value> {
        npis.iter()
            .chain(["1427051648".to_string()].iter())
            .map(|n| {
                let mut v = show(cli, n);
                // Loaded-at stamps are the same rows' stamps; compare everything.
                v.as_object_mut().unwrap().remove("no_endpoint_reason");
                v
            })
            .collect()
    };
    let before = snapshot(cli);
    let text = std::fs::read_to_string(npidata_sample()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let write = |name: &str, body: String| {
        let path = cli.dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    // 1. The endpoint file given as npidata: wrong header.
    let err = cli.fails(&["nppes", "import", "--npidata", p(&ep), "--quiet"]);
    assert!(
        err.contains("line 1") && err.contains("Entity Type Code"),
        "{err}"
    );
    // 2. Broken quoting: a closing quote missing in row 3 swallows the next fields.
    let broken = lines[2].replacen("\",\"", "\",", 1);
    let bad = write(
        "broken.csv",
        [lines[0], lines[1], &broken, lines[3]].join("\n") + "\n",
    );
    let err = cli.fails(&["nppes", "import", "--npidata", p(&bad), "--quiet"]);
    assert!(err.contains("line 3") && err.contains("quoting"), "{err}");
    // ... and one that drops a closing quote, so a value runs into the next line.
    let open_ended = lines[2].replacen("\",\"", ",\"", 1);
    let bad = write(
        "unclosed.csv",
        [lines[0], lines[1], &open_ended, lines[3]].join("\n") + "\n",
    );
    let err = cli.fails(&["nppes", "import", "--npidata", p(&bad), "--quiet"]);
    assert!(err.contains("line 3"), "{err}");
    // 3. Truncated download: the last row cut in the middle of a value.
    let whole = [lines[0], lines[1], lines[2]].join("\n");
    let cut = &whole[..whole.len() - 40];
    let bad = write("truncated.csv", cut.to_string());
    let err = cli.fails(&["nppes", "import", "--npidata", p(&bad), "--quiet"]);
    assert!(err.contains("line 3"), "{err}");
    // 4. Bad rows past the limit: NPIs with a wrong check digit.
    let wrong = |l: &str| {
        let npi = &l[1..11];
        let last = (npi.as_bytes()[9] - b'0' + 1) % 10;
        l.replacen(npi, &format!("{}{last}", &npi[..9]), 1)
    };
    let bad = write(
        "bad_npis.csv",
        [
            lines[0].to_string(),
            wrong(lines[1]),
            wrong(lines[2]),
            lines[3].to_string(),
        ]
        .join("\n")
            + "\n",
    );
    let err = cli.fails(&[
        "nppes",
        "import",
        "--npidata",
        p(&bad),
        "--max-bad-rows",
        "1",
        "--quiet",
    ]);
    assert!(
        err.contains("2 bad rows") && err.contains("line 2") && err.contains("check digit"),
        "{err}"
    );
    // 5. A data row where the header should be.
    let bad = write("headerless.csv", lines[1..3].join("\n") + "\n");
    let err = cli.fails(&["nppes", "import", "--npidata", p(&bad), "--quiet"]);
    assert!(err.contains("line 1") && err.contains("header"), "{err}");
    // 6. Good npidata, broken endpoint file in the same run: neither is applied.
    let bad_ep = write(
        "bad_ep.csv",
        std::fs::read_to_string(&ep)
            .unwrap()
            .replace("\"OTHERS\"", "\"CARRIER-PIGEON\""),
    );
    let small = write("small.csv", [lines[0], lines[1]].join("\n") + "\n");
    let err = cli.fails(&[
        "nppes",
        "import",
        "--npidata",
        p(&small),
        "--endpoints",
        p(&bad_ep),
        "--max-bad-rows",
        "0",
        "--quiet",
    ]);
    assert!(err.contains("CARRIER-PIGEON"), "{err}");
    assert_eq!(
        snapshot(cli),
        before,
        "a failed import changed the directory"
    );
    // Below the limit, bad rows are counted and reported with their lines.
    let out = cli.run(&[
        "nppes",
        "import",
        "--npidata",
        p(&write(
            "two_bad.csv",
            [lines[0].to_string(), wrong(lines[1]), lines[2].to_string()].join("\n") + "\n",
        )),
        "--max-bad-rows",
        "5",
        "--quiet",
    ]);
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files"][0]["bad_rows"], 1);
    assert_eq!(report["files"][0]["bad_row_samples"][0]["line"], 2);
    assert_eq!(report["files"][0]["rows"], 1);
}

fn synth_dir(cli: &Cli, providers: &str, endpoints: &str) -> (PathBuf, PathBuf) {
    let out = cli.dir.join("synth");
    cli.json(&[
        "nppes",
        "synth",
        "--providers",
        providers,
        "--endpoints",
        endpoints,
        "--out-dir",
        p(&out),
    ]);
    (
        out.join("npidata_pfile_synthetic.csv"),
        out.join("endpoint_pfile_synthetic.csv"),
    )
}

/// A weekly file: a changed provider, a deactivation, a new NPI; its endpoint rows
/// replace the endpoint sets of the NPIs it lists.
fn incremental(cli: &Cli) {
    let (np, ep) = synth_dir(cli, "300", "600");
    cli.json(&[
        "nppes",
        "import",
        "--npidata",
        p(&np),
        "--endpoints",
        p(&ep),
        "--quiet",
    ]);
    let mut r = csv::Reader::from_path(&np).unwrap();
    let header = r.byte_headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    // An active individual or organisation with at least one endpoint.
    let eps: Vec<csv::StringRecord> = csv::Reader::from_path(&ep)
        .unwrap()
        .records()
        .map(|x| x.unwrap())
        .collect();
    let active: Vec<&csv::StringRecord> = rows.iter().filter(|r| !r[1].is_empty()).collect();
    let changed = active
        .iter()
        .find(|r| eps.iter().any(|e| e[0] == r[0]))
        .unwrap();
    let deactivated = active.iter().find(|r| r[0] != changed[0]).unwrap();
    let untouched = active
        .iter()
        .rev()
        .find(|r| r[0] != changed[0] && r[0] != deactivated[0])
        .unwrap();
    let before_untouched = show(cli, &untouched[0]);
    assert!(show(cli, &changed[0])["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["source"]["kind"] == "nppes"));

    let weekly = cli.dir.join("weekly_npidata.csv");
    let mut w = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_path(&weekly)
        .unwrap();
    w.write_byte_record(&header).unwrap();
    let mut c: Vec<String> = changed.iter().map(String::from).collect();
    c[4] = "RENAMED HEALTH PARTNERS".into();
    c[1] = "2".into();
    w.write_record(&c).unwrap();
    let mut d = vec![String::new(); header.len()];
    d[0] = deactivated[0].to_string();
    d[38] = "DT".into();
    d[39] = "11/01/2026".into();
    w.write_record(&d).unwrap();
    let new_npi = "1234567893";
    let mut n = c.clone();
    n[0] = new_npi.into();
    n[4] = "NEW CLINIC".into();
    w.write_record(&n).unwrap();
    w.flush().unwrap();
    let weekly_ep = cli.dir.join("weekly_endpoints.csv");
    let mut w = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_path(&weekly_ep)
        .unwrap();
    let eh: Vec<String> = csv::Reader::from_path(&ep)
        .unwrap()
        .headers()
        .unwrap()
        .iter()
        .map(String::from)
        .collect();
    w.write_record(&eh).unwrap();
    let mut row = vec![String::new(); 19];
    row[0] = changed[0].to_string();
    row[1] = "DIRECT".into();
    row[3] = "frontdesk@direct.renamed.example.org".into();
    row[4] = "N".into();
    w.write_record(&row).unwrap();
    w.flush().unwrap();
    let report = cli.json(&[
        "nppes",
        "import",
        "--incremental",
        "--npidata",
        p(&weekly),
        "--endpoints",
        p(&weekly_ep),
        "--quiet",
    ]);
    assert_eq!(report["mode"], "incremental");

    let v = show(cli, &changed[0]);
    assert_eq!(v["provider"]["name"], "RENAMED HEALTH PARTNERS");
    assert_eq!(v["provider"]["source"]["import_mode"], "incremental");
    let values: Vec<&str> = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        values,
        vec!["frontdesk@direct.renamed.example.org"],
        "weekly endpoint set replaces the old one"
    );
    assert_eq!(v["chosen"]["value"], "frontdesk@direct.renamed.example.org");
    let v = show(cli, &deactivated[0]);
    assert_eq!(v["provider"]["deactivated"]["date"], "2026-11-01");
    assert!(v["chosen"].is_null());
    assert!(
        v["no_endpoint_reason"]
            .as_str()
            .unwrap()
            .contains("deactivated"),
        "{v}"
    );
    assert_eq!(show(cli, new_npi)["provider"]["name"], "NEW CLINIC");
    assert_eq!(
        show(cli, &untouched[0]),
        before_untouched,
        "an NPI not in the weekly file is unchanged"
    );

    // A full import afterwards replaces everything again (the new NPI is gone).
    cli.json(&["nppes", "import", "--npidata", p(&np), "--quiet"]);
    assert!(show(cli, new_npi)["provider"].is_null());
}

/// Overrides win over NPPES; private and malformed endpoints are never chosen.
fn overrides_and_untrusted_endpoints(cli: &Cli, allow_private: &Cli) {
    let npidata = npidata_sample();
    let npi = sample_rows()[0]["NPI"].clone();
    let other = sample_rows()[1]["NPI"].clone();
    let ep = cli.dir.join("endpoints_untrusted.csv");
    let mut w = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_path(&ep)
        .unwrap();
    let header: Vec<String> = csv::Reader::from_path(endpoint_sample(&cli.dir))
        .unwrap()
        .headers()
        .unwrap()
        .iter()
        .map(String::from)
        .collect();
    w.write_record(&header).unwrap();
    for (n, t, v) in [
        (&npi, "FHIR", "https://10.0.0.5/fhir"),
        (&npi, "DIRECT", "records@localhost"),
        (&npi, "REST", "http://hooks.example.org/adt"),
        (&npi, "FHIR", "https://fhir.example.org/r4"),
        (&other, "DIRECT", "Dr.Who@Direct.Example.org"),
    ] {
        let mut row = vec![String::new(); header.len()];
        row[0] = n.clone();
        row[1] = t.into();
        row[3] = v.into();
        row[4] = "N".into();
        w.write_record(&row).unwrap();
    }
    w.flush().unwrap();
    cli.json(&[
        "nppes",
        "import",
        "--npidata",
        p(&npidata),
        "--endpoints",
        p(&ep),
        "--quiet",
    ]);
    let v = show(cli, &npi);
    let reasons: Vec<String> = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["unusable_reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(reasons[0].contains("private"), "{reasons:?}");
    assert!(reasons[1].contains("local"), "{reasons:?}");
    assert!(reasons[2].contains("https"), "{reasons:?}");
    assert!(reasons[3].is_empty());
    assert_eq!(v["chosen"]["value"], "https://fhir.example.org/r4");
    assert_eq!(v["chosen"]["source"], "nppes");
    assert_eq!(
        show(cli, &other)["chosen"]["value"],
        "dr.who@direct.example.org",
        "Direct addresses are lower-cased"
    );
    // Allowed for tests and on-premises deployments: the private FHIR endpoint is usable.
    let v = show(allow_private, &npi);
    assert_eq!(v["endpoints"][0]["usable"], true);

    // Overrides: refused when unsafe; otherwise they win, preferred first.
    let err = cli.fails(&[
        "directory",
        "override",
        "--npi",
        &npi,
        "--type",
        "REST",
        "--endpoint",
        "https://127.0.0.1/hook",
    ]);
    assert!(err.contains("loopback"), "{err}");
    let err = cli.fails(&[
        "directory",
        "override",
        "--npi",
        "1234567890",
        "--type",
        "DIRECT",
        "--endpoint",
        "a@b.example.org",
    ]);
    assert!(err.contains("check digit"), "{err}");
    cli.json(&[
        "directory",
        "override",
        "--npi",
        &npi,
        "--type",
        "REST",
        "--endpoint",
        "https://practice.example.org/adt",
        "--secret",
        "s3cr3t-s3cr3t",
    ]);
    let v = show(cli, &npi);
    assert_eq!(v["chosen"]["value"], "https://practice.example.org/adt");
    assert_eq!(v["chosen"]["source"], "override");
    assert_eq!(v["endpoints"][0]["has_secret"], true);
    assert!(
        !serde_json::to_string(&v).unwrap().contains("s3cr3t"),
        "secrets are never shown"
    );
    cli.json(&[
        "directory",
        "override",
        "--npi",
        &npi,
        "--type",
        "DIRECT",
        "--endpoint",
        "desk@direct.practice.example.org",
        "--preferred",
    ]);
    assert_eq!(
        show(cli, &npi)["chosen"]["value"],
        "desk@direct.practice.example.org"
    );

    // The file form is all or nothing.
    let file = cli.dir.join("overrides.csv");
    std::fs::write(&file, format!("npi,type,endpoint,preferred\n{other},FHIR,https://fhir.other.example.org/r4,yes\n{other},REST,https://192.168.0.9/x,no\n")).unwrap();
    let err = cli.fails(&["directory", "override", "--file", p(&file)]);
    assert!(
        err.contains("line 3") && err.contains("192.168.0.9"),
        "{err}"
    );
    assert_eq!(show(cli, &other)["chosen"]["source"], "nppes");
    std::fs::write(
        &file,
        format!(
            "npi,type,endpoint,preferred\n{other},FHIR,https://fhir.other.example.org/r4,yes\n"
        ),
    )
    .unwrap();
    cli.json(&["directory", "override", "--file", p(&file)]);
    let v = show(cli, &other);
    assert_eq!(v["chosen"]["value"], "https://fhir.other.example.org/r4");
    assert_eq!(v["endpoints"][0]["source"]["file"], p(&file));
    // Removing the override brings NPPES back.
    cli.json(&["directory", "override", "--npi", &other, "--remove"]);
    assert_eq!(show(cli, &other)["chosen"]["source"], "nppes");
}

/// The same scenario on SQLite and on a fresh PostgreSQL database.
macro_rules! on_both_backends {
    ($sqlite:ident, $postgres:ident, $scenario:ident) => {
        #[test]
        fn $sqlite() {
            let dir = tempdir();
            $scenario(&Cli::new(dir.path(), None, &[]));
        }

        #[tokio::test]
        async fn $postgres() {
            let db = TestDb::create().await;
            let dir = tempdir();
            $scenario(&Cli::new(dir.path(), Some(&db.url), &[]));
        }
    };
}

on_both_backends!(
    nppes_sample_rows_sqlite,
    nppes_sample_rows_postgres,
    real_samples
);
on_both_backends!(
    malformed_nppes_files_leave_the_directory_unchanged_sqlite,
    malformed_nppes_files_leave_the_directory_unchanged_postgres,
    malformed_files_change_nothing
);
on_both_backends!(
    incremental_import_sqlite,
    incremental_import_postgres,
    incremental
);

#[test]
fn overrides_and_endpoint_checks_sqlite() {
    let dir = tempdir();
    let cli = Cli::new(dir.path(), None, &[]);
    let lax = Cli::new(
        dir.path(),
        None,
        &[("ADT_ROUTER__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true")],
    );
    overrides_and_untrusted_endpoints(&cli, &lax);
}

#[tokio::test]
async fn overrides_and_endpoint_checks_postgres() {
    let db = TestDb::create().await;
    let dir = tempdir();
    let cli = Cli::new(dir.path(), Some(&db.url), &[]);
    let lax = Cli::new(
        dir.path(),
        Some(&db.url),
        &[("ADT_ROUTER__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true")],
    );
    overrides_and_untrusted_endpoints(&cli, &lax);
}

/// The generator writes the real layout: its header is the sample's, column for column.
#[test]
fn synthetic_files_have_the_real_header() {
    let dir = tempdir();
    let cli = Cli::new(dir.path(), None, &[]);
    let (np, ep) = synth_dir(&cli, "50", "20");
    let h = |f: &Path| -> Vec<String> {
        csv::Reader::from_path(f)
            .unwrap()
            .headers()
            .unwrap()
            .iter()
            .map(String::from)
            .collect()
    };
    assert_eq!(h(&np), h(&npidata_sample()));
    let real_ep = h(&endpoint_sample(dir.path()));
    let ours = h(&ep);
    assert_eq!(ours.len(), 19);
    // The sample spells the last column without "Line"; CMS's readme with. Both import.
    assert_eq!(ours[..18], real_ep[..18]);
    let report = cli.json(&[
        "nppes",
        "import",
        "--npidata",
        p(&np),
        "--endpoints",
        p(&ep),
        "--quiet",
    ]);
    assert_eq!(report["files"][0]["rows"], 50);
    assert_eq!(report["files"][1]["rows"], 20);
}

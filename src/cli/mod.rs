//! Subcommands for the provider directory, rosters and attribution. Each opens
//! the configured database, does one thing, prints JSON (or a short text) on stdout, and
//! reports failures on stderr with a non-zero exit.

pub mod routing;

use adt_router::attribution::{self, roster};
use adt_router::config::Settings;
use adt_router::directory::npi::Npi;
use adt_router::directory::nppes::{self, ImportRequest};
use adt_router::directory::overrides::{self, Override};
use adt_router::directory::{self, synth};
use adt_router::store::bulk::BulkConn;
use adt_router::store::Store;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    Store::connect(&settings.store_options())
        .await
        .context("opening database")
}

/// Runs `f` with a bulk connection on a blocking thread.
async fn with_bulk<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&mut BulkConn) -> T + Send + 'static,
) -> anyhow::Result<T> {
    let store = store.clone();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || -> anyhow::Result<T> {
        let mut conn = BulkConn::open(&store, rt).context("opening a database connection")?;
        Ok(f(&mut conn))
    })
    .await?
}

pub async fn nppes_import(
    settings: &Settings,
    npidata: Option<PathBuf>,
    endpoints: Option<PathBuf>,
    incremental: bool,
    max_bad_rows: Option<u64>,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let store = open_store(settings).await?;
    let req = ImportRequest {
        npidata,
        endpoints,
        incremental,
        max_bad_rows: max_bad_rows.unwrap_or(settings.directory.max_bad_rows),
        quiet,
    };
    let result = with_bulk(&store, move |c| nppes::import(c, &req)).await?;
    store.close().await;
    match result {
        Ok(report) => {
            for f in &report.files {
                eprintln!(
                    "{}: {} rows loaded, {} bad, {:.1} s ({:.0} rows/s)",
                    f.kind.as_str(),
                    f.rows,
                    f.bad_rows,
                    f.seconds,
                    f.rows_per_s
                );
                for b in &f.bad_row_samples {
                    eprintln!("  bad row at line {}: {}", b.line, b.reason);
                }
            }
            eprintln!(
                "live after {:.1} s; done after {:.1} s (superseded snapshot dropped, WAL checkpointed)",
                report.live_after_s, report.total_s
            );
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: NPPES import failed, the directory is unchanged: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

pub fn nppes_synth(
    providers: u64,
    endpoints: u64,
    out_dir: &Path,
    seed: u64,
) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let t = Instant::now();
    let npidata = out_dir.join("npidata_pfile_synthetic.csv");
    let endpoint = out_dir.join("endpoint_pfile_synthetic.csv");
    let create = |p: &Path| -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
        Ok(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        ))
    };
    synth::write_npidata(create(&npidata)?, providers, seed)?;
    synth::write_endpoints(create(&endpoint)?, endpoints, providers, seed)?;
    println!(
        "{}",
        serde_json::json!({
            "npidata": npidata, "providers": providers,
            "endpoints_file": endpoint, "endpoints": endpoints,
            "seconds": (t.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        })
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn directory_show(
    settings: &Settings,
    npi: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let npi = Npi::parse(npi).with_context(|| format!("'{npi}' is not a valid NPI"))?;
    let store = open_store(settings).await?;
    let entry = directory::lookup(&store, npi, &settings.resolve_policy()).await?;
    store.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&entry)?);
    } else {
        match &entry.provider {
            Some(p) => println!(
                "{} {} ({}, taxonomy {}){}",
                p.npi,
                p.name,
                p.entity_type,
                p.primary_taxonomy,
                p.deactivated
                    .as_ref()
                    .map(|d| format!(", deactivated {}", d.date))
                    .unwrap_or_default()
            ),
            None => println!("{} not in the NPPES directory", entry.npi),
        }
        for e in &entry.endpoints {
            println!(
                "  {:<8} {:<8} {}{}",
                e.source.kind,
                e.kind,
                e.value,
                e.unusable_reason
                    .as_ref()
                    .map(|r| format!("  [unusable: {r}]"))
                    .unwrap_or_default()
            );
        }
        match (&entry.chosen, &entry.no_endpoint_reason) {
            (Some(c), _) => println!("  => {} {} ({})", c.kind, c.value, c.reason),
            (None, Some(r)) => println!("  => no endpoint: {r}"),
            (None, None) => println!("  => no endpoint"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
pub async fn directory_override(
    settings: &Settings,
    npi: Option<String>,
    kind: Option<String>,
    endpoint: Option<String>,
    secret: Option<String>,
    preferred: bool,
    remove: bool,
    file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let policy = settings.resolve_policy().endpoints;
    let store = open_store(settings).await?;
    let result = if let Some(file) = file {
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let name = file.display().to_string();
        match overrides::read_file(&bytes, &name, policy) {
            Ok(items) => {
                overrides::save(&store, &items, &name).await?;
                println!(
                    "{}",
                    serde_json::json!({"loaded": items.len(), "file": name})
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    } else {
        let npi = npi.context("give --npi (or --file)")?;
        if remove {
            let n = Npi::parse(&npi).with_context(|| format!("'{npi}' is not a valid NPI"))?;
            let removed = overrides::remove(&store, n, endpoint.as_deref()).await?;
            println!("{}", serde_json::json!({"npi": npi, "removed": removed}));
            ExitCode::SUCCESS
        } else {
            let (Some(kind), Some(endpoint)) = (kind, endpoint) else {
                bail!("give --type and --endpoint (or --remove)");
            };
            match Override::new(&npi, &kind, &endpoint, secret, preferred, policy) {
                Ok(o) => {
                    overrides::save(&store, std::slice::from_ref(&o), "cli").await?;
                    println!(
                        "{}",
                        serde_json::json!({"npi": npi, "type": o.kind.as_str(), "endpoint": o.endpoint, "preferred": o.preferred, "secret": o.secret.is_some()})
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: override refused: {e}");
                    ExitCode::from(1)
                }
            }
        }
    };
    store.close().await;
    Ok(result)
}

pub async fn roster_import(
    settings: &Settings,
    file: PathBuf,
    source: String,
    replace: bool,
) -> anyhow::Result<ExitCode> {
    let store = open_store(settings).await?;
    let name = file.display().to_string();
    let result = with_bulk(&store, move |c| {
        let path = file.clone();
        let open = move || -> std::io::Result<Box<dyn std::io::Read>> {
            Ok(Box::new(std::io::BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(&path)?,
            )))
        };
        roster::import(c, &source, &name, &open, replace, None)
    })
    .await?;
    store.close().await;
    match result {
        Ok(report) => {
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: roster not loaded: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// A synthetic roster for benchmarks: `patients` people, one to three providers each,
/// some twins, names with accents, hyphens and apostrophes. No real person.
pub fn roster_synth(patients: u64, out: &Path, seed: u64) -> anyhow::Result<ExitCode> {
    const FAMILY: &[&str] = &[
        "Smith",
        "García",
        "O'Brien",
        "Nguyen",
        "Smith-Jones",
        "Müller",
        "Kim",
        "Patel",
        "Johnson",
        "Lee",
        "Brown",
        "Williams",
        "Da Silva",
        "Novák",
        "Okafor",
    ];
    const GIVEN: &[&str] = &[
        "Anne", "José", "Mary", "Wei", "John", "Priya", "Zoë", "Liam", "Olivia", "Noah", "Emma",
        "Ava", "Lucas", "Mia", "Ethan",
    ];
    let mut w = csv::Writer::from_writer(std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
    ));
    w.write_record(roster::CSV_COLUMNS)?;
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut rows = 0u64;
    for i in 0..patients {
        let r = next();
        let family = format!(
            "{}{}",
            FAMILY[(r % 15) as usize],
            if r % 7 == 0 {
                format!("-{}", FAMILY[(r / 7 % 15) as usize])
            } else {
                String::new()
            }
        );
        let given = GIVEN[(r / 15 % 15) as usize];
        let dob = format!(
            "{}-{:02}-{:02}",
            1930 + (r / 225 % 94),
            1 + (r / 21150 % 12),
            1 + (r / 253800 % 28)
        );
        let sex = if r % 2 == 0 { "F" } else { "M" };
        let zip = format!("{:05}", 10000 + r / 7 % 89999);
        for k in 0..(1 + next() % 3) {
            let rel = ["pcp", "care_manager", "specialist"][k as usize];
            let npi = synth::synthetic_npi(next() % 100_000);
            w.write_record([
                &format!("P{i:08}"),
                "ACME-ACO",
                &family,
                given,
                &dob,
                sex,
                &zip,
                npi.as_str(),
                rel,
                "2020-01-01",
                "",
            ])?;
            rows += 1;
        }
    }
    w.flush()?;
    println!(
        "{}",
        serde_json::json!({"file": out, "patients": patients, "rows": rows})
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn attribution_explain(settings: &Settings, file: &Path) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let decoded = adt_router::hl7::charset::decode(&bytes, settings.fallback_charset());
    let text = match decoded {
        Ok((t, _)) => t,
        Err(e) => bail!("{}: cannot decode: {e}", file.display()),
    };
    let facts = adt_router::hl7::patient::read_patient(&text).map_err(|r| {
        anyhow::anyhow!(
            "{}: not an acceptable HL7 message: {}",
            file.display(),
            r.err.diagnostic
        )
    })?;
    let store = open_store(settings).await?;
    let a = attribution::attribute(&store, &facts, &settings.attribution_policy()).await?;
    store.close().await;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "message": {
                "file": file,
                "control_id": facts.control_id,
                "sending_facility": facts.sending_facility,
                "trigger_event": facts.trigger_event,
                "event_date": facts.event_date,
            },
            "patient": {
                "identifiers": facts.identifiers,
                "family": facts.family, "given": facts.given,
                "birth_date": facts.birth_date, "sex": facts.sex, "postal_code": facts.postal_code,
            },
            "rosters": a.rosters,
            "providers": a.providers,
            "unused_message_providers": a.unused_message_providers,
        }))?
    );
    Ok(ExitCode::SUCCESS)
}

/// Attribution latency: looks up `samples` patients taken from the loaded rosters, half
/// by identifier and half by demographics only, and prints percentiles.
pub async fn attribution_bench(settings: &Settings, samples: usize) -> anyhow::Result<ExitCode> {
    use adt_router::hl7::patient::{Identifier, PatientFacts};
    use sqlx::Row;
    let store = open_store(settings).await?;
    let policy = settings.attribution_policy();
    let sql = "SELECT patient_id, assigning_authority, family, given, birth_date, sex, postal_code FROM roster_entry WHERE line % {stride} = 0 LIMIT {samples}".to_string();
    let total: i64 = match &store {
        Store::Sqlite(p) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM roster_entry")
                .fetch_one(p)
                .await?
        }
        Store::Postgres(p) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM roster_entry")
                .fetch_one(p)
                .await?
        }
    };
    if total == 0 {
        bail!("no roster loaded (adt-router roster synth, then roster import)");
    }
    // Spread the sample over the whole table.
    let stride = (total as usize / samples.max(1)).max(1);
    let sql = sql
        .replace("{stride}", &stride.to_string())
        .replace("{samples}", &samples.to_string());
    let rows: Vec<[String; 7]> = match &store {
        Store::Sqlite(p) => sqlx::query(&sql)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| std::array::from_fn(|i| r.get::<String, _>(i)))
            .collect(),
        Store::Postgres(p) => sqlx::query(&sql)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| std::array::from_fn(|i| r.get::<String, _>(i)))
            .collect(),
    };
    let mut by_id = Vec::new();
    let mut by_demo = Vec::new();
    let mut providers = 0usize;
    for (k, r) in rows.iter().enumerate() {
        let facts = PatientFacts {
            sending_facility: "BENCH".into(),
            control_id: format!("B{k}"),
            trigger_event: "A01".into(),
            event_date: None,
            identifiers: if k % 2 == 0 {
                vec![Identifier {
                    id: r[0].clone(),
                    authority_namespace: r[1].clone(),
                    authority_universal: String::new(),
                    type_code: "MR".into(),
                }]
            } else {
                Vec::new()
            },
            family: r[2].clone(),
            given: r[3].clone(),
            birth_date: Some(r[4].clone()),
            sex: r[5].clone(),
            postal_code: r[6].clone(),
            providers: Vec::new(),
        };
        let t = Instant::now();
        let a = attribution::attribute(&store, &facts, &policy).await?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        providers += a.providers.len();
        if k % 2 == 0 {
            by_id.push(us)
        } else {
            by_demo.push(us)
        }
    }
    store.close().await;
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
            .round()
    };
    println!(
        "{}",
        serde_json::json!({
            "roster_rows": total,
            "lookups": rows.len(),
            "providers_found": providers,
            "identifier": {"p50_us": pct(&mut by_id, 0.5), "p99_us": pct(&mut by_id, 0.99), "max_us": pct(&mut by_id, 1.0)},
            "demographic": {"p50_us": pct(&mut by_demo, 0.5), "p99_us": pct(&mut by_demo, 0.99), "max_us": pct(&mut by_demo, 1.0)},
        })
    );
    Ok(ExitCode::SUCCESS)
}

//! `nppes import|synth`, `directory show|override`: the provider directory.

use super::{open_store, with_bulk};
use adt_router::config::Settings;
use adt_router::directory;
use adt_router::directory::npi::Npi;
use adt_router::directory::nppes::{self, ImportRequest};
use adt_router::directory::overrides::{self, Override};
#[cfg(feature = "tools")]
use adt_router::directory::synth;
use anyhow::{bail, Context};
#[cfg(feature = "tools")]
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
#[cfg(feature = "tools")]
use std::time::Instant;

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

#[cfg(feature = "tools")]
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
                store.save_overrides(&items, &name).await?;
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
            let removed = store
                .remove_overrides(n.as_str(), endpoint.as_deref())
                .await?;
            println!("{}", serde_json::json!({"npi": npi, "removed": removed}));
            ExitCode::SUCCESS
        } else {
            let (Some(kind), Some(endpoint)) = (kind, endpoint) else {
                bail!("give --type and --endpoint (or --remove)");
            };
            match Override::new(&npi, &kind, &endpoint, secret, preferred, policy) {
                Ok(o) => {
                    store
                        .save_overrides(std::slice::from_ref(&o), "cli")
                        .await?;
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

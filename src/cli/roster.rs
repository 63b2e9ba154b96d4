//! `roster import|synth`: patient rosters.

use super::{open_store, with_bulk};
use adt_router::attribution::roster;
use adt_router::config::Settings;
#[cfg(feature = "tools")]
use adt_router::directory::synth;
#[cfg(feature = "tools")]
use anyhow::Context;
#[cfg(feature = "tools")]
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

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

#[cfg(feature = "tools")]
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

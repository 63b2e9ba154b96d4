//! `bench`: the MLLP load generator.

use adt_router::mllp::client::{summarize_ack, MllpClient};
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// A synthetic A01 (no real person) of typical size, enhanced mode like most engines.
const BENCH_MESSAGE: &str = "MSH|^~\\&|EPIC|GENHOSP|ADTROUTER|STATE-HIE|20261128093000||ADT^A01^ADT_A01|CTRLID|P|2.5.1|||AL|NE\r\
EVN|A01|20261128093000|||USR123^TEST^USER\r\
PID|1||MRN000123^^^GENHOSP^MR||TESTPATIENT^ALPHA^Q^^^^L||19650412|M|||123 MAIN ST^^SPRINGFIELD^IL^62701^USA^H||^PRN^PH^^1^217^5550100|||M\r\
PD1|||SPRINGFIELD FAMILY PRACTICE^^1234^^^^^^^^NPI|1234567893^WELBY^MARCUS^^^DR^MD^^NPI^L^^^NPI\r\
PV1|1|I|4W^401^A^GENHOSP^^^^^4 WEST||||1234567893^HOUSE^GREGORY^^^DR^MD^^NPI^L^^^NPI|||MED||||7|||1234567893^HOUSE^GREGORY^^^DR^MD^^NPI^L^^^NPI|IN|V0001||||||||||||||||||||GENHOSP||ADM|||20261128092500\r\
PV2|||^CHEST PAIN\r\
DG1|1||R07.9^Chest pain, unspecified^I10|||A\r";

pub async fn bench(
    to: &str,
    conns: usize,
    n: u64,
    message: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let template = match message {
        Some(p) => String::from_utf8_lossy(
            &std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
        )
        .replace('\n', "\r"),
        None => BENCH_MESSAGE.to_string(),
    };
    let msh_end = template.find('\r').unwrap_or(template.len());
    let fields: Vec<&str> = template[..msh_end].split('|').collect();
    if fields.len() < 10 {
        bail!("the bench message has no MSH-10");
    }
    let prefix = fields[..9].join("|") + "|";
    let suffix = "|".to_string()
        + &template[..msh_end]
            .split('|')
            .skip(10)
            .collect::<Vec<_>>()
            .join("|")
        + &template[msh_end..];
    let next = Arc::new(AtomicU64::new(0));
    let run_id = format!("B{:x}", std::process::id());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (next, prefix, suffix, to, run_id) = (
            next.clone(),
            prefix.clone(),
            suffix.clone(),
            to.to_string(),
            run_id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut bad = 0u64;
            let mut client = MllpClient::connect(&to).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let id = format!("{run_id}-{i}");
                let msg = format!("{prefix}{id}{suffix}");
                let t0 = Instant::now();
                let ack = client.send(msg.as_bytes(), Duration::from_secs(30)).await?;
                lat.push(t0.elapsed().as_secs_f64());
                let s = summarize_ack(&ack);
                if s.control_id != id || !(s.code == "AA" || s.code == "CA") {
                    bad += 1;
                }
            }
            anyhow::Ok((lat, bad))
        }));
    }
    let mut lat = Vec::new();
    let mut bad = 0;
    for t in tasks {
        let (l, b) = t.await??;
        lat.extend(l);
        bad += b;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .map(|v| v * 1e3)
            .unwrap_or(f64::NAN)
    };
    println!(
        "{}",
        serde_json::json!({
            "to": to, "conns": conns, "sent": lat.len(), "not_accepted": bad,
            "seconds": (secs * 1000.0).round() / 1000.0,
            "msgs_per_s": (lat.len() as f64 / secs).round(),
            "p50_ms": (pct(0.5) * 1000.0).round() / 1000.0,
            "p99_ms": (pct(0.99) * 1000.0).round() / 1000.0,
            "max_ms": (pct(1.0) * 1000.0).round() / 1000.0,
        })
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

//! `attribution explain|bench`: who a message is attributed to, and why.

use super::open_store;
use adt_router::attribution;
use adt_router::config::Settings;
use anyhow::{bail, Context};
use std::path::Path;
use std::process::ExitCode;
#[cfg(feature = "tools")]
use std::time::Instant;

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

#[cfg(feature = "tools")]
/// Attribution latency: looks up `samples` patients taken from the loaded rosters, half
/// by identifier and half by demographics only, and prints percentiles.
pub async fn attribution_bench(settings: &Settings, samples: usize) -> anyhow::Result<ExitCode> {
    use adt_router::hl7::patient::{Identifier, PatientFacts};
    let store = open_store(settings).await?;
    let policy = settings.attribution_policy();
    let (total, rows) = store.roster_sample(samples).await?;
    if rows.is_empty() {
        bail!("no roster loaded (adt-router roster synth, then roster import)");
    }
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

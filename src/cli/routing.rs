//! Subcommands for routing: `rules check|explain|simulate` and
//! `notifications export`.

use super::open_store;
use adt_router::config::Settings;
use adt_router::routing::rules::{self, RuleSet};
use adt_router::routing::{Router, Snapshot};
use adt_router::store::routing::Outcome;
use adt_router::store::{now_us, Store};
use anyhow::Context;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

fn rules_dir(settings: &Settings, dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| PathBuf::from(&settings.routing.rules_dir))
}

pub fn rules_check(settings: &Settings, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = rules_dir(settings, dir);
    match rules::load_dir(&dir) {
        Ok(set) => {
            println!(
                "{}",
                serde_json::json!({
                    "dir": dir,
                    "valid": true,
                    "files": set.files,
                    "rules": set.rules.iter().map(|r| serde_json::json!({
                        "id": r.id, "action": r.action, "priority": r.priority, "defined_at": r.defined_at,
                    })).collect::<Vec<_>>(),
                    "opt_outs": set.opt_outs.len(),
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn router(settings: &Settings, store: Store, set: RuleSet) -> Router {
    Router::new(
        &settings.routing,
        settings.attribution_policy(),
        settings.fallback_charset(),
        store,
        Arc::new(RwLock::new(Arc::new(set))),
        Arc::new(adt_router::metrics::Metrics::new()),
    )
}

fn load_rules(dir: &Path) -> anyhow::Result<RuleSet> {
    rules::load_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))
}

pub async fn rules_explain(
    settings: &Settings,
    file: &Path,
    dir: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let set = load_rules(&rules_dir(settings, dir))?;
    let raw = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let store = open_store(settings).await?;
    let r = router(settings, store.clone(), set);
    let plan = r.plan(&raw, None, now_us(), None).await?;
    store.close().await;
    println!("{}", serde_json::to_string_pretty(&plan)?);
    Ok(ExitCode::SUCCESS)
}

/// An RFC 3339 command-line time, as microseconds since the epoch.
pub fn parse_time(flag: &str, s: &str) -> anyhow::Result<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{flag} '{s}' is not an RFC 3339 time"))?;
    Ok(i64::try_from(t.unix_timestamp_nanos() / 1000)?)
}

/// Outcome per (transition, recipient) under one rule set.
async fn replay(
    r: &Router,
    store: &Store,
    since: i64,
    until: i64,
) -> anyhow::Result<(BTreeMap<(String, String), Outcome>, usize)> {
    let mut sim = Snapshot::default();
    let mut out = BTreeMap::new();
    let mut after = 0;
    let mut n = 0;
    loop {
        let page = store.export_page(since, after, 500, true).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for m in page
            .iter()
            .filter(|m| m.received_at_us < until && !m.duplicate)
        {
            n += 1;
            let plan = r
                .plan(
                    m.raw.as_deref().unwrap_or_default(),
                    Some(m.id),
                    now_us(),
                    Some(&mut sim),
                )
                .await?;
            for d in plan.recipients {
                out.insert((format!("{}:{}", d.kind, d.transition), d.npi), d.outcome);
            }
        }
    }
    Ok((out, n))
}

pub async fn rules_simulate(
    settings: &Settings,
    since: &str,
    until: Option<&str>,
    candidate: &Path,
) -> anyhow::Result<ExitCode> {
    let since = parse_time("--since", since)?;
    let until = until
        .map(|u| parse_time("--until", u))
        .transpose()?
        .unwrap_or(i64::MAX);
    let current = load_rules(Path::new(&settings.routing.rules_dir))
        .context("the current rules (routing.rules_dir)")?;
    let cand = load_rules(candidate).context("the candidate rules")?;
    let store = open_store(settings).await?;
    let (before, messages) = replay(
        &router(settings, store.clone(), current),
        &store,
        since,
        until,
    )
    .await?;
    let (after, _) = replay(&router(settings, store.clone(), cand), &store, since, until).await?;
    store.close().await;
    #[derive(Default, serde::Serialize)]
    struct Change {
        gained: Vec<String>,
        lost: Vec<String>,
    }
    let mut per: BTreeMap<String, Change> = BTreeMap::new();
    let notify = |m: &BTreeMap<(String, String), Outcome>, k: &(String, String)| {
        m.get(k) == Some(&Outcome::Notify)
    };
    let keys: std::collections::BTreeSet<&(String, String)> =
        before.keys().chain(after.keys()).collect();
    for k in keys {
        let (b, a) = (notify(&before, k), notify(&after, k));
        if a && !b {
            per.entry(k.1.clone()).or_default().gained.push(k.0.clone());
        } else if b && !a {
            per.entry(k.1.clone()).or_default().lost.push(k.0.clone());
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "messages": messages,
            "notifications_current": before.values().filter(|o| **o == Outcome::Notify).count(),
            "notifications_candidate": after.values().filter(|o| **o == Outcome::Notify).count(),
            "changes_per_recipient": per,
        }))?
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "tools")]
pub async fn route_drain(settings: &Settings) -> anyhow::Result<ExitCode> {
    let set = load_rules(Path::new(&settings.routing.rules_dir))?;
    let store = open_store(settings).await?;
    let r = router(settings, store.clone(), set);
    let started = std::time::Instant::now();
    let mut messages = 0;
    loop {
        let n = r.step().await?;
        if n == 0 {
            break;
        }
        messages += n;
    }
    let secs = started.elapsed().as_secs_f64();
    let created: u64 = ["pending", "suppressed", "dead"]
        .iter()
        .map(|s| {
            r.metrics
                .notifications_created
                .with_label_values(&[s])
                .get()
        })
        .sum();
    let stages: serde_json::Map<String, serde_json::Value> = ["plan", "wait", "commit"]
        .iter()
        .map(|s| {
            let total = r
                .metrics
                .routing_page
                .with_label_values(&[s])
                .get_sample_sum();
            (s.to_string(), ((total * 1e6).round() / 1e6).into())
        })
        .collect();
    store.close().await;
    println!(
        "{}",
        serde_json::json!({
            "messages": messages,
            "notifications": created,
            "seconds": (secs * 1000.0).round() / 1000.0,
            "msgs_per_s": (messages as f64 / secs.max(1e-9)).round(),
            // Which half limits routing: planning or the commit beside it.
            "stage_seconds": stages,
        })
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn resend(
    settings: &Settings,
    notification: Option<i64>,
    recipient: Option<String>,
    since: Option<&str>,
) -> anyhow::Result<ExitCode> {
    if notification.is_none() && recipient.is_none() {
        anyhow::bail!("give --notification ID, or --recipient NPI --since RFC3339");
    }
    let since_us = since
        .map(|s| parse_time("--since", s))
        .transpose()?
        .unwrap_or(i64::MIN);
    let store = open_store(settings).await?;
    let ids = store
        .resend(notification, recipient.as_deref(), since_us)
        .await?;
    store.close().await;
    println!("{}", serde_json::json!({"resent": ids.len(), "ids": ids}));
    if ids.is_empty() {
        eprintln!("nothing to resend (unknown id, none since then, or being sent right now)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn notifications_export(settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = open_store(settings).await?;
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let mut after = 0;
    loop {
        let page = store.export_notifications(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for n in &page {
            serde_json::to_writer(&mut w, n)?;
            w.write_all(b"\n")?;
        }
    }
    w.flush()?;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

//! `send`, `messages export`, `replay`: messages in and out of the event log.

use adt_router::config::Settings;
use adt_router::mllp::client::{split_messages, summarize_ack, MllpClient};
use adt_router::store::Store;
use anyhow::{bail, Context};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub async fn send(
    files: &[PathBuf],
    to: &str,
    timeout: Duration,
    quiet: Duration,
) -> anyhow::Result<ExitCode> {
    use adt_router::hl7::ack::AckEcho;
    use adt_router::hl7::{AckCondition, AckMode};
    let mut client = MllpClient::connect(to).await?;
    let mut all_ok = true;
    for f in files {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let msgs = split_messages(&bytes);
        if msgs.is_empty() {
            eprintln!("{}: no HL7 message found", f.display());
            all_ok = false;
        }
        for (i, m) in msgs.iter().enumerate() {
            let label = format!("{}#{}", f.display(), i + 1);
            let echo = AckEcho::recover(&String::from_utf8_lossy(m));
            // MSH-15 says whether an accept ACK must come (standards §2.4). With NE or ER
            // a receiver may stay silent, or answer anyway as adt-router does by default
            // (`mllp.accept_ack = "always"`): wait `quiet` for either.
            let (wait, silence_ok) = match echo.mode {
                AckMode::Enhanced {
                    accept: AckCondition::Never | AckCondition::ErrorOnly,
                    ..
                } => (quiet, true),
                _ => (timeout, false),
            };
            client.send_raw(&adt_router::mllp::codec::frame(m)).await?;
            let answer = match client.recv(wait).await {
                Ok(a) => Some(a),
                Err(adt_router::mllp::client::ClientError::Timeout(_)) if silence_ok => None,
                Err(e) => {
                    println!("{label}\t-\t{}\t{e}", echo.control_id);
                    all_ok = false;
                    client = MllpClient::connect(to).await?;
                    continue;
                }
            };
            match answer {
                Some(ack) => {
                    let s = summarize_ack(&ack);
                    println!("{label}\t{}\t{}\t{}", s.code, s.control_id, s.text);
                    if s.code != "AA" && s.code != "CA" {
                        all_ok = false;
                    }
                }
                None => println!(
                    "{label}\t-\t{}\tno accept ACK expected (MSH-15={})",
                    echo.control_id,
                    match echo.mode {
                        AckMode::Enhanced { accept, .. } => accept.code(),
                        AckMode::Original => "",
                    }
                ),
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub async fn export(
    settings: &Settings,
    since: Option<&str>,
    with_body: bool,
) -> anyhow::Result<ExitCode> {
    let since_us = match since {
        Some(s) => super::routing::parse_time("--since", s)?,
        None => i64::MIN,
    };
    let store = Store::connect(&settings.store_options())
        .await
        .context("opening database")?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after = 0i64;
    loop {
        let page = store.export_page(since_us, after, 1000, with_body).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for m in &page {
            let received_at =
                time::OffsetDateTime::from_unix_timestamp_nanos(m.received_at_us as i128 * 1000)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default();
            let mut obj = serde_json::json!({
                "id": m.id,
                "control_id": m.control_id,
                "sending_application": m.sending_application,
                "sending_facility": m.sending_facility,
                "message_type": m.message_type,
                "trigger_event": m.trigger_event,
                "version": m.version,
                "charset": m.charset,
                "ack_code": m.ack_code,
                "status": m.status,
                "duplicate": m.duplicate,
                "control_id_collision": m.control_id_collision,
                "error": m.error,
                "received_at": received_at,
                "peer": m.peer,
                "sha256": m.sha256,
            });
            if let Some(raw) = &m.raw {
                let enc = encoding_rs::Encoding::for_label(m.charset.as_bytes())
                    .unwrap_or(encoding_rs::UTF_8);
                obj["body"] =
                    serde_json::Value::String(enc.decode_without_bom_handling(raw).0.into_owned());
            }
            writeln!(out, "{obj}")?;
        }
    }
    out.flush()?;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn replay(
    settings: &Settings,
    since: Option<&str>,
    from_offset: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use adt_router::event_log::kafka::replay::{replay_kafka, From};
    let from = match (since, from_offset) {
        (Some(s), _) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("--since '{s}' is not an RFC 3339 time"))?;
            From::Time((t.unix_timestamp_nanos() / 1_000_000) as i64)
        }
        (None, Some(po)) => {
            let (p, o) = po
                .split_once(':')
                .context("--from-offset must be PARTITION:OFFSET")?;
            From::Offset {
                partition: p.parse().context("--from-offset: bad partition")?,
                offset: o.parse().context("--from-offset: bad offset")?,
            }
        }
        (None, None) => bail!("give --since or --from-offset"),
    };
    let store = Store::connect(&settings.store_options())
        .await
        .context("opening database")?;
    if !settings.kafka.enabled() {
        // The embedded log is the store itself: every message in it is already where the
        // router reads from, so there is nothing to re-drive until routing
        // keeps its own progress.
        let since_us = match from {
            From::Time(ms) => ms * 1000,
            From::Offset { .. } => bail!("--from-offset needs Kafka mode (kafka.brokers)"),
        };
        let n = store.count_since(since_us).await?;
        println!(
            "{}",
            serde_json::json!({"mode": "embedded", "messages_since": n, "redriven": 0,
            "note": "the embedded log is the store; nothing to re-drive until routing keeps its own progress"})
        );
        return Ok(ExitCode::SUCCESS);
    }
    let processor = adt_router::event_log::kafka::RecordProcessor {
        store: store.clone(),
        rules: settings.parse_rules(),
        fallback: settings.fallback_charset(),
        duplicate_window: Duration::from_secs(settings.event_log.duplicate_window_hours * 3600),
        stored: None,
    };
    let summary = replay_kafka(&settings.kafka, processor, from).await?;
    println!("{}", serde_json::to_string(&summary)?);
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

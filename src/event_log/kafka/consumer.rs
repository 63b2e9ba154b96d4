//! The router's input in scale-out mode: a Kafka consumer-group member.
//!
//! Delivery semantics: at-least-once, made exactly-once in the store. Each record is
//! processed in partition order; its offset is *stored* for commit only after
//! [`RecordProcessor::process`] returned, i.e. after the database transaction committed
//! (librdkafka then auto-commits stored offsets). A crash between the two replays the
//! record, which the store recognises by its origin (partition, offset) and ignores.
//! A database error blocks the partition and retries the same record: skipping it would
//! lose a message.

use super::producer::{client_config, create, headers};
use super::records::{Processed, RecordMeta, RecordProcessor};
use crate::event_log::config::KafkaSettings;
use crate::metrics::Metrics;
use crate::store::Origin;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub struct RouterContext {
    metrics: Arc<Metrics>,
    quiet: crate::event_log::kafka::QuietContext,
}

impl ClientContext for RouterContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.quiet.error(error, reason);
    }
}

impl ConsumerContext for RouterContext {
    fn pre_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Revoke(tpl) => {
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                tracing::info!(partitions = ?partitions(tpl), "Kafka partitions revoked from this router.");
            }
            Rebalance::Assign(tpl) => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                tracing::info!(partitions = ?partitions(tpl), "Kafka partitions assigned to this router.");
            }
            Rebalance::Error(e) => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "Kafka rebalance error.");
            }
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

pub fn meta_of(m: &OwnedMessage) -> RecordMeta {
    let mut meta = RecordMeta::default();
    if let Some(h) = m.headers() {
        for hdr in h.iter() {
            let v = hdr.value.and_then(|v| std::str::from_utf8(v).ok());
            match (hdr.key, v) {
                (headers::RECEIVED_AT_US, Some(v)) => meta.received_at_us = v.parse().ok(),
                (headers::PEER, Some(v)) => meta.peer = Some(v.to_string()),
                (headers::ACK_CODE, Some(v)) => meta.ack_code = Some(v.to_string()),
                _ => {}
            }
        }
    }
    meta
}

pub fn origin_of(topic: &str, m: &OwnedMessage) -> Origin {
    Origin {
        source: format!("kafka:{topic}"),
        partition: m.partition(),
        offset: m.offset(),
    }
}

/// Processes records until they are stored or quarantined (retrying database errors),
/// or `shutdown` turns true. Returns `None` on shutdown: then none of them count as done.
pub async fn process_until_done(
    processor: &RecordProcessor,
    topic: &str,
    batch: &[OwnedMessage],
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Vec<Processed>> {
    let records: Vec<(&[u8], RecordMeta, Origin)> = batch
        .iter()
        .map(|m| {
            (
                m.payload().unwrap_or_default(),
                meta_of(m),
                origin_of(topic, m),
            )
        })
        .collect();
    let mut backoff = Duration::from_millis(200);
    loop {
        match processor.process_batch(&records).await {
            Ok(done) => {
                for p in &done {
                    metrics
                        .records_processed
                        .with_label_values(&[p.label()])
                        .inc();
                    if p.label() == "collision" {
                        metrics.control_id_collisions.inc();
                    }
                }
                return Some(done);
            }
            Err(e) => {
                metrics
                    .records_processed
                    .with_label_values(&["store_error"])
                    .inc();
                let (partition, offset) = (records[0].2.partition, records[0].2.offset);
                tracing::error!(partition, offset, records = records.len(), error = %e, "Could not store Kafka records; retrying them (the partitions wait).");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Most records stored in one statement.
const MAX_BATCH: usize = 256;

/// Runs the consumer-group member until `shutdown` turns true.
pub async fn run(
    settings: KafkaSettings,
    processor: RecordProcessor,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let heartbeat = (settings.session_timeout_ms / 3).clamp(100, 3000);
    let consumer: StreamConsumer<RouterContext> = create(
        client_config(&settings)
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            // Offsets become committable only when we store them, after the database commit.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                settings.session_timeout_ms.to_string(),
            )
            .set("heartbeat.interval.ms", heartbeat.to_string())
            // Also the rebalance timeout: members that do not rejoin within it are dropped.
            // Processing a record takes milliseconds, so this can be short.
            .set(
                "max.poll.interval.ms",
                (settings.session_timeout_ms * 2).max(10_000).to_string(),
            )
            .set("enable.partition.eof", "false")
            // Incremental rebalancing: a joining or dying router moves only the partitions
            // that must move, and the others keep working. (Also the protocol under which
            // tansu hands a dead member's partitions to the survivors; with the eager one it
            // re-forms the group without a new generation and keeps the stale assignment.)
            .set("partition.assignment.strategy", "cooperative-sticky")
            // librdkafka prefetches up to 64 MB per consumer by default; a few MB keeps a
            // router busy and its memory small.
            .set("queued.max.messages.kbytes", "8192"),
        &settings,
        RouterContext {
            metrics: metrics.clone(),
            quiet: Default::default(),
        },
    )?;
    consumer.subscribe(&[&settings.topic])?;
    let consumer = Arc::new(consumer);
    tracing::info!(group = %settings.group, topic = %settings.topic, "Router joined the Kafka consumer group.");
    let lag = tokio::spawn(report_lag(
        consumer.clone(),
        settings.topic.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    loop {
        let m = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.changed() => break,
        };
        let mut batch = match m {
            Ok(m) => vec![m.detach()],
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consume error.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // Whatever is already fetched joins the same database statement.
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                _ => break,
            }
        }
        let done =
            process_until_done(&processor, &settings.topic, &batch, &metrics, &mut shutdown).await;
        if done.is_none() {
            break;
        }
        for m in &batch {
            if let Err(e) = consumer.store_offset(&settings.topic, m.partition(), m.offset()) {
                // Happens when the partition was just revoked: the new owner replays it,
                // and the store ignores what it already has.
                tracing::debug!(error = %e, "Could not store the offset.");
            }
        }
    }
    lag.abort();
    let c = consumer.clone();
    let _ = tokio::task::spawn_blocking(move || c.commit_consumer_state(CommitMode::Sync)).await;
    tracing::info!("Router left the Kafka consumer group.");
    Ok(())
}

/// Every few seconds: high watermark minus position, per assigned partition.
async fn report_lag(
    consumer: Arc<StreamConsumer<RouterContext>>,
    topic: String,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.changed() => return,
        }
        let (c, t, m) = (consumer.clone(), topic.clone(), metrics.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(pos) = c.position() else { return };
            m.consumer_lag.reset();
            for e in pos.elements_for_topic(&t) {
                let Ok((_, high)) =
                    c.fetch_watermarks(&t, e.partition(), Timeout::After(Duration::from_secs(2)))
                else {
                    continue;
                };
                let at = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => continue,
                };
                m.consumer_lag
                    .with_label_values(&[&e.partition().to_string()])
                    .set((high - at).max(0));
            }
        })
        .await;
    }
}

//! `adt-router replay`: re-drive records through the router, idempotently.
//!
//! Kafka mode reads the topic from a point (a time, or a partition offset) up to the end
//! offsets it saw when it started, with its own consumer (it joins no group and commits
//! nothing), and hands every record to the same [`RecordProcessor`] the consumer group
//! uses. Records already stored are recognised by their origin and change nothing, so a
//! replay is always safe: it is how an operator fills a gap after an incident.

use super::consumer::process_until_done;
use super::records::RecordProcessor;
use crate::event_log::config::KafkaSettings;
use crate::event_log::kafka::{client_config, create};
use crate::metrics::Metrics;
use anyhow::{bail, Context};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;

pub enum From {
    /// Milliseconds since the epoch.
    Time(i64),
    Offset {
        partition: i32,
        offset: i64,
    },
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub records: u64,
    pub stored: u64,
    pub duplicate: u64,
    pub already_stored: u64,
    pub quarantined: u64,
}

pub async fn replay_kafka(
    settings: &KafkaSettings,
    processor: RecordProcessor,
    from: From,
) -> anyhow::Result<Summary> {
    let consumer: StreamConsumer<crate::event_log::kafka::QuietContext> = create(
        client_config(settings)
            .set(
                "group.id",
                format!("{}-replay-{}", settings.group, std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false"),
        settings,
        Default::default(),
    )
    .context("creating the replay consumer")?;
    let topic = settings.topic.clone();
    let c = &consumer;
    let timeout = Timeout::After(Duration::from_secs(10));
    let md = c
        .fetch_metadata(Some(&topic), timeout)
        .context("reading topic metadata")?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        bail!("topic {topic} has no partitions (does it exist?)");
    }
    // Where to start, per partition.
    let mut start = TopicPartitionList::new();
    match from {
        From::Time(ms) => {
            for p in &partitions {
                start.add_partition_offset(&topic, *p, Offset::Offset(ms))?;
            }
            start = c
                .offsets_for_times(start, timeout)
                .context("looking up offsets for --since")?;
        }
        From::Offset { partition, offset } => {
            if !partitions.contains(&partition) {
                bail!("topic {topic} has no partition {partition}");
            }
            start.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
    }
    // Where to stop: the end of each partition now.
    let mut end = BTreeMap::new();
    let mut assign = TopicPartitionList::new();
    for e in start.elements_for_topic(&topic) {
        let (_, high) = c.fetch_watermarks(&topic, e.partition(), timeout)?;
        let first = match e.offset() {
            Offset::Offset(o) => o,
            _ => continue, // nothing at or after the time in this partition
        };
        if first < high {
            end.insert(e.partition(), high);
            assign.add_partition_offset(&topic, e.partition(), Offset::Offset(first))?;
        }
    }
    let mut summary = Summary::default();
    if end.is_empty() {
        return Ok(summary);
    }
    c.assign(&assign)?;
    let metrics = Metrics::new();
    let (_keep, mut never) = tokio::sync::watch::channel(false);
    while !end.is_empty() {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .context("no record within 30 s before the end offsets were reached")??
            .detach();
        let (p, o) = (m.partition(), m.offset());
        if end.get(&p).is_some_and(|&high| o < high) {
            let outcome = process_until_done(
                &processor,
                &topic,
                std::slice::from_ref(&m),
                &metrics,
                &mut never,
            )
            .await
            .context("replay interrupted")?[0];
            summary.records += 1;
            match outcome.label() {
                "stored" => summary.stored += 1,
                "duplicate" => summary.duplicate += 1,
                "already_stored" => summary.already_stored += 1,
                _ => summary.quarantined += 1,
            }
        }
        if end.get(&p).is_some_and(|&high| o + 1 >= high) {
            end.remove(&p);
        }
    }
    Ok(summary)
}

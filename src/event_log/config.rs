//! `[event_log]` and `[kafka]` settings: the embedded log's group commit, and the
//! Kafka-protocol broker, topic and consumer group.

use crate::secret::{keys_only, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventLogSettings {
    /// Most messages in one group commit.
    pub max_batch: usize,
    /// A message not committed within this is answered as not stored (see
    /// `mllp.on_storage_failure`); a commit that lands later is recorded as such.
    pub commit_timeout_ms: u64,
    /// The same sender + facility + control id + bytes within this window is a
    /// duplicate; the same key with other bytes is a control-id collision.
    pub duplicate_window_hours: u64,
}

impl Default for EventLogSettings {
    fn default() -> Self {
        EventLogSettings {
            max_batch: 64,
            commit_timeout_ms: 5000,
            duplicate_window_hours: 24 * 7,
        }
    }
}

/// Scale-out mode. Setting `brokers` replaces the embedded event log with Kafka.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// `host:port[,host:port]`. Empty: the embedded log.
    pub brokers: String,
    /// Topic for inbound messages; created at start when missing.
    pub topic: String,
    /// Partitions when the topic is created. Per-patient order holds within a partition.
    pub partitions: i32,
    /// Replication factor when the topic is created (3 in production).
    pub replication_factor: i32,
    /// `min.insync.replicas` when the topic is created: how many replicas must have a
    /// write before the broker confirms it (and we answer AA). 0: the replication
    /// factor less one, at least 1 (2 with the production factor of 3).
    pub min_insync_replicas: i32,
    /// Consumer group of the routers.
    pub group: String,
    /// The sender gets AR/CE when the broker has not confirmed a write by then.
    pub produce_timeout_ms: u64,
    /// How long the producer may wait to fill a batch (fractions allowed). Every ACK
    /// waits for it, so 0: librdkafka still batches whatever queues up while a request
    /// is in flight. Any value above 0 costs a lone sender about 1 ms per message.
    pub linger_ms: f64,
    /// The linger of a second producer used while at least `kafka.busy_at` other writes
    /// are waiting for the broker (many senders at once): their messages then go out in
    /// fewer, fuller requests. A lone sender never waits for it. 0 turns it off.
    pub busy_linger_ms: f64,
    /// Writes in flight from which the busy producer is used.
    pub busy_at: usize,
    /// none, gzip, snappy or lz4. none by default: an HL7 v2 message is a few hundred
    /// bytes to a few KB, and on the benchmark lz4 cost 18% of C=8 throughput and 38% of
    /// C=1 (docs/benchmarks.md); set lz4 when the broker is across a slow link.
    pub compression: Compression,
    /// Run the router (the consumer group member) in this process.
    pub consume: bool,
    /// How soon the group notices a dead router and hands its partitions over.
    pub session_timeout_ms: u64,
    /// librdkafka properties for every client (producer, consumer, admin), applied
    /// last: TLS and SASL for a real cluster (`security.protocol`, `sasl.mechanism`,
    /// `ssl.ca.location`, ...), or tuning. Printed configurations show keys only.
    #[serde(serialize_with = "keys_only")]
    pub librdkafka_options: std::collections::BTreeMap<String, SecretString>,
}

impl KafkaSettings {
    /// The topic's `min.insync.replicas` to create it with (see the setting).
    pub fn min_insync(&self) -> i32 {
        match self.min_insync_replicas {
            0 => (self.replication_factor - 1).max(1),
            n => n,
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: String::new(),
            topic: "adt.inbound".into(),
            partitions: 12,
            replication_factor: 1,
            min_insync_replicas: 0,
            group: "adt-router".into(),
            produce_timeout_ms: 5000,
            linger_ms: 0.0,
            busy_linger_ms: 0.05,
            busy_at: 4,
            compression: Compression::None,
            consume: true,
            session_timeout_ms: 10_000,
            librdkafka_options: Default::default(),
        }
    }
}

impl KafkaSettings {
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }
}

/// Producer compression (`compression.type`). The bundled librdkafka is built without
/// libzstd, so zstd is not offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

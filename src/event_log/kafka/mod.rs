//! Kafka, the scale-out event log. Ingest writes each message with an idempotent
//! producer ([`producer`]) before it answers AA; a consumer group of routers
//! ([`consumer`]) stores every record in the database ([`records`]) and only then lets
//! its offset be committed; [`replay`] re-drives a stretch of the topic through the same
//! path.

pub mod consumer;
pub mod producer;
pub mod records;
pub mod replay;

pub use producer::{client_config, create, record_key, KafkaLog, QuietContext};
pub use records::{Processed, RecordMeta, RecordProcessor};

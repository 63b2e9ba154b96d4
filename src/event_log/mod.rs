//! The durable event log: where a message must be before it is acknowledged.
//!
//! One interface, two backends (design.md): [`embedded`] (default: a table in the local
//! database with group commit) and [`kafka`] (scale-out: an idempotent producer, and a
//! consumer group of routers that store what they consume, see [`crate::event_log::kafka::consumer`]). The listener only ever calls
//! [`EventLog::append`]; an `Ok` means the message is durable, and only then may the
//! sender hear AA/CA.

pub mod config;
pub mod embedded;
pub mod kafka;

use crate::store::{Appended, NewMessage};

#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("the event log did not commit within {0} ms")]
    Timeout(u64),
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
    #[error("the event log is shutting down")]
    Closed,
    #[error("the event log was too far behind to begin this message's commit before its deadline")]
    Abandoned,
}

impl LogError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LogError::Timeout(_) => "timeout",
            LogError::Unavailable(_) => "unavailable",
            LogError::Closed => "closed",
            LogError::Abandoned => "abandoned",
        }
    }
}

#[derive(Clone)]
pub enum EventLog {
    Embedded(embedded::EmbeddedLog),
    Kafka(kafka::KafkaLog),
}

impl EventLog {
    /// Appends one message; returns once it is durable (or has failed). `unstored_ack`
    /// is what the sender will hear if it fails ("none": nothing), kept for the record
    /// should the commit land after the sender was told.
    pub async fn append(
        &self,
        msg: NewMessage,
        unstored_ack: &'static str,
    ) -> Result<Appended, LogError> {
        match self {
            EventLog::Embedded(l) => l.append(msg, unstored_ack).await,
            EventLog::Kafka(l) => l.append(msg).await,
        }
    }

    /// Records that stored message `id`'s sender heard `code` instead of what its row
    /// says. The Kafka log's records are immutable once produced: there the correction
    /// is logged and counted only (docs/ingest.md).
    pub async fn correct_ack(&self, fix: embedded::AckFix) {
        match self {
            EventLog::Embedded(l) => l.correct_ack(fix).await,
            EventLog::Kafka(_) => {
                tracing::warn!(code = fix.code, "The ACK of a message produced to Kafka could not be written; its record keeps the code decided before the write.");
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            EventLog::Embedded(_) => "embedded",
            EventLog::Kafka(_) => "kafka",
        }
    }
}

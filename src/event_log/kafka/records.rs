//! One Kafka record into the database: [`RecordProcessor`] turns each record the
//! consumer group ([`super::consumer`]) or a replay ([`super::replay`]) reads into a row
//! of the inbound index, idempotently (by its origin), and only then may its offset be
//! committed. Routing then reads it from the database like any stored message.

use crate::event_log::embedded::now_us;
use crate::hl7::charset;
use crate::hl7::ParseRules;
use crate::ingest::{new_message, parse_guarded};
use crate::store::{NewQuarantine, Origin, Store, StoreError};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// What ingest knew about a record, from its headers. Records written by other
/// producers may have none of it.
#[derive(Clone, Debug, Default)]
pub struct RecordMeta {
    pub received_at_us: Option<i64>,
    pub peer: Option<String>,
    pub ack_code: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Processed {
    /// A new row; `duplicate` when the sender had already sent these bytes with this
    /// control id, `collision` when it had sent other bytes with it.
    Stored { duplicate: bool, collision: bool },
    /// This very record (same partition and offset) was stored before: nothing changed.
    AlreadyStored,
    /// Not a usable HL7 message: kept in quarantine, never blocks the partition.
    Quarantined,
}

impl Processed {
    pub fn label(self) -> &'static str {
        match self {
            Processed::Stored {
                duplicate: true, ..
            } => "duplicate",
            Processed::Stored {
                collision: true, ..
            } => "collision",
            Processed::Stored { .. } => "stored",
            Processed::AlreadyStored => "already_stored",
            Processed::Quarantined => "quarantined",
        }
    }
}

#[derive(Clone)]
pub struct RecordProcessor {
    pub store: Store,
    pub rules: ParseRules,
    pub fallback: &'static encoding_rs::Encoding,
    pub duplicate_window: Duration,
    /// Told when records were stored (the router in this process routes them).
    pub stored: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl RecordProcessor {
    /// Processes one record. Idempotent: the same origin twice changes nothing.
    ///
    /// # Errors
    /// Only when the database fails; the caller retries the same record (at-least-once).
    pub async fn process(
        &self,
        raw: &[u8],
        meta: &RecordMeta,
        origin: &Origin,
    ) -> Result<Processed, StoreError> {
        Ok(self
            .process_batch(&[(raw, meta.clone(), origin.clone())])
            .await?[0])
    }

    /// Processes records in one database statement (plus a quarantine insert for each
    /// unusable one); results in input order. Idempotent like [`Self::process`].
    ///
    /// # Errors
    /// Only when the database fails; nothing of the batch may be considered done.
    pub async fn process_batch(
        &self,
        records: &[(&[u8], RecordMeta, Origin)],
    ) -> Result<Vec<Processed>, StoreError> {
        let mut out = vec![Processed::Quarantined; records.len()];
        let mut rows = Vec::with_capacity(records.len());
        let mut slots = Vec::with_capacity(records.len());
        for (i, (raw, meta, origin)) in records.iter().enumerate() {
            if let Some(row) = self.prepare(raw, meta, origin).await? {
                rows.push((row, origin.clone()));
                slots.push(i);
            }
        }
        let since = now_us() - self.duplicate_window.as_micros() as i64;
        let stored_all = self.store.record_consumed(&rows, since).await?;
        if let Some(w) = self.stored.as_ref().filter(|_| !rows.is_empty()) {
            w.notify_one();
        }
        for (slot, stored) in slots.into_iter().zip(stored_all) {
            out[slot] = match stored {
                Some(a) => Processed::Stored {
                    duplicate: a.duplicate,
                    collision: a.collision,
                },
                None => Processed::AlreadyStored,
            };
        }
        Ok(out)
    }

    /// The row to store, or `None` after quarantining a record that is no usable HL7.
    async fn prepare(
        &self,
        raw: &[u8],
        meta: &RecordMeta,
        origin: &Origin,
    ) -> Result<Option<crate::store::NewMessage>, StoreError> {
        let sha256 = hex::encode(Sha256::digest(raw));
        let received_at_us = meta.received_at_us.unwrap_or_else(now_us);
        let peer = meta.peer.clone().unwrap_or_else(|| origin.source.clone());
        let reject = |reason: &str, diagnostic: String| NewQuarantine {
            received_at_us,
            peer: peer.clone(),
            reason: reason.to_string(),
            diagnostic,
            control_id: None,
            sha256: sha256.clone(),
            raw: raw.to_vec(),
        };
        let (text, cs) = match charset::decode(raw, self.fallback) {
            Ok(v) => v,
            Err(e) => {
                self.store
                    .quarantine(&reject("bad_charset", e.to_string()), Some(origin))
                    .await?;
                return Ok(None);
            }
        };
        let parsed = match parse_guarded(&text, &self.rules, &sha256) {
            Ok(p) => p,
            Err(rej) => {
                tracing::warn!(
                    reason = rej.reason,
                    partition = origin.partition,
                    offset = origin.offset,
                    sha256,
                    "Record is not a usable HL7 message; quarantined."
                );
                self.store
                    .quarantine(&reject(rej.reason, rej.err.diagnostic), Some(origin))
                    .await?;
                return Ok(None);
            }
        };
        // What the listener recorded it answered: a code, or "none" (other producers
        // may send nothing, or anything: only those two are kept).
        let ack_code = meta
            .ack_code
            .as_deref()
            .and_then(|c| match c {
                "none" => Some("none"),
                c => crate::hl7::AckCode::parse(c).map(crate::hl7::AckCode::as_str),
            })
            .map(str::to_string);
        let row = new_message(&parsed, raw, &peer, received_at_us, sha256, cs, ack_code);
        Ok(Some(row))
    }
}

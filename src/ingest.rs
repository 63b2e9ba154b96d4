//! Ingest: one frame in, one ACK out, with the message durable in between.
//!
//! This is where the non-negotiable lives: [`Ingest::handle`] returns AA/CA only after
//! [`EventLog::append`] has succeeded, and [`Ingest::answered`] keeps the record true to
//! what reached the wire. Everything else (decoding, parsing, quarantine,
//! choosing the ACK) is arranged around that one await. Transport-agnostic: the MLLP
//! listener calls it, and so could a file drop.

use crate::event_log::embedded::{now_us, AckFix};
use crate::event_log::EventLog;
use crate::hl7::ack::{build_ack, AckEcho};
use crate::hl7::charset::{self, Charset};
use crate::hl7::{
    ack_code_for, AcceptAck, AckCode, Disposition, ErrDetail, ParseRules, ParsedMessage,
};
use crate::metrics::Metrics;
use crate::store::{NewMessage, NewQuarantine, Store};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a sender hears when its message could not be stored (`mllp.on_storage_failure`).
///
/// HL7 v2 §2.8.2 gives AR for "a failure unrelated to content", after which the same
/// message is likely to be accepted. But the engines hospitals run (Mirth Connect, Open
/// Integration Engine) mark an AR as an error and never resend it with stock settings;
/// only timeouts, unreadable answers and connection errors go back on their queue. So
/// the default closes the connection, which every engine retries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageFailure {
    /// Send nothing and close the connection: the sender sees a transport error and
    /// queues the message for a retry.
    #[default]
    Close,
    /// AR (original mode) / CE (enhanced) with ERR 207, for engines set to retry AR.
    Nack,
}

/// How ingest answers (the `[mllp]` settings that shape an answer).
#[derive(Clone, Copy, Debug, Default)]
pub struct AnswerPolicy {
    pub accept_ack: AcceptAck,
    pub on_storage_failure: StorageFailure,
}

/// A frame's answer, and what to record once it has (or has not) reached the wire:
/// pass it to [`Ingest::answered`].
#[must_use]
pub struct Answer {
    /// The framed ACK to write, if one is due.
    pub ack: Option<Vec<u8>>,
    /// Close the connection without answering (storage failed, `close` mode).
    pub close: bool,
    /// The ACK's code, or "none".
    code: &'static str,
    /// Sending facility and trigger, for the metric; `None` for frames not counted.
    labels: Option<(String, String)>,
    /// The stored row, whose `ack_code` says `code`.
    stored: Option<i64>,
}

pub struct Ingest {
    log: EventLog,
    /// Quarantine writes go straight to the store: they are rare and never ACKed AA.
    store: Store,
    rules: ParseRules,
    fallback: &'static encoding_rs::Encoding,
    policy: AnswerPolicy,
    metrics: Arc<Metrics>,
    ack_prefix: String,
    ack_seq: AtomicU64,
    /// Told after each stored message (the router's wake-up).
    pub stored: Option<Arc<tokio::sync::Notify>>,
}

impl Ingest {
    pub fn new(
        log: EventLog,
        store: Store,
        rules: ParseRules,
        fallback: &'static encoding_rs::Encoding,
        policy: AnswerPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        // ACK control ids must be unique across restarts too: prefix with the start time.
        let ack_prefix = format!("ADTR{:x}", now_us() / 1000);
        Ingest {
            log,
            store,
            rules,
            fallback,
            policy,
            metrics,
            ack_prefix,
            ack_seq: AtomicU64::new(0),
            stored: None,
        }
    }

    /// Handles one frame payload from `peer` and says how to answer it. The caller
    /// writes [`Answer::ack`] (or closes, when [`Answer::close`]) and then reports what
    /// happened with [`Ingest::answered`].
    ///
    /// `allowed`: with mutual TLS and `mllp.tls_senders`, the facilities the client's
    /// certificate may send for; a message from another MSH-4 is rejected (AR/CR with
    /// ERR) and quarantined.
    pub async fn handle(
        &self,
        raw: &[u8],
        peer: &str,
        allowed: Option<&crate::mllp::tls::Allowed>,
    ) -> Answer {
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            self.metrics
                .frame_errors
                .with_label_values(&["empty_frame"])
                .inc();
            return Answer {
                ack: None,
                close: false,
                code: "none",
                labels: None,
                stored: None,
            };
        }
        let received_at_us = now_us();
        let sha256 = hex::encode(Sha256::digest(raw));

        let (text, charset) = match charset::decode(raw, self.fallback) {
            Ok(v) => v,
            Err(e) => {
                let text = String::from_utf8_lossy(raw);
                let echo = AckEcho::recover(&text);
                let err = ErrDetail::error(
                    103,
                    Some(crate::hl7::ErrLocation::field("MSH", 1, 18)),
                    e.to_string(),
                );
                self.quarantine(
                    raw,
                    peer,
                    received_at_us,
                    &sha256,
                    "bad_charset",
                    &err,
                    &echo,
                )
                .await;
                let cs = Charset {
                    encoding: encoding_rs::UTF_8,
                    declared: false,
                };
                let labels = (String::new(), String::new());
                return self.answer(&echo, cs, Disposition::Rejected, vec![err], labels, None);
            }
        };
        let echo = AckEcho::recover(&text);
        let parse = parse_guarded(&text, &self.rules, &sha256);
        let parsed = match parse {
            Ok(p) => p,
            Err(rej) => {
                let at = (received_at_us, sha256.as_str());
                return self
                    .reject(raw, peer, at, rej.reason, rej.err, &echo, charset)
                    .await;
            }
        };

        if let Some(a) = allowed.filter(|a| !a.permits(&parsed.header.sending_facility)) {
            let err = ErrDetail::error(
                207,
                Some(crate::hl7::ErrLocation::field("MSH", 1, 4)),
                format!(
                    "Sending facility '{}' (MSH-4) is not one the client certificate {} may send for (mllp.tls_senders)",
                    parsed.header.sending_facility, a.identity
                ),
            );
            let at = (received_at_us, sha256.as_str());
            return self
                .reject(raw, peer, at, "facility_not_allowed", err, &echo, charset)
                .await;
        }

        let content_ok = parsed.problems.is_empty();
        let disposition = if content_ok {
            Disposition::Accepted
        } else {
            Disposition::ContentError
        };
        let code = self.code(&echo, disposition);
        // The record says what the sender will hear, "none" included.
        let will_hear = Some(code.map_or("none", AckCode::as_str).to_string());
        let record = new_message(
            &parsed,
            raw,
            peer,
            received_at_us,
            sha256,
            charset,
            will_hear,
        );
        let labels = (
            parsed.header.sending_facility.clone(),
            parsed.header.message_type.trigger.clone(),
        );
        let unstored_ack = match self.policy.on_storage_failure {
            StorageFailure::Close => "none",
            StorageFailure::Nack => self
                .code(&echo, Disposition::NotStored)
                .map_or("none", AckCode::as_str),
        };
        let control_id = &parsed.header.control_id;
        match self.log.append(record, unstored_ack).await {
            Ok(appended) => {
                if let Some(w) = &self.stored {
                    w.notify_one();
                }
                if appended.duplicate {
                    self.metrics.duplicates.inc();
                    tracing::info!(%control_id, sending_facility = %labels.0, "Duplicate message acknowledged again and not routed twice.");
                }
                if appended.collision {
                    self.metrics.control_id_collisions.inc();
                    tracing::warn!(%control_id, sending_facility = %labels.0, id = appended.id, "Control id reused for different content: stored, routed and flagged as a collision.");
                }
                tracing::debug!(%control_id, sending_facility = %labels.0, trigger_event = %labels.1, id = appended.id, "Message stored.");
                let mut errs = parsed.problems;
                if matches!(code, Some(AckCode::CA)) {
                    // Enhanced mode stores content errors and says so as warnings.
                    errs = errs.into_iter().map(ErrDetail::warning).collect();
                }
                self.answer(&echo, charset, disposition, errs, labels, Some(appended.id))
            }
            Err(e) => {
                self.metrics
                    .append_errors
                    .with_label_values(&[e.kind()])
                    .inc();
                if self.policy.on_storage_failure == StorageFailure::Close {
                    tracing::warn!(%control_id, sending_facility = %labels.0, error = %e, "Message not stored; closing the connection so the sender resends it.");
                    return Answer {
                        ack: None,
                        close: true,
                        code: "none",
                        labels: Some(labels),
                        stored: None,
                    };
                }
                tracing::warn!(%control_id, sending_facility = %labels.0, error = %e, "Message not stored; answered with a retryable reject.");
                let err = ErrDetail::error(
                    207,
                    None,
                    format!("Message was not stored ({e}); it was not accepted, send it again"),
                );
                self.answer(
                    &echo,
                    charset,
                    Disposition::NotStored,
                    vec![err],
                    labels,
                    None,
                )
            }
        }
    }

    /// Records what reached the wire: counts the answer by the code the sender got
    /// ("none" when nothing was written), and corrects a stored row whose ACK could not
    /// be written. `written` is whether the whole ACK went into the connection.
    pub async fn answered(&self, a: Answer, written: bool) {
        let sent = if a.ack.is_some() && written {
            a.code
        } else {
            "none"
        };
        if let Some((facility, trigger)) = &a.labels {
            self.metrics.message(facility, trigger, sent);
        }
        if let Some(id) = a.stored.filter(|_| sent != a.code) {
            self.metrics
                .ack_corrections
                .with_label_values(&["ack_not_written"])
                .inc();
            self.log.correct_ack(AckFix { id, code: sent }).await;
        }
    }

    fn code(&self, echo: &AckEcho, d: Disposition) -> Option<AckCode> {
        ack_code_for(echo.mode, d, self.policy.accept_ack)
    }

    /// Quarantines a frame and answers it AR/CR with `err`. `at`: when it came, and
    /// its SHA-256.
    #[allow(clippy::too_many_arguments)]
    async fn reject(
        &self,
        raw: &[u8],
        peer: &str,
        at: (i64, &str),
        reason: &str,
        err: ErrDetail,
        echo: &AckEcho,
        charset: Charset,
    ) -> Answer {
        self.quarantine(raw, peer, at.0, at.1, reason, &err, echo)
            .await;
        let labels = (echo.sending_facility.clone(), echo.trigger.clone());
        self.answer(
            echo,
            charset,
            Disposition::Rejected,
            vec![err],
            labels,
            None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    async fn quarantine(
        &self,
        raw: &[u8],
        peer: &str,
        received_at_us: i64,
        sha256: &str,
        reason: &str,
        err: &ErrDetail,
        echo: &AckEcho,
    ) {
        self.metrics.quarantined.with_label_values(&[reason]).inc();
        tracing::warn!(reason, sha256, peer, control_id = %echo.control_id, diagnostic = %err.diagnostic, "Frame rejected and quarantined.");
        let q = NewQuarantine {
            received_at_us,
            peer: peer.to_string(),
            reason: reason.to_string(),
            diagnostic: err.diagnostic.clone(),
            control_id: Some(echo.control_id.clone()).filter(|c| !c.is_empty()),
            sha256: sha256.to_string(),
            raw: raw.to_vec(),
        };
        if let Err(e) = self.store.quarantine(&q, None).await {
            tracing::error!(sha256, error = %e, "Could not write a rejected frame to quarantine; it exists only in the sender now.");
        }
    }

    fn answer(
        &self,
        echo: &AckEcho,
        charset: Charset,
        disposition: Disposition,
        errors: Vec<ErrDetail>,
        labels: (String, String),
        stored: Option<i64>,
    ) -> Answer {
        let code = self.code(echo, disposition);
        let ack = code.map(|code| {
            let id = format!(
                "{}-{}",
                self.ack_prefix,
                self.ack_seq.fetch_add(1, Ordering::Relaxed)
            );
            let text = build_ack(echo, code, &errors, &id, &hl7_timestamp());
            let mut framed = Vec::with_capacity(text.len() + 3);
            crate::mllp::codec::encode_frame(&charset::encode(&text, charset), &mut framed);
            framed
        });
        Answer {
            ack,
            close: false,
            code: code.map_or("none", AckCode::as_str),
            labels: Some(labels),
            stored,
        }
    }
}

/// Parses with a guard: the parser is pure, and should it ever panic on some input, that
/// message is rejected and quarantined instead of killing the connection (the sender
/// would resend the same poison message forever) or the router.
pub(crate) fn parse_guarded(
    text: &str,
    rules: &ParseRules,
    sha256: &str,
) -> Result<ParsedMessage, crate::hl7::Rejection> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| crate::hl7::parse_message(text, rules))).unwrap_or_else(|_| {
        tracing::error!(sha256, "The HL7 parser panicked on a message; it is quarantined. Please report this with the quarantined bytes.");
        Err(crate::hl7::Rejection {
            reason: "parser_panic",
            err: ErrDetail::error(207, None, "Internal error while parsing this message; it was quarantined".into()),
        })
    })
}

/// The stored row for a parsed message. Shared with the Kafka router, which rebuilds
/// it from the record it consumes.
pub(crate) fn new_message(
    p: &ParsedMessage,
    raw: &[u8],
    peer: &str,
    received_at_us: i64,
    sha256: String,
    charset: Charset,
    ack_code: Option<String>,
) -> NewMessage {
    let h = &p.header;
    let error = (!p.problems.is_empty()).then(|| {
        p.problems
            .iter()
            .map(|e| e.diagnostic.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    });
    NewMessage {
        received_at_us,
        peer: peer.to_string(),
        sending_application: h.sending_application.clone(),
        sending_facility: h.sending_facility.clone(),
        receiving_application: h.receiving_application.clone(),
        receiving_facility: h.receiving_facility.clone(),
        control_id: h.control_id.as_str().to_string(),
        message_type: h.message_type.code.clone(),
        trigger_event: h.message_type.trigger.clone(),
        version: h.version.clone(),
        processing_id: h.processing_id.clone(),
        charset: charset.name().to_string(),
        ack_mode: h.ack_mode.name().to_string(),
        ack_code,
        status: if p.problems.is_empty() {
            "pending"
        } else {
            "content_error"
        },
        error,
        patient_key: p.routing.patient_ids.first().map(|id| id.key()),
        visit_number: p.routing.visit_number.clone(),
        patient_class: p.routing.patient_class.clone(),
        sha256,
        raw: raw.to_vec(),
    }
}

/// MSH-7 for our ACKs: UTC with an explicit offset.
pub fn hl7_timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

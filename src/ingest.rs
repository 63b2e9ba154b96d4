//! Ingest: one frame in, one ACK out, with the message durable in between.
//!
//! This is where the non-negotiable lives: [`Ingest::handle`] returns AA/CA only after
//! [`EventLog::append`] has succeeded. Everything else (decoding, parsing, quarantine,
//! choosing the ACK) is arranged around that one await. Transport-agnostic: the MLLP
//! listener calls it, and so could a file drop.

use crate::hl7::ack::{build_ack, AckEcho};
use crate::hl7::charset::{self, Charset};
use crate::hl7::{ack_code_for, AckCode, Disposition, ErrDetail, ParseRules, ParsedMessage};
use crate::log::embedded::now_us;
use crate::log::EventLog;
use crate::metrics::Metrics;
use crate::store::{NewMessage, NewQuarantine, Store};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct Ingest {
    log: EventLog,
    /// Quarantine writes go straight to the store: they are rare and never ACKed AA.
    store: Store,
    rules: ParseRules,
    fallback: &'static encoding_rs::Encoding,
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
        metrics: Arc<Metrics>,
    ) -> Self {
        // ACK control ids must be unique across restarts too: prefix with the start time.
        let ack_prefix = format!("ADTR{:x}", now_us() / 1000);
        Ingest {
            log,
            store,
            rules,
            fallback,
            metrics,
            ack_prefix,
            ack_seq: AtomicU64::new(0),
            stored: None,
        }
    }

    /// Handles one frame payload from `peer`; returns the ACK, already MLLP-framed, or
    /// `None` when none is due (an empty frame, or MSH-15 asked for none).
    pub async fn handle(&self, raw: &[u8], peer: &str) -> Option<Vec<u8>> {
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            self.metrics
                .frame_errors
                .with_label_values(&["empty_frame"])
                .inc();
            return None;
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
                return self.answer(&echo, cs, Disposition::Rejected, vec![err], "", "");
            }
        };
        let echo = AckEcho::recover(&text);
        let parse = parse_guarded(&text, &self.rules, &sha256);
        let parsed = match parse {
            Ok(p) => p,
            Err(rej) => {
                self.quarantine(
                    raw,
                    peer,
                    received_at_us,
                    &sha256,
                    rej.reason,
                    &rej.err,
                    &echo,
                )
                .await;
                return self.answer(
                    &echo,
                    charset,
                    Disposition::Rejected,
                    vec![rej.err],
                    &echo.sending_facility,
                    &echo.trigger,
                );
            }
        };

        let content_ok = parsed.problems.is_empty();
        let disposition = if content_ok {
            Disposition::Accepted
        } else {
            Disposition::ContentError
        };
        let code = ack_code_for(echo.mode, disposition);
        let record = new_message(&parsed, raw, peer, received_at_us, sha256, charset, code);
        let facility = parsed.header.sending_facility.clone();
        let trigger = parsed.header.message_type.trigger.clone();
        match self.log.append(record).await {
            Ok(appended) => {
                if let Some(w) = &self.stored {
                    w.notify_one();
                }
                if appended.duplicate {
                    self.metrics.duplicates.inc();
                    tracing::info!(control_id = %parsed.header.control_id, sending_facility = %facility, "Duplicate message acknowledged again and not routed twice.");
                }
                tracing::debug!(control_id = %parsed.header.control_id, sending_facility = %facility, trigger_event = %trigger, id = appended.id, "Message stored.");
                let mut errs = parsed.problems;
                if matches!(code, Some(AckCode::CA)) {
                    // Enhanced mode stores content errors and says so as warnings.
                    errs = errs.into_iter().map(ErrDetail::warning).collect();
                }
                self.answer(&echo, charset, disposition, errs, &facility, &trigger)
            }
            Err(e) => {
                tracing::warn!(control_id = %parsed.header.control_id, sending_facility = %facility, error = %e, "Message not stored; answered with a retryable reject.");
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
                    &facility,
                    &trigger,
                )
            }
        }
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
        facility: &str,
        trigger: &str,
    ) -> Option<Vec<u8>> {
        let code = ack_code_for(echo.mode, disposition);
        self.metrics.message(
            facility,
            trigger,
            code.map(AckCode::as_str).unwrap_or("none"),
        );
        let code = code?;
        let id = format!(
            "{}-{}",
            self.ack_prefix,
            self.ack_seq.fetch_add(1, Ordering::Relaxed)
        );
        let text = build_ack(echo, code, &errors, &id, &hl7_timestamp());
        let mut framed = Vec::with_capacity(text.len() + 3);
        crate::mllp::codec::encode_frame(&charset::encode(&text, charset), &mut framed);
        Some(framed)
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
    code: Option<AckCode>,
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
        ack_code: code.map(|c| c.as_str().to_string()),
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

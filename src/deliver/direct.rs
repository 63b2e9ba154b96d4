//! Direct secure email (standards.md §6): adt-router is a Direct edge system. It submits
//! each notification to its HISP over SMTP (STARTTLS or TLS, with AUTH); the HISP signs
//! and encrypts it (S/MIME) and relays it to the recipient's HISP.
//!
//! The message follows the DirectTrust event-notification conventions: a readable text
//! body with the CoP content, the structured notification (`notification.json`, cut to
//! the rule's content profile), the HL7 v2 message itself when the profile is `full`
//! and nothing is redacted (`notification.hl7`), and a Context attachment
//! (`metadata.txt`, named by `X-Direct-Context`). It asks for timely and reliable
//! delivery, so the recipient side answers with processed and then dispatched MDNs.
//!
//! The Message-ID is `<idempotency key.nonce@our domain>` ([`MessageIds`]): the same on
//! every retry and resend, so the recipient can tell a repeat, and the MDNs that come
//! back (their `Original-Message-ID`) lead straight to the notification. The nonce is
//! an HMAC of the key under a secret only our store holds, so a report can name a
//! notification only by quoting the message we sent; the key alone (published in
//! every message) is not enough.

use super::config::DirectSettings;
use super::report::{self, Signal};
use super::Outcome;
use crate::directory::endpoint::EndpointKind;
use crate::metrics::Metrics;
use crate::routing::notification::Notification;
use crate::routing::rules::ContentProfile;
use crate::secret::ExposeSecret;
use crate::store::delivery::{AttemptRow, Outgoing, Settle};
use crate::store::direct::{DirectRow, ReportRow};
use crate::store::outbox::Status;
use crate::store::{Store, StoreError};
use lettre::message::header::{ContentDisposition, ContentId, ContentType};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// What Direct needs at send time.
#[derive(Clone)]
pub struct DirectSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Address,
    pub ids: MessageIds,
    /// The whole submission's time limit (lettre's own applies per command).
    timeout: Duration,
    pub processed_timeout: Duration,
    pub dispatched_timeout: Duration,
    pub require_dispatched: bool,
}

impl std::fmt::Debug for DirectSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectSender")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// Why Direct cannot be set up from its settings (`serve` stops with it).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("direct.from '{from}': {source}")]
    From {
        from: String,
        source: lettre::address::AddressError,
    },
    #[error("direct.smtp_url: {0}")]
    SmtpUrl(String),
    #[error("direct.smtp_url has no host")]
    NoHost,
    #[error("direct.tls_ca_file {file}: {reason}")]
    CaFile { file: String, reason: String },
    #[error("direct TLS: {0}")]
    Tls(lettre::transport::smtp::Error),
}

/// Why a notification cannot become a message (the attempt fails for good).
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("the notification body is not JSON: {0}")]
    Body(#[from] serde_json::Error),
    #[error("not a Direct address: {0}")]
    Address(#[from] lettre::address::AddressError),
    #[error("{0}")]
    ContentType(#[from] lettre::message::header::ContentTypeErr),
    #[error("cannot build the message: {0}")]
    Build(#[from] lettre::error::Error),
}

impl DirectSender {
    /// `None` when Direct is not configured (`direct.smtp_url` empty). `secret` keys
    /// the Message-ID nonces ([`MessageIds`]).
    pub fn new(
        s: &DirectSettings,
        timeout: Duration,
        secret: Vec<u8>,
    ) -> Result<Option<DirectSender>, SetupError> {
        if s.smtp_url.is_empty() {
            return Ok(None);
        }
        let from: Address = s.from.parse().map_err(|source| SetupError::From {
            from: s.from.clone(),
            source,
        })?;
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::from_url(s.smtp_url.expose())
            .map_err(|e| SetupError::SmtpUrl(e.to_string()))?
            .timeout(Some(timeout));
        if !s.tls_ca_file.is_empty() {
            b = b.tls(private_ca_tls(s.smtp_url.expose(), &s.tls_ca_file)?);
        }
        if !s.username.is_empty() {
            b = b.credentials(Credentials::new(
                s.username.clone(),
                s.password.expose_secret().to_string(),
            ));
        }
        Ok(Some(DirectSender {
            transport: b.build(),
            ids: MessageIds::new(&from, secret),
            from,
            timeout,
            processed_timeout: Duration::from_secs(s.processed_timeout_secs),
            dispatched_timeout: Duration::from_secs(s.dispatched_timeout_secs),
            require_dispatched: s.require_dispatched,
        }))
    }

    /// Builds the RFC 5322 message for a notification.
    pub fn compose(&self, n: &Outgoing) -> Result<(Vec<u8>, String), ComposeError> {
        compose(&self.ids, &self.from, n)
    }

    /// Submits one notification; the outcome and the SHA-256 of the message sent.
    pub async fn send(&self, n: &Outgoing) -> (Outcome, String) {
        let permanent = |reason: String| Outcome::Permanent { code: None, reason };
        let to: Address = match n.endpoint.parse() {
            Ok(a) => a,
            Err(e) => {
                return (
                    permanent(format!("not a Direct address: {e}")),
                    String::new(),
                )
            }
        };
        let (bytes, message_id) = match self.compose(n) {
            Ok(m) => m,
            Err(e) => return (permanent(e.to_string()), String::new()),
        };
        let hash = hex::encode(Sha256::digest(&bytes));
        let envelope = match lettre::address::Envelope::new(Some(self.from.clone()), vec![to]) {
            Ok(e) => e,
            Err(e) => return (permanent(format!("envelope: {e}")), hash),
        };
        // A submission that stalls (seen when a HISP refuses AUTH over TLS: lettre never
        // returns) must not hold its slot past the request limit.
        let sent =
            match tokio::time::timeout(self.timeout, self.transport.send_raw(&envelope, &bytes))
                .await
            {
                Ok(r) => r,
                Err(_) => {
                    return (
                        Outcome::Transient {
                            code: None,
                            reason: format!(
                                "SMTP: no answer from the HISP within {} ms",
                                self.timeout.as_millis()
                            ),
                            retry_after: None,
                        },
                        hash,
                    )
                }
            };
        let outcome = match sent {
            Ok(resp) => {
                let code = u16::from(resp.code());
                let reply: String = resp.message().collect::<Vec<_>>().join(" ");
                Outcome::Submitted {
                    code,
                    proof: serde_json::json!({
                        "smtp_code": code,
                        "smtp_reply": reply.chars().take(200).collect::<String>(),
                        "message_id": message_id,
                        "message_sha256": hash,
                        "submitted_at": crate::directory::rfc3339_us(crate::store::now_us()),
                    })
                    .to_string(),
                }
            }
            Err(e) => {
                let code = e.status().map(u16::from);
                let reason = format!("SMTP: {e}");
                if e.is_permanent() {
                    Outcome::Permanent { code, reason }
                } else {
                    // 4xx, connection and TLS trouble, timeouts: the HISP may be back soon.
                    Outcome::Transient {
                        code,
                        reason,
                        retry_after: None,
                    }
                }
            }
        };
        (outcome, hash)
    }
}

/// TLS towards a HISP whose certificate a private CA signed: the URL's mode
/// (`smtps://` wraps, `?tls=opportunistic` may fall back to plain, otherwise STARTTLS
/// is required), trusting that CA.
fn private_ca_tls(smtp_url: &str, ca_file: &str) -> Result<Tls, SetupError> {
    let url = url::Url::parse(smtp_url).map_err(|e| SetupError::SmtpUrl(e.to_string()))?;
    let host = url.host_str().ok_or(SetupError::NoHost)?;
    let ca_error = |reason: String| SetupError::CaFile {
        file: ca_file.to_string(),
        reason,
    };
    let pem = std::fs::read(ca_file).map_err(|e| ca_error(e.to_string()))?;
    let ca = Certificate::from_pem(&pem).map_err(|e| ca_error(e.to_string()))?;
    let params = TlsParameters::builder(host.to_string())
        .add_root_certificate(ca)
        .build_rustls()
        .map_err(SetupError::Tls)?;
    let mode = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    Ok(match (url.scheme(), mode.as_deref()) {
        ("smtps", _) => Tls::Wrapper(params),
        (_, Some("opportunistic")) => Tls::Opportunistic(params),
        _ => Tls::Required(params),
    })
}

/// Makes and checks our Message-IDs: `<key.nonce@domain>`, the nonce 128 bits of
/// HMAC-SHA256(secret, key). Deterministic, so every resend of a notification carries
/// the same id; unguessable without the secret (`router_secret` in the store).
#[derive(Clone)]
pub struct MessageIds {
    domain: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for MessageIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageIds")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// Why a report's Original-Message-ID does not name one of our notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotOurs {
    /// No Message-ID, or not `<local@domain>`.
    Missing,
    /// Another domain's message.
    Foreign,
    /// Our domain, but the nonce is absent or wrong: guessed or forged.
    Forged,
}

impl MessageIds {
    pub const SECRET_NAME: &'static str = "direct_message_id";

    pub fn new(from: &Address, secret: Vec<u8>) -> MessageIds {
        MessageIds {
            domain: from.domain().to_string(),
            secret,
        }
    }

    fn mac(&self, key: &str) -> hmac::Hmac<Sha256> {
        use hmac::Mac;
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(b"direct-message-id|");
        mac.update(key.as_bytes());
        mac
    }

    /// The Message-ID for a notification key.
    pub fn make(&self, key: &str) -> String {
        use hmac::Mac;
        let tag = self.mac(key).finalize().into_bytes();
        format!("<{key}.{}@{}>", hex::encode(&tag[..16]), self.domain)
    }

    /// The notification key a Message-ID names, if it is one we made.
    pub fn verify<'a>(&self, message_id: &'a str) -> Result<&'a str, NotOurs> {
        use hmac::Mac;
        let inner = message_id
            .trim()
            .strip_prefix('<')
            .and_then(|m| m.strip_suffix('>'))
            .ok_or(NotOurs::Missing)?;
        let (local, domain) = inner.rsplit_once('@').ok_or(NotOurs::Missing)?;
        if !domain.eq_ignore_ascii_case(&self.domain) {
            return Err(NotOurs::Foreign);
        }
        let (key, tag) = local.rsplit_once('.').ok_or(NotOurs::Forged)?;
        let tag = hex::decode(tag).map_err(|_| NotOurs::Forged)?;
        if key.is_empty() || tag.len() != 16 {
            return Err(NotOurs::Forged);
        }
        // Compared in constant time.
        self.mac(key)
            .verify_truncated_left(&tag)
            .map_err(|_| NotOurs::Forged)?;
        Ok(key)
    }
}

/// A readable label for an event kind.
fn kind_words(kind: &str) -> &str {
    match kind {
        "ed-registration" => "Emergency department registration",
        "admission" => "Inpatient admission",
        "discharge" => "Discharge",
        "transfer" => "Transfer to another facility",
        "move" => "Transfer within the hospital",
        "update" => "Update",
        "retraction" => "Cancellation",
        other => other,
    }
}

/// A value worth a line: present and not empty.
fn text(v: Option<&str>) -> Option<String> {
    v.filter(|s| !s.is_empty()).map(str::to_string)
}

/// The readable body: one `Label: value` line per known fact, CRLF line breaks.
fn body_text(p: &Notification) -> String {
    let mut lines = vec![
        "This is an electronic event notification from a hospital (CMS Conditions of Participation, 42 CFR 482.24(d)).".to_string(),
        String::new(),
    ];
    let mut line = |label: &str, value: Option<String>| {
        if let Some(v) = value {
            lines.push(format!("{label}: {v}"));
        }
    };
    line("Event", Some(kind_words(&p.kind).to_string()));
    if let Some(r) = &p.retracts_kind {
        line("Cancels", Some(kind_words(r).to_string()));
    }
    line("Event time", text(Some(&p.event_time)));
    let pt = &p.patient;
    let name = [text(Some(&pt.given)), text(Some(&pt.family))]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    line("Patient", (!name.is_empty()).then_some(name));
    line(
        "Date of birth",
        text(pt.birth_date.clone().flatten().as_deref()),
    );
    line("Sex", text(pt.sex.as_deref()));
    line("Sending facility", text(Some(&p.sending_facility)));
    line("Treating facility", text(Some(&p.treating_facility)));
    if let Some(pr) = &p.treating_practitioner {
        line(
            "Treating practitioner",
            text(Some(&pr.name)).map(|n| match text(pr.npi.as_deref()) {
                Some(npi) => format!("{n} (NPI {npi})"),
                None => n,
            }),
        );
    }
    let enc = &p.encounter;
    line("Patient class", text(enc.patient_class.as_deref()));
    line("Admitted", text(enc.admit_time.as_deref()));
    line("Discharged", text(enc.discharge_time.as_deref()));
    line(
        "Discharge disposition",
        text(enc.discharge_disposition.as_deref()),
    );
    line("Discharged to", text(enc.discharged_to.as_deref()));
    line(
        "Admit reason",
        text(enc.admit_reason.clone().flatten().as_deref()),
    );
    line("Notification id", text(Some(&p.idempotency_key)));
    let mut s = lines.join("\r\n");
    s.push_str("\r\n");
    s
}

/// The Context attachment (Implementation Guide for Expressing Context in Direct
/// Messaging): `name: value` lines.
fn context(p: &Notification, key: &str, hl7: bool) -> String {
    let pt = &p.patient;
    let mut lines = vec!["version: 1.0".to_string(), format!("id: {key}")];
    if let Some(id) = pt.identifiers.as_ref().and_then(|a| a.first()) {
        let v = [
            text(Some(&id.id)),
            text(Some(&id.authority_namespace)).or_else(|| text(Some(&id.authority_universal))),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("^^^");
        if !v.is_empty() {
            lines.push(format!("patient-id: {v}"));
        }
    }
    lines.push("type: general/notification".into());
    lines.push("purpose: treatment".into());
    let mut m = Vec::new();
    let birth_date = pt.birth_date.clone().flatten();
    for (k, v) in [
        ("givenName", Some(pt.given.as_ref())),
        ("surname", Some(pt.family.as_ref())),
        ("dateOfBirth", birth_date.as_deref()),
        ("gender", pt.sex.as_deref()),
    ] {
        if let Some(v) = text(v) {
            m.push(format!("{k}={v}"));
        }
    }
    if !m.is_empty() {
        lines.push(format!("patient: {}", m.join("; ")));
    }
    if hl7 {
        lines.push("encapsulation: hl7v2".into());
    }
    let mut s = lines.join("\r\n");
    s.push_str("\r\n");
    s
}

/// Builds the message; returns its bytes and its Message-ID.
pub fn compose(
    ids: &MessageIds,
    from: &Address,
    n: &Outgoing,
) -> Result<(Vec<u8>, String), ComposeError> {
    let p = Notification::from_json(&n.payload)?;
    let to: Address = n.endpoint.parse()?;
    let id = ids.make(&n.notification_key);
    let ctx_id = format!("<ctx.{}@{}>", n.notification_key, from.domain());
    // The HL7 v2 message goes only where the rule allows everything in it.
    let hl7 = n
        .raw_hl7
        .as_ref()
        .filter(|_| p.content_profile == ContentProfile::Full && p.redacted.is_empty());
    let kind: &str = &p.kind;
    let mut parts = MultiPart::mixed()
        .singlepart(SinglePart::plain(body_text(&p)))
        .singlepart(
            Attachment::new("notification.json".into())
                .body(n.payload.clone(), ContentType::parse("application/json")?),
        );
    if let Some(raw) = hl7 {
        parts = parts.singlepart(
            Attachment::new("notification.hl7".into())
                .body(raw.clone(), ContentType::parse("x-application/hl7-v2+er7")?),
        );
    }
    parts = parts.singlepart(
        SinglePart::builder()
            .header(ContentType::TEXT_PLAIN)
            .header(ContentDisposition::attachment("metadata.txt"))
            .header(ContentId::from(ctx_id.clone()))
            .body(context(&p, &n.notification_key, hl7.is_some())),
    );
    let raw = |name: &'static str, value: String| {
        lettre::message::header::HeaderValue::new(
            lettre::message::header::HeaderName::new_from_ascii_str(name),
            value,
        )
    };
    let msg = lettre::Message::builder()
        .from(Mailbox::new(None, from.clone()))
        .to(Mailbox::new(None, to))
        // No PHI in the subject: it travels outside the encryption in some set-ups.
        .subject(format!("Event notification: {}", kind_words(kind)))
        .message_id(Some(id.clone()))
        .raw_header(raw("Disposition-Notification-To", from.to_string()))
        .raw_header(raw(
            "Disposition-Notification-Options",
            "X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true".into(),
        ))
        .raw_header(raw("X-Direct-Context", ctx_id))
        .raw_header(raw("X-ADT-Router-Notification", n.notification_key.clone()))
        .multipart(parts)?;
    Ok((msg.formatted(), id))
}

/// What a report does to a Direct notification now in `status`: its new status, or
/// `None` (recorded only). Final states never change: a late MDN after a timeout is
/// kept and flagged, not turned into a delivery.
pub fn on_report(status: Status, signal: Signal, require_dispatched: bool) -> Option<Status> {
    if !matches!(status, Status::Submitted | Status::Processed) {
        return None;
    }
    match signal {
        Signal::Failed => Some(Status::Failed),
        Signal::Dispatched => Some(Status::Delivered),
        Signal::Processed if status == Status::Submitted => Some(if require_dispatched {
            Status::Processed
        } else {
            Status::Delivered
        }),
        Signal::Processed | Signal::Informational => None,
    }
}

/// Applies the reports the HISP sends back, and fails the notifications whose reports
/// never came. One at a time, so two MDNs for one message never race on its proof.
pub struct Mdns {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub require_dispatched: bool,
    pub dispatched_timeout: Duration,
    pub processed_timeout: Duration,
    /// Our Message-IDs: a report must quote one to move anything.
    pub ids: MessageIds,
    /// Refused reports kept (the newest).
    pub keep_refused: u64,
    lock: tokio::sync::Mutex<()>,
}

/// The intake's answer when a report cannot be kept right now (SMTP 451: resend later).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("the notification is still being sent; try again later")]
    TooEarly,
}

fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

/// Adds one step to a notification's proof (a JSON object, one key per step).
fn add_proof(old: Option<&str>, step: &str, v: Value) -> String {
    let mut p: serde_json::Map<String, Value> = old
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or_default();
    p.insert(step.to_string(), v);
    Value::Object(p).to_string()
}

impl Mdns {
    pub fn new(store: Store, metrics: Arc<Metrics>, s: &DirectSettings, ids: MessageIds) -> Mdns {
        Mdns {
            store,
            metrics,
            ids,
            keep_refused: s.inbound_max_refused,
            require_dispatched: s.require_dispatched,
            dispatched_timeout: Duration::from_secs(s.dispatched_timeout_secs),
            processed_timeout: Duration::from_secs(s.processed_timeout_secs),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads, keeps and applies one report. Returns what it did, in words.
    ///
    /// A report moves a notification only when its Original-Message-ID is one we made
    /// (our domain, the right nonce), its Final-Recipient is the address the
    /// notification was submitted to, and the notification is in a state the report can
    /// advance. Anything else is kept (bounded), counted and changes nothing.
    pub async fn apply(&self, raw: &[u8]) -> Result<String, ReportError> {
        let r = report::parse(raw);
        let key = r
            .original_message_id
            .as_deref()
            .ok_or(NotOurs::Missing)
            .and_then(|m| self.ids.verify(m));
        // The HISP can answer before our own record of the submission is written. Wait
        // for it without holding the lock, so other reports are not held up meanwhile.
        let sending =
            |row: &Option<DirectRow>| row.as_ref().is_some_and(|r| r.status == Status::Sending);
        if let Ok(k) = key {
            let mut tries = 0;
            while sending(&self.store.direct_row(k).await?) {
                tries += 1;
                if tries == 100 {
                    return Err(ReportError::TooEarly);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let _one_at_a_time = self.lock.lock().await;
        let row = match key {
            Ok(k) => self.store.direct_row(k).await?,
            Err(_) => None,
        };
        if sending(&row) {
            return Err(ReportError::TooEarly);
        }
        let now = crate::store::now_us();
        let sha = hex::encode(Sha256::digest(raw));
        // The address the report speaks for must be the one we sent to.
        let recipient_ok = row.as_ref().is_some_and(|n| {
            r.final_recipient
                .as_deref()
                .is_some_and(|f| f.eq_ignore_ascii_case(n.endpoint.trim()))
        });
        let next = row
            .as_ref()
            .filter(|_| recipient_ok)
            .and_then(|n| on_report(n.status, r.signal, self.require_dispatched));
        let (effect, label) = match (key, &row, next) {
            (Err(NotOurs::Foreign), _, _) => (
                "refused: the Original-Message-ID is not of our domain".to_string(),
                "foreign",
            ),
            (Err(NotOurs::Forged), _, _) => (
                "refused: the Original-Message-ID is ours in form but its nonce is wrong (guessed or forged)".to_string(),
                "forged",
            ),
            (_, None, _) => (
                "unmatched: no Direct notification has this Message-ID".to_string(),
                "unmatched",
            ),
            (_, Some(_), _) if !recipient_ok => (
                "refused: the Final-Recipient is not the address the notification was sent to".to_string(),
                "wrong_recipient",
            ),
            (_, Some(n), Some(new)) => (format!("{} -> {new}", n.status), "applied"),
            (_, Some(n), None) if matches!(n.status, Status::Submitted | Status::Processed) => {
                ("recorded; no change".to_string(), "recorded")
            }
            (_, Some(n), None) => (
                format!(
                    "late: the notification was already {}; recorded, not applied",
                    n.status
                ),
                "late",
            ),
        };
        let refused = matches!(
            label,
            "foreign" | "forged" | "unmatched" | "wrong_recipient"
        );
        self.metrics
            .direct_reports
            .with_label_values(&[r.kind.as_str(), label])
            .inc();
        let what = format!(
            "{} {}{}",
            r.kind.as_str().to_uppercase(),
            if r.disposition.is_empty() {
                "(unreadable)"
            } else {
                &r.disposition
            },
            r.detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
        if label != "applied" && label != "recorded" {
            tracing::warn!(kind = r.kind.as_str(), disposition = %r.disposition, effect = %effect, "Direct report not applied.");
        } else {
            tracing::info!(notification = row.as_ref().map(|n| n.id), kind = r.kind.as_str(), disposition = %r.disposition, effect = %effect, "Direct report received.");
        }
        self.store
            .record_report(
                &ReportRow {
                    received_at_us: now,
                    kind: r.kind.as_str().into(),
                    disposition: r.disposition.clone(),
                    final_recipient: r.final_recipient.clone(),
                    original_message_id: r.original_message_id.clone(),
                    outbox_id: row.as_ref().map(|n| n.id),
                    effect: effect.clone(),
                    sha256: sha.clone(),
                    // What moved nothing is kept cut short: a flood cannot fill the disk.
                    raw: if refused {
                        raw[..raw.len().min(64 * 1024)].to_vec()
                    } else {
                        raw.to_vec()
                    },
                    refused,
                },
                self.keep_refused,
            )
            .await?;
        if let (Some(n), Some(new)) = (row, next) {
            let step = match r.signal {
                Signal::Processed => "mdn_processed",
                Signal::Dispatched => "mdn_dispatched",
                _ => "failure",
            };
            let proof = add_proof(
                n.proof.as_deref(),
                step,
                serde_json::json!({
                    "kind": r.kind.as_str(),
                    "disposition": r.disposition,
                    "final_recipient": r.final_recipient,
                    "final_destination_delivery": r.final_destination,
                    "detail": r.detail,
                    "report_sha256": sha,
                    "received_at": crate::directory::rfc3339_us(now),
                }),
            );
            let outcome = match new {
                Status::Processed => "processed",
                Status::Delivered => "delivered",
                _ => "failed",
            };
            self.settle(&n, new, outcome, &sha, &what, now, proof)
                .await?;
        }
        Ok(effect)
    }

    /// Fails the Direct notifications whose MDN did not come in time (then their
    /// fallback, if the rule names one). Returns how many.
    pub async fn expire(&self) -> Result<usize, StoreError> {
        let _one_at_a_time = self.lock.lock().await;
        let now = crate::store::now_us();
        let overdue = self.store.direct_overdue(now, 200).await?;
        for n in &overdue {
            let what = if n.status == Status::Submitted {
                format!(
                    "no processed MDN within {} s of submission",
                    self.processed_timeout.as_secs()
                )
            } else {
                format!(
                    "no dispatched MDN within {} s of the processed one",
                    self.dispatched_timeout.as_secs()
                )
            };
            tracing::warn!(notification = n.id, status = %n.status, "Direct notification timed out waiting for its MDN.");
            let proof = add_proof(
                n.proof.as_deref(),
                "failure",
                serde_json::json!({ "timeout": what, "at": crate::directory::rfc3339_us(now) }),
            );
            self.settle(n, Status::Failed, "timeout", "", &what, now, proof)
                .await?;
        }
        Ok(overdue.len())
    }

    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        n: &DirectRow,
        status: Status,
        outcome: &str,
        sha: &str,
        what: &str,
        now: i64,
        proof: String,
    ) -> Result<(), StoreError> {
        self.metrics
            .delivery_attempts
            .with_label_values(&["DIRECT", outcome])
            .inc();
        let due = if status == Status::Processed {
            now + us(self.dispatched_timeout)
        } else {
            now
        };
        let settle = Settle {
            attempt: AttemptRow {
                outbox_id: n.id,
                attempt: n.attempts,
                started_at_us: now,
                channel: EndpointKind::Direct,
                endpoint: n.endpoint.clone(),
                request_sha256: sha.to_string(),
                outcome: outcome.to_string(),
                response_code: None,
                response_text: what.chars().take(200).collect(),
                latency_us: 0,
            },
            owner: String::new(),
            status,
            due_at_us: due,
            error: (status == Status::Failed).then(|| what.to_string()),
            proof: Some(proof),
            subscription: None,
        };
        self.store.record_attempts(&[settle]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_move_forward_only() {
        use Signal::*;
        use Status::{Dead, Delivered, Pending, Sending, Submitted};
        let failed = Status::Failed;
        let processed = Status::Processed;
        assert_eq!(on_report(Submitted, Processed, true), Some(processed));
        assert_eq!(on_report(Submitted, Processed, false), Some(Delivered));
        assert_eq!(on_report(processed, Processed, true), None, "a repeat");
        assert_eq!(
            on_report(Submitted, Dispatched, true),
            Some(Delivered),
            "out of order"
        );
        assert_eq!(on_report(processed, Dispatched, true), Some(Delivered));
        assert_eq!(on_report(processed, Failed, true), Some(failed));
        assert_eq!(on_report(Submitted, Informational, true), None);
        for done in [Delivered, failed, Dead, Pending, Sending] {
            for sig in [Processed, Dispatched, Failed] {
                assert_eq!(on_report(done, sig, true), None, "{done} {sig:?}");
            }
        }
    }

    fn outgoing(profile: &str, redacted: &[&str]) -> Outgoing {
        Outgoing {
            id: 1,
            notification_key: "k1".into(),
            channel: EndpointKind::Direct,
            endpoint: "Dr.Smith@direct.example.org".into(),
            payload: serde_json::to_vec(&serde_json::json!({
                "schema": "adt-router.notification/v1", "idempotency_key": "k1",
                "kind": "discharge", "event_time": "2026-11-28T08:00:00Z",
                "sending_facility": "GENHOSP",
                "patient": {"family": "DOE", "given": "JANE", "birth_date": "1970-01-01", "sex": "F",
                            "identifiers": [{"id": "MRN1", "authority_namespace": "GENHOSP"}]},
                "encounter": {"discharge_disposition": "01"},
                "content_profile": profile, "redacted": redacted,
            }))
            .unwrap(),
            attempts: 1,
            created_at_us: 0,
            secret: None,
            raw_hl7: Some(b"MSH|^~\\&|EPIC|GENHOSP\rPID|1||MRN1\r".to_vec()),
            subscription_id: None,
            headers: vec![],
            timeout_secs: None,
            kind: None,
        }
    }

    /// Reads a composed message back with an independent MIME parser.
    fn parts(raw: &[u8]) -> Vec<(String, Option<String>, Vec<u8>)> {
        use mail_parser::{MessageParser, MimeHeaders};
        let m = MessageParser::default().parse(raw).expect("parses");
        m.parts
            .iter()
            .filter(|p| p.sub_parts().is_none())
            .map(|p| {
                let ct = p.content_type().unwrap();
                (
                    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")),
                    p.attachment_name().map(str::to_string),
                    p.contents().to_vec(),
                )
            })
            .collect()
    }

    #[test]
    fn full_content_carries_the_hl7_message_and_redactions_remove_it() {
        let from: Address = "router@direct.hospital.example".parse().unwrap();
        let ids = MessageIds::new(&from, vec![1; 32]);
        let (raw, id) = compose(&ids, &from, &outgoing("full", &[])).unwrap();
        assert_eq!(id, ids.make("k1"));
        assert_eq!(ids.verify(&id), Ok("k1"));
        let p = parts(&raw);
        let names: Vec<_> = p.iter().map(|x| x.1.clone()).collect();
        assert_eq!(
            names,
            [
                None,
                Some("notification.json".into()),
                Some("notification.hl7".into()),
                Some("metadata.txt".into())
            ]
        );
        // The HL7 message arrives byte for byte (segment CRs included).
        assert_eq!(p[2].2, b"MSH|^~\\&|EPIC|GENHOSP\rPID|1||MRN1\r");
        let body = String::from_utf8_lossy(&p[0].2);
        assert!(body.contains("Event: Discharge\r\n"), "{body}");
        assert!(body.contains("Date of birth: 1970-01-01"));
        let meta = String::from_utf8_lossy(&p[3].2);
        assert!(meta.contains("patient-id: MRN1^^^GENHOSP"), "{meta}");
        assert!(meta.contains("encapsulation: hl7v2"), "{meta}");
        let head = String::from_utf8_lossy(&raw);
        assert!(head.contains(
            "Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true"
        ));
        assert!(head.contains("X-Direct-Context: <ctx.k1@direct.hospital.example>"));

        for (profile, redacted) in [("standard", &[][..]), ("full", &["diagnosis"][..])] {
            let (raw, _) = compose(
                &MessageIds::new(&from, vec![1; 32]),
                &from,
                &outgoing(profile, redacted),
            )
            .unwrap();
            let p = parts(&raw);
            assert!(
                p.iter().all(|x| x.1.as_deref() != Some("notification.hl7")),
                "{profile} {redacted:?}"
            );
            assert!(!String::from_utf8_lossy(&p[p.len() - 1].2).contains("encapsulation"));
        }
    }

    #[test]
    fn message_ids_round_trip_and_cannot_be_guessed() {
        let from: Address = "router@direct.hospital.example".parse().unwrap();
        let ids = MessageIds::new(&from, vec![7; 32]);
        let id = ids.make("0123abcd");
        assert_eq!(id, ids.make("0123abcd"), "the same on every resend");
        assert!(id.starts_with("<0123abcd.") && id.ends_with("@direct.hospital.example>"));
        assert_eq!(ids.verify(&id), Ok("0123abcd"));
        assert_eq!(
            ids.verify("<0123abcd@direct.hospital.example>"),
            Err(NotOurs::Forged)
        );
        let other_key = id.replace("0123abcd", "0123abce");
        assert_eq!(
            ids.verify(&other_key),
            Err(NotOurs::Forged),
            "a nonce is for one key"
        );
        let other_secret = MessageIds::new(&from, vec![8; 32]);
        assert_eq!(other_secret.verify(&id), Err(NotOurs::Forged));
        assert_eq!(
            ids.verify(&id.replace("hospital", "elsewhere")),
            Err(NotOurs::Foreign)
        );
        assert_eq!(ids.verify("no-brackets@x"), Err(NotOurs::Missing));
        assert_eq!(ids.verify("<nodomain>"), Err(NotOurs::Missing));
        assert_eq!(
            ids.verify("<.@direct.hospital.example>"),
            Err(NotOurs::Forged)
        );
    }
}

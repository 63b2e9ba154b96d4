//! `[delivery]` and `[direct]` settings: retries, breakers, the endpoint checks, and
//! Direct secure email (the HISP, the report intake).

use crate::secret::{masked, SecretString, SecretUrl};
use serde::{Deserialize, Serialize};

/// Where notifications may go.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    /// Allow endpoints on loopback, link-local and private addresses (tests, on-premises).
    pub allow_private_networks: bool,
    /// FHIR and REST endpoints must be https.
    pub require_https: bool,
    /// Endpoint types in order of preference; types not listed are never used.
    pub channel_order: Vec<String>,
    /// Run the deliverer in `serve` (REST webhooks so far).
    pub enabled: bool,
    /// Notifications claimed per round (sent concurrently).
    pub batch: i64,
    /// One request's time limit.
    pub timeout_ms: u64,
    /// Backoff: the first retry waits up to this (full jitter), doubling each time...
    pub retry_base_ms: u64,
    /// ...up to this.
    pub retry_cap_secs: u64,
    /// A notification still undelivered this long after it was created is dead.
    pub max_age_hours: u64,
    /// ...or after this many attempts.
    pub max_attempts: i32,
    /// Requests in flight to one endpoint at most (per node).
    pub per_endpoint_concurrency: usize,
    /// Failures in a row that open an endpoint's circuit breaker...
    pub breaker_failures: u32,
    /// ...for this long.
    pub breaker_cooldown_secs: u64,
    /// SMART Backend Services registrations: endpoints whose requests carry a token
    /// from the party's authorization server (docs/fhir.md).
    pub smart: Vec<crate::deliver::smart::SmartSettings>,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            allow_private_networks: false,
            require_https: true,
            channel_order: vec!["DIRECT".into(), "FHIR".into(), "REST".into()],
            enabled: true,
            batch: 32,
            timeout_ms: 10_000,
            retry_base_ms: 1_000,
            retry_cap_secs: 3_600,
            max_age_hours: 24,
            max_attempts: 50,
            per_endpoint_concurrency: 4,
            breaker_failures: 5,
            breaker_cooldown_secs: 30,
            smart: Vec::new(),
        }
    }
}

/// Direct secure email: our HISP's SMTP submission service, and the intake for the
/// MDNs and DSNs it sends back (docs/delivery.md).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectSettings {
    /// `smtp://host:port` (add `?tls=required` for STARTTLS) or `smtps://host:port`.
    /// Empty: Direct is off and DIRECT notifications wait.
    pub smtp_url: SecretUrl,
    /// Our sending Direct address; MDNs are requested back to it.
    pub from: String,
    /// SMTP AUTH at the HISP (may also be given in the URL). Printed configurations
    /// show `***` for the password.
    pub username: String,
    #[serde(serialize_with = "masked")]
    pub password: SecretString,
    /// Allow `smtp://` without `?tls=required` (PHI and the SMTP password in clear on
    /// the wire). For tests against a local stand-in only.
    pub allow_insecure: bool,
    /// PEM file of a CA to trust for the HISP's TLS certificate (a private CA); empty:
    /// the public web roots.
    pub tls_ca_file: String,
    /// No processed MDN (or failure) this long after the HISP accepted: failed.
    pub processed_timeout_secs: u64,
    /// No dispatched MDN this long after the processed one: failed.
    pub dispatched_timeout_secs: u64,
    /// Delivered only on a dispatched MDN (timely and reliable); false: processed is enough.
    pub require_dispatched: bool,
    /// Where the HISP delivers MDNs and DSNs by SMTP (`host:port`); empty: no intake.
    pub inbound_listen: String,
    /// Largest report accepted by the intake.
    pub inbound_max_bytes: usize,
    /// The HISP peers that may connect to the intake (CIDRs). Default: loopback only;
    /// an intake bound to another address must list its peers.
    pub inbound_allow: Vec<String>,
    /// With a certificate and key (PEM), the intake offers STARTTLS and takes no mail
    /// before it.
    pub inbound_tls_cert: String,
    pub inbound_tls_key: String,
    /// Intake connections at once; more are answered 421 and closed.
    pub inbound_max_connections: usize,
    /// The longest an intake session may last, start to end.
    pub inbound_session_secs: u64,
    /// Reports kept that moved nothing (foreign, forged, wrong recipient, unmatched):
    /// the newest this many are kept, each cut to 64 KiB.
    pub inbound_max_refused: u64,
}

impl Default for DirectSettings {
    fn default() -> Self {
        DirectSettings {
            smtp_url: SecretUrl::default(),
            from: String::new(),
            username: String::new(),
            password: SecretString::default(),
            allow_insecure: false,
            tls_ca_file: String::new(),
            processed_timeout_secs: 3_600,
            dispatched_timeout_secs: 3_600,
            require_dispatched: true,
            inbound_listen: String::new(),
            inbound_max_bytes: 10 * 1024 * 1024,
            inbound_allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
            inbound_tls_cert: String::new(),
            inbound_tls_key: String::new(),
            inbound_max_connections: 16,
            inbound_session_secs: 600,
            inbound_max_refused: 10_000,
        }
    }
}

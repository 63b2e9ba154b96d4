//! Settings: defaults, then an optional TOML file, then `ADT_ROUTER__SECTION__KEY`
//! environment variables (design.md contract). Unknown keys are errors, so a typo in a
//! file or a variable name fails at start instead of being ignored.

use crate::hl7::parse::{FieldSpec, ParseRules};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub mllp: MllpSettings,
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub event_log: EventLogSettings,
    pub hl7: Hl7Settings,
    pub kafka: KafkaSettings,
    pub directory: DirectorySettings,
    pub delivery: DeliverySettings,
    pub direct: DirectSettings,
    pub fhir: FhirSettings,
    pub attribution: AttributionSettings,
    pub auth: AuthSettings,
    pub routing: RoutingSettings,
    pub metrics: MetricsSettings,
}

/// `/metrics`: bounds on what message content can add to it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Distinct sending facilities (MSH-4), and distinct triggers, that get a series of
    /// their own; later ones are counted as `other`.
    pub max_label_values: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            max_label_values: crate::metrics::DEFAULT_MAX_LABEL_VALUES,
        }
    }
}

/// Routing: its rules, and the encounter state machine.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    /// Route stored messages (turn off on listener-only nodes).
    pub enabled: bool,
    /// Rule files (`*.toml`) and the opt-out list; reloaded on change.
    pub rules_dir: String,
    /// How often the rules directory is checked for changes.
    pub reload_secs: u64,
    /// An ED visit with no admission or discharge for this long is closed.
    pub ed_timeout_hours: u64,
    /// PV1-36 codes that make a discharge a transfer.
    pub transfer_dispositions: Vec<String>,
    /// Fields whose change makes an A08/A31 an update notification.
    pub watched: Vec<String>,
    /// When daily-digest notifications fall due (UTC hour).
    pub digest_hour_utc: u32,
    /// Messages routed per transaction (one commit per page, overlapped with planning
    /// the next page).
    pub page_size: u32,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        let e = crate::routing::encounter::EncounterConfig::default();
        RoutingSettings {
            enabled: true,
            rules_dir: "routing-rules".into(),
            reload_secs: 5,
            ed_timeout_hours: 24,
            transfer_dispositions: e.transfer_dispositions,
            watched: e.watched,
            digest_hour_utc: 7,
            page_size: 1000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MllpSettings {
    /// Address the MLLP listener binds.
    pub listen: String,
    /// Largest frame accepted; a longer one closes the connection.
    pub max_frame_bytes: usize,
    /// Connections beyond this are accepted and closed at once (and counted).
    pub max_connections: usize,
    /// Connections from one address beyond this are closed at once (and counted), so
    /// one peer cannot take every slot.
    pub max_connections_per_peer: usize,
    /// A connection with no bytes for this long is closed. Senders hold connections open
    /// between messages, so this is long (standards §1.5: hours).
    pub idle_timeout_secs: u64,
    /// Once a frame has begun it must end within this (a peer trickling bytes to hold
    /// a connection and its buffer is closed).
    pub frame_timeout_secs: u64,
    /// TCP keepalive idle time; finds peers that vanished without a FIN.
    pub tcp_keepalive_secs: u64,
    /// On shutdown, how long connections get to finish frames already received.
    pub drain_timeout_secs: u64,
    /// PEM certificate chain. With `tls_key`, the listener speaks MLLP over TLS only.
    pub tls_cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    pub tls_key: String,
    /// PEM CA bundle. When set, clients must present a certificate it signed (mutual TLS).
    pub tls_client_ca: String,
    /// With mutual TLS: the MSH-4 values each client certificate may send (matched by
    /// `CN=...`, `DNS:...`, `URI:...` or `EMAIL:...`). When any is listed, a message
    /// whose MSH-4 its certificate does not map to is answered AR/CR and quarantined.
    pub tls_senders: Vec<TlsSender>,
    /// When a message cannot be stored: `close` (answer nothing and close the
    /// connection; every engine queues and resends) or `nack` (AR/CE with ERR 207, for
    /// engines configured to resend AR). docs/interop.md says why `close` is the default.
    pub on_storage_failure: crate::ingest::StorageFailure,
    /// `always` (answer every frame, even when MSH-15 is NE or ER: MLLP senders wait for
    /// an answer) or `honour` (send no accept ACK where MSH-15 says not to).
    pub accept_ack: crate::hl7::AcceptAck,
}

/// One `[[mllp.tls_senders]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSender {
    /// `CN=<subject common name>`, `DNS:<name>`, `URI:<uri>` or `EMAIL:<address>`.
    pub identity: String,
    /// MSH-4 values (the whole field, or its namespace id) it may send.
    pub facilities: Vec<String>,
}

impl Default for MllpSettings {
    fn default() -> Self {
        MllpSettings {
            listen: "127.0.0.1:2575".into(),
            max_frame_bytes: 16 * 1024 * 1024,
            max_connections: 1024,
            max_connections_per_peer: 64,
            idle_timeout_secs: 3600,
            frame_timeout_secs: 60,
            tcp_keepalive_secs: 60,
            drain_timeout_secs: 10,
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_client_ca: String::new(),
            tls_senders: Vec::new(),
            on_storage_failure: Default::default(),
            accept_ack: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address for /healthz, /readyz and /metrics.
    pub listen: String,
    /// A client must send a request's headers within this long (slow-header attacks).
    pub header_timeout_secs: u64,
    /// A request must be answered within this long (roster uploads: `upload_timeout_secs`).
    pub request_timeout_secs: u64,
    /// Roster uploads, body and load together.
    pub upload_timeout_secs: u64,
    /// Connections at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Largest roster upload; streamed to a private temporary file, never held in memory.
    pub max_upload_bytes: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: "127.0.0.1:8080".into(),
            header_timeout_secs: 10,
            request_timeout_secs: 60,
            upload_timeout_secs: 900,
            max_connections: 512,
            max_upload_bytes: 512 * 1024 * 1024,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` (created if missing) or `postgres://...`. Printed configurations
    /// mask the password.
    pub url: SecretUrl,
    pub max_connections: u32,
    /// SQLite: how long a statement waits for a lock.
    pub busy_timeout_ms: u64,
    /// How long to wait for a pooled connection.
    pub acquire_timeout_ms: u64,
    /// PostgreSQL: start even when `synchronous_commit` is `off` for our connections
    /// (an ACK could then name a message that a crash loses). Off: `serve` refuses.
    pub allow_asynchronous_commit: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: "sqlite://./data/adt-router.db".into(),
            max_connections: 8,
            busy_timeout_ms: 5000,
            acquire_timeout_ms: 5000,
            allow_asynchronous_commit: false,
        }
    }
}

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

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hl7Settings {
    /// Charset for undeclared (empty MSH-18) bytes that are not valid UTF-8.
    pub fallback_charset: String,
    /// Accepted MSH-9.1 message codes; others get AR/CR 200. Empty accepts all.
    pub message_codes: Vec<String>,
    /// Accepted MSH-11.1 processing ids; others get AR/CR 202. Empty accepts all.
    pub processing_ids: Vec<String>,
    /// `SEG` or `SEG-N` that must be present; missing ones make the ACK AE.
    pub required_fields: Vec<String>,
}

impl Default for Hl7Settings {
    fn default() -> Self {
        Hl7Settings {
            fallback_charset: "windows-1252".into(),
            message_codes: vec!["ADT".into()],
            processing_ids: vec![],
            required_fields: vec!["PID-3".into()],
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
    pub compression: String,
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
            compression: "none".into(),
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

/// The provider directory (NPPES imports).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectorySettings {
    /// More bad rows than this in one NPPES file fail the import.
    pub max_bad_rows: u64,
}

impl Default for DirectorySettings {
    fn default() -> Self {
        DirectorySettings { max_bad_rows: 1000 }
    }
}

/// The FHIR API.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirSettings {
    /// The public base URL of `/fhir` (Location headers, references, topic canonicals).
    /// Empty: `http://<http.listen>/fhir`.
    pub base_url: String,
    /// Live subscriptions one token may hold; one more is refused (422) until it
    /// deletes one. Bounds what a single practice can make the fan-out do.
    pub max_subscriptions_per_token: u32,
    /// The shortest heartbeat period a subscription may ask for (seconds); shorter is
    /// refused (422). A heartbeat is a request to the subscriber's endpoint.
    pub min_heartbeat_secs: u64,
}

impl Default for FhirSettings {
    fn default() -> Self {
        FhirSettings {
            base_url: String::new(),
            max_subscriptions_per_token: 50,
            min_heartbeat_secs: 60,
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

/// Patient matching and attribution from the message.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionSettings {
    /// Lowest demographic score accepted (see docs/attribution.md for the weights).
    pub match_threshold: f64,
    /// The best candidate must beat the next by this much, or nobody is chosen.
    pub ambiguity_margin: f64,
    /// ROL-3 role codes that attribute a provider, and the relationship each means.
    pub rol_roles: std::collections::BTreeMap<String, String>,
    /// Use a 10-digit id that passes the NPI check even when the XCN does not say NPI.
    pub accept_unlabelled_npi: bool,
}

impl Default for AttributionSettings {
    fn default() -> Self {
        AttributionSettings {
            match_threshold: 10.0,
            ambiguity_margin: 2.0,
            rol_roles: [("PP".to_string(), "pcp".to_string())].into(),
            accept_unlabelled_npi: false,
        }
    }
}

/// Bearer tokens for the HTTP API (roster upload now; subscriptions later).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub tokens: Vec<TokenSettings>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// The secret itself. Printed configurations show only its SHA-256.
    #[serde(serialize_with = "hash_secret")]
    pub token: SecretString,
    /// A stable name for the holder: what it creates (FHIR Subscriptions) is owned by
    /// this id, so the secret can be rotated without orphaning them. Empty: derived
    /// from the token's SHA-256 (rotating the token then changes the owner).
    #[serde(default)]
    pub id: String,
    /// admin, auditor, ops or practice.
    pub role: String,
    /// For a practice: the NPIs it speaks for.
    #[serde(default)]
    pub npis: Vec<String>,
    /// For a practice: the roster sources it may load over HTTP (its own). Others get
    /// 403; an admin may load any source.
    #[serde(default)]
    pub roster_sources: Vec<String>,
}

pub use secrecy::{ExposeSecret, SecretString};

/// A URL that may carry a password (database, SMTP). Shown everywhere (Debug, logs,
/// `check-config`) with the password masked; `expose` gives the real one to its user.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        SecretUrl(s.to_string())
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::store::redact_url(&self.0))
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::store::redact_url(&self.0))
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::store::redact_url(&self.0))
    }
}

/// A map printed with its keys only (values may be passwords).
fn keys_only<S: serde::Serializer>(
    m: &std::collections::BTreeMap<String, SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut out = s.serialize_map(Some(m.len()))?;
    for k in m.keys() {
        out.serialize_entry(k, "<set>")?;
    }
    out.end()
}

/// A secret in printed configurations: `***` when set, empty when not.
fn masked<S: serde::Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.expose_secret().is_empty() {
        ""
    } else {
        "***"
    })
}

fn hash_secret<S: serde::Serializer>(t: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    use sha2::Digest;
    s.serialize_str(&format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(t.expose_secret().as_bytes()))
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Settings {
    /// Defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(f) = file {
            b = b.add_source(
                config::File::from(f)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        b = b.add_source(
            config::Environment::with_prefix("ADT_ROUTER")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("hl7.message_codes")
                .with_list_parse_key("hl7.processing_ids")
                .with_list_parse_key("hl7.required_fields")
                .with_list_parse_key("delivery.channel_order")
                .with_list_parse_key("routing.transfer_dispositions")
                .with_list_parse_key("routing.watched")
                .with_list_parse_key("direct.inbound_allow"),
        );
        let s: Settings = b.build()?.try_deserialize()?;
        s.validate()?;
        Ok(s)
    }

    /// Checks what serde cannot: addresses parse, limits are sane, names are known.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        // The ACK and at-least-once guarantees rest on these; no option may weaken them.
        const GUARANTEES: [&str; 6] = [
            "acks",
            "request.required.acks",
            "enable.idempotence",
            "enable.auto.offset.store",
            "enable.auto.commit",
            "group.id",
        ];
        if let Some(k) = self
            .kafka
            .librdkafka_options
            .keys()
            .find(|k| GUARANTEES.contains(&k.as_str()))
        {
            return bad(
                "kafka.librdkafka_options",
                format!("{k} is set by adt-router (its delivery guarantees depend on it)"),
            );
        }
        if self.mllp.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "mllp.listen",
                format!("'{}' is not HOST:PORT", self.mllp.listen),
            );
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "http.listen",
                format!("'{}' is not HOST:PORT", self.http.listen),
            );
        }
        for w in &self.routing.watched {
            if !crate::routing::encounter::WATCHABLE.contains(&w.as_str()) {
                return bad(
                    "routing.watched",
                    format!(
                        "'{w}' is not one of {}",
                        crate::routing::encounter::WATCHABLE.join(", ")
                    ),
                );
            }
        }
        let d = &self.direct;
        if !d.smtp_url.is_empty() {
            let url = match url::Url::parse(d.smtp_url.expose()) {
                Ok(u) if matches!(u.scheme(), "smtp" | "smtps") && u.host_str().is_some() => u,
                _ => {
                    return bad(
                        "direct.smtp_url",
                        "must be smtp://host:port or smtps://host:port".into(),
                    )
                }
            };
            let tls = url
                .query_pairs()
                .find(|(k, _)| k == "tls")
                .map(|(_, v)| v.into_owned());
            if url.scheme() == "smtp" && tls.as_deref() != Some("required") && !d.allow_insecure {
                return bad(
                    "direct.smtp_url",
                    "smtp:// without ?tls=required sends PHI and the SMTP password in clear (or lets a man in the middle strip STARTTLS): use smtps:// or smtp://...?tls=required, or set direct.allow_insecure = true for a local test stand-in".into(),
                );
            }
            if d.from.parse::<lettre::Address>().is_err() {
                return bad(
                    "direct.from",
                    format!("'{}' is not a mail address (needed with smtp_url)", d.from),
                );
            }
        }
        if !d.inbound_listen.is_empty() && d.inbound_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return bad(
                "direct.inbound_listen",
                format!("'{}' is not HOST:PORT", d.inbound_listen),
            );
        }
        let mut peers = Vec::new();
        for c in &d.inbound_allow {
            match c.parse::<ipnet::IpNet>() {
                Ok(n) => peers.push(n),
                Err(_) => {
                    return bad(
                        "direct.inbound_allow",
                        format!("'{c}' is not a CIDR (like 203.0.113.0/24)"),
                    )
                }
            }
        }
        if let Ok(at) = d.inbound_listen.parse::<std::net::SocketAddr>() {
            let loopback_only = peers.iter().all(|n| n.addr().is_loopback());
            if !at.ip().is_loopback() && loopback_only {
                return bad(
                    "direct.inbound_allow",
                    format!(
                        "the intake listens on {at}, but only loopback peers may connect: list the HISP's addresses"
                    ),
                );
            }
        }
        if d.inbound_tls_cert.is_empty() != d.inbound_tls_key.is_empty() {
            return bad(
                "direct.inbound_tls_cert",
                "STARTTLS needs both inbound_tls_cert and inbound_tls_key".into(),
            );
        }
        if d.inbound_max_connections == 0 || d.inbound_session_secs == 0 {
            return bad(
                "direct.inbound_max_connections",
                "inbound_max_connections and inbound_session_secs must be above 0".into(),
            );
        }
        if !d.inbound_listen.is_empty() && d.smtp_url.is_empty() {
            return bad(
                "direct.inbound_listen",
                "the report intake needs direct.smtp_url (Direct is off without it)".into(),
            );
        }
        if d.processed_timeout_secs == 0 || d.dispatched_timeout_secs == 0 {
            return bad(
                "direct.processed_timeout_secs",
                "timeouts must be above 0".into(),
            );
        }
        if !(1..=10_000).contains(&self.routing.page_size) {
            return bad("routing.page_size", "must be 1 to 10000".into());
        }
        if self.routing.digest_hour_utc > 23 {
            return bad("routing.digest_hour_utc", "must be 0 to 23".into());
        }
        if self.routing.ed_timeout_hours == 0 {
            return bad("routing.ed_timeout_hours", "must be at least 1".into());
        }
        if self.mllp.max_frame_bytes < 1024 {
            return bad("mllp.max_frame_bytes", "must be at least 1024".into());
        }
        if self.mllp.tls_cert.is_empty() != self.mllp.tls_key.is_empty() {
            return bad("mllp.tls_cert", "tls_cert and tls_key go together".into());
        }
        if !self.mllp.tls_senders.is_empty() && self.mllp.tls_client_ca.is_empty() {
            return bad(
                "mllp.tls_senders",
                "maps client certificates, so it needs mutual TLS (mllp.tls_client_ca)".into(),
            );
        }
        for t in &self.mllp.tls_senders {
            let known = ["CN=", "DNS:", "URI:", "EMAIL:"];
            if !known
                .iter()
                .any(|p| t.identity.starts_with(p) && t.identity.len() > p.len())
            {
                return bad(
                    "mllp.tls_senders",
                    format!(
                        "identity '{}' must start with CN=, DNS:, URI: or EMAIL:",
                        t.identity
                    ),
                );
            }
        }
        if !self.mllp.tls_client_ca.is_empty() && self.mllp.tls_cert.is_empty() {
            return bad("mllp.tls_client_ca", "needs tls_cert and tls_key".into());
        }
        if self.mllp.max_connections_per_peer == 0 {
            return bad("mllp.max_connections_per_peer", "must be at least 1".into());
        }
        if self.mllp.frame_timeout_secs == 0 {
            return bad("mllp.frame_timeout_secs", "must be at least 1".into());
        }
        if self.mllp.max_connections == 0 {
            return bad("mllp.max_connections", "must be at least 1".into());
        }
        if !(1..=1000).contains(&self.event_log.max_batch) {
            return bad("event_log.max_batch", "must be 1 to 1000".into());
        }
        if self.event_log.commit_timeout_ms == 0 {
            return bad("event_log.commit_timeout_ms", "must be above 0".into());
        }
        if encoding_rs::Encoding::for_label(self.hl7.fallback_charset.as_bytes()).is_none() {
            return bad(
                "hl7.fallback_charset",
                format!(
                    "'{}' is not a known encoding label",
                    self.hl7.fallback_charset
                ),
            );
        }
        for f in &self.hl7.required_fields {
            if let Err(reason) = FieldSpec::parse(f) {
                return bad("hl7.required_fields", reason);
            }
        }
        if self.kafka.enabled() {
            if self.kafka.topic.is_empty() || self.kafka.group.is_empty() {
                return bad("kafka.topic", "topic and group must not be empty".into());
            }
            let k = &self.kafka;
            if k.replication_factor < 1
                || k.min_insync_replicas < 0
                || k.min_insync_replicas > k.replication_factor
            {
                return bad(
                    "kafka.min_insync_replicas",
                    format!(
                        "must be between 0 (automatic) and the replication factor ({})",
                        k.replication_factor
                    ),
                );
            }
            if self.kafka.partitions < 1 {
                return bad("kafka.partitions", "must be at least 1".into());
            }
            // The bundled librdkafka is built without libzstd.
            if !["none", "gzip", "snappy", "lz4"].contains(&self.kafka.compression.as_str()) {
                return bad(
                    "kafka.compression",
                    format!(
                        "'{}' is not none, gzip, snappy or lz4",
                        self.kafka.compression
                    ),
                );
            }
            if !(0.0..=1000.0).contains(&self.kafka.linger_ms) {
                return bad("kafka.linger_ms", "must be 0 to 1000".into());
            }
            if !(0.0..=1000.0).contains(&self.kafka.busy_linger_ms) {
                return bad("kafka.busy_linger_ms", "must be 0 to 1000".into());
            }
            if self.kafka.busy_at == 0 {
                return bad("kafka.busy_at", "must be at least 1".into());
            }
            if self.kafka.produce_timeout_ms == 0 {
                return bad("kafka.produce_timeout_ms", "must be above 0".into());
            }
        }
        for c in &self.delivery.channel_order {
            match crate::directory::endpoint::EndpointKind::parse(c) {
                Some(k) if k.deliverable() => {}
                _ => {
                    return bad(
                        "delivery.channel_order",
                        format!("'{c}' is not DIRECT, FHIR or REST"),
                    )
                }
            }
        }
        if self.attribution.ambiguity_margin < 0.0 {
            return bad(
                "attribution.ambiguity_margin",
                "must not be negative".into(),
            );
        }
        for r in self.attribution.rol_roles.values() {
            if !crate::attribution::roster::RELATIONSHIPS.contains(&r.as_str()) {
                return bad(
                    "attribution.rol_roles",
                    format!(
                        "'{r}' is not a relationship ({})",
                        crate::attribution::roster::RELATIONSHIPS.join(", ")
                    ),
                );
            }
        }
        for t in &self.auth.tokens {
            if t.token.expose_secret().len() < 16 {
                return bad(
                    "auth.tokens",
                    "a token must be at least 16 characters".into(),
                );
            }
            if !["admin", "auditor", "ops", "practice"].contains(&t.role.as_str()) {
                return bad(
                    "auth.tokens",
                    format!("role '{}' is not admin, auditor, ops or practice", t.role),
                );
            }
            for n in &t.npis {
                if let Err(e) = crate::directory::npi::Npi::parse(n) {
                    return bad("auth.tokens", format!("npi '{n}': {e}"));
                }
            }
            // Two tokens may share an id (a rotation in progress), but only as one holder:
            // otherwise the id would lend one token's reach to another's subscriptions.
            if let Some(o) = self.auth.tokens.iter().find(|o| {
                !t.id.is_empty()
                    && o.id == t.id
                    && (o.role != t.role
                        || o.npis != t.npis
                        || o.roster_sources != t.roster_sources)
            }) {
                return bad(
                    "auth.tokens",
                    format!(
                        "tokens with id '{}' differ in role, npis or roster_sources ({} and {}); one id is one holder",
                        t.id, t.role, o.role
                    ),
                );
            }
        }
        if self.fhir.max_subscriptions_per_token == 0 {
            return bad(
                "fhir.max_subscriptions_per_token",
                "must be at least 1".into(),
            );
        }
        let url = self.database.url.expose();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return bad(
                "database.url",
                "must start with sqlite:// or postgres://".into(),
            );
        }
        Ok(())
    }

    /// Files holding secrets (keys, and the configuration itself when given) that any
    /// user on the host can read: `(what, path, mode)`. `serve` warns for each.
    pub fn exposed_secret_files(&self, config_file: Option<&Path>) -> Vec<(String, String, u32)> {
        let mut files: Vec<(String, String)> = Vec::new();
        if let Some(f) = config_file {
            files.push(("the configuration file".into(), f.display().to_string()));
        }
        for (what, path) in [
            ("mllp.tls_key", &self.mllp.tls_key),
            ("direct.inbound_tls_key", &self.direct.inbound_tls_key),
        ] {
            if !path.is_empty() {
                files.push((what.into(), path.clone()));
            }
        }
        for s in &self.delivery.smart {
            files.push((
                format!("the SMART key of {}", s.client_id),
                s.key_file.clone(),
            ));
        }
        files
            .into_iter()
            .filter_map(|(what, path)| {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(&path).ok()?.permissions().mode() & 0o777;
                    (mode & 0o007 != 0).then_some((what, path, mode))
                }
                #[cfg(not(unix))]
                {
                    let _ = (what, path);
                    None
                }
            })
            .collect()
    }

    pub fn parse_rules(&self) -> ParseRules {
        ParseRules {
            message_codes: self.hl7.message_codes.clone(),
            processing_ids: self.hl7.processing_ids.clone(),
            required: self
                .hl7
                .required_fields
                .iter()
                .filter_map(|f| FieldSpec::parse(f).ok())
                .collect(),
        }
    }

    pub fn fallback_charset(&self) -> &'static encoding_rs::Encoding {
        encoding_rs::Encoding::for_label(self.hl7.fallback_charset.as_bytes())
            .unwrap_or(encoding_rs::WINDOWS_1252)
    }

    pub fn retry_policy(&self) -> crate::deliver::RetryPolicy {
        let d = &self.delivery;
        crate::deliver::RetryPolicy {
            base: Duration::from_millis(d.retry_base_ms.max(1)),
            cap: Duration::from_secs(d.retry_cap_secs.max(1)),
            max_age: Duration::from_secs(d.max_age_hours.saturating_mul(3600)),
            max_attempts: d.max_attempts.max(1),
            timeout: Duration::from_millis(d.timeout_ms.max(1)),
        }
    }

    pub fn encounter_config(&self) -> crate::routing::encounter::EncounterConfig {
        crate::routing::encounter::EncounterConfig {
            transfer_dispositions: self.routing.transfer_dispositions.clone(),
            watched: self.routing.watched.clone(),
            ed_timeout_us: i64::try_from(self.routing.ed_timeout_hours)
                .unwrap_or(24)
                .saturating_mul(3_600_000_000),
        }
    }

    pub fn resolve_policy(&self) -> crate::directory::ResolvePolicy {
        use crate::directory::endpoint::{EndpointKind, EndpointPolicy};
        crate::directory::ResolvePolicy {
            endpoints: EndpointPolicy {
                allow_private_networks: self.delivery.allow_private_networks,
                require_https: self.delivery.require_https,
            },
            channel_order: self
                .delivery
                .channel_order
                .iter()
                .filter_map(|c| EndpointKind::parse(c))
                .collect(),
        }
    }

    pub fn attribution_policy(&self) -> crate::attribution::AttributionPolicy {
        crate::attribution::AttributionPolicy {
            matching: crate::attribution::matching::MatchPolicy {
                threshold: self.attribution.match_threshold,
                ambiguity_margin: self.attribution.ambiguity_margin,
            },
            rol_roles: self
                .attribution
                .rol_roles
                .iter()
                .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
                .collect(),
            accept_unlabelled_npi: self.attribution.accept_unlabelled_npi,
            resolve: self.resolve_policy(),
        }
    }

    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            url: self.database.url.expose().to_string(),
            max_connections: self.database.max_connections,
            busy_timeout: Duration::from_millis(self.database.busy_timeout_ms),
            acquire_timeout: Duration::from_millis(self.database.acquire_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config/adt-router.example.toml` is the reference an operator copies: it loads,
    /// its values are the defaults, and every setting is in it (tables of entries and
    /// maps as commented examples).
    #[test]
    fn the_example_configuration_is_complete_and_says_the_defaults() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/adt-router.example.toml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let loaded = Settings::load(Some(Path::new(path))).unwrap();
        let (example, defaults) = (
            serde_json::to_value(&loaded).unwrap(),
            serde_json::to_value(Settings::default()).unwrap(),
        );
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        for (section, keys) in defaults.as_object().unwrap() {
            for (key, value) in keys.as_object().unwrap() {
                let written = parsed.get(section).and_then(|s| s.get(key)).is_some();
                let commented = (value.is_array() || value.is_object())
                    && text.contains(&format!("{section}.{key}"));
                assert!(
                    written || commented,
                    "{section}.{key} is not in the example"
                );
                assert_eq!(
                    example[section][key], *value,
                    "{section}.{key}: the example says other than the default"
                );
            }
        }
    }
}

//! Settings: defaults, then an optional TOML file, then `ADT_ROUTER__SECTION__KEY`
//! environment variables (design.md contract). Unknown keys are errors, so a typo in a
//! file or a variable name fails at start instead of being ignored.

pub use crate::attribution::config::AttributionSettings;
pub use crate::deliver::config::{DeliverySettings, DirectSettings};
pub use crate::directory::config::DirectorySettings;
pub use crate::event_log::config::{EventLogSettings, KafkaSettings};
pub use crate::fhir::config::FhirSettings;
pub use crate::hl7::config::Hl7Settings;
pub use crate::http::config::{AuthSettings, HttpSettings, TokenSettings};
pub use crate::metrics::MetricsSettings;
pub use crate::mllp::config::{MllpSettings, TlsSender};
pub use crate::routing::config::RoutingSettings;
pub use crate::secret::{ExposeSecret, SecretString, SecretUrl};
pub use crate::store::config::DatabaseSettings;

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
                return bad("hl7.required_fields", reason.to_string());
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

//! The Kafka event log (scale-out mode): the listener's side.
//!
//! An idempotent producer with `acks=all`: `append` returns only when the broker has
//! confirmed the write to all in-sync replicas, and fails after `kafka.produce_timeout_ms`
//! (the sender then hears AR/CE and resends). librdkafka reconnects by itself, so the
//! listener recovers when the broker returns.
//!
//! Records: key = sending facility + the patient's primary identifier with its assigning
//! authority (PID-3), falling back to the control id, so one patient's events share a
//! partition and keep their order. Value = the raw bytes. Headers carry what ingest knew
//! (see [`headers`]); the router re-parses the bytes itself.

use crate::event_log::config::KafkaSettings;
use crate::event_log::LogError;
use crate::metrics::Metrics;
use crate::secret::ExposeSecret;
use crate::store::{Appended, NewMessage};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Header names. The router reads them back; other producers may omit them.
pub mod headers {
    pub const CONTROL_ID: &str = "adt-control-id";
    pub const MESSAGE_TYPE: &str = "adt-message-type";
    pub const CHARSET: &str = "adt-charset";
    pub const SHA256: &str = "adt-sha256";
    pub const RECEIVED_AT_US: &str = "adt-received-at-us";
    pub const PEER: &str = "adt-peer";
    pub const ACK_CODE: &str = "adt-ack-code";
}

/// librdkafka reports connection trouble as "global errors", several times a second
/// while a broker is down. Log each kind at most every 30 s, at WARN: the
/// produce-error metric and the AR/CE answers already say that writes are failing.
#[derive(Default)]
pub struct QuietContext {
    last: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

impl ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let kind = format!("{:?}", error.rdkafka_error_code());
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last
            .get(&kind)
            .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(30))
        {
            last.insert(kind, now);
            tracing::warn!(error = %error, reason, "Kafka client error (repeats are suppressed for 30 s).");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

#[derive(Clone)]
pub struct KafkaLog {
    producer: Arc<ProducerSlot>,
    /// The same, lingering `kafka.busy_linger_ms`: used while `busy_at` or more other
    /// writes wait for the broker. With linger 0 librdkafka's broker thread wakes for
    /// every message; under many senders that wake-up, not the broker, was the limit
    /// (docs/benchmarks.md). A lone sender never pays the linger (~1 ms in librdkafka,
    /// whose timers round up to milliseconds). Each connection sends its next message
    /// only after this one's ACK, so switching producers keeps a sender's order.
    busy: Option<Arc<ProducerSlot>>,
    busy_at: usize,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    topic: String,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

/// The producer, replaceable. An idempotent producer that hits a fatal error (seen here:
/// after writes time out while the broker is stopped, librdkafka bumps the producer
/// epoch and the broker answers `ProducerFenced`) refuses every later write. Writes it
/// failed were answered AR/CE and will be resent; the resends are recognised as
/// duplicates downstream, so replacing it loses nothing.
struct ProducerSlot {
    config: ClientConfig,
    current: std::sync::RwLock<(u64, FutureProducer<QuietContext>)>,
}

impl ProducerSlot {
    fn new(s: &KafkaSettings, linger_ms: f64) -> Result<Self, LogError> {
        let mut config = client_config(s);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", s.compression.as_str())
            .set("linger.ms", linger_ms.to_string())
            .set("message.timeout.ms", s.produce_timeout_ms.to_string())
            // One request in flight: with linger 0 the messages of concurrent senders
            // queue behind it and go out as one batch, instead of one request each
            // (measured: C=8 7,800 -> 9,200 msgs/s, CPU per message -25%).
            .set("max.in.flight.requests.per.connection", "1");
        // `create` leaves the operator's options in `config`, which the slot keeps for
        // replacements.
        let producer: FutureProducer<QuietContext> =
            create(&mut config, s, QuietContext::default())
                .map_err(|e| LogError::Unavailable(format!("creating the Kafka producer: {e}")))?;
        Ok(ProducerSlot {
            config,
            current: std::sync::RwLock::new((0, producer)),
        })
    }

    fn get(&self) -> (u64, FutureProducer<QuietContext>) {
        let g = self.current.read().unwrap_or_else(|e| e.into_inner());
        (g.0, g.1.clone())
    }

    /// Replaces generation `gen` (once, however many writers saw it fail).
    fn replace(&self, gen: u64, why: &str) {
        let mut g = self.current.write().unwrap_or_else(|e| e.into_inner());
        if g.0 != gen {
            return;
        }
        match self
            .config
            .create_with_context::<_, FutureProducer<QuietContext>>(QuietContext::default())
        {
            Ok(p) => {
                tracing::warn!(
                    reason = why,
                    generation = gen + 1,
                    "Kafka producer hit a fatal error; replaced it."
                );
                *g = (gen + 1, p);
            }
            Err(e) => tracing::error!(error = %e, "Could not recreate the Kafka producer."),
        }
    }
}

/// One write waiting for the broker, counted while it waits (and uncounted however the
/// wait ends, a cancelled future included).
struct InFlight<'a> {
    count: &'a std::sync::atomic::AtomicUsize,
    /// Writes already waiting when this one started.
    others: usize,
}

impl<'a> InFlight<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        let others = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight { count, others }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The record key: `facility|patient-id^authority`, or `facility|#control-id`.
pub fn record_key(m: &NewMessage) -> String {
    match &m.patient_key {
        Some(p) => format!("{}|{}", m.sending_facility, p),
        None => format!("{}|#{}", m.sending_facility, m.control_id),
    }
}

pub fn client_config(s: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.brokers)
        .set("client.id", "adt-router")
        // Small requests, one at a time: Nagle would hold each one back.
        .set("socket.nagle.disable", "true")
        // Keep librdkafka's own logs quiet unless asked; errors surface as results.
        .set("log_level", "3");
    c
}

/// Creates a client from `config` with the operator's `kafka.librdkafka_options` applied
/// last, so they win over our tuning (the settings the guarantees rest on are refused in
/// validation). Every client is made here.
pub fn create<C: ClientContext, T: rdkafka::config::FromClientConfigAndContext<C>>(
    config: &mut ClientConfig,
    s: &KafkaSettings,
    context: C,
) -> rdkafka::error::KafkaResult<T> {
    for (k, v) in &s.librdkafka_options {
        config.set(k, v.expose_secret());
    }
    config.create_with_context(context)
}

impl KafkaLog {
    /// Builds the producer and makes sure the topic exists.
    pub async fn connect(s: &KafkaSettings, metrics: Arc<Metrics>) -> Result<Self, LogError> {
        let busy = match s.busy_linger_ms > 0.0 {
            true => Some(Arc::new(ProducerSlot::new(s, s.busy_linger_ms)?)),
            false => None,
        };
        let producer = Arc::new(ProducerSlot::new(s, s.linger_ms)?);
        ensure_topic(s).await?;
        Ok(KafkaLog {
            producer,
            busy,
            busy_at: s.busy_at,
            in_flight: Arc::default(),
            topic: s.topic.clone(),
            timeout: Duration::from_millis(s.produce_timeout_ms),
            metrics,
        })
    }

    pub async fn append(&self, m: NewMessage) -> Result<Appended, LogError> {
        let key = record_key(&m);
        let received = m.received_at_us.to_string();
        let message_type = format!("{}^{}", m.message_type, m.trigger_event);
        let mut h = OwnedHeaders::new_with_capacity(7);
        for (k, v) in [
            (headers::CONTROL_ID, m.control_id.as_str()),
            (headers::MESSAGE_TYPE, message_type.as_str()),
            (headers::CHARSET, m.charset.as_str()),
            (headers::SHA256, m.sha256.as_str()),
            (headers::RECEIVED_AT_US, received.as_str()),
            (headers::PEER, m.peer.as_str()),
            (headers::ACK_CODE, m.ack_code.as_deref().unwrap_or("")),
        ] {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&m.raw)
            .headers(h);
        let waiting = InFlight::enter(&self.in_flight);
        let (slot, which) = match &self.busy {
            Some(busy) if waiting.others >= self.busy_at => (busy, "busy"),
            _ => (&self.producer, "immediate"),
        };
        self.metrics.produced.with_label_values(&[which]).inc();
        let (gen, producer) = slot.get();
        let started = Instant::now();
        let sent = tokio::time::timeout(
            self.timeout,
            producer.send(record, Timeout::After(self.timeout)),
        )
        .await;
        drop(waiting);
        // A fatal producer error always shows up as a failed write; look only then.
        if let Ok(Err((e, _))) = &sent {
            if let Some((_, reason)) = producer.client().fatal_error() {
                slot.replace(gen, &reason);
            } else if e.rdkafka_error_code().is_some_and(breaks_producer_identity) {
                slot.replace(gen, &e.to_string());
            }
        }
        self.metrics
            .produce_latency
            .observe(started.elapsed().as_secs_f64());
        match sent {
            Ok(Ok(d)) => Ok(Appended {
                id: d.offset,
                duplicate: false,
                collision: false,
            }),
            Ok(Err((e, _))) => {
                self.metrics
                    .produce_errors
                    .with_label_values(&["broker"])
                    .inc();
                Err(LogError::Unavailable(format!(
                    "Kafka did not confirm the write: {e}"
                )))
            }
            Err(_) => {
                self.metrics
                    .produce_errors
                    .with_label_values(&["timeout"])
                    .inc();
                Err(LogError::Timeout(self.timeout.as_millis() as u64))
            }
        }
    }

    /// Waits (bounded) for queued writes on shutdown.
    pub fn flush(&self) {
        for slot in std::iter::once(&self.producer).chain(&self.busy) {
            let _ = slot.get().1.flush(Timeout::After(Duration::from_secs(5)));
        }
    }
}

/// Errors after which this producer's id/epoch is no good to the broker again.
fn breaks_producer_identity(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::InvalidProducerIdMapping
            | RDKafkaErrorCode::Fatal
    )
}

async fn ensure_topic(s: &KafkaSettings) -> Result<(), LogError> {
    let admin: AdminClient<DefaultClientContext> =
        create(&mut client_config(s), s, DefaultClientContext)
            .map_err(|e| LogError::Unavailable(format!("creating the Kafka admin client: {e}")))?;
    let min_isr = s.min_insync().to_string();
    let topic = NewTopic::new(
        &s.topic,
        s.partitions,
        TopicReplication::Fixed(s.replication_factor),
    )
    .set("min.insync.replicas", &min_isr);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .map_err(|e| LogError::Unavailable(format!("reaching Kafka at {}: {e}", s.brokers)))?;
    for r in results {
        match r {
            Ok(name) => {
                tracing::info!(topic = %name, partitions = s.partitions, replication = s.replication_factor, min_insync_replicas = %min_isr, "Created Kafka topic.")
            }
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::info!(topic = %name, "Kafka topic exists.")
            }
            Err((name, code)) => {
                return Err(LogError::Unavailable(format!(
                    "creating Kafka topic {name}: {code}"
                )));
            }
        }
    }
    check_durability(&admin, s, &opts).await;
    Ok(())
}

/// Reads the topic's `min.insync.replicas` as the cluster holds it (an existing topic
/// keeps its own) and warns when one broker's loss could lose a write we answered AA.
async fn check_durability(
    admin: &AdminClient<DefaultClientContext>,
    s: &KafkaSettings,
    opts: &AdminOptions,
) {
    use rdkafka::admin::{ConfigSource, ResourceSpecifier};
    let brokers = match admin
        .inner()
        .fetch_metadata(Some(&s.topic), Duration::from_secs(10))
    {
        Ok(m) => m.brokers().len(),
        Err(e) => {
            tracing::warn!(error = %e, "Could not read the Kafka cluster's metadata to check durability.");
            return;
        }
    };
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(&s.topic)], opts)
        .await;
    let min_isr = match described.as_ref().map(|r| r.first()) {
        Ok(Some(Ok(c))) => c
            .get("min.insync.replicas")
            .filter(|e| !matches!(e.source, ConfigSource::Unknown))
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.parse::<i32>().ok()),
        _ => None,
    };
    match durability_warning(brokers, min_isr) {
        Some(w) => tracing::warn!(topic = %s.topic, brokers, min_insync_replicas = ?min_isr, "{w}"),
        None => {
            tracing::info!(topic = %s.topic, brokers, min_insync_replicas = ?min_isr, "Kafka topic durability checked.")
        }
    }
}

/// What to warn of, given the cluster's broker count and the topic's
/// `min.insync.replicas` (when the cluster says).
fn durability_warning(brokers: usize, min_isr: Option<i32>) -> Option<String> {
    if brokers <= 1 {
        return None; // a single-broker development set-up: nothing to replicate to
    }
    match min_isr {
        Some(n) if n >= 2 => None,
        Some(n) => Some(format!(
            "The topic's min.insync.replicas is {n} on a {brokers}-broker cluster: a write we answered AA can be lost with one broker. Set it to 2 or more (kafka-configs --alter --add-config min.insync.replicas=2)."
        )),
        None => Some(format!(
            "Could not read the topic's min.insync.replicas on a {brokers}-broker cluster; check that it is 2 or more, or a write we answered AA can be lost with one broker."
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_warns_only_where_a_broker_could_take_a_write_with_it() {
        assert_eq!(
            durability_warning(1, Some(1)),
            None,
            "single-broker development"
        );
        assert_eq!(durability_warning(1, None), None);
        assert_eq!(durability_warning(3, Some(2)), None);
        assert!(durability_warning(3, Some(1))
            .unwrap()
            .contains("min.insync.replicas is 1"));
        assert!(durability_warning(3, None)
            .unwrap()
            .contains("Could not read"));
        let mut k = KafkaSettings::default();
        assert_eq!(k.min_insync(), 1, "factor 1");
        k.replication_factor = 3;
        assert_eq!(k.min_insync(), 2, "factor 3");
        k.min_insync_replicas = 3;
        assert_eq!(k.min_insync(), 3);
    }

    #[test]
    fn keys_keep_a_patient_together_and_fall_back_to_the_control_id() {
        let mut m = NewMessage {
            received_at_us: 0,
            peer: String::new(),
            sending_application: "EPIC".into(),
            sending_facility: "GENHOSP".into(),
            receiving_application: String::new(),
            receiving_facility: String::new(),
            control_id: "C1".into(),
            message_type: "ADT".into(),
            trigger_event: "A01".into(),
            version: "2.5".into(),
            processing_id: "P".into(),
            charset: "UTF-8".into(),
            ack_mode: "original".into(),
            ack_code: None,
            status: "pending",
            error: None,
            patient_key: Some("MRN1^GENHOSP".into()),
            visit_number: None,
            patient_class: None,
            sha256: String::new(),
            raw: Vec::new(),
        };
        assert_eq!(record_key(&m), "GENHOSP|MRN1^GENHOSP");
        m.patient_key = None;
        assert_eq!(record_key(&m), "GENHOSP|#C1");
    }
}

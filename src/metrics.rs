//! Prometheus metrics, defined once. Names follow `adt_router_<thing>_<unit>`; label
//! values are few and never carry PHI (facility names are truncated to bound cardinality).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde::{Deserialize, Serialize};

pub struct Metrics {
    pub registry: Registry,
    facilities: LabelCap,
    triggers: LabelCap,
    /// Frames answered, by sending facility, trigger event and the ACK code that was
    /// written to the connection ("none" when nothing was: MSH-15 asked for no answer,
    /// storage failed with `on_storage_failure = "close"`, or the write failed).
    pub messages_received: IntCounterVec,
    /// From the last byte of a frame to its ACK written to the socket.
    pub ack_latency: Histogram,
    /// Framing quirks and errors by kind.
    pub frame_errors: IntCounterVec,
    pub open_connections: IntGauge,
    pub connections_total: IntCounter,
    /// Connections closed at once, by reason (`max_connections`, `per_peer`).
    pub connections_refused: IntCounterVec,
    pub duplicates: IntCounter,
    /// Messages stored with a control id their sender had used for other bytes.
    pub control_id_collisions: IntCounter,
    pub quarantined: IntCounterVec,
    pub commit_batch_size: Histogram,
    pub commit_latency: Histogram,
    /// Appends that failed (storage down, timeout, abandoned before the commit began):
    /// each sender was told "not stored" (AR/CE, or the connection closed).
    pub append_errors: IntCounterVec,
    /// Stored rows whose `ack_code` was corrected to what the sender really heard, by
    /// reason: `late_commit` (committed after the sender was told "not stored") or
    /// `ack_not_written` (the ACK could not be written to the connection).
    pub ack_corrections: IntCounterVec,
    /// Kafka mode: from send to the broker's confirmation.
    pub produce_latency: Histogram,
    pub produce_errors: IntCounterVec,
    /// Kafka mode: writes sent, by producer (`immediate`, or `busy` while many wait).
    pub produced: IntCounterVec,
    /// Kafka mode: high watermark minus the router's position, per partition.
    pub consumer_lag: IntGaugeVec,
    /// Kafka mode: records the router handled, by outcome.
    pub records_processed: IntCounterVec,
    pub rebalances: IntCounterVec,
    /// Roster uploads over HTTP, by outcome (loaded, rejected, forbidden, error).
    pub roster_uploads: IntCounterVec,
    /// Messages the router read, by outcome (routed, skipped).
    pub routed: IntCounterVec,
    /// Outbox rows written by the router, by status (pending, suppressed, dead).
    pub notifications_created: IntCounterVec,
    /// Time per routed page, by stage: `plan` (read, parse, attribute, decide),
    /// `wait` (the plan done, for the page before to commit) and `commit`. Which of
    /// plan and commit is longer says which half limits routing.
    pub routing_page: HistogramVec,
    /// Routing-rule (re)loads, by outcome (ok, invalid).
    pub rule_reloads: IntCounterVec,
    /// Delivery attempts, by channel and outcome (delivered, retry, failed, dead).
    pub delivery_attempts: IntCounterVec,
    /// Times an endpoint's circuit breaker opened.
    pub delivery_circuit_opens: IntCounter,
    /// MDNs and DSNs received by the Direct intake, by kind and what they did.
    pub direct_reports: IntCounterVec,
    /// Stages (routing, delivery, report intake, ...) that ended while serving.
    pub stage_failures: IntCounterVec,
    /// Direct intake connections and sessions cut short, by reason.
    pub direct_intake_refused: IntCounterVec,
    /// SMART Backend Services token requests, by outcome (issued, refused, failed).
    pub smart_tokens: IntCounterVec,
}

const FACILITY_LABEL_MAX: usize = 64;

/// The default of `metrics.max_label_values`.
pub const DEFAULT_MAX_LABEL_VALUES: usize = 200;

/// Label values taken from message content: the first `max` distinct ones are used as
/// they are, every later one becomes `other`. A sender (or an attacker) inventing MSH-4
/// values cannot grow the number of series without bound.
struct LabelCap {
    seen: std::sync::RwLock<std::collections::HashSet<String>>,
    max: usize,
}

impl LabelCap {
    fn new(max: usize) -> Self {
        LabelCap {
            seen: Default::default(),
            max,
        }
    }

    fn label<'a>(&self, value: &'a str) -> &'a str {
        let read = self.seen.read().unwrap_or_else(|e| e.into_inner());
        if read.contains(value) {
            return value;
        }
        let full = read.len() >= self.max;
        drop(read);
        if full {
            return "other";
        }
        let mut write = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if write.len() < self.max || write.contains(value) {
            write.insert(value.to_string());
            value
        } else {
            "other"
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_label_cap(DEFAULT_MAX_LABEL_VALUES)
    }

    /// `max_label_values` distinct sending facilities, and as many triggers, get a series
    /// of their own; later ones are counted as `other`.
    pub fn with_label_cap(max_label_values: usize) -> Self {
        let registry = Registry::new_custom(Some("adt_router".into()), None).expect("registry");
        let latency_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ];
        let m = Metrics {
            registry,
            facilities: LabelCap::new(max_label_values),
            triggers: LabelCap::new(max_label_values),
            produce_latency: Histogram::with_opts(
                HistogramOpts::new("kafka_produce_latency_seconds", "Kafka mode: time from send to the broker's confirmation.")
                    .buckets(latency_buckets.clone()),
            )
            .expect("metric"),
            produce_errors: IntCounterVec::new(
                Opts::new("kafka_produce_errors_total", "Kafka mode: writes the broker did not confirm (answered AR/CE), by kind."),
                &["kind"],
            )
            .expect("metric"),
            produced: IntCounterVec::new(
                Opts::new("kafka_produced_total", "Kafka mode: writes sent to the broker, by producer (immediate, or busy while many writes wait)."),
                &["producer"],
            )
            .expect("metric"),
            consumer_lag: IntGaugeVec::new(
                Opts::new("kafka_consumer_lag", "Kafka mode: records not yet processed by this router, per partition."),
                &["partition"],
            )
            .expect("metric"),
            records_processed: IntCounterVec::new(
                Opts::new("kafka_records_processed_total", "Kafka mode: records the router handled, by outcome."),
                &["outcome"],
            )
            .expect("metric"),
            rebalances: IntCounterVec::new(
                Opts::new("kafka_rebalances_total", "Kafka mode: consumer group rebalances seen by this router, by kind."),
                &["kind"],
            )
            .expect("metric"),
            routed: IntCounterVec::new(
                Opts::new("routed_messages_total", "Messages the router read from the event log, by outcome."),
                &["outcome"],
            )
            .expect("metric"),
            notifications_created: IntCounterVec::new(
                Opts::new("notifications_created_total", "Outbox rows written by the router, by status."),
                &["status"],
            )
            .expect("metric"),
            routing_page: HistogramVec::new(
                HistogramOpts::new("routing_page_seconds", "Time per routed page, by stage (plan, wait, commit).")
                    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
                &["stage"],
            )
            .expect("metric"),
            rule_reloads: IntCounterVec::new(
                Opts::new("routing_rule_loads_total", "Routing-rule loads, by outcome; an invalid load keeps the last good rules."),
                &["outcome"],
            )
            .expect("metric"),
            delivery_attempts: IntCounterVec::new(
                Opts::new("delivery_attempts_total", "Delivery attempts, by channel and outcome."),
                &["channel", "outcome"],
            )
            .expect("metric"),
            delivery_circuit_opens: IntCounter::new(
                "delivery_circuit_opens_total",
                "Times an endpoint failed often enough in a row that its circuit breaker opened.",
            )
            .expect("metric"),
            smart_tokens: IntCounterVec::new(
                Opts::new(
                    "smart_token_requests_total",
                    "SMART Backend Services token requests, by outcome (issued, refused by the token endpoint, failed to get an answer).",
                ),
                &["outcome"],
            )
            .expect("metric"),
            direct_reports: IntCounterVec::new(
                Opts::new(
                    "direct_reports_total",
                    "Reports received from the HISP, by kind (mdn, dsn, other) and effect (applied, recorded, late; and, moving nothing: unmatched, foreign, forged, wrong_recipient).",
                ),
                &["kind", "effect"],
            )
            .expect("metric"),
            stage_failures: IntCounterVec::new(
                Opts::new(
                    "stage_failures_total",
                    "Stages that ended (an error or a panic) while the service was running; the process then stops to be restarted.",
                ),
                &["stage"],
            )
            .expect("metric"),
            direct_intake_refused: IntCounterVec::new(
                Opts::new(
                    "direct_intake_refused_total",
                    "Direct intake connections refused or closed, by reason (peer: not in direct.inbound_allow; connections; line: over-long; size; session_time; tls).",
                ),
                &["reason"],
            )
            .expect("metric"),
            roster_uploads: IntCounterVec::new(
                Opts::new("roster_uploads_total", "Roster uploads over HTTP, by outcome."),
                &["outcome"],
            )
            .expect("metric"),
            messages_received: IntCounterVec::new(
                Opts::new("messages_received_total", "Inbound messages answered, by sending facility, trigger event and ACK code."),
                &["sending_facility", "trigger_event", "ack_code"],
            )
            .expect("metric"),
            ack_latency: Histogram::with_opts(
                HistogramOpts::new("ack_latency_seconds", "Time from a complete frame to its ACK written.")
                    .buckets(latency_buckets.clone()),
            )
            .expect("metric"),
            frame_errors: IntCounterVec::new(
                Opts::new("mllp_frame_errors_total", "MLLP framing quirks and errors, by kind."),
                &["kind"],
            )
            .expect("metric"),
            open_connections: IntGauge::new("mllp_open_connections", "Open MLLP connections.").expect("metric"),
            connections_total: IntCounter::new("mllp_connections_total", "MLLP connections accepted.").expect("metric"),
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "mllp_connections_refused_total",
                    "MLLP connections closed at once, by reason: max_connections (mllp.max_connections open) or per_peer (mllp.max_connections_per_peer open from that address).",
                ),
                &["reason"],
            )
            .expect("metric"),
            duplicates: IntCounter::new(
                "duplicates_total",
                "Messages whose sender, facility, control id and bytes were already stored within the window (resends, not routed again).",
            )
            .expect("metric"),
            control_id_collisions: IntCounter::new(
                "control_id_collisions_total",
                "Messages whose sender, facility and control id were stored within the window with other bytes (stored, routed and flagged).",
            )
            .expect("metric"),
            quarantined: IntCounterVec::new(
                Opts::new("quarantined_total", "Frames rejected and kept in quarantine, by reason."),
                &["reason"],
            )
            .expect("metric"),
            commit_batch_size: Histogram::with_opts(
                HistogramOpts::new("event_log_commit_batch_size", "Messages per event-log commit (group commit).")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )
            .expect("metric"),
            commit_latency: Histogram::with_opts(
                HistogramOpts::new("event_log_commit_seconds", "Time to commit one event-log batch.")
                    .buckets(latency_buckets),
            )
            .expect("metric"),
            append_errors: IntCounterVec::new(
                Opts::new("event_log_append_errors_total", "Event-log appends that failed, by kind; each sender was told the message was not stored."),
                &["kind"],
            )
            .expect("metric"),
            ack_corrections: IntCounterVec::new(
                Opts::new("event_log_ack_corrections_total", "Stored messages whose ack_code was corrected to what the sender heard, by reason (late_commit, ack_not_written)."),
                &["reason"],
            )
            .expect("metric"),
        };
        for c in [
            Box::new(m.messages_received.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.ack_latency.clone()),
            Box::new(m.frame_errors.clone()),
            Box::new(m.open_connections.clone()),
            Box::new(m.connections_total.clone()),
            Box::new(m.connections_refused.clone()),
            Box::new(m.duplicates.clone()),
            Box::new(m.control_id_collisions.clone()),
            Box::new(m.quarantined.clone()),
            Box::new(m.commit_batch_size.clone()),
            Box::new(m.commit_latency.clone()),
            Box::new(m.append_errors.clone()),
            Box::new(m.ack_corrections.clone()),
            Box::new(m.produce_latency.clone()),
            Box::new(m.produce_errors.clone()),
            Box::new(m.produced.clone()),
            Box::new(m.consumer_lag.clone()),
            Box::new(m.records_processed.clone()),
            Box::new(m.rebalances.clone()),
            Box::new(m.roster_uploads.clone()),
            Box::new(m.routed.clone()),
            Box::new(m.notifications_created.clone()),
            Box::new(m.routing_page.clone()),
            Box::new(m.rule_reloads.clone()),
            Box::new(m.delivery_attempts.clone()),
            Box::new(m.delivery_circuit_opens.clone()),
            Box::new(m.smart_tokens.clone()),
            Box::new(m.direct_reports.clone()),
            Box::new(m.direct_intake_refused.clone()),
            Box::new(m.stage_failures.clone()),
        ] {
            m.registry.register(c).expect("register metric");
        }
        m
    }

    pub fn message(&self, facility: &str, trigger: &str, ack_code: &str) {
        let fac: String = facility.chars().take(FACILITY_LABEL_MAX).collect();
        let trig: String = trigger.chars().take(8).collect();
        self.messages_received
            .with_label_values(&[
                self.facilities.label(&fac),
                self.triggers.label(&trig),
                ack_code,
            ])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod label_cap_tests {
    use super::*;

    #[test]
    fn the_first_values_keep_their_label_and_the_rest_are_other() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.label("A"), "A");
        assert_eq!(cap.label("B"), "B");
        assert_eq!(cap.label("C"), "other");
        assert_eq!(cap.label("A"), "A");
        assert_eq!(cap.label("D"), "other");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_names() {
        let m = Metrics::new();
        m.message("GENHOSP", "A01", "AA");
        m.frame_errors.with_label_values(&["oversize"]).inc();
        let text = m.render();
        assert!(text.contains("adt_router_messages_received_total{ack_code=\"AA\",sending_facility=\"GENHOSP\",trigger_event=\"A01\"} 1"), "{text}");
        assert!(text.contains("adt_router_mllp_frame_errors_total{kind=\"oversize\"} 1"));
    }
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
            max_label_values: DEFAULT_MAX_LABEL_VALUES,
        }
    }
}

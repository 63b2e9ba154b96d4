//! Step 5, the deliverers: claim due notifications from the outbox, send them, record
//! every attempt, and settle each one as delivered, retried later, failed (permanent)
//! or dead (out of retries). This first slice delivers the REST channel ([`webhook`]);
//! Direct and FHIR rows stay pending until their senders land.
//!
//! Retry policy: transient failures (connection errors, timeouts, HTTP 408, 429 and 5xx)
//! come back after an exponential backoff with full jitter (a random wait between zero
//! and `base * 2^attempt`, capped), or after the receiver's `Retry-After` when it gives
//! one, until the notification is older than `max_age` or has had `max_attempts`.
//! Other 4xx answers and unusable endpoints fail at once.

pub mod webhook;

use crate::directory::endpoint::EndpointPolicy;
use crate::metrics::Metrics;
use crate::store::delivery::{AttemptRow, Outgoing};
use crate::store::{now_us, Store, StoreError};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

/// `[delivery]` retry settings.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub max_age: Duration,
    pub max_attempts: i32,
    pub timeout: Duration,
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the receiver has it. `proof` is what is kept (status, body hash, time).
    Delivered { code: u16, proof: String },
    /// Worth trying again; `retry_after` when the receiver said when.
    Transient {
        code: Option<u16>,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Trying again will not help.
    Permanent { code: Option<u16>, reason: String },
}

impl RetryPolicy {
    /// When to try again after `attempts` attempts, or `None` when out of retries.
    pub fn next_due(
        &self,
        attempts: i32,
        created_at_us: i64,
        now: i64,
        retry_after: Option<Duration>,
    ) -> Option<i64> {
        if attempts >= self.max_attempts {
            return None;
        }
        let wait = retry_after.unwrap_or_else(|| {
            let exp = self
                .base
                .saturating_mul(2u32.saturating_pow(attempts.clamp(0, 30) as u32))
                .min(self.cap);
            exp.mul_f64(rand::thread_rng().gen::<f64>())
        });
        let due = now + i64::try_from(wait.as_micros()).unwrap_or(i64::MAX / 2);
        let deadline =
            created_at_us + i64::try_from(self.max_age.as_micros()).unwrap_or(i64::MAX / 2);
        (due <= deadline).then_some(due)
    }
}

#[derive(Clone)]
pub struct Deliverer {
    pub store: Store,
    pub http: reqwest::Client,
    pub policy: RetryPolicy,
    pub endpoints: EndpointPolicy,
    pub owner: String,
    pub metrics: Arc<Metrics>,
    /// Rows claimed per round.
    pub batch: i64,
}

impl Deliverer {
    /// Claims and delivers until `shutdown` fires. Up to `batch` notifications are in
    /// flight at once, each settled on its own: a receiver that hangs holds up only its
    /// own rows (until the request's time limit), never the others.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut inflight = tokio::task::JoinSet::new();
        loop {
            if *shutdown.borrow() {
                // Unfinished sends are abandoned; their leases run out and they are sent
                // again (same idempotency key) by the next worker.
                inflight.shutdown().await;
                return;
            }
            while let Some(r) = inflight.try_join_next() {
                report(r);
            }
            let room = self.batch - inflight.len() as i64;
            let claimed = if room > 0 {
                match self.claim(room).await {
                    Ok(ids) => {
                        for id in &ids {
                            let me = self.clone();
                            let id = *id;
                            inflight.spawn(async move { me.deliver(id).await });
                        }
                        ids.len()
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Claiming notifications failed; retrying.");
                        0
                    }
                }
            } else {
                0
            };
            if claimed == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = shutdown.changed() => {}
                    Some(r) = inflight.join_next(), if !inflight.is_empty() => report(r),
                }
            }
        }
    }

    /// Leases up to `limit` due notifications of the channels this deliverer sends.
    async fn claim(&self, limit: i64) -> Result<Vec<i64>, StoreError> {
        let now = now_us();
        // The lease outlives the request's time limit, so no one else takes it meanwhile.
        let lease =
            now + i64::try_from((self.policy.timeout * 2).as_micros()).unwrap_or(60_000_000);
        Ok(self
            .store
            .claim_due_on(&self.owner, now, lease, limit, &["REST"])
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    async fn deliver(&self, id: i64) -> Result<(), StoreError> {
        let Some(n) = self.store.outgoing(id).await? else {
            return Ok(());
        };
        let started = now_us();
        let clock = std::time::Instant::now();
        let (outcome, request_sha256) = match n.channel.as_str() {
            "REST" => webhook::send(&self.http, &n, self.endpoints, self.policy.timeout).await,
            other => (
                Outcome::Permanent {
                    code: None,
                    reason: format!("channel {other} has no sender yet"),
                },
                String::new(),
            ),
        };
        let latency_us = i64::try_from(clock.elapsed().as_micros()).unwrap_or(i64::MAX);
        self.settle(&n, outcome, request_sha256, started, latency_us)
            .await
    }

    async fn settle(
        &self,
        n: &Outgoing,
        outcome: Outcome,
        request_sha256: String,
        started: i64,
        latency_us: i64,
    ) -> Result<(), StoreError> {
        let now = now_us();
        let (label, code, text, status, due, proof) = match &outcome {
            Outcome::Delivered { code, proof } => (
                "delivered",
                Some(*code),
                String::new(),
                "delivered",
                now,
                Some(proof.clone()),
            ),
            Outcome::Transient {
                code,
                reason,
                retry_after,
            } => match self
                .policy
                .next_due(n.attempts, n.created_at_us, now, *retry_after)
            {
                Some(due) => ("retry", *code, reason.clone(), "pending", due, None),
                None => (
                    "dead",
                    *code,
                    format!("{reason}; out of retries after {} attempts", n.attempts),
                    "dead",
                    now,
                    None,
                ),
            },
            Outcome::Permanent { code, reason } => {
                ("failed", *code, reason.clone(), "failed", now, None)
            }
        };
        self.metrics
            .delivery_attempts
            .with_label_values(&[n.channel.as_str(), label])
            .inc();
        if label != "delivered" {
            tracing::info!(
                notification = n.id,
                channel = n.channel,
                outcome = label,
                code,
                "Delivery attempt did not deliver."
            );
        }
        let attempt = AttemptRow {
            outbox_id: n.id,
            attempt: n.attempts,
            started_at_us: started,
            channel: n.channel.clone(),
            endpoint: n.endpoint.clone(),
            request_sha256,
            outcome: label.to_string(),
            response_code: code.map(i32::from),
            response_text: text.clone(),
            latency_us,
        };
        let error = (!text.is_empty()).then_some(text.as_str());
        let kept = self
            .store
            .record_attempt(&attempt, &self.owner, status, due, error, proof.as_deref())
            .await?;
        if !kept {
            tracing::warn!(
                notification = n.id,
                "The lease ran out before the attempt was recorded; another worker owns it now."
            );
        }
        Ok(())
    }
}

fn report(r: Result<Result<(), StoreError>, tokio::task::JoinError>) {
    match r {
        Ok(Err(e)) => tracing::warn!(error = %e, "Recording a delivery failed."),
        Err(e) if !e.is_cancelled() => tracing::warn!(error = %e, "A delivery task failed."),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_stops() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
            max_attempts: 5,
            timeout: Duration::from_secs(10),
        };
        for attempts in 0..5 {
            let due = p.next_due(attempts, 0, 0, None).unwrap();
            let bound = 1_000_000i64 << attempts;
            assert!(
                (0..=bound.min(60_000_000)).contains(&due),
                "{attempts}: {due}"
            );
        }
        assert_eq!(p.next_due(5, 0, 0, None), None);
        assert_eq!(
            p.next_due(1, 0, 0, Some(Duration::from_secs(7))),
            Some(7_000_000)
        );
        // Past the maximum age: dead.
        assert_eq!(
            p.next_due(1, 0, 3_600_000_000, Some(Duration::from_secs(1))),
            None
        );
    }
}

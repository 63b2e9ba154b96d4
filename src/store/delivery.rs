//! What the deliverers read and write: the notification to send (with its endpoint's
//! secret from the directory override), and each attempt with the row's new status in
//! one transaction, so the attempt log and the outbox never disagree.

use super::outbox::Status;
use super::{on_pool, Store, StoreError};
use crate::directory::endpoint::EndpointKind;
use sqlx::Row;

/// A claimed notification, ready to send.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub id: i64,
    pub notification_key: String,
    pub channel: EndpointKind,
    pub endpoint: String,
    pub payload: Vec<u8>,
    pub attempts: i32,
    pub created_at_us: i64,
    /// The directory override's secret for this endpoint (webhook signing).
    pub secret: Option<crate::secret::SecretString>,
    /// Direct only: the inbound HL7 v2 message behind the notification.
    pub raw_hl7: Option<Vec<u8>>,
    /// FHIR only: the subscription, and the headers it asked for.
    pub subscription_id: Option<String>,
    pub headers: Vec<(String, String)>,
    /// FHIR only: the subscription's time limit per attempt (`backport-timeout`).
    pub timeout_secs: Option<i64>,
    /// handshake | heartbeat | event (FHIR), the transition kind otherwise.
    pub kind: Option<String>,
}

#[derive(Clone, Debug)]
pub struct AttemptRow {
    pub outbox_id: i64,
    pub attempt: i32,
    pub started_at_us: i64,
    pub channel: EndpointKind,
    pub endpoint: String,
    pub request_sha256: String,
    pub outcome: String,
    pub response_code: Option<i32>,
    pub response_text: String,
    pub latency_us: i64,
}

/// One settled attempt: the attempt, and the notification's new state.
#[derive(Clone, Debug)]
pub struct Settle {
    pub attempt: AttemptRow,
    /// The lease holder settling its claim; empty for a Direct row awaiting its MDNs
    /// (settled by a report or its timeout, from `submitted` or `processed` only).
    pub owner: String,
    pub status: super::outbox::Status,
    pub due_at_us: i64,
    pub error: Option<String>,
    pub proof: Option<String>,
    /// What the answer does to the row's FHIR subscription, if any: made only when the
    /// settle holds (a worker whose lease ran out changes nothing but the attempt log).
    pub subscription: Option<SubscriptionChange>,
}

/// A FHIR subscription's new status (and error) from its endpoint's answer.
#[derive(Clone, Debug)]
pub struct SubscriptionChange {
    pub id: String,
    pub status: &'static str,
    pub error: Option<String>,
}

impl Store {
    /// A notification and its endpoint's secret.
    pub async fn outgoing(&self, id: i64) -> Result<Option<Outgoing>, StoreError> {
        const SQL: &str = "SELECT o.id, o.notification_key, o.channel, o.endpoint, o.payload, o.attempts, o.created_at_us, \
             (SELECT d.secret FROM directory_override d WHERE d.npi = o.recipient_npi AND d.endpoint_type = o.channel \
                AND d.secret IS NOT NULL AND (d.endpoint = o.endpoint OR d.endpoint || '/' = o.endpoint) ORDER BY d.id LIMIT 1), \
             CASE WHEN o.channel = 'DIRECT' THEN (SELECT i.raw FROM encounter_transition t JOIN inbound_messages i ON i.id = t.inbound_id \
                WHERE t.transition_key = o.transition_key) END, \
             o.subscription_id, (SELECT f.headers FROM fhir_subscription f WHERE f.id = o.subscription_id), o.kind, \
             (SELECT f.timeout_secs FROM fhir_subscription f WHERE f.id = o.subscription_id) \
             FROM outbox o WHERE o.id = $1";
        on_pool!(self, |p, sql| {
            let row = sqlx::query(&sql(SQL)).bind(id).fetch_optional(p).await?;
            row.map(|r| {
                Ok(Outgoing {
                    id: r.try_get::<i64, _>(0)?,
                    notification_key: r.try_get(1)?,
                    channel: EndpointKind::decode(&r.try_get::<String, _>(2)?)?,
                    endpoint: r.try_get(3)?,
                    payload: r.try_get(4)?,
                    attempts: r.try_get(5)?,
                    created_at_us: r.try_get(6)?,
                    secret: r
                        .try_get::<Option<String>, _>(7)?
                        .map(crate::secret::SecretString::from),
                    raw_hl7: r.try_get(8)?,
                    subscription_id: r.try_get(9)?,
                    headers: r
                        .try_get::<Option<String>, _>(10)?
                        .and_then(|h| serde_json::from_str(&h).ok())
                        .unwrap_or_default(),
                    kind: r.try_get(11)?,
                    timeout_secs: r.try_get(12)?,
                })
            })
            .transpose()
            .map_err(|e: StoreError| e)
        })
    }

    /// Records attempts and settles their rows (`status`, next `due_at_us`, error,
    /// proof), all in one transaction (one commit for many: the deliverer's group
    /// commit). For each: whether the owner still held the lease (`false`: another
    /// worker owns the row now; the attempt is recorded anyway, it happened).
    pub async fn record_attempts(&self, batch: &[Settle]) -> Result<Vec<bool>, StoreError> {
        const ATTEMPT: &str = "INSERT INTO delivery_attempt (outbox_id, attempt, started_at_us, channel, endpoint, request_sha256, outcome, response_code, response_text, latency_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
        const SETTLE: &str = "UPDATE outbox SET status = $1, due_at_us = $2, last_error = $3, proof = COALESCE($4, proof), \
             delivered_at_us = CASE WHEN $1 = 'delivered' THEN $5 ELSE delivered_at_us END, lease_owner = NULL, lease_until_us = NULL \
             WHERE id = $6 AND ((lease_owner = $7 AND status = 'sending') OR ($7 = '' AND status IN ('submitted', 'processed')))";
        const FALLBACKS: &str = "SELECT fallbacks, notification_key FROM outbox WHERE id = $1";
        const FALL_BACK: &str = "INSERT INTO outbox (notification_key, ordering_key, channel, endpoint, payload, status, due_at_us, created_at_us, \
             transition_key, kind, encounter, control_id, sending_facility, recipient_npi, rule_ids, content_profile, fallbacks) \
             SELECT $1, ordering_key, $2, $3, payload, 'pending', $4, $4, transition_key, kind, encounter, control_id, \
             sending_facility, recipient_npi, rule_ids, content_profile, $5 FROM outbox WHERE id = $6 \
             ON CONFLICT (notification_key) DO NOTHING";
        let now = super::now_us();
        let kept = on_pool!(self, |p, sql| {
            let mut tx = p.begin().await?;
            let mut kept = Vec::with_capacity(batch.len());
            for st in batch {
                let a = &st.attempt;
                // Failed for good on this channel: the next one in the rule's order, if
                // any, gets a notification of its own (same content, its own key) -- but
                // only once the lease-checked settle below holds, so a worker whose lease
                // ran out cannot add a fallback for a row another worker delivered.
                let mut error = st.error.clone();
                let mut fallback = None;
                if matches!(st.status, Status::Dead | Status::Failed) {
                    let row: Option<(Option<String>, String)> = sqlx::query_as(&sql(FALLBACKS))
                        .bind(a.outbox_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some((Some(json), key)) = row {
                        let mut rest: Vec<(String, String)> =
                            serde_json::from_str(&json).unwrap_or_default();
                        if !rest.is_empty() {
                            let (channel, endpoint) = rest.remove(0);
                            let new_key = super::key_hash(&format!("{key}|{channel}"));
                            let rest = (!rest.is_empty())
                                .then(|| serde_json::to_string(&rest).unwrap_or_default());
                            error = Some(format!(
                                "{}; falling back to {channel}",
                                error.unwrap_or_default()
                            ));
                            fallback = Some((new_key, channel, endpoint, rest));
                        }
                    }
                }
                sqlx::query(&sql(ATTEMPT))
                    .bind(a.outbox_id)
                    .bind(a.attempt)
                    .bind(a.started_at_us)
                    .bind(a.channel.as_str())
                    .bind(&a.endpoint)
                    .bind(&a.request_sha256)
                    .bind(&a.outcome)
                    .bind(a.response_code)
                    .bind(&a.response_text)
                    .bind(a.latency_us)
                    .execute(&mut *tx)
                    .await?;
                let held = sqlx::query(&sql(SETTLE))
                    .bind(st.status.as_str())
                    .bind(st.due_at_us)
                    .bind(&error)
                    .bind(&st.proof)
                    .bind(now)
                    .bind(a.outbox_id)
                    .bind(&st.owner)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if held {
                    if let Some((new_key, channel, endpoint, rest)) = fallback {
                        sqlx::query(&sql(FALL_BACK))
                            .bind(&new_key)
                            .bind(&channel)
                            .bind(&endpoint)
                            .bind(now)
                            .bind(rest)
                            .bind(a.outbox_id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    if let Some(c) = &st.subscription {
                        sqlx::query(&sql(super::fhir::SUBSCRIPTION_STATUS))
                            .bind(c.status)
                            .bind(&c.error)
                            .bind(&c.id)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                kept.push(held);
            }
            tx.commit().await?;
            kept
        });
        Ok(kept)
    }

    /// Hands claimed rows back untried (no attempt counted), each due at its time; one
    /// transaction.
    pub async fn release_claims(&self, rows: &[(i64, i64)], owner: &str) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE outbox SET status = 'pending', attempts = attempts - 1, due_at_us = $1, \
             lease_owner = NULL, lease_until_us = NULL WHERE id = $2 AND lease_owner = $3 AND status = 'sending'";
        on_pool!(self, |p, sql| {
            let mut tx = p.begin().await?;
            for (id, due_at_us) in rows {
                sqlx::query(&sql(SQL))
                    .bind(due_at_us)
                    .bind(id)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}

impl Store {
    /// Makes notifications due again now, keeping their idempotency keys, and records a
    /// `resend` line in each one's attempt log. Rows being sent right now, and
    /// suppressed ones (a decision, not a delivery), are left alone. Returns the ids.
    pub async fn resend(
        &self,
        id: Option<i64>,
        recipient_npi: Option<&str>,
        since_us: i64,
    ) -> Result<Vec<i64>, StoreError> {
        const PICK: &str =
            "SELECT id FROM outbox WHERE ($1 < 0 OR id = $1) AND ($2 = '' OR recipient_npi = $2) \
             AND created_at_us >= $3 AND status NOT IN ('sending', 'suppressed') ORDER BY id";
        const NOTE: &str = "INSERT INTO delivery_attempt (outbox_id, attempt, started_at_us, channel, endpoint, request_sha256, outcome, response_code, response_text, latency_us) \
             SELECT id, attempts, $1, channel, endpoint, '', 'resend', NULL, 'resend requested by an operator', 0 FROM outbox WHERE id = $2";
        const DUE: &str = "UPDATE outbox SET status = 'pending', due_at_us = $1, last_error = NULL WHERE id = $2 AND status <> 'sending'";
        let now = super::now_us();
        let ids = on_pool!(self, |p, sql| {
            let mut tx = p.begin().await?;
            let ids: Vec<i64> = sqlx::query_scalar(&sql(PICK))
                .bind(id.unwrap_or(-1))
                .bind(recipient_npi.unwrap_or(""))
                .bind(since_us)
                .fetch_all(&mut *tx)
                .await?;
            for i in &ids {
                sqlx::query(&sql(NOTE))
                    .bind(now)
                    .bind(i)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&sql(DUE))
                    .bind(now)
                    .bind(i)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            ids
        });
        Ok(ids)
    }
}

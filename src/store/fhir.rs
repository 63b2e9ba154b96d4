//! FHIR Subscriptions as the server holds them.

use super::{on_pool, Store, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRow {
    pub id: String,
    /// The role of the token that created it: `admin` means the whole hospital's
    /// events; any other role is scoped to `owner_npis`.
    pub owner_role: String,
    /// The creating token's stable id: the only practice that may see or change it.
    pub owner_token: String,
    /// The owner's scope: a practice's NPIs (events routed to one of them).
    pub owner_npis: Vec<String>,
    pub topic: String,
    pub filters: String,
    pub endpoint: String,
    pub content: String,
    pub status: String,
    pub error: Option<String>,
    pub events_since_start: i64,
    pub resource: String,
    pub created_at_us: i64,
    pub deleted: bool,
    /// `Name: value` pairs sent with every notification.
    pub headers: Vec<(String, String)>,
    pub heartbeat_secs: Option<i64>,
    /// `backport-timeout`: seconds allowed per delivery attempt.
    pub timeout_secs: Option<i64>,
}

/// A `fhir_subscription` row as read, by column name.
#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    owner_role: String,
    owner_token: String,
    owner_npis: String,
    topic: String,
    filters: String,
    endpoint: String,
    content: String,
    status: String,
    error: Option<String>,
    events_since_start: i64,
    resource: String,
    created_at_us: i64,
    deleted_at_us: Option<i64>,
    headers: String,
    heartbeat_secs: Option<i64>,
    timeout_secs: Option<i64>,
}

/// id, transition key, kind, event time, encounter, patient key, a routed body.
type PendingRow = (i64, String, String, i64, String, String, Option<Vec<u8>>);

/// A subscription's status (and error) as its notifications are answered: never on a
/// deleted or `off` one, and `active` only from `requested`.
pub(super) const SUBSCRIPTION_STATUS: &str =
    "UPDATE fhir_subscription SET status = $1, error = $2 WHERE id = $3 AND deleted_at_us IS NULL \
     AND status <> 'off' AND ($1 <> 'active' OR status = 'requested')";

/// A subscription's queued notifications, not to be sent after all.
const STOP_PENDING: &str =
    "UPDATE outbox SET status = 'dead', last_error = $1 WHERE subscription_id = $2 AND status = 'pending'";

const COLUMNS: &str = "id, owner_role, owner_token, owner_npis, topic, filters, endpoint, content, status, error, events_since_start, resource, created_at_us, deleted_at_us, headers, heartbeat_secs, timeout_secs";

fn row(r: Row) -> SubscriptionRow {
    SubscriptionRow {
        id: r.id,
        owner_role: r.owner_role,
        owner_token: r.owner_token,
        owner_npis: serde_json::from_str(&r.owner_npis).unwrap_or_default(),
        topic: r.topic,
        filters: r.filters,
        endpoint: r.endpoint,
        content: r.content,
        status: r.status,
        error: r.error,
        events_since_start: r.events_since_start,
        resource: r.resource,
        created_at_us: r.created_at_us,
        deleted: r.deleted_at_us.is_some(),
        headers: serde_json::from_str(&r.headers).unwrap_or_default(),
        heartbeat_secs: r.heartbeat_secs,
        timeout_secs: r.timeout_secs,
    }
}

impl Store {
    pub async fn insert_subscription(&self, s: &SubscriptionRow) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO fhir_subscription (id, owner_role, owner_npis, topic, filters, endpoint, content, status, error, events_since_start, resource, created_at_us, headers, heartbeat_secs, timeout_secs, owner_token) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";
        let npis = serde_json::to_string(&s.owner_npis).unwrap_or_else(|_| "[]".into());
        on_pool!(self, |p, sql| {
            sqlx::query(&sql(SQL))
                .bind(&s.id)
                .bind(&s.owner_role)
                .bind(&npis)
                .bind(&s.topic)
                .bind(&s.filters)
                .bind(&s.endpoint)
                .bind(&s.content)
                .bind(&s.status)
                .bind(&s.error)
                .bind(s.events_since_start)
                .bind(&s.resource)
                .bind(s.created_at_us)
                .bind(serde_json::to_string(&s.headers).unwrap_or_else(|_| "[]".into()))
                .bind(s.heartbeat_secs)
                .bind(s.timeout_secs)
                .bind(&s.owner_token)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// How many live (not deleted) subscriptions the token `owner` holds.
    pub async fn subscriptions_owned(&self, owner: &str) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM fhir_subscription WHERE owner_token = $1 AND deleted_at_us IS NULL";
        let n = on_pool!(self, |p, sql| {
            sqlx::query_scalar(&sql(SQL))
                .bind(owner)
                .fetch_one(p)
                .await?
        });
        Ok(n)
    }

    /// A subscription by id (deleted ones too: they answer 410).
    pub async fn subscription(&self, id: &str) -> Result<Option<SubscriptionRow>, StoreError> {
        let q = format!("SELECT {COLUMNS} FROM fhir_subscription WHERE id = $1");
        let r: Option<Row> = on_pool!(self, |p, sql| {
            sqlx::query_as(&sql(&q)).bind(id).fetch_optional(p).await?
        });
        Ok(r.map(row))
    }

    /// Live subscriptions, oldest first, optionally of one status and one topic.
    pub async fn subscriptions(
        &self,
        status: Option<&str>,
        topic: Option<&str>,
    ) -> Result<Vec<SubscriptionRow>, StoreError> {
        let q = format!(
            "SELECT {COLUMNS} FROM fhir_subscription WHERE deleted_at_us IS NULL \
             AND ($1 = '' OR status = $1) AND ($2 = '' OR topic = $2) ORDER BY created_at_us, id"
        );
        let rows: Vec<Row> = on_pool!(self, |p, sql| {
            sqlx::query_as(&sql(&q))
                .bind(status.unwrap_or(""))
                .bind(topic.unwrap_or(""))
                .fetch_all(p)
                .await?
        });
        Ok(rows.into_iter().map(row).collect())
    }

    /// Marks a subscription deleted (kept for the audit trail); false when unknown.
    /// Its notifications not yet sent are not sent.
    pub async fn delete_subscription(&self, id: &str, now_us: i64) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE fhir_subscription SET deleted_at_us = $1, status = 'off' WHERE id = $2 AND deleted_at_us IS NULL";
        let n = on_pool!(self, |p, sql| {
            let mut tx = p.begin().await?;
            let n = sqlx::query(&sql(SQL))
                .bind(now_us)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(&sql(STOP_PENDING))
                .bind("the subscription was deleted")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            n
        });
        Ok(n == 1)
    }

    /// The subscriber's update (PUT): what it asks for now, and the status that
    /// follows (`requested` for a reactivation, with a new handshake; `off`). The event
    /// count carries on. Queued notifications follow a new endpoint, or are not sent
    /// when the subscription is turned off. False when deleted meanwhile.
    pub async fn update_subscription(&self, s: &SubscriptionRow) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE fhir_subscription SET owner_npis = $1, filters = $2, endpoint = $3, content = $4, status = $5, \
             error = NULL, resource = $6, headers = $7, heartbeat_secs = $8, timeout_secs = $10 WHERE id = $9 AND deleted_at_us IS NULL";
        const MOVE: &str =
            "UPDATE outbox SET endpoint = $1 WHERE subscription_id = $2 AND status = 'pending'";
        let npis = serde_json::to_string(&s.owner_npis).unwrap_or_else(|_| "[]".into());
        let n = on_pool!(self, |p, sql| {
            let mut tx = p.begin().await?;
            let n = sqlx::query(&sql(SQL))
                .bind(&npis)
                .bind(&s.filters)
                .bind(&s.endpoint)
                .bind(&s.content)
                .bind(&s.status)
                .bind(&s.resource)
                .bind(serde_json::to_string(&s.headers).unwrap_or_else(|_| "[]".into()))
                .bind(s.heartbeat_secs)
                .bind(&s.id)
                .bind(s.timeout_secs)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if s.status == "off" {
                sqlx::query(&sql(STOP_PENDING))
                    .bind("the subscription was turned off")
                    .bind(&s.id)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(&sql(MOVE))
                    .bind(&s.endpoint)
                    .bind(&s.id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            n
        });
        Ok(n == 1)
    }

    /// Whether a roster attributes the patient (`id`, `authority`) to any of `npis`.
    pub async fn attributed_to_any(
        &self,
        id: &str,
        authority: &str,
        npis: &[String],
    ) -> Result<bool, StoreError> {
        let list = serde_json::to_string(npis).unwrap_or_else(|_| "[]".into());
        let q = match self {
            Store::Postgres(_) => "SELECT COUNT(*) FROM roster_entry WHERE patient_id = $1 AND assigning_authority = $2 \
                 AND provider_npi IN (SELECT jsonb_array_elements_text(CAST($3 AS TEXT)::jsonb))",
            Store::Sqlite(_) => "SELECT COUNT(*) FROM roster_entry WHERE patient_id = $1 AND assigning_authority = $2 \
                 AND provider_npi IN (SELECT value FROM json_each($3))",
        };
        let n: i64 = on_pool!(self, |p, sql| {
            sqlx::query_scalar(&sql(q))
                .bind(id)
                .bind(authority.to_ascii_uppercase())
                .bind(&list)
                .fetch_one(p)
                .await?
        });
        Ok(n > 0)
    }

    /// Puts a FHIR notification (handshake, heartbeat or event) in the outbox, ordered
    /// after the subscription's earlier ones; notes when the subscription last had one.
    pub async fn enqueue_fhir(
        &self,
        subscription: &SubscriptionRow,
        kind: &str,
        key: &str,
        payload: &[u8],
        now_us: i64,
    ) -> Result<(), StoreError> {
        const ADD: &str = "INSERT INTO outbox (notification_key, ordering_key, channel, endpoint, payload, status, due_at_us, created_at_us, kind, subscription_id) \
             VALUES ($1, $2, 'FHIR', $3, $4, 'pending', $5, $5, $6, $7) ON CONFLICT (notification_key) DO NOTHING";
        const SENT: &str = "UPDATE fhir_subscription SET last_sent_us = $1 WHERE id = $2";
        on_pool!(self, |p, sql| {
            let mut tx = p.begin().await?;
            sqlx::query(&sql(ADD))
                .bind(key)
                .bind(format!("fhir|{}", subscription.id))
                .bind(&subscription.endpoint)
                .bind(payload)
                .bind(now_us)
                .bind(kind)
                .bind(&subscription.id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(&sql(SENT))
                .bind(now_us)
                .bind(&subscription.id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Active subscriptions whose heartbeat period has passed since their last
    /// notification.
    pub async fn heartbeats_due(&self, now_us: i64) -> Result<Vec<SubscriptionRow>, StoreError> {
        let q = format!(
            "SELECT {COLUMNS} FROM fhir_subscription WHERE deleted_at_us IS NULL AND status = 'active' \
             AND heartbeat_secs > 0 AND COALESCE(last_sent_us, 0) + heartbeat_secs * 1000000 <= $1"
        );
        let rows: Vec<Row> = on_pool!(self, |p, sql| {
            sqlx::query_as(&sql(&q)).bind(now_us).fetch_all(p).await?
        });
        Ok(rows.into_iter().map(row).collect())
    }

    /// Notifiable transitions the FHIR fan-out has not read yet (after `cursor`), with
    /// the encounter's patient, the NPIs routing chose (notify or no endpoint), and one
    /// routed notification body (already cut to its content profile).
    pub async fn fhir_pending(
        &self,
        limit: i64,
    ) -> Result<(i64, Vec<FanoutTransition>), StoreError> {
        const CURSOR: &str = "SELECT last_id FROM fhir_cursor WHERE name = 'events'";
        const SQL: &str = "SELECT t.id, t.transition_key, t.kind, t.event_at_us, t.encounter, COALESCE(e.patient_key, ''), \
             (SELECT o.payload FROM outbox o WHERE o.transition_key = t.transition_key AND o.subscription_id IS NULL ORDER BY o.id LIMIT 1) \
             FROM encounter_transition t LEFT JOIN encounter e ON e.facility || '|' || e.visit_number = t.encounter \
             WHERE t.id > $1 AND t.notifiable ORDER BY t.id LIMIT $2";
        const WHO: &str = "SELECT recipient_npi FROM routing_decision WHERE transition_key = $1 AND outcome IN ('notify', 'no-endpoint')";
        let (cursor, rows) = on_pool!(self, |p, sql| {
            let cursor: i64 = sqlx::query_scalar(&sql(CURSOR))
                .fetch_optional(p)
                .await?
                .unwrap_or(0);
            let rows: Vec<PendingRow> = sqlx::query_as(&sql(SQL))
                .bind(cursor)
                .bind(limit)
                .fetch_all(p)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let recipients: Vec<String> = sqlx::query_scalar(&sql(WHO))
                    .bind(&r.1)
                    .fetch_all(p)
                    .await?;
                out.push(FanoutTransition {
                    id: r.0,
                    transition_key: r.1,
                    kind: r.2,
                    event_at_us: r.3,
                    encounter: r.4,
                    patient_key: r.5,
                    payload: r.6,
                    recipients,
                });
            }
            (cursor, out)
        });
        Ok((cursor, rows))
    }

    /// Moves the fan-out cursor past every transition so far (no subscription counts
    /// events, so none of them is anyone's event).
    pub async fn fhir_skip_to_latest(&self) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE fhir_cursor SET last_id = (SELECT COALESCE(MAX(id), 0) FROM encounter_transition) \
             WHERE name = 'events' AND last_id < (SELECT COALESCE(MAX(id), 0) FROM encounter_transition)";
        on_pool!(self, |p, sql| {
            sqlx::query(&sql(SQL)).execute(p).await?;
        });
        Ok(())
    }

    /// Subscriptions that count events: active ones, and those in error (the IG: the
    /// server keeps counting while the subscriber recovers).
    pub async fn counting_subscriptions(&self) -> Result<Vec<SubscriptionRow>, StoreError> {
        let q = format!(
            "SELECT {COLUMNS} FROM fhir_subscription WHERE deleted_at_us IS NULL AND status IN ('active', 'error') ORDER BY id"
        );
        let rows: Vec<Row> = on_pool!(self, |p, sql| sqlx::query_as(&sql(&q)).fetch_all(p).await?);
        Ok(rows.into_iter().map(row).collect())
    }

    /// In one transaction: numbers each matched event for its subscription (never
    /// skipping or repeating), keeps it for `$events`, queues its notification, and moves
    /// the cursor from `from` to `to`. `false` when another node moved the cursor first
    /// (nothing is written).
    pub async fn fhir_fanout(
        &self,
        from: i64,
        to: i64,
        matches: &[(&SubscriptionRow, &FanoutTransition)],
        build: impl Fn(&SubscriptionRow, &FanoutTransition, i64) -> FhirEvent,
        now_us: i64,
    ) -> Result<bool, StoreError> {
        const MOVE: &str =
            "UPDATE fhir_cursor SET last_id = $1 WHERE name = 'events' AND last_id = $2";
        const NUMBER: &str = "UPDATE fhir_subscription SET events_since_start = events_since_start + 1, last_sent_us = $1 \
             WHERE id = $2 RETURNING events_since_start";
        const KEEP: &str = "INSERT INTO fhir_event (subscription_id, event_number, transition_key, event_at_us, part, entries, created_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)";
        const SEND: &str = "INSERT INTO outbox (notification_key, ordering_key, channel, endpoint, payload, status, due_at_us, created_at_us, kind, subscription_id, transition_key) \
             VALUES ($1, $2, 'FHIR', $3, $4, 'pending', $5, $5, 'event', $6, $7) ON CONFLICT (notification_key) DO NOTHING";
        const RESOURCE: &str = "INSERT INTO fhir_resource (subscription_id, resource_type, resource_id, resource, updated_at_us) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (subscription_id, resource_type, resource_id) \
             DO UPDATE SET resource = excluded.resource, updated_at_us = excluded.updated_at_us";
        let moved = on_pool!(self, |p, sql| {
            let mut tx = p.begin().await?;
            let moved = sqlx::query(&sql(MOVE))
                .bind(to)
                .bind(from)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if moved {
                for (sub, t) in matches {
                    let n: i64 = sqlx::query_scalar(&sql(NUMBER))
                        .bind(now_us)
                        .bind(&sub.id)
                        .fetch_one(&mut *tx)
                        .await?;
                    let ev = build(sub, t, n);
                    sqlx::query(&sql(KEEP))
                        .bind(&sub.id)
                        .bind(n)
                        .bind(&t.transition_key)
                        .bind(t.event_at_us)
                        .bind(&ev.part)
                        .bind(&ev.entries)
                        .bind(now_us)
                        .execute(&mut *tx)
                        .await?;
                    for (kind, id, json) in &ev.resources {
                        sqlx::query(&sql(RESOURCE))
                            .bind(&sub.id)
                            .bind(kind)
                            .bind(id)
                            .bind(json)
                            .bind(now_us)
                            .execute(&mut *tx)
                            .await?;
                    }
                    sqlx::query(&sql(SEND))
                        .bind(super::key_hash(&format!("{}|{}", sub.id, t.transition_key)))
                        .bind(format!("fhir|{}", sub.id))
                        .bind(&sub.endpoint)
                        .bind(&ev.bundle)
                        .bind(now_us)
                        .bind(&sub.id)
                        .bind(&t.transition_key)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            moved
        });
        Ok(moved)
    }

    /// A resource as the subscriptions that were told of it hold it: (subscription id,
    /// resource JSON), newest first.
    pub async fn fhir_resource(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        const SQL: &str = "SELECT subscription_id, resource FROM fhir_resource WHERE resource_type = $1 AND resource_id = $2 \
             ORDER BY updated_at_us DESC LIMIT 100";
        let rows = on_pool!(self, |p, sql| {
            sqlx::query_as(&sql(SQL))
                .bind(kind)
                .bind(id)
                .fetch_all(p)
                .await?
        });
        Ok(rows)
    }

    /// A subscription's kept events with numbers in `since..=until`: (number, part, entries).
    pub async fn fhir_events(
        &self,
        id: &str,
        since: i64,
        until: i64,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        const SQL: &str =
            "SELECT event_number, part, entries FROM fhir_event WHERE subscription_id = $1 \
             AND event_number >= $2 AND event_number <= $3 ORDER BY event_number LIMIT 1000";
        let rows = on_pool!(self, |p, sql| {
            sqlx::query_as(&sql(SQL))
                .bind(id)
                .bind(since)
                .bind(until)
                .fetch_all(p)
                .await?
        });
        Ok(rows)
    }
}

/// A notifiable transition, as the FHIR fan-out sees it.
#[derive(Clone)]
pub struct FanoutTransition {
    pub id: i64,
    pub transition_key: String,
    pub kind: String,
    pub event_at_us: i64,
    pub encounter: String,
    /// `id^authority` (PHI).
    pub patient_key: String,
    /// NPIs routing chose for it (notify, or no endpoint).
    pub recipients: Vec<String>,
    /// One routed notification body for it (`adt-router.notification/v1`), if any.
    pub payload: Option<Vec<u8>>,
}

/// One numbered event: its notification-event part and entries (kept for `$events`),
/// and the notification Bundle sent.
pub struct FhirEvent {
    pub part: String,
    pub entries: String,
    pub bundle: Vec<u8>,
    /// The resources it refers to: (type, id, JSON), readable by the subscriber.
    pub resources: Vec<(String, String, String)>,
}

debug_without_phi!(FanoutTransition {
    id,
    transition_key,
    kind,
    event_at_us
});

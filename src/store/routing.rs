//! What the router keeps: encounters, transitions, decisions and the outbox rows they
//! produce, written in one transaction per routed message so a crash leaves either all
//! of a message's consequences or none (and a replay then redoes them idempotently).

use super::{on_pool, Store, StoreError};
use crate::directory::endpoint::EndpointKind;
use sqlx::Row;

#[derive(Clone, Debug)]
pub struct EncounterRow {
    pub facility: String,
    pub visit_number: String,
    pub patient_key: String,
    pub status: String,
    pub state: String,
    pub last_event_us: i64,
}

#[derive(Clone, Debug)]
pub struct TransitionRow {
    pub transition_key: String,
    pub encounter: String,
    pub kind: String,
    pub notifiable: bool,
    pub retracts: Option<String>,
    pub note: String,
    pub inbound_id: Option<i64>,
    pub control_id: Option<String>,
    pub sending_facility: String,
    pub trigger_event: String,
    pub event_at_us: i64,
}

/// What routing decided for one candidate recipient of a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Selected by a rule and queued on a channel.
    Notify,
    /// Selected, then suppressed by a rule or a recipient preference.
    Suppressed,
    /// No notify rule selects this recipient for this event.
    NotSelected,
    /// Selected, but the directory has no usable endpoint on the rule's channels.
    NoEndpoint,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Notify => "notify",
            Outcome::Suppressed => "suppressed",
            Outcome::NotSelected => "not-selected",
            Outcome::NoEndpoint => "no-endpoint",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug)]
pub struct DecisionRow {
    pub transition_key: String,
    pub recipient_npi: String,
    pub outcome: Outcome,
    pub reason: String,
    pub rule_ids: String,
}

#[derive(Clone, Debug)]
pub struct OutboxRow {
    pub notification_key: String,
    pub ordering_key: String,
    /// None when nothing is sent (suppressed, or no endpoint).
    pub channel: Option<EndpointKind>,
    pub endpoint: String,
    pub payload: Vec<u8>,
    pub status: super::outbox::Status,
    pub due_at_us: i64,
    pub last_error: Option<String>,
    /// Channels to fall back to, JSON `[[channel, endpoint], ...]`.
    pub fallbacks: Option<String>,
    pub transition_key: String,
    pub kind: String,
    pub encounter: String,
    pub control_id: Option<String>,
    pub sending_facility: String,
    pub recipient_npi: String,
    pub rule_ids: String,
    pub content_profile: String,
}

/// Everything one routed message (or sweep) writes.
#[derive(Clone, Debug, Default)]
pub struct RoutingWrite {
    pub encounters: Vec<EncounterRow>,
    pub transitions: Vec<TransitionRow>,
    pub decisions: Vec<DecisionRow>,
    pub outbox: Vec<OutboxRow>,
    /// Patient re-keys from merges (old key, new key).
    pub merges: Vec<(String, String)>,
    /// The inbound messages this write finishes routing.
    pub routed_inbound: Vec<i64>,
}

/// A notification as exported.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportedNotification {
    pub id: i64,
    pub idempotency_key: String,
    pub control_id: Option<String>,
    pub sending_facility: Option<String>,
    pub encounter: Option<String>,
    pub kind: Option<String>,
    pub recipient_npi: Option<String>,
    pub channel: String,
    pub endpoint: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub content_profile: Option<String>,
    pub rule_ids: Vec<String>,
    pub transition_key: Option<String>,
    pub created_at: String,
    /// What proves delivery (HTTP status, hashes, time), once delivered.
    pub proof: Option<serde_json::Value>,
    pub delivered_at: Option<String>,
    /// Operator resends (`adt-router resend`).
    pub resends: i64,
}

/// A recipient already sent a transition (for retractions).
#[derive(Clone, Debug)]
pub struct SentTo {
    pub recipient_npi: String,
    pub channel: EndpointKind,
    pub endpoint: String,
    pub ordering_key: String,
    pub content_profile: String,
}

const ENC: &str = "INSERT INTO encounter (facility, visit_number, patient_key, status, state, last_event_us, updated_at_us) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (facility, visit_number) DO UPDATE SET \
     patient_key = excluded.patient_key, status = excluded.status, state = excluded.state, \
     last_event_us = excluded.last_event_us, updated_at_us = excluded.updated_at_us";
const TR: &str = "INSERT INTO encounter_transition (transition_key, encounter, kind, notifiable, retracts, note, inbound_id, control_id, sending_facility, trigger_event, event_at_us, created_at_us) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (transition_key) DO NOTHING";
const DEC: &str = "INSERT INTO routing_decision (transition_key, recipient_npi, outcome, reason, rule_ids, created_at_us) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (transition_key, recipient_npi) DO NOTHING";
const OUT: &str = "INSERT INTO outbox (notification_key, ordering_key, channel, endpoint, payload, status, due_at_us, last_error, created_at_us, \
     transition_key, kind, encounter, control_id, sending_facility, recipient_npi, rule_ids, content_profile, fallbacks) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) ON CONFLICT (notification_key) DO NOTHING";
const MERGE: &str = "UPDATE encounter SET patient_key = $1 WHERE patient_key = $2";
const DONE: &str = "UPDATE inbound_messages SET routed_at_us = $1 WHERE id BETWEEN $2 AND $3";

/// `ids` as runs of consecutive ids `(first, last)`: a page's messages are mostly one
/// run, one statement instead of one per message.
fn runs(ids: &[i64]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &id in ids {
        match out.last_mut() {
            Some((_, last)) if id == *last + 1 => *last = id,
            _ => out.push((id, id)),
        }
    }
    out
}

/// Every statement of a routing write, with its values in column order, written once
/// for both drivers: calls `$run!(SQL; values...)` for each row.
macro_rules! routing_rows {
    ($w:expr, $now:expr, $run:ident) => {{
        for (old, new) in &$w.merges {
            $run!(MERGE; new, old);
        }
        for e in &$w.encounters {
            $run!(ENC; &e.facility, &e.visit_number, &e.patient_key, &e.status, &e.state,
                e.last_event_us, $now);
        }
        for t in &$w.transitions {
            $run!(TR; &t.transition_key, &t.encounter, &t.kind, t.notifiable, &t.retracts,
                &t.note, t.inbound_id, &t.control_id, &t.sending_facility, &t.trigger_event,
                t.event_at_us, $now);
        }
        for d in &$w.decisions {
            $run!(DEC; &d.transition_key, &d.recipient_npi, d.outcome.as_str(), &d.reason,
                &d.rule_ids, $now);
        }
        for o in &$w.outbox {
            $run!(OUT; &o.notification_key, &o.ordering_key, o.channel.map_or("", EndpointKind::as_str), &o.endpoint,
                &o.payload, o.status.as_str(), o.due_at_us, &o.last_error, $now, &o.transition_key,
                &o.kind, &o.encounter, &o.control_id, &o.sending_facility, &o.recipient_npi,
                &o.rule_ids, &o.content_profile, &o.fallbacks);
        }
        for (from, to) in runs(&$w.routed_inbound) {
            $run!(DONE; $now, from, to);
        }
    }};
}

impl Store {
    /// The encounter's stored state. Through [`Store::text_row`]: on SQLite that skips
    /// sqlx's worker thread, which costs more than the lookup.
    pub async fn load_encounter(
        &self,
        facility: &str,
        visit_number: &str,
    ) -> Result<Option<String>, StoreError> {
        const SQL: &str = "SELECT COALESCE((SELECT state FROM encounter WHERE facility = $1 AND visit_number = $2), '')";
        let row = self
            .text_row(SQL, vec![facility.to_string(), visit_number.to_string()], 1)
            .await?;
        Ok(row.into_iter().next().filter(|s| !s.is_empty()))
    }

    /// The stored states of several encounters, `(facility, visit, state)`, in one
    /// query; encounters not stored yet are left out.
    pub async fn load_encounters(
        &self,
        keys: &[(String, String)],
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let conds: Vec<String> = (0..keys.len())
            .map(|i| {
                format!(
                    "(facility = ${} AND visit_number = ${})",
                    2 * i + 1,
                    2 * i + 2
                )
            })
            .collect();
        let args = keys
            .iter()
            .flat_map(|(f, v)| [f.clone(), v.clone()])
            .collect();
        self.select(
            "facility, visit_number, state",
            &format!("encounter WHERE {}", conds.join(" OR ")),
            args,
        )
        .await
    }

    /// Open ED encounters last heard of before `before_us` (the ED-timeout sweep).
    pub async fn quiet_ed_encounters(
        &self,
        before_us: i64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        const SQL: &str = "SELECT state FROM encounter WHERE status = 'ed' AND last_event_us < $1 ORDER BY last_event_us LIMIT $2";
        Ok(on_pool!(self, |p, sql| sqlx::query_scalar::<_, String>(
            &sql(SQL)
        )
        .bind(before_us)
        .bind(limit)
        .fetch_all(p)
        .await?))
    }

    /// The oldest messages not routed yet, with their bytes, leaving out ids from
    /// `skip.0` to `skip.1` (a page being committed).
    pub async fn unrouted(
        &self,
        limit: i64,
        skip: Option<(i64, i64)>,
    ) -> Result<Vec<super::StoredMessage>, StoreError> {
        let query = format!(
            "SELECT {}, raw FROM inbound_messages WHERE routed_at_us IS NULL AND id NOT BETWEEN $2 AND $3 ORDER BY id LIMIT $1",
            super::EXPORT_COLUMNS
        );
        let (from, to) = skip.unwrap_or((0, -1));
        match self {
            Store::Sqlite(s) => {
                let conns = s.reads();
                let sql = query.replace('$', "?");
                super::on_reader(move || {
                    super::sqlite_reads::messages(&conns, &sql, &[limit, from, to])
                })
                .await
            }
            Store::Postgres(p) => {
                let rows = sqlx::query(&query)
                    .bind(limit)
                    .bind(from)
                    .bind(to)
                    .fetch_all(p)
                    .await?;
                rows.iter()
                    .map(|r| super::stored_message(r, true))
                    .collect()
            }
        }
    }

    /// Who was sent `transition_key` (not suppressed, not undeliverable).
    pub async fn sent_to(&self, transition_key: &str) -> Result<Vec<SentTo>, StoreError> {
        const SQL: &str =
            "SELECT recipient_npi, channel, endpoint, ordering_key, content_profile FROM outbox \
             WHERE transition_key = $1 AND status NOT IN ('suppressed', 'dead') ORDER BY id";
        on_pool!(self, |p, sql| {
            let rows = sqlx::query(&sql(SQL))
                .bind(transition_key)
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(SentTo {
                        recipient_npi: r.try_get::<Option<String>, _>(0)?.unwrap_or_default(),
                        channel: EndpointKind::decode(&r.try_get::<String, _>(1)?)?,
                        endpoint: r.try_get(2)?,
                        ordering_key: r.try_get(3)?,
                        content_profile: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
    }

    /// Writes a routed page's consequences in one transaction. Idempotent: keys that
    /// exist already are left alone.
    pub async fn commit_routing(&self, w: &RoutingWrite, now_us: i64) -> Result<(), StoreError> {
        let pool = match self {
            Store::Postgres(pool) => pool,
            Store::Sqlite(s) => {
                let commit = || commit_sqlite(s, w, now_us);
                // Blocking: on the multi-threaded runtime let the other workers carry
                // on; a current-thread runtime (the CLI) has nothing else to run.
                return match tokio::runtime::Handle::current().runtime_flavor() {
                    tokio::runtime::RuntimeFlavor::MultiThread => {
                        tokio::task::block_in_place(commit)
                    }
                    _ => commit(),
                };
            }
        };
        let mut tx = pool.begin().await?;
        macro_rules! run {
            ($sql:expr; $($v:expr),*) => {
                sqlx::query($sql)$(.bind($v))*.execute(&mut *tx).await?;
            };
        }
        routing_rows!(w, now_us, run);
        tx.commit().await?;
        Ok(())
    }

    /// Notifications in id order after `after_id`, for `notifications export`.
    pub async fn export_notifications(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ExportedNotification>, StoreError> {
        const SQL: &str = "SELECT id, notification_key, control_id, sending_facility, encounter, kind, recipient_npi, channel, endpoint, status, attempts, last_error, content_profile, rule_ids, transition_key, created_at_us, proof, delivered_at_us, \
             (SELECT COUNT(*) FROM delivery_attempt a WHERE a.outbox_id = outbox.id AND a.outcome = 'resend') \
             FROM outbox WHERE id > $1 ORDER BY id LIMIT $2";
        on_pool!(self, |p, sql| {
            let rows = sqlx::query(&sql(SQL))
                .bind(after_id)
                .bind(limit)
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| {
                    let rules: Option<String> = r.try_get(13)?;
                    Ok(ExportedNotification {
                        id: r.try_get(0)?,
                        idempotency_key: r.try_get(1)?,
                        control_id: r.try_get(2)?,
                        sending_facility: r.try_get(3)?,
                        encounter: r.try_get(4)?,
                        kind: r.try_get(5)?,
                        recipient_npi: r.try_get(6)?,
                        channel: r.try_get(7)?,
                        endpoint: r.try_get(8)?,
                        status: r.try_get(9)?,
                        attempts: r.try_get(10)?,
                        last_error: r.try_get(11)?,
                        content_profile: r.try_get(12)?,
                        rule_ids: rules
                            .unwrap_or_default()
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect(),
                        transition_key: r.try_get(14)?,
                        created_at: crate::directory::rfc3339_us(r.try_get(15)?),
                        proof: r
                            .try_get::<Option<String>, _>(16)?
                            .and_then(|p| serde_json::from_str(&p).ok()),
                        delivered_at: r
                            .try_get::<Option<i64>, _>(17)?
                            .map(crate::directory::rfc3339_us),
                        resends: r.try_get(18)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
    }
}

/// Held while this node routes: on PostgreSQL a session advisory lock, so one node of
/// several routes at a time (the others stand by and take over when it goes away; the
/// lock dies with its connection). SQLite has one process per file.
pub enum RouterLease {
    Sqlite,
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

/// Advisory-lock key of the router ("adtroute" in ASCII, truncated).
const ROUTER_LOCK: i64 = 0x6164_7472_6f75;

impl Store {
    /// Tries to become the routing node; `None` when another node is.
    pub async fn router_lease(&self) -> Result<Option<RouterLease>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(Some(RouterLease::Sqlite)),
            Store::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(ROUTER_LOCK)
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(got.then_some(RouterLease::Postgres(conn)))
            }
        }
    }
}

/// The SQLite commit, through the store's routing connection with prepared statements:
/// a page routes into thousands of rows, and sqlx's per-statement hand-off to its worker
/// thread cost more than the inserts (see docs/routing.md).
fn commit_sqlite(
    store: &super::SqliteStore,
    w: &RoutingWrite,
    now_us: i64,
) -> Result<(), StoreError> {
    let mut guard = store.routing.lock().unwrap_or_else(|p| p.into_inner());
    let c = match guard.as_mut() {
        Some(c) => c,
        None => {
            let c = rusqlite::Connection::open(store.path())?;
            c.pragma_update(None, "synchronous", "FULL")?;
            c.busy_timeout(std::time::Duration::from_secs(30))?;
            guard.insert(c)
        }
    };
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        // Each statement looked up once per page, not once per row (the lookup copied
        // and hashed the SQL text every time).
        let mut prepared: Vec<(&'static str, rusqlite::CachedStatement<'_>)> = Vec::new();
        macro_rules! run {
            ($sql:expr; $($v:expr),*) => {{
                let sql: &'static str = $sql;
                let i = match prepared.iter().position(|(s, _)| std::ptr::eq(*s, sql)) {
                    Some(i) => i,
                    None => {
                        prepared.push((sql, tx.prepare_cached(&sql.replace('$', "?"))?));
                        prepared.len() - 1
                    }
                };
                prepared[i].1.execute(rusqlite::params![$($v),*])?;
            }};
        }
        routing_rows!(w, now_us, run);
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn routed_ids_become_runs() {
        assert_eq!(super::runs(&[]), vec![]);
        assert_eq!(super::runs(&[5]), vec![(5, 5)]);
        assert_eq!(
            super::runs(&[1, 2, 3, 7, 8, 10]),
            vec![(1, 3), (7, 8), (10, 10)]
        );
        // Out of order ids are never merged across the gap.
        assert_eq!(super::runs(&[3, 2]), vec![(3, 3), (2, 2)]);
    }
}

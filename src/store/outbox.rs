//! The outbox: notifications to deliver, claimed by workers on any number of nodes.
//!
//! Design (the deliverers build on it):
//! - Enqueue is idempotent on `notification_key` (encounter transition + recipient).
//! - A claim takes due rows and leases them to one worker (`status = 'sending'`,
//!   `lease_until_us`), in one statement. On PostgreSQL the candidate rows are locked with
//!   `FOR UPDATE SKIP LOCKED`, so concurrent claimers on several nodes never take the same
//!   row and never wait on each other; SQLite has a single writer, so the same statement
//!   without the lock clause is already exclusive.
//! - Order per `ordering_key` (encounter + recipient): a row is claimable only when no
//!   earlier row with the same key is still pending or sending, so a discharge never
//!   overtakes its admission even with many workers.
//! - A lease that runs out (a worker died mid-send) makes the row claimable again; the
//!   attempt count says how often it was taken.

use super::{on_pool, Store, StoreError};
use sqlx::Row;

/// Where a notification is in its life: the outbox's `status` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Due now or later; a worker may claim it.
    Pending,
    /// Leased to a worker.
    Sending,
    /// Direct: the HISP took it; its MDN is awaited.
    Submitted,
    /// Direct: the recipient's system processed it; `dispatched` is awaited.
    Processed,
    Delivered,
    /// Refused for good by the endpoint (or a failure report).
    Failed,
    /// Out of retries, or there was no endpoint to try.
    Dead,
    /// A rule or a recipient preference decided not to send it: recorded, never sent.
    Suppressed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sending => "sending",
            Status::Submitted => "submitted",
            Status::Processed => "processed",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Dead => "dead",
            Status::Suppressed => "suppressed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "sending" => Status::Sending,
            "submitted" => Status::Submitted,
            "processed" => Status::Processed,
            "delivered" => Status::Delivered,
            "failed" => Status::Failed,
            "dead" => Status::Dead,
            "suppressed" => Status::Suppressed,
            _ => return None,
        })
    }

    /// Reads the column: a value this build does not know is a decode error.
    pub(crate) fn decode(s: &str) -> Result<Status, StoreError> {
        Status::parse(s).ok_or_else(|| {
            StoreError::Db(sqlx::Error::Decode(
                format!("unknown outbox status '{s}'").into(),
            ))
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug)]
pub struct NewNotification {
    pub notification_key: String,
    pub ordering_key: String,
    pub channel: String,
    pub endpoint: String,
    pub payload: Vec<u8>,
    pub due_at_us: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub id: i64,
    pub ordering_key: String,
    pub attempts: i32,
    pub endpoint: String,
}

/// No earlier row of the same encounter and recipient is still pending or sending.
/// `outbox_ordering` indexes only such rows (migration 0013): its predicate must stay
/// this status term, word for word.
const IN_ORDER: &str =
    "NOT EXISTS (SELECT 1 FROM outbox e WHERE e.ordering_key = o.ordering_key AND e.id < o.id \
                     AND e.status IN ('pending', 'sending'))";

impl Store {
    /// Adds a notification; `false` when its key was already enqueued.
    pub async fn enqueue(&self, n: &NewNotification, now_us: i64) -> Result<bool, StoreError> {
        const SQL: &str = "INSERT INTO outbox (notification_key, ordering_key, channel, endpoint, payload, status, due_at_us, created_at_us) \
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7) ON CONFLICT (notification_key) DO NOTHING";
        let affected = on_pool!(self, |p, sql| sqlx::query(&sql(SQL))
            .bind(&n.notification_key)
            .bind(&n.ordering_key)
            .bind(&n.channel)
            .bind(&n.endpoint)
            .bind(&n.payload)
            .bind(n.due_at_us)
            .bind(now_us)
            .execute(p)
            .await?
            .rows_affected());
        Ok(affected == 1)
    }

    /// Leases up to `limit` due rows to `owner` until `lease_until_us`.
    pub async fn claim_due(
        &self,
        owner: &str,
        now_us: i64,
        lease_until_us: i64,
        limit: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.claim_due_on(owner, now_us, lease_until_us, limit, i64::MAX, &[], &[])
            .await
    }

    /// [`Self::claim_due`] for rows of the given channels only (all when empty), and
    /// not for `skip_endpoints` (open circuits, endpoints at their concurrency limit):
    /// a deliverer claims what it can send now.
    /// At most `per_endpoint` rows of any one endpoint, so a backlog for one endpoint
    /// never fills a claim that other endpoints' rows could use.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_due_on(
        &self,
        owner: &str,
        now_us: i64,
        lease_until_us: i64,
        limit: i64,
        per_endpoint: i64,
        channels: &[&str],
        skip_endpoints: &[String],
    ) -> Result<Vec<Claimed>, StoreError> {
        // SQLite has one writer, so the statement is already exclusive there.
        let lock = match self {
            Store::Postgres(_) => "FOR UPDATE SKIP LOCKED",
            Store::Sqlite(_) => "",
        };
        // Channel names are ours (DIRECT, FHIR, REST), never input.
        let only = if channels.is_empty() {
            String::new()
        } else {
            // FHIR rows are sent only for subscriptions (their payload is a FHIR
            // Bundle); directory FHIR endpoints wait, as no sender takes them.
            format!(
                "AND o.channel IN ({}) AND (o.channel <> 'FHIR' OR o.subscription_id IS NOT NULL)",
                channels
                    .iter()
                    .map(|c| format!("'{}'", c.replace('\'', "")))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        // Endpoints are untrusted text: bound as one JSON array, never spliced in.
        let skip = match self {
            Store::Postgres(_) => {
                "AND o.endpoint NOT IN (SELECT jsonb_array_elements_text(CAST($5 AS TEXT)::jsonb))"
            }
            Store::Sqlite(_) => "AND o.endpoint NOT IN (SELECT value FROM json_each($5))",
        };
        // Candidates (locked on PostgreSQL): due pending rows in due order (read along
        // the (status, due_at_us) index, so a claim costs what it takes, not the size of
        // the backlog or of the history), and rows whose lease ran out; then at most
        // `per_endpoint` of each endpoint.
        let query = format!(
            "WITH p AS (SELECT o.id, o.endpoint, o.due_at_us FROM outbox o \
                        WHERE o.status = 'pending' AND o.due_at_us <= $3 AND {IN_ORDER} {only} {skip} \
                        ORDER BY o.due_at_us, o.id LIMIT $6 {lock}), \
                  s AS (SELECT o.id, o.endpoint, o.due_at_us FROM outbox o \
                        WHERE o.status = 'sending' AND o.lease_until_us < $3 AND {IN_ORDER} {only} {skip} \
                        LIMIT $6 {lock}), \
                  c AS (SELECT id, endpoint, due_at_us FROM p UNION ALL SELECT id, endpoint, due_at_us FROM s), \
                  r AS (SELECT id, due_at_us, ROW_NUMBER() OVER (PARTITION BY endpoint ORDER BY due_at_us, id) AS rn FROM c) \
             UPDATE outbox SET status = 'sending', lease_owner = $1, lease_until_us = $2, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM r WHERE rn <= $7 ORDER BY due_at_us, id LIMIT $4) \
             RETURNING id, ordering_key, attempts, endpoint"
        );
        let scan = limit.saturating_mul(8).max(256);
        let skipped = serde_json::to_string(skip_endpoints).unwrap_or_else(|_| "[]".into());
        let rows = on_pool!(self, |p, sql| sqlx::query(&sql(&query))
            .bind(owner)
            .bind(lease_until_us)
            .bind(now_us)
            .bind(limit)
            .bind(&skipped)
            .bind(scan)
            .bind(per_endpoint)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| Ok(Claimed {
                id: r.try_get(0)?,
                ordering_key: r.try_get(1)?,
                attempts: r.try_get(2)?,
                endpoint: r.try_get(3)?,
            }))
            .collect::<Result<Vec<_>, sqlx::Error>>()?);
        Ok(rows)
    }

    /// Ends `owner`'s lease on a row with a final or retry status. `false` when the
    /// lease was lost (expired and taken by another worker): that worker now decides.
    pub async fn finish_claim(
        &self,
        id: i64,
        owner: &str,
        status: Status,
        due_at_us: i64,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE outbox SET status = $1, due_at_us = $2, last_error = $3, lease_owner = NULL, lease_until_us = NULL \
             WHERE id = $4 AND lease_owner = $5 AND status = 'sending'";
        let affected = on_pool!(self, |p, sql| sqlx::query(&sql(SQL))
            .bind(status.as_str())
            .bind(due_at_us)
            .bind(error)
            .bind(id)
            .bind(owner)
            .execute(p)
            .await?
            .rows_affected());
        Ok(affected == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::IN_ORDER;

    /// SQLite uses a partial index only when the query repeats the index's WHERE term; a
    /// reworded status check would silently fall back to scanning the table.
    #[tokio::test]
    async fn the_in_order_check_reads_the_live_rows_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = crate::store::sqlite_for_tests(&path).await;
        store.close().await;
        let c = rusqlite::Connection::open(&path).unwrap();
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT o.id FROM outbox o WHERE o.status = 'pending' AND {IN_ORDER}"
        );
        let mut stmt = c.prepare(&sql).unwrap();
        let plan: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|l| l.contains("SEARCH e USING") && l.contains("INDEX outbox_ordering")),
            "{plan:?}"
        );
    }
}

//! Direct's second half: the notifications waiting for their MDNs, and the reports
//! (MDNs, DSNs, anything else the HISP sends back), each kept raw with its effect.

use super::outbox::Status;
use super::{on_pool, Store, StoreError};

/// A Direct notification as a report or a timeout sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectRow {
    pub id: i64,
    pub status: Status,
    pub attempts: i32,
    pub endpoint: String,
    pub proof: Option<String>,
}

/// One report as received.
#[derive(Clone, Debug)]
pub struct ReportRow {
    pub received_at_us: i64,
    pub kind: String,
    pub disposition: String,
    pub final_recipient: Option<String>,
    pub original_message_id: Option<String>,
    pub outbox_id: Option<i64>,
    pub effect: String,
    pub sha256: String,
    pub raw: Vec<u8>,
    /// It moved nothing because it could not be trusted; such rows are kept bounded.
    pub refused: bool,
}

type Row = (i64, String, i32, String, Option<String>);

fn row(r: Row) -> Result<DirectRow, StoreError> {
    Ok(DirectRow {
        id: r.0,
        status: Status::decode(&r.1)?,
        attempts: r.2,
        endpoint: r.3,
        proof: r.4,
    })
}

impl Store {
    /// The Direct notification with this idempotency key.
    pub async fn direct_row(&self, key: &str) -> Result<Option<DirectRow>, StoreError> {
        const SQL: &str = "SELECT id, status, attempts, endpoint, proof FROM outbox \
             WHERE notification_key = $1 AND channel = 'DIRECT'";
        let r: Option<Row> = on_pool!(self, |p, sql| {
            sqlx::query_as(&sql(SQL))
                .bind(key)
                .fetch_optional(p)
                .await?
        });
        r.map(row).transpose()
    }

    /// Direct notifications whose MDN did not come in time.
    pub async fn direct_overdue(
        &self,
        now_us: i64,
        limit: i64,
    ) -> Result<Vec<DirectRow>, StoreError> {
        const SQL: &str = "SELECT id, status, attempts, endpoint, proof FROM outbox \
             WHERE channel = 'DIRECT' AND status IN ('submitted', 'processed') AND due_at_us <= $1 \
             ORDER BY due_at_us LIMIT $2";
        let rows: Vec<Row> = on_pool!(self, |p, sql| {
            sqlx::query_as(&sql(SQL))
                .bind(now_us)
                .bind(limit)
                .fetch_all(p)
                .await?
        });
        rows.into_iter().map(row).collect()
    }

    /// Keeps a report. Returns its id. Refused reports beyond the newest `keep_refused`
    /// are dropped in the same transaction, so a flood cannot fill the disk.
    pub async fn record_report(&self, r: &ReportRow, keep_refused: u64) -> Result<i64, StoreError> {
        const SQL: &str = "INSERT INTO direct_report (received_at_us, kind, disposition, final_recipient, original_message_id, outbox_id, effect, sha256, raw, refused) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id";
        const PRUNE: &str = "DELETE FROM direct_report WHERE refused AND id <= \
             (SELECT id FROM direct_report WHERE refused ORDER BY id DESC LIMIT 1 OFFSET $1)";
        let keep = i64::try_from(keep_refused).unwrap_or(i64::MAX);
        let id: i64 = on_pool!(self, |p, sql| {
            let mut tx = p.begin().await?;
            let id: i64 = sqlx::query_scalar(&sql(SQL))
                .bind(r.received_at_us)
                .bind(&r.kind)
                .bind(&r.disposition)
                .bind(&r.final_recipient)
                .bind(&r.original_message_id)
                .bind(r.outbox_id)
                .bind(&r.effect)
                .bind(&r.sha256)
                .bind(&r.raw)
                .bind(r.refused)
                .fetch_one(&mut *tx)
                .await?;
            if r.refused {
                sqlx::query(&sql(PRUNE))
                    .bind(keep)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            id
        });
        Ok(id)
    }

    /// The shared secret `name` (32 random bytes), made by whichever node asks first.
    pub async fn secret(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        const MAKE: &str =
            "INSERT INTO router_secret (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
        const READ: &str = "SELECT value FROM router_secret WHERE name = $1";
        let fresh: [u8; 32] = rand::random();
        let v: Vec<u8> = on_pool!(self, |p, sql| {
            sqlx::query(&sql(MAKE))
                .bind(name)
                .bind(&fresh[..])
                .execute(p)
                .await?;
            sqlx::query_scalar(&sql(READ))
                .bind(name)
                .fetch_one(p)
                .await?
        });
        Ok(v)
    }
}

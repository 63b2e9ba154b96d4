//! The SQLite side of the group commit: a plain blocking connection owned by one thread.
//!
//! The writer is one fsync-bound loop, so a dedicated thread with a synchronous
//! connection is both the simplest and the fastest shape for it. It opens the file sqlx
//! created and migrated; the pragmas match the pool's (WAL, synchronous=FULL).

use super::{
    in_input_order, insert_sql, repeated_in_batch, Appended, NewMessage, StoreError,
    SET_ACK_CODE_SQL,
};
use crate::event_log::embedded::AckFix;
use rusqlite::{params_from_iter, types::ToSql, Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

pub struct SqliteWriter {
    conn: Connection,
}

impl SqliteWriter {
    pub fn open(path: &Path, busy_timeout: Duration, max_batch: usize) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: the WAL is fsynced at every commit, so an ACK survives power loss.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(busy_timeout)?;
        // One prepared statement per batch size seen.
        conn.set_prepared_statement_cache_capacity(max_batch + 4);
        Ok(SqliteWriter { conn })
    }

    /// Appends a batch in one statement (one implicit transaction); input order.
    pub fn append(
        &mut self,
        rows: &[NewMessage],
        dup_since_us: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let forced = repeated_in_batch(rows.iter());
        let mut stmt = self
            .conn
            .prepare_cached(&insert_sql(rows.len()).replace('$', "?"))?;
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(rows.len() * super::PARAMS_PER_ROW);
        for (r, f) in rows.iter().zip(&forced) {
            params.extend_from_slice(&[
                &r.received_at_us as &dyn ToSql,
                &r.peer,
                &r.sending_application,
                &r.sending_facility,
                &r.receiving_application,
                &r.receiving_facility,
                &r.control_id,
                &r.message_type,
                &r.trigger_event,
                &r.version,
                &r.processing_id,
                &r.charset,
                &r.ack_mode,
                &r.ack_code,
                &r.status,
                &r.error,
                &r.patient_key,
                &r.visit_number,
                &r.patient_class,
                &r.sha256,
                &r.raw,
                &f.duplicate,
                &r.control_id,
                &r.sending_facility,
                &r.sending_application,
                &dup_since_us,
                &f.collision,
            ]);
        }
        let out = stmt
            .query_map(params_from_iter(params), |row| {
                Ok(Appended {
                    id: row.get(0)?,
                    duplicate: row.get(1)?,
                    collision: row.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        in_input_order(out, rows.len())
    }

    /// Rewrites what rows say was sent to their senders (late commits, unwritten ACKs).
    pub fn set_ack_codes(&mut self, fixes: &[AckFix]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&SET_ACK_CODE_SQL.replace('$', "?"))?;
            for f in fixes {
                stmt.execute(rusqlite::params![f.code, f.id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

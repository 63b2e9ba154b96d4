//! Bulk loading for the file imports (NPPES, rosters): millions of rows, streamed.
//!
//! Imports run on a blocking thread. On SQLite they use a plain rusqlite connection with
//! a prepared statement and large transactions (sqlx's per-statement hand-off would cap
//! the rate far below the 200,000 rows/s target). On PostgreSQL each chunk is one
//! `INSERT ... SELECT FROM UNNEST($1::text[], ...)`: one round trip per chunk, no
//! parameter-count limit. The caller controls transactions, so "a bad file changes
//! nothing" is a rollback on both.

use super::{Store, StoreError};
use sqlx::pool::PoolConnection;
use sqlx::Postgres;
use std::time::Duration;

/// Binds [`Param`]s to an sqlx query or query_scalar.
macro_rules! bind_pg {
    ($q:expr, $params:expr) => {{
        let mut q = $q;
        for p in $params {
            q = match p {
                Param::Text(s) => q.bind(*s),
                Param::Int(v) => q.bind(*v),
            };
        }
        q
    }};
}

/// One value for [`BulkConn::exec`] and friends.
#[derive(Clone, Debug)]
pub enum Param<'a> {
    Text(&'a str),
    Int(i64),
}

/// Rows in column form: `text[c][r]` is text column `c` of row `r`, likewise `ints`.
#[derive(Default, Debug)]
pub struct Columns {
    pub text: Vec<Vec<String>>,
    pub ints: Vec<Vec<i64>>,
}

impl Columns {
    pub fn new(text_cols: usize, int_cols: usize) -> Self {
        Columns {
            text: vec![Vec::new(); text_cols],
            ints: vec![Vec::new(); int_cols],
        }
    }

    pub fn len(&self) -> usize {
        self.text
            .first()
            .map(Vec::len)
            .or_else(|| self.ints.first().map(Vec::len))
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.text.iter_mut().for_each(Vec::clear);
        self.ints.iter_mut().for_each(Vec::clear);
    }
}

pub enum BulkConn {
    Sqlite(rusqlite::Connection),
    Postgres {
        conn: PoolConnection<Postgres>,
        rt: tokio::runtime::Handle,
    },
}

impl BulkConn {
    /// A dedicated connection to the store's database. Call from a blocking thread.
    pub fn open(store: &Store, rt: tokio::runtime::Handle) -> Result<BulkConn, StoreError> {
        match store {
            Store::Sqlite(s) => {
                let conn = rusqlite::Connection::open(s.path())?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                // 32 MiB of page cache (and of sorter memory for the index build).
                conn.pragma_update(None, "cache_size", -32768)?;
                conn.busy_timeout(Duration::from_secs(30))?;
                Ok(BulkConn::Sqlite(conn))
            }
            Store::Postgres(pool) => {
                let conn = rt.block_on(pool.acquire())?;
                Ok(BulkConn::Postgres { conn, rt })
            }
        }
    }

    /// Loading a snapshot nobody reads yet: let the WAL grow instead of copying it into
    /// the database after every chunk (one checkpoint at the end does the copying once).
    /// Each chunk's commit still syncs the WAL: those syncs overlap with parsing the next
    /// chunk, where leaving them all to the switch made the switch wait for the whole
    /// snapshot to reach the disk (measured: 0.5 s of 2.5 s for the endpoint file).
    /// SQLite only; nothing to do on PostgreSQL.
    pub fn set_bulk_load(&mut self, loading: bool) -> Result<(), StoreError> {
        if let BulkConn::Sqlite(c) = self {
            c.pragma_update(None, "wal_autocheckpoint", if loading { 0 } else { 1000 })?;
        }
        Ok(())
    }

    /// Copies the WAL into the database file (SQLite; nothing to do on PostgreSQL).
    /// After a load the WAL holds the whole snapshot: the import does this once, after
    /// the switch, instead of a server commit paying for it later.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        if let BulkConn::Sqlite(c) = self {
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        }
        Ok(())
    }

    pub fn begin(&mut self) -> Result<(), StoreError> {
        self.exec(
            match self {
                // IMMEDIATE: take the write lock now, not half-way through a chunk.
                BulkConn::Sqlite(_) => "BEGIN IMMEDIATE",
                BulkConn::Postgres { .. } => "BEGIN",
            },
            &[],
        )
        .map(|_| ())
    }

    pub fn commit(&mut self) -> Result<(), StoreError> {
        self.exec("COMMIT", &[]).map(|_| ())
    }

    /// Rolls back if a transaction is open; errors are ignored (the caller is already
    /// on its way out with a better one).
    pub fn rollback(&mut self) {
        match self {
            BulkConn::Sqlite(c) => {
                if !c.is_autocommit() {
                    let _ = c.execute_batch("ROLLBACK");
                }
            }
            BulkConn::Postgres { .. } => {
                let _ = self.exec("ROLLBACK", &[]);
            }
        }
    }

    /// Runs one statement written with `$n` placeholders; returns the rows it changed.
    pub fn exec(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        match self {
            BulkConn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(&sql.replace('$', "?"))?;
                bind_sqlite(&mut stmt, params)?;
                Ok(stmt.raw_execute()? as u64)
            }
            BulkConn::Postgres { conn, rt } => {
                let q = bind_pg!(sqlx::query(sql), params);
                Ok(rt.block_on(q.execute(&mut **conn))?.rows_affected())
            }
        }
    }

    /// Runs a statement that returns at most one integer (a `RETURNING id`, a count).
    pub fn query_i64(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<i64>, StoreError> {
        match self {
            BulkConn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(&sql.replace('$', "?"))?;
                bind_sqlite(&mut stmt, params)?;
                let mut rows = stmt.raw_query();
                match rows.next()? {
                    Some(r) => Ok(r.get::<_, Option<i64>>(0)?),
                    None => Ok(None),
                }
            }
            BulkConn::Postgres { conn, rt } => {
                let q = bind_pg!(sqlx::query_scalar::<_, Option<i64>>(sql), params);
                Ok(rt.block_on(q.fetch_optional(&mut **conn))?.flatten())
            }
        }
    }

    /// Inserts `rows` into `table`: the text columns, then the integer columns, then
    /// `extra` appended to the statement (an `ON CONFLICT ...` clause).
    pub fn insert(
        &mut self,
        table: &str,
        text_cols: &[&str],
        int_cols: &[&str],
        rows: &Columns,
        extra: &str,
    ) -> Result<(), StoreError> {
        let n = rows.len();
        if n == 0 {
            return Ok(());
        }
        let names: Vec<&str> = text_cols.iter().chain(int_cols).copied().collect();
        match self {
            BulkConn::Sqlite(c) => {
                let placeholders: Vec<String> =
                    (1..=names.len()).map(|i| format!("?{i}")).collect();
                let sql = format!(
                    "INSERT INTO {table} ({}) VALUES ({}) {extra}",
                    names.join(", "),
                    placeholders.join(", ")
                );
                let mut stmt = c.prepare_cached(&sql)?;
                for r in 0..n {
                    for (i, col) in rows.text.iter().enumerate() {
                        stmt.raw_bind_parameter(i + 1, col[r].as_str())?;
                    }
                    for (i, col) in rows.ints.iter().enumerate() {
                        stmt.raw_bind_parameter(text_cols.len() + i + 1, col[r])?;
                    }
                    stmt.raw_execute()?;
                }
                Ok(())
            }
            BulkConn::Postgres { conn, rt } => {
                let mut casts: Vec<String> = (1..=text_cols.len())
                    .map(|i| format!("${i}::text[]"))
                    .collect();
                casts.extend(
                    (1..=int_cols.len()).map(|i| format!("${}::int8[]", text_cols.len() + i)),
                );
                let sql = format!(
                    "INSERT INTO {table} ({}) SELECT * FROM UNNEST({}) {extra}",
                    names.join(", "),
                    casts.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for col in &rows.text {
                    q = q.bind(col);
                }
                for col in &rows.ints {
                    q = q.bind(col);
                }
                rt.block_on(q.execute(&mut **conn))?;
                Ok(())
            }
        }
    }
}

fn bind_sqlite(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: &[Param<'_>],
) -> Result<(), StoreError> {
    for (i, p) in params.iter().enumerate() {
        match p {
            Param::Text(s) => stmt.raw_bind_parameter(i + 1, *s)?,
            Param::Int(v) => stmt.raw_bind_parameter(i + 1, *v)?,
        }
    }
    Ok(())
}

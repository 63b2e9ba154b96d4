//! The store: SQLite (default, one file) or PostgreSQL (production, several nodes), via
//! sqlx, with migrations from `migrations/` applied at start.
//!
//! Both backends run the same SQL, written with `$1` placeholders ([`on_pool`] hands
//! SQLite its `?1` form). The
//! hot path is the append: one multi-row INSERT per group commit, with the duplicate
//! check inside the same statement, so a commit costs one round trip and one fsync
//! however many messages it carries. On SQLite that statement runs on a dedicated
//! thread through rusqlite ([`sqlite_writer`]): sqlx's SQLite worker hand-offs cost
//! about 100 us per statement, 40% of a commit, measured with the probe described in
//! docs/benchmarks.md. Everything else (migrations, reads, quarantine) is sqlx.

pub mod bulk;
pub mod config;
pub mod delivery;
pub mod direct;
pub mod directory;
pub mod fhir;
pub mod nppes;
pub mod outbox;
pub mod roster;
pub mod routing;
pub mod sqlite_reads;
pub mod sqlite_writer;

use sqlite_reads::Reads;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, PgPool, Row, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database url '{0}' is neither sqlite:// nor postgres://")]
    UnsupportedUrl(String),
    #[error("could not create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// One inbound message to append to the event log.
#[derive(Clone)]
pub struct NewMessage {
    pub received_at_us: i64,
    pub peer: String,
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    pub control_id: String,
    pub message_type: String,
    pub trigger_event: String,
    pub version: String,
    pub processing_id: String,
    pub charset: String,
    pub ack_mode: String,
    pub ack_code: Option<String>,
    pub status: &'static str,
    pub error: Option<String>,
    pub patient_key: Option<String>,
    pub visit_number: Option<String>,
    pub patient_class: Option<String>,
    pub sha256: String,
    pub raw: Vec<u8>,
}

/// A frame that could not be accepted.
#[derive(Clone, Debug)]
pub struct NewQuarantine {
    pub received_at_us: i64,
    pub peer: String,
    pub reason: String,
    pub diagnostic: String,
    pub control_id: Option<String>,
    pub sha256: String,
    pub raw: Vec<u8>,
}

/// What the log did with one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub id: i64,
    /// The same sender, facility and control id, with the same bytes (SHA-256), was
    /// already stored within the window: a resend, not routed again.
    pub duplicate: bool,
    /// The same sender, facility and control id was stored within the window with other
    /// bytes: a control-id collision. Stored and routed like any message, and flagged.
    pub collision: bool,
}

/// One stored message, as exported.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    pub id: i64,
    pub received_at_us: i64,
    pub peer: String,
    pub sending_application: String,
    pub sending_facility: String,
    pub control_id: String,
    pub message_type: String,
    pub trigger_event: String,
    pub version: String,
    pub charset: String,
    pub ack_code: Option<String>,
    pub status: String,
    pub duplicate: bool,
    pub error: Option<String>,
    pub sha256: String,
    pub control_id_collision: bool,
    pub raw: Option<Vec<u8>>,
}

/// Where a row came from in a partitioned log (Kafka mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// `kafka:<topic>`.
    pub source: String,
    pub partition: i32,
    pub offset: i64,
}

/// Runs the same query code on whichever pool the store has. Write SQL with `$1`-style
/// placeholders and pass it through `$sql!(...)`, which gives SQLite its `?1` form.
macro_rules! on_pool {
    ($store:expr, |$pool:ident, $sql:ident| $body:expr) => {
        match $store {
            Store::Sqlite(sqlite) => {
                let $pool = sqlite.pool();
                let $sql = |q: &str| q.replace('$', "?");
                $body
            }
            Store::Postgres($pool) => {
                let $sql = |q: &str| q.to_string();
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// Binds one row's parameters in [`insert_sql`] order; `$batch` is the row's
/// [`InBatch`].
macro_rules! bind_message {
    ($q:expr, $r:expr, $batch:expr, $since:expr) => {
        $q.bind($r.received_at_us)
            .bind(&$r.peer)
            .bind(&$r.sending_application)
            .bind(&$r.sending_facility)
            .bind(&$r.receiving_application)
            .bind(&$r.receiving_facility)
            .bind(&$r.control_id)
            .bind(&$r.message_type)
            .bind(&$r.trigger_event)
            .bind(&$r.version)
            .bind(&$r.processing_id)
            .bind(&$r.charset)
            .bind(&$r.ack_mode)
            .bind(&$r.ack_code)
            .bind($r.status)
            .bind(&$r.error)
            .bind(&$r.patient_key)
            .bind(&$r.visit_number)
            .bind(&$r.patient_class)
            .bind(&$r.sha256)
            .bind(&$r.raw)
            .bind($batch.duplicate)
            .bind(&$r.control_id)
            .bind(&$r.sending_facility)
            .bind(&$r.sending_application)
            .bind($since)
            .bind($batch.collision)
    };
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
    /// How long SQLite waits on a lock before failing the statement.
    pub busy_timeout: Duration,
    /// How long to wait for a connection from the pool.
    pub acquire_timeout: Duration,
}

/// The event log's writer connection, made by the store: on SQLite a blocking rusqlite
/// connection for a thread of its own, on PostgreSQL a one-connection pool whose
/// server-side timeouts bound every commit ([`Store::pg_writer_pool`]).
pub enum LogWriter {
    Sqlite(sqlite_writer::SqliteWriter),
    Postgres(PgPool),
}

/// The database and every connection adt-router holds to it. Clones share them.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgPool),
}

/// One SQLite file and all the connections to it: the sqlx pool (migrations, most reads,
/// the outbox, quarantine) and the rusqlite connections of the hot paths, where sqlx's
/// per-statement hand-off to its worker thread cost more than the statement: the read
/// connections with the reference snapshot ([`sqlite_reads`]) and the routing commit's
/// connection. The event-log writer ([`SqliteStore::writer`]) and the bulk loader
/// ([`bulk::BulkConn`]) open theirs here too.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    reads: std::sync::Arc<sqlite_reads::ReadConns>,
    /// Kept across routing commits: its prepared statements are most of the saving.
    routing: std::sync::Arc<std::sync::Mutex<Option<rusqlite::Connection>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    fn new(pool: SqlitePool) -> Self {
        let path = pool.connect_options().get_filename().to_path_buf();
        SqliteStore {
            pool,
            reads: std::sync::Arc::new(sqlite_reads::ReadConns::new(path)),
            routing: Default::default(),
        }
    }

    /// The sqlx pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        self.reads.path()
    }

    /// The rusqlite read connections (shared with the blocking thread that reads).
    fn reads(&self) -> std::sync::Arc<sqlite_reads::ReadConns> {
        self.reads.clone()
    }

    /// A new connection for the event-log writer thread, which owns it from then on.
    pub fn writer(
        &self,
        busy_timeout: Duration,
        max_batch: usize,
    ) -> Result<sqlite_writer::SqliteWriter, StoreError> {
        sqlite_writer::SqliteWriter::open(self.path(), busy_timeout, max_batch)
    }
}

const MESSAGE_COLUMNS: &str = "received_at_us, peer, sending_application, sending_facility, \
    receiving_application, receiving_facility, control_id, message_type, trigger_event, \
    version, processing_id, charset, ack_mode, ack_code, status, error, patient_key, \
    visit_number, patient_class, sha256, raw, duplicate, control_id_collision";

const EXPORT_COLUMNS: &str = "id, received_at_us, peer, sending_application, sending_facility, \
    control_id, message_type, trigger_event, version, charset, ack_code, status, duplicate, \
    error, sha256, control_id_collision";

/// How much of a SQLite file its connections map rather than read(). Past the map every
/// page is a read() into a fresh cache buffer: with a 1,000,000-patient roster the file
/// passes 500 MB, and a 256 MB map left 7% of routing's CPU in those reads. SQLite caps
/// the value at its compile-time maximum (2 GB on 64-bit builds); it is address space,
/// not memory: the kernel's page cache holds the pages either way.
pub(crate) const SQLITE_MMAP_BYTES: i64 = 1 << 31;

/// Databases made before the two migration sequences were numbered alike ran
/// PostgreSQL's `outbox_live_order` as 0012 (and what followed one number lower). Their
/// history is moved up by one, and 0012 (`decision_key`, a no-op on PostgreSQL) recorded
/// as applied, so the migrator finds every file where it expects it. Idempotent, and
/// serialised against another node doing the same.
async fn renumber_legacy_postgres_history(
    pool: &PgPool,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(());
    }
    let Some(decision_key) = migrator.iter().find(|m| m.version == 12) else {
        return Ok(());
    };
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE _sqlx_migrations IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let at_12: Option<String> =
        sqlx::query_scalar("SELECT description FROM _sqlx_migrations WHERE version = 12")
            .fetch_optional(&mut *tx)
            .await?;
    if at_12.as_deref() != Some("outbox live order") {
        return Ok(()); // already numbered alike (or not that far yet)
    }
    // Two steps, so no row collides with another's old number on the way.
    sqlx::query("UPDATE _sqlx_migrations SET version = -version WHERE version >= 12")
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE _sqlx_migrations SET version = 1 - version WHERE version < 0")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (12, $1, TRUE, $2, 0)",
    )
    .bind(decision_key.description.as_ref())
    .bind(decision_key.checksum.as_ref())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!("Renumbered the PostgreSQL migration history to the shared sequence (0012 decision_key recorded; later ones moved up by one).");
    Ok(())
}

impl Store {
    /// Connects and applies migrations. For SQLite the file (and its directory) is created.
    pub async fn connect(opts: &StoreOptions) -> Result<Store, StoreError> {
        let url = opts.url.as_str();
        if url.starts_with("sqlite:") {
            let co = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: the WAL is fsynced at every commit, so an ACK survives power loss.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(opts.busy_timeout)
                // Lookups (attribution, directory) read rows scattered over large
                // tables: mapped pages skip a read() per page.
                .pragma("mmap_size", SQLITE_MMAP_BYTES.to_string())
                .foreign_keys(true);
            private_database_file(co.get_filename())?;
            let pool = SqlitePoolOptions::new()
                .max_connections(opts.max_connections.max(2))
                // A ping before every acquire doubles the cost of a group commit; a dead
                // connection shows up as a failed statement anyway (and gets AR/CE).
                .test_before_acquire(false)
                .acquire_timeout(opts.acquire_timeout)
                .connect_with(co)
                .await?;
            sqlx::migrate!("migrations/sqlite").run(&pool).await?;
            Ok(Store::Sqlite(SqliteStore::new(pool)))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let co = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(opts.max_connections)
                .test_before_acquire(false)
                .acquire_timeout(opts.acquire_timeout)
                .connect_with(co)
                .await?;
            let migrator = sqlx::migrate!("migrations/postgres");
            renumber_legacy_postgres_history(&pool, &migrator).await?;
            migrator.run(&pool).await?;
            Ok(Store::Postgres(pool))
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }

    /// The event log's writer: `busy_timeout` for a lock, `commit_timeout` more for the
    /// commit itself.
    pub fn log_writer(
        &self,
        busy_timeout: Duration,
        commit_timeout: Duration,
        max_batch: usize,
    ) -> Result<LogWriter, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => LogWriter::Sqlite(s.writer(busy_timeout, max_batch)?),
            Store::Postgres(p) => LogWriter::Postgres(Store::pg_writer_pool(
                p,
                busy_timeout,
                busy_timeout + commit_timeout,
            )),
        })
    }

    /// PostgreSQL's `synchronous_commit` for our connections, when it is `off`: a
    /// commit then returns before its WAL record is flushed, so an AA could name a
    /// message a crash loses.
    pub async fn asynchronous_commit(&self) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(p) => {
                let v: String = sqlx::query_scalar("SHOW synchronous_commit")
                    .fetch_one(p)
                    .await?;
                Ok((v == "off").then_some(v))
            }
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Readiness: can we run a query at all?
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.pool().execute("SELECT 1").await.map(|_| ())?,
            Store::Postgres(p) => p.execute("SELECT 1").await.map(|_| ())?,
        }
        Ok(())
    }

    /// A pool for the PostgreSQL event-log writer: the store's connection settings, and
    /// on every connection a `lock_timeout` and a `statement_timeout` (startup options,
    /// no extra round trip), so the server bounds each commit and its outcome is always
    /// known when the statement returns: the writer never drops a statement that might
    /// still commit.
    pub fn pg_writer_pool(
        pool: &PgPool,
        lock_timeout: std::time::Duration,
        statement_timeout: std::time::Duration,
    ) -> PgPool {
        let ms = |d: std::time::Duration| format!("{}ms", d.as_millis().max(1));
        let co = (*pool.connect_options()).clone().options([
            ("lock_timeout", ms(lock_timeout)),
            ("statement_timeout", ms(statement_timeout)),
        ]);
        PgPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(pool.options().get_acquire_timeout())
            .connect_lazy_with(co)
    }

    /// Appends a batch on PostgreSQL in one statement (one implicit transaction), on a
    /// [`Store::pg_writer_pool`] connection. SQLite appends go through
    /// [`sqlite_writer::SqliteWriter`] instead. Results come back in input order.
    pub async fn append_messages_pg(
        pool: &PgPool,
        rows: &[NewMessage],
        dup_since_us: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let forced = repeated_in_batch(rows.iter());
        let sql = insert_sql(rows.len());
        let mut q = sqlx::query(&sql);
        for (r, f) in rows.iter().zip(&forced) {
            q = bind_message!(q, r, f, dup_since_us);
        }
        let rows_out = q.fetch_all(pool).await?;
        let appended = rows_out
            .iter()
            .map(|r| {
                Ok(Appended {
                    id: r.try_get(0)?,
                    duplicate: r.try_get(1)?,
                    collision: r.try_get(2)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        in_input_order(appended, rows.len())
    }

    /// Rewrites what rows say was sent to their senders (late commits, unwritten ACKs).
    pub async fn set_ack_codes_pg(
        pool: &PgPool,
        fixes: &[crate::event_log::embedded::AckFix],
    ) -> Result<(), StoreError> {
        let mut tx = pool.begin().await?;
        for f in fixes {
            sqlx::query(SET_ACK_CODE_SQL)
                .bind(f.code)
                .bind(f.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores records consumed from a partitioned log, in one statement. For each input,
    /// `None` means that record (same origin) was stored before, so nothing changed.
    pub async fn record_consumed(
        &self,
        rows: &[(NewMessage, Origin)],
        dup_since_us: i64,
    ) -> Result<Vec<Option<Appended>>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let forced = repeated_in_batch(rows.iter().map(|(r, _)| r));
        let query = insert_sql_from(rows.len(), true);
        let inserted = on_pool!(self, |pool, sql| {
            let sql = sql(&query);
            let mut q = sqlx::query(&sql);
            for ((r, o), f) in rows.iter().zip(&forced) {
                q = bind_message!(q, r, f, dup_since_us)
                    .bind(&o.source)
                    .bind(o.partition)
                    .bind(o.offset);
            }
            q.fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        (r.try_get::<i32, _>(2)?, r.try_get::<i64, _>(3)?),
                        Appended {
                            id: r.try_get(0)?,
                            duplicate: r.try_get(1)?,
                            collision: r.try_get(4)?,
                        },
                    ))
                })
                .collect::<Result<std::collections::HashMap<_, _>, sqlx::Error>>()?
        });
        Ok(rows
            .iter()
            .map(|(_, o)| inserted.get(&(o.partition, o.offset)).copied())
            .collect())
    }

    /// Keeps a rejected frame or record. With an origin, a replayed record is kept once.
    pub async fn quarantine(
        &self,
        q: &NewQuarantine,
        origin: Option<&Origin>,
    ) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO quarantine (received_at_us, peer, reason, diagnostic, control_id, sha256, raw, log_source, log_partition, log_offset) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING";
        on_pool!(self, |p, sql| {
            sqlx::query(&sql(SQL))
                .bind(q.received_at_us)
                .bind(&q.peer)
                .bind(&q.reason)
                .bind(&q.diagnostic)
                .bind(&q.control_id)
                .bind(&q.sha256)
                .bind(&q.raw)
                .bind(origin.map(|o| o.source.as_str()))
                .bind(origin.map(|o| o.partition))
                .bind(origin.map(|o| o.offset))
                .execute(p)
                .await
                .map(|_| ())?
        });
        Ok(())
    }

    /// Messages received at or after `since_us`, oldest first, in pages of `limit` after `after_id`.
    pub async fn export_page(
        &self,
        since_us: i64,
        after_id: i64,
        limit: i64,
        with_body: bool,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let cols = if with_body {
            format!("{EXPORT_COLUMNS}, raw")
        } else {
            EXPORT_COLUMNS.to_string()
        };
        let query = format!("SELECT {cols} FROM inbound_messages WHERE received_at_us >= $1 AND id > $2 ORDER BY id LIMIT $3");
        on_pool!(self, |p, sql| {
            let rows = sqlx::query(&sql(&query))
                .bind(since_us)
                .bind(after_id)
                .bind(limit)
                .fetch_all(p)
                .await?;
            rows.iter().map(|r| stored_message(r, with_body)).collect()
        })
    }

    /// Messages received at or after `since_us`.
    pub async fn count_since(&self, since_us: i64) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM inbound_messages WHERE received_at_us >= $1";
        Ok(on_pool!(self, |p, sql| sqlx::query_scalar::<_, i64>(&sql(
            SQL
        ))
        .bind(since_us)
        .fetch_one(p)
        .await?))
    }

    /// Runs a statement (`$N` placeholders, text parameters) that returns exactly one row
    /// of `columns` text values. For lookups whose latency matters: on SQLite it skips
    /// sqlx's worker thread ([`sqlite_reads`]).
    pub async fn text_row(
        &self,
        sql: &str,
        args: Vec<String>,
        columns: usize,
    ) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let conns = s.reads();
                let sql = sql.replace('$', "?");
                on_reader(move || sqlite_reads::text_row(&conns, &sql, &args, columns)).await
            }
            Store::Postgres(p) => {
                let mut q = sqlx::query(sql);
                for a in &args {
                    q = q.bind(a);
                }
                let row = q.fetch_one(p).await?;
                Ok((0..columns)
                    .map(|i| row.try_get::<String, _>(i))
                    .collect::<Result<_, _>>()?)
            }
        }
    }

    /// `SELECT columns FROM from` (`$N` placeholders, text parameters), each row
    /// deserialised by position into a `T`. One round trip either way: PostgreSQL
    /// returns the rows as one JSON value, SQLite's are read in place (building JSON
    /// in SQLite costs more than reading the rows).
    pub async fn select<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        columns: &str,
        from: &str,
        args: Vec<String>,
    ) -> Result<Vec<T>, StoreError> {
        self.select_in(Reads::Fresh, columns, from, args).await
    }

    /// [`Store::select`] of reference data (rosters, the directory): on SQLite through a
    /// read transaction kept across calls until an import or override commits
    /// ([`sqlite_reads::reference`]).
    pub async fn select_reference<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        columns: &str,
        from: &str,
        args: Vec<String>,
    ) -> Result<Vec<T>, StoreError> {
        self.select_in(Reads::Reference, columns, from, args).await
    }

    /// Lets go of the reference snapshot (the router is idle), so the WAL can be reset.
    pub fn release_reference(&self) {
        if let Store::Sqlite(s) = self {
            sqlite_reads::reference::release(&s.reads);
        }
    }

    async fn select_in<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        reads: Reads,
        columns: &str,
        from: &str,
        args: Vec<String>,
    ) -> Result<Vec<T>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let conns = s.reads();
                let sql = format!("SELECT {columns} FROM {from}").replace('$', "?");
                on_reader(move || sqlite_reads::rows(reads, &conns, &sql, &args)).await
            }
            Store::Postgres(_) => {
                let query = format!(
                    "SELECT (SELECT COALESCE(json_agg(json_build_array({columns})), '[]')::text FROM {from})"
                );
                let row = self.text_row(&query, args, 1).await?;
                serde_json::from_str(&row[0])
                    .map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))
            }
        }
    }

    /// [`Store::select_reference`] keeping only the rows `keep` accepts, judged on the
    /// text of the columns at `pick` (positions in `columns`) before the row is built: on
    /// SQLite borrowed from the row, so rows left out cost no allocation.
    pub async fn select_reference_where<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        columns: &str,
        from: &str,
        args: Vec<String>,
        pick: &'static [usize],
        keep: Keep,
    ) -> Result<Vec<T>, StoreError> {
        let reads = Reads::Reference;
        match self {
            Store::Sqlite(s) => {
                let conns = s.reads();
                let sql = format!("SELECT {columns} FROM {from}").replace('$', "?");
                on_reader(move || {
                    sqlite_reads::rows_where(reads, &conns, &sql, &args, pick, &*keep)
                })
                .await
            }
            Store::Postgres(_) => {
                let all: Vec<Vec<serde_json::Value>> =
                    self.select_in(reads, columns, from, args).await?;
                let decode =
                    |e: serde_json::Error| StoreError::Db(sqlx::Error::Decode(Box::new(e)));
                let mut out = Vec::new();
                for row in all {
                    let text: Vec<&str> = pick
                        .iter()
                        .map(|&i| row.get(i).and_then(|v| v.as_str()).unwrap_or(""))
                        .collect();
                    if keep(&text) {
                        out.push(T::deserialize(serde_json::Value::Array(row)).map_err(decode)?);
                    }
                }
                Ok(out)
            }
        }
    }

    /// Counts used by tests and the audit side: (messages, quarantined).
    pub async fn counts(&self) -> Result<(i64, i64), StoreError> {
        const SQL: &str =
            "SELECT (SELECT COUNT(*) FROM inbound_messages), (SELECT COUNT(*) FROM quarantine)";
        Ok(match self {
            Store::Sqlite(s) => {
                sqlx::query_as::<_, (i64, i64)>(SQL)
                    .fetch_one(s.pool())
                    .await?
            }
            Store::Postgres(p) => sqlx::query_as::<_, (i64, i64)>(SQL).fetch_one(p).await?,
        })
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.pool().close().await,
            Store::Postgres(p) => p.close().await,
        }
    }
}

/// Parameters per row, in the order [`insert_sql`] expects them: the 21 columns of
/// [`MESSAGE_COLUMNS`] up to `raw`, then the duplicate check's `forced`, control id,
/// sending facility, sending application and window start, then the in-batch collision.
pub(crate) const PARAMS_PER_ROW: usize = 27;

/// A row filter for [`Store::select_reference_where`]: the picked columns' text in, keep or not.
pub type Keep = std::sync::Arc<dyn Fn(&[&str]) -> bool + Send + Sync>;

/// Sets one stored message's `ack_code` (both dialects: `$n` placeholders).
pub(crate) const SET_ACK_CODE_SQL: &str = "UPDATE inbound_messages SET ack_code = $1 WHERE id = $2";

/// `INSERT ... VALUES (...), (...) RETURNING id, duplicate, control_id_collision` for
/// `n` rows. A row is a duplicate when it repeats, byte for byte (SHA-256), an earlier
/// row of the batch (`forced`) or a stored, non-duplicate message with the same sender,
/// facility and control id within the window; it is a control-id collision when such a
/// message exists with other bytes (and it is not a duplicate).
pub(crate) fn insert_sql(n: usize) -> String {
    insert_sql_from(n, false)
}

/// With `origin`, each row carries three more parameters after the duplicate check
/// (log source, partition, offset), and a row whose origin is already stored is skipped:
/// that is what makes a replayed Kafka record change nothing.
pub(crate) fn insert_sql_from(n: usize, origin: bool) -> String {
    let cols = if origin {
        format!("{MESSAGE_COLUMNS}, log_source, log_partition, log_offset")
    } else {
        MESSAGE_COLUMNS.to_string()
    };
    let mut sql = format!("INSERT INTO inbound_messages ({cols}) VALUES ");
    let mut k = 0;
    let mut p = || {
        k += 1;
        format!("${k}")
    };
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for _ in 0..21 {
            sql.push_str(&p());
            sql.push_str(", ");
        }
        // The sha256 column's own parameter is the 20th of the row.
        let per_row = PARAMS_PER_ROW + if origin { 3 } else { 0 };
        let sha = format!("${}", i * per_row + 20);
        let (forced, ctrl, fac, app, since, collided) = (p(), p(), p(), p(), p(), p());
        let same_key = |bytes: &str| {
            format!(
                "EXISTS (SELECT 1 FROM inbound_messages d WHERE d.control_id = {ctrl} \
                 AND d.sending_facility = {fac} AND d.sending_application = {app} \
                 AND d.sha256 {bytes} {sha} AND NOT d.duplicate AND d.received_at_us >= {since})"
            )
        };
        let duplicate = format!("({forced} OR {})", same_key("="));
        sql.push_str(&format!(
            "{duplicate}, (NOT {duplicate} AND ({collided} OR {}))",
            same_key("<>")
        ));
        if origin {
            let (src, part, off) = (p(), p(), p());
            sql.push_str(&format!(", {src}, {part}, {off}"));
        }
        sql.push(')');
    }
    if origin {
        sql.push_str(" ON CONFLICT DO NOTHING RETURNING id, duplicate, log_partition, log_offset, control_id_collision");
    } else {
        sql.push_str(" RETURNING id, duplicate, control_id_collision");
    }
    sql
}

/// What a row is next to the earlier rows of its own batch, which the statement cannot
/// see on every backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct InBatch {
    /// An earlier row has the same key and the same bytes.
    pub duplicate: bool,
    /// An earlier row has the same key and other bytes.
    pub collision: bool,
}

/// Marks rows that repeat, or collide with, an earlier row of the same batch.
pub(crate) fn repeated_in_batch<'a>(rows: impl Iterator<Item = &'a NewMessage>) -> Vec<InBatch> {
    let mut seen: std::collections::HashMap<_, Vec<&str>> = std::collections::HashMap::new();
    rows.map(|r| {
        let shas = seen
            .entry((&r.sending_application, &r.sending_facility, &r.control_id))
            .or_default();
        let duplicate = shas.contains(&r.sha256.as_str());
        let collision = !duplicate && !shas.is_empty();
        if !duplicate {
            shas.push(&r.sha256);
        }
        InBatch {
            duplicate,
            collision,
        }
    })
    .collect()
}

/// Ids are assigned in insertion order; RETURNING order is not guaranteed.
pub(crate) fn in_input_order(
    mut out: Vec<Appended>,
    expected: usize,
) -> Result<Vec<Appended>, StoreError> {
    out.sort_by_key(|a| a.id);
    if out.len() != expected {
        return Err(StoreError::Db(sqlx::Error::Protocol(format!(
            "insert returned {} rows for {expected}",
            out.len()
        ))));
    }
    Ok(out)
}

fn stored_message<R: Row>(r: &R, with_body: bool) -> Result<StoredMessage, StoreError>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    Ok(StoredMessage {
        id: r.try_get("id")?,
        received_at_us: r.try_get("received_at_us")?,
        peer: r.try_get("peer")?,
        sending_application: r.try_get("sending_application")?,
        sending_facility: r.try_get("sending_facility")?,
        control_id: r.try_get("control_id")?,
        message_type: r.try_get("message_type")?,
        trigger_event: r.try_get("trigger_event")?,
        version: r.try_get("version")?,
        charset: r.try_get("charset")?,
        ack_code: r.try_get("ack_code")?,
        status: r.try_get("status")?,
        duplicate: r.try_get("duplicate")?,
        error: r.try_get("error")?,
        sha256: r.try_get("sha256")?,
        control_id_collision: r.try_get("control_id_collision")?,
        raw: if with_body {
            Some(r.try_get("raw")?)
        } else {
            None
        },
    })
}

/// Runs a blocking SQLite read ([`sqlite_reads`]). On the multi-threaded runtime it
/// runs right here (the other workers carry on): a hand-off to a blocking thread costs
/// more than the query.
async fn on_reader<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(read),
        _ => tokio::task::spawn_blocking(read).await.map_err(|e| {
            StoreError::Db(sqlx::Error::Protocol(format!("lookup task failed: {e}")))
        })?,
    }
}

/// `$first, $first+1, ...`: `n` statement placeholders.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The placeholders of an `IN` list whose values are the last of `args`, from `$first`,
/// with `args` padded to a multiple of 64 by repeating its last value (an `IN` list is a
/// set): pages asking for different numbers of keys then share a few cached statements
/// instead of preparing one each.
pub fn in_list(first: usize, args: &mut Vec<String>) -> String {
    let values = args.len() + 1 - first;
    if let Some(last) = args.last().cloned() {
        args.resize(first - 1 + values.next_multiple_of(64), last);
    }
    placeholders(first, args.len() + 1 - first)
}

#[cfg(test)]
mod in_list_tests {
    use super::in_list;

    #[test]
    fn in_lists_are_padded_with_their_last_value_to_a_multiple_of_64() {
        let mut args = vec!["x".to_string(), "a".to_string(), "b".to_string()];
        let list = in_list(2, &mut args);
        assert_eq!(args.len(), 65);
        assert_eq!(&args[..3], ["x", "a", "b"]);
        assert!(args[3..].iter().all(|a| a == "b"));
        assert!(list.starts_with("$2, $3, $4") && list.ends_with("$65"));
        assert_eq!(list.split(", ").count(), 64);

        let mut full: Vec<String> = (0..64).map(|i| i.to_string()).collect();
        in_list(1, &mut full);
        assert_eq!(full.len(), 64, "a full list is left alone");
    }
}

/// A PHI-free key: the first 16 bytes of the SHA-256 of `s`, as hex. Idempotency keys,
/// ordering keys and fallback keys are made this way.
pub fn key_hash(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..16])
}

/// Wall-clock time in microseconds since the epoch, the unit of every `*_us` column.
pub fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// Hides a password in a database url before it is printed.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Creates the database's directory (0700) and the file itself (0600) when missing, so
/// PHI at rest is readable by this user only; SQLite gives its WAL and shared-memory
/// files the database file's permissions. Existing files keep theirs.
fn private_database_file(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |p: &std::path::Path| {
        let path = p.display().to_string();
        move |source| StoreError::DataDir { path, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err(dir))?;
    }
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map(drop)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(err(path))?;
    }
    Ok(())
}

/// A migrated SQLite store at `path`, for the store's own tests.
#[cfg(test)]
pub(crate) async fn sqlite_for_tests(path: &std::path::Path) -> Store {
    Store::connect(&StoreOptions {
        url: format!("sqlite://{}", path.display()),
        max_connections: 2,
        busy_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(5),
    })
    .await
    .expect("a SQLite store in a temporary directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite://./data/x.db"), "sqlite://./data/x.db");
    }
}

/// A message row with only a control id and a SHA-256 set, for unit tests.
#[cfg(test)]
pub(crate) fn test_message(ctrl: &str, sha: &str) -> NewMessage {
    NewMessage {
        received_at_us: 0,
        peer: String::new(),
        sending_application: "A".into(),
        sending_facility: "F".into(),
        receiving_application: String::new(),
        receiving_facility: String::new(),
        control_id: ctrl.into(),
        message_type: String::new(),
        trigger_event: String::new(),
        version: String::new(),
        processing_id: String::new(),
        charset: String::new(),
        ack_mode: String::new(),
        ack_code: None,
        status: "pending",
        error: None,
        patient_key: None,
        visit_number: None,
        patient_class: None,
        sha256: sha.into(),
        raw: Vec::new(),
    }
}

#[cfg(test)]
mod insert_tests {
    use super::*;
    use test_message as row;

    /// Within a batch: the same bytes again are a duplicate, other bytes a collision.
    #[test]
    fn batch_rows_are_duplicates_only_with_the_same_bytes() {
        let rows = [
            row("1", "a"),
            row("1", "a"),
            row("1", "b"),
            row("1", "b"),
            row("2", "a"),
        ];
        let flags: Vec<(bool, bool)> = repeated_in_batch(rows.iter())
            .into_iter()
            .map(|f| (f.duplicate, f.collision))
            .collect();
        assert_eq!(
            flags,
            [
                (false, false),
                (true, false),
                (false, true),
                (true, false),
                (false, false)
            ]
        );
    }

    /// Every row uses exactly its own parameters, and the sha256 the checks compare is
    /// the row's own column.
    #[test]
    fn insert_sql_numbers_each_rows_parameters() {
        for origin in [false, true] {
            let per_row = PARAMS_PER_ROW + if origin { 3 } else { 0 };
            let sql = insert_sql_from(2, origin);
            let max = sql
                .split('$')
                .skip(1)
                .filter_map(|t| {
                    t.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .max();
            assert_eq!(max, Some(2 * per_row));
            assert!(
                sql.contains(&format!("d.sha256 = ${}", per_row + 20)),
                "{sql}"
            );
            assert!(sql.contains("d.sha256 = $20 "), "{sql}");
        }
    }
}

#[cfg(test)]
mod migration_lock {
    use sha2::{Digest, Sha256};

    /// A migration is never edited after it lands: a database that ran it would not
    /// get the change, and sqlx refuses a changed file it has applied. Every file's
    /// SHA-256 is in `migrations/checksums.sha256` (`sha256sum -c` reads it); a new
    /// migration adds its line, and no line ever changes. A change is a new migration.
    #[test]
    fn no_migration_is_edited_after_it_lands() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let lock = std::fs::read_to_string(format!("{dir}/checksums.sha256")).unwrap();
        let mut locked: Vec<(String, String)> = lock
            .lines()
            .filter_map(|l| l.split_once("  "))
            .map(|(h, f)| (f.to_string(), h.to_string()))
            .collect();
        locked.sort();
        let mut actual = Vec::new();
        for dialect in ["sqlite", "postgres"] {
            for e in std::fs::read_dir(format!("{dir}/{dialect}")).unwrap() {
                let e = e.unwrap();
                let name = format!("{dialect}/{}", e.file_name().to_string_lossy());
                let hash = hex::encode(Sha256::digest(std::fs::read(e.path()).unwrap()));
                actual.push((name, hash));
            }
        }
        actual.sort();
        for (name, hash) in &actual {
            match locked.iter().find(|(n, _)| n == name) {
                None => panic!(
                    "{name} is not in migrations/checksums.sha256: add its line (cd migrations && sha256sum {name} >> checksums.sha256)"
                ),
                Some((_, h)) => assert_eq!(
                    h, hash,
                    "{name} was edited after it landed: put the change in a new migration"
                ),
            }
        }
        assert_eq!(locked.len(), actual.len(), "a locked migration is missing");
    }
}

debug_without_phi!(NewMessage {
    received_at_us,
    peer,
    sending_application,
    sending_facility,
    control_id,
    message_type,
    trigger_event,
    version,
    status,
    sha256
});

//! Latency-bound reads on SQLite (attribution, directory lookups) through plain rusqlite
//! connections on a blocking thread. sqlx's SQLite driver runs every statement on a
//! worker thread and hands rows back one at a time through a channel; for a lookup that
//! is a few hundred microseconds of hand-offs around a few hundred of SQLite work.
//!
//! A small pool per database file, opened read-only: these connections never write.

use super::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Idle connections kept.
const KEEP: usize = 8;

/// The store's read connections to its SQLite file: a few idle ones kept for reuse, and
/// the reference snapshot ([`reference`]). Owned by the [`super::Store`] (shared by its
/// clones), so two stores never share a connection.
pub struct ReadConns {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    snapshot: Mutex<Option<reference::Snapshot>>,
}

impl ReadConns {
    pub fn new(path: PathBuf) -> Self {
        ReadConns {
            path,
            idle: Mutex::new(Vec::new()),
            snapshot: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(Duration::from_secs(5))?;
    c.pragma_update(None, "mmap_size", super::SQLITE_MMAP_BYTES)?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

/// Runs `f` on an idle connection, or a new one.
fn with_conn<T>(
    conns: &ReadConns,
    f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
) -> Result<T, StoreError> {
    let taken = conns.idle.lock().ok().and_then(|mut idle| idle.pop());
    let conn = match taken {
        Some(c) => c,
        None => open(&conns.path)?,
    };
    let result = f(&conn);
    if let Ok(mut idle) = conns.idle.lock() {
        if idle.len() < KEEP {
            idle.push(conn);
        }
    }
    Ok(result?)
}

/// Runs one statement (`?N` placeholders, text parameters) that returns one row, and
/// returns its first `columns` values as text. Blocking: call from a blocking thread.
pub fn text_row(
    conns: &ReadConns,
    sql: &str,
    args: &[String],
    columns: usize,
) -> Result<Vec<String>, StoreError> {
    with_conn(conns, |conn| {
        let mut stmt = conn.prepare_cached(sql)?;
        stmt.query_row(rusqlite::params_from_iter(args.iter()), |r| {
            (0..columns).map(|i| r.get::<_, String>(i)).collect()
        })
    })
}

/// Runs a statement over `inbound_messages` that selects [`super::EXPORT_COLUMNS`] and
/// `raw` (integer parameters): the routing page, read here rather than through sqlx,
/// whose worker thread hand-off cost more than the read. Blocking.
pub fn messages(
    conns: &ReadConns,
    sql: &str,
    args: &[i64],
) -> Result<Vec<super::StoredMessage>, StoreError> {
    with_conn(conns, |conn| {
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
            Ok(super::StoredMessage {
                id: r.get(0)?,
                received_at_us: r.get(1)?,
                peer: r.get(2)?,
                sending_application: r.get(3)?,
                sending_facility: r.get(4)?,
                control_id: r.get(5)?,
                message_type: r.get(6)?,
                trigger_event: r.get(7)?,
                version: r.get(8)?,
                charset: r.get(9)?,
                ack_code: r.get(10)?,
                status: r.get(11)?,
                duplicate: r.get(12)?,
                error: r.get(13)?,
                sha256: r.get(14)?,
                control_id_collision: r.get(15)?,
                raw: Some(r.get(16)?),
            })
        })?;
        rows.collect()
    })
}

/// Runs one statement (`?N` placeholders, text parameters) and deserialises every row,
/// by position, straight from SQLite's values: text and blobs as strings, integers,
/// reals, NULL as `None`. Blocking: call from a blocking thread.
pub fn rows<T: serde::de::DeserializeOwned>(
    reads: Reads,
    conns: &ReadConns,
    sql: &str,
    args: &[String],
) -> Result<Vec<T>, StoreError> {
    rows_where(reads, conns, sql, args, &[], &|_| true)
}

/// Columns [`rows_where`] can hand to its filter.
pub const MAX_PICKED: usize = 8;

/// [`rows`], building only the rows `keep` accepts, judged on the text of the columns at
/// `pick` (at most [`MAX_PICKED`]; other values as empty text) borrowed from SQLite.
pub fn rows_where<T: serde::de::DeserializeOwned>(
    reads: Reads,
    conns: &ReadConns,
    sql: &str,
    args: &[String],
    pick: &[usize],
    keep: &(dyn Fn(&[&str]) -> bool + Send + Sync),
) -> Result<Vec<T>, StoreError> {
    assert!(
        pick.len() <= MAX_PICKED,
        "rows_where picks at most {MAX_PICKED} columns"
    );
    let query = |conn: &Connection| query_rows(conn, sql, args, pick, keep);
    match reads {
        Reads::Fresh => with_conn(conns, query),
        Reads::Reference => reference::with_snapshot(conns, query),
    }
}

fn query_rows<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    args: &[String],
    pick: &[usize],
    keep: &(dyn Fn(&[&str]) -> bool + Send + Sync),
) -> Result<Vec<T>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(sql)?;
    let columns = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        if !pick.is_empty() {
            let mut text = [""; MAX_PICKED];
            for (slot, &i) in text.iter_mut().zip(pick) {
                *slot = r.get_ref(i)?.as_str().unwrap_or("");
            }
            if !keep(&text[..pick.len()]) {
                continue;
            }
        }
        let row = T::deserialize(row::Row { row: r, columns }).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Null, e.into())
        })?;
        out.push(row);
    }
    Ok(out)
}

/// Which state a read sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// What is committed now.
    Fresh,
    /// Reference data (rosters, the directory) as of the last import or override: see
    /// [`reference`].
    Reference,
}

/// Reference reads through one read transaction kept open across calls.
///
/// SQLite drops a connection's page cache and its whole map of the file whenever another
/// connection has committed: routing commits a page while it plans the next, so every
/// page's roster and directory lookups faulted their pages in again and unmapped them
/// after (15% of a drain's CPU with a 1,000,000-patient roster). Rosters and the
/// directory change only when an import or an override commits, and each of those
/// writes one of four small tables in the same transaction as its rows. So a snapshot
/// stays in use while those tables read the same as they do now ([`VERSION`], checked
/// on a fresh connection at every call), and for at most [`MAX_AGE`]: an open read
/// transaction keeps the WAL from being reset, so it is let go often, and whenever the
/// router goes idle ([`release`]).
pub mod reference {
    use super::{open, with_conn, Connection, ReadConns, StoreError};
    use std::time::{Duration, Instant};

    /// What the reference tables look like: it changes whenever a roster import, a
    /// directory import (switch, merge or failure) or an override commits.
    pub const VERSION: &str = "SELECT \
        (SELECT count(*) || ':' || coalesce(max(id), 0) FROM roster_import) || '|' || \
        (SELECT count(*) || ':' || coalesce(max(id), 0) || ':' || coalesce(max(finished_at_us), 0) FROM directory_import) || '|' || \
        (SELECT coalesce(group_concat(kind || '=' || snapshot), '') FROM directory_active) || '|' || \
        (SELECT count(*) || ':' || coalesce(max(id), 0) || ':' || coalesce(max(updated_at_us), 0) FROM directory_override)";

    /// The longest a snapshot is kept, changed or not.
    pub const MAX_AGE: Duration = Duration::from_secs(1);

    pub struct Snapshot {
        conn: Connection,
        version: String,
        since: Instant,
    }

    /// Asked before every reference read: cached, since preparing it cost more than
    /// running it.
    fn version(conn: &Connection) -> Result<String, rusqlite::Error> {
        conn.prepare_cached(VERSION)?.query_row([], |r| r.get(0))
    }

    /// Runs `f` in the reference snapshot, begun again when the reference tables have
    /// changed or it is older than [`MAX_AGE`]. When another call holds it, or an import
    /// lands between the check and a new snapshot, `f` reads fresh.
    pub fn with_snapshot<T>(
        conns: &ReadConns,
        f: impl Fn(&Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let now = with_conn(conns, version)?;
        let Ok(mut held) = conns.snapshot.try_lock() else {
            return with_conn(conns, f);
        };
        let current = held
            .as_ref()
            .is_some_and(|s| s.version == now && s.since.elapsed() < MAX_AGE);
        if !current {
            // Dropping a connection ends its read transaction.
            *held = None;
            let conn = open(conns.path())?;
            conn.execute_batch("BEGIN")?;
            // The first read fixes the snapshot; the version is read inside it.
            let version = version(&conn)?;
            *held = Some(Snapshot {
                conn,
                version,
                since: Instant::now(),
            });
        }
        if let Some(s) = held.as_ref().filter(|s| s.version == now) {
            let read = f(&s.conn);
            if read.is_err() {
                *held = None;
            }
            return Ok(read?);
        }
        // An import committed between the check and the snapshot: read fresh now, and
        // the next call finds the snapshot current.
        drop(held);
        with_conn(conns, f)
    }

    /// Ends the snapshot, if any, so the WAL can be reset.
    pub fn release(conns: &ReadConns) {
        if let Ok(mut held) = conns.snapshot.lock() {
            *held = None;
        }
    }
}

/// A serde view of one row as a sequence of its columns: the rows of a page's roster
/// reads become structs without a JSON value (or its allocations) in between.
mod row {
    use rusqlite::types::ValueRef;
    use serde::de::{self, value::Error, DeserializeSeed, SeqAccess, Visitor};
    use serde::forward_to_deserialize_any;

    pub struct Row<'a, 'b> {
        pub row: &'a rusqlite::Row<'b>,
        pub columns: usize,
    }

    impl<'de> de::Deserializer<'de> for Row<'_, '_> {
        type Error = Error;
        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_seq(Columns {
                row: self.row,
                next: 0,
                columns: self.columns,
            })
        }
        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            struct enum identifier ignored_any
        }
    }

    struct Columns<'a, 'b> {
        row: &'a rusqlite::Row<'b>,
        next: usize,
        columns: usize,
    }

    impl<'de> SeqAccess<'de> for Columns<'_, '_> {
        type Error = Error;
        fn next_element_seed<S: DeserializeSeed<'de>>(
            &mut self,
            seed: S,
        ) -> Result<Option<S::Value>, Error> {
            if self.next == self.columns {
                return Ok(None);
            }
            let value = self
                .row
                .get_ref(self.next)
                .map_err(<Error as de::Error>::custom)?;
            self.next += 1;
            seed.deserialize(Cell(value)).map(Some)
        }
    }

    struct Cell<'a>(ValueRef<'a>);

    impl<'de> de::Deserializer<'de> for Cell<'_> {
        type Error = Error;
        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.0 {
                ValueRef::Null => visitor.visit_unit(),
                ValueRef::Integer(n) => visitor.visit_i64(n),
                ValueRef::Real(x) => visitor.visit_f64(x),
                ValueRef::Text(t) | ValueRef::Blob(t) => match std::str::from_utf8(t) {
                    Ok(s) => visitor.visit_str(s),
                    Err(_) => visitor.visit_string(String::from_utf8_lossy(t).into_owned()),
                },
            }
        }
        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.0 {
                ValueRef::Null => visitor.visit_none(),
                _ => visitor.visit_some(self),
            }
        }
        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf unit unit_struct newtype_struct seq tuple tuple_struct map
            struct enum identifier ignored_any
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;
    use std::time::{Duration, Instant};

    async fn sources(store: &Store) -> Vec<String> {
        let rows: Vec<(String,)> = store
            .select_reference("source", "roster_entry ORDER BY source", Vec::new())
            .await
            .unwrap();
        rows.into_iter().map(|(s,)| s).collect()
    }

    /// The reference snapshot is kept while the reference tables are unchanged, begun
    /// again as soon as an import commits, let go on release, and never kept longer
    /// than `MAX_AGE`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reference_reads_follow_imports_and_age_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = crate::store::sqlite_for_tests(&path).await;
        let writer = rusqlite::Connection::open(&path).unwrap();
        let entry = |source: &str| {
            writer
                .execute(
                    "INSERT INTO roster_entry (source, provider_npi, relationship, import_id, line, loaded_at_us) \
                     VALUES (?1, '1234567893', 'pcp', 1, 1, 0)",
                    [source],
                )
                .unwrap();
        };
        assert!(sources(&store).await.is_empty());

        // Rows written without an import (no version change) stay out of the snapshot...
        entry("a");
        assert!(sources(&store).await.is_empty(), "the snapshot is held");
        // ...until an import commits: then the next read sees everything.
        writer
            .execute(
                "INSERT INTO roster_import (source, file_name, mode, loaded_at_us, rows_loaded) \
                 VALUES ('b', 'b.csv', 'upsert', 0, 1)",
                [],
            )
            .unwrap();
        entry("b");
        assert_eq!(sources(&store).await, ["a", "b"]);

        // Release: the next read is fresh.
        entry("c");
        assert_eq!(sources(&store).await, ["a", "b"], "held again");
        store.release_reference();
        assert_eq!(sources(&store).await, ["a", "b", "c"]);

        // Age: a snapshot is begun again after MAX_AGE even when nothing changed.
        entry("d");
        let started = Instant::now();
        while sources(&store).await.len() < 4 {
            assert!(
                started.elapsed() < super::reference::MAX_AGE * 3,
                "the snapshot outlived MAX_AGE"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store.close().await;
    }
}

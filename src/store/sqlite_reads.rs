//! Latency-bound reads on SQLite (attribution, directory lookups) through plain rusqlite
//! connections on a blocking thread. sqlx's SQLite driver runs every statement on a
//! worker thread and hands rows back one at a time through a channel; for a lookup that
//! is a few hundred microseconds of hand-offs around a few hundred of SQLite work.
//!
//! A small pool per database file, opened read-only: these connections never write.

use super::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Idle connections kept per file.
const KEEP: usize = 8;

fn pool() -> &'static Mutex<HashMap<PathBuf, Vec<Connection>>> {
    static POOL: OnceLock<Mutex<HashMap<PathBuf, Vec<Connection>>>> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(HashMap::new()))
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(Duration::from_secs(5))?;
    c.pragma_update(None, "mmap_size", 268_435_456)?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

/// Runs `f` on a pooled connection for `path`.
fn with_conn<T>(
    path: &Path,
    f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
) -> Result<T, StoreError> {
    let taken = pool()
        .lock()
        .ok()
        .and_then(|mut p| p.get_mut(path).and_then(Vec::pop));
    let conn = match taken {
        Some(c) => c,
        None => open(path)?,
    };
    let result = f(&conn);
    if let Ok(mut p) = pool().lock() {
        let idle = p.entry(path.to_path_buf()).or_default();
        if idle.len() < KEEP {
            idle.push(conn);
        }
    }
    Ok(result?)
}

/// Runs one statement (`?N` placeholders, text parameters) that returns one row, and
/// returns its first `columns` values as text. Blocking: call from a blocking thread.
pub fn text_row(
    path: &Path,
    sql: &str,
    args: &[String],
    columns: usize,
) -> Result<Vec<String>, StoreError> {
    with_conn(path, |conn| {
        let mut stmt = conn.prepare_cached(sql)?;
        stmt.query_row(rusqlite::params_from_iter(args.iter()), |r| {
            (0..columns).map(|i| r.get::<_, String>(i)).collect()
        })
    })
}

/// Runs one statement (`?N` placeholders, text parameters) and returns every row as a
/// JSON array of its values (text, integer, real or null), to deserialise by position.
/// Blocking: call from a blocking thread.
pub fn rows(path: &Path, sql: &str, args: &[String]) -> Result<Vec<serde_json::Value>, StoreError> {
    use rusqlite::types::ValueRef;
    use serde_json::Value;
    with_conn(path, |conn| {
        let mut stmt = conn.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(columns);
            for i in 0..columns {
                row.push(match r.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::from(n),
                    ValueRef::Real(x) => Value::from(x),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        Value::String(String::from_utf8_lossy(t).into_owned())
                    }
                });
            }
            out.push(Value::Array(row));
        }
        Ok(out)
    })
}

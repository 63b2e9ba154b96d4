//! NPPES snapshots: a table per import (`nppes_provider_<id>`, `nppes_endpoint_<id>`),
//! the `directory_import` history and the `directory_active` pointer, on the import's
//! dedicated [`BulkConn`]. Why a table per snapshot: [`crate::directory::nppes`].

use super::bulk::{BulkConn, Columns, Param};
use super::{now_us, StoreError};
use crate::directory::nppes::format::{text_columns, FileKind, INT_COLUMNS};

/// The table holding snapshot `id` of this kind. Ids come from the database, never from
/// input, so formatting them into SQL is safe.
pub fn table(kind: FileKind, id: i64) -> String {
    match kind {
        FileKind::Npidata => format!("nppes_provider_{id}"),
        FileKind::Endpoints => format!("nppes_endpoint_{id}"),
    }
}

pub fn create_table(conn: &mut BulkConn, kind: FileKind, id: i64) -> Result<(), StoreError> {
    let cols: Vec<String> = text_columns(kind)
        .iter()
        .map(|c| format!("{c} TEXT NOT NULL DEFAULT ''"))
        .chain(INT_COLUMNS.iter().map(|c| format!("{c} BIGINT NOT NULL")))
        .collect();
    conn.exec(
        &format!("CREATE TABLE {} ({})", table(kind, id), cols.join(", ")),
        &[],
    )
    .map(|_| ())
}

/// Built after the load, by sorting.
pub fn create_index(conn: &mut BulkConn, kind: FileKind, id: i64) -> Result<(), StoreError> {
    let t = table(kind, id);
    conn.exec(&format!("CREATE INDEX {t}_npi ON {t} (npi)"), &[])
        .map(|_| ())
}

pub fn drop_table(conn: &mut BulkConn, kind: FileKind, id: i64) -> Result<(), StoreError> {
    conn.exec(&format!("DROP TABLE IF EXISTS {}", table(kind, id)), &[])
        .map(|_| ())
}

/// Writes one chunk of checked rows into the snapshot table, in one transaction.
pub fn flush(
    conn: &mut BulkConn,
    kind: FileKind,
    import_id: i64,
    text_cols: &[&str],
    cols: &mut Columns,
) -> Result<(), StoreError> {
    if cols.is_empty() {
        return Ok(());
    }
    conn.begin()?;
    if let Err(e) = conn.insert(&table(kind, import_id), text_cols, INT_COLUMNS, cols, "") {
        conn.rollback();
        return Err(e);
    }
    conn.commit()?;
    cols.clear();
    Ok(())
}

pub fn active_snapshot(conn: &mut BulkConn, kind: FileKind) -> Result<Option<i64>, StoreError> {
    conn.query_i64(
        "SELECT snapshot FROM directory_active WHERE kind = $1",
        &[Param::Text(kind.as_str())],
    )
}

/// An import that died (kill -9, power) leaves a `loading` snapshot behind: drop it.
/// One import runs at a time (documented), so nothing else is loading now.
pub fn clean_up_interrupted(conn: &mut BulkConn) -> Result<(), StoreError> {
    for kind in [FileKind::Npidata, FileKind::Endpoints] {
        for id in import_ids(conn, kind, "loading")? {
            drop_table(conn, kind, id)?;
        }
    }
    conn.exec(
        "UPDATE directory_import SET status = 'failed', error = 'interrupted' WHERE status = 'loading'",
        &[],
    )?;
    Ok(())
}

fn import_ids(conn: &mut BulkConn, kind: FileKind, status: &str) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::new();
    let mut after = 0;
    // One id at a time keeps BulkConn's interface to scalars.
    while let Some(id) = conn.query_i64(
        "SELECT MIN(id) FROM directory_import WHERE kind = $1 AND status = $2 AND id > $3",
        &[
            Param::Text(kind.as_str()),
            Param::Text(status),
            Param::Int(after),
        ],
    )? {
        ids.push(id);
        after = id;
    }
    Ok(ids)
}

/// Full import: the new snapshots become the live ones.
pub fn switch(conn: &mut BulkConn, created: &[(FileKind, i64)]) -> Result<(), StoreError> {
    let now = now_us();
    for (kind, id) in created {
        conn.exec(
            "UPDATE directory_import SET status = 'superseded' WHERE status = 'active' AND kind = $1",
            &[Param::Text(kind.as_str())],
        )?;
        conn.exec(
            "INSERT INTO directory_active (kind, snapshot) VALUES ($1, $2) ON CONFLICT (kind) DO UPDATE SET snapshot = excluded.snapshot",
            &[Param::Text(kind.as_str()), Param::Int(*id)],
        )?;
        conn.exec(
            "UPDATE directory_import SET status = 'active', finished_at_us = $1 WHERE id = $2",
            &[Param::Int(now), Param::Int(*id)],
        )?;
    }
    Ok(())
}

/// After a switch, the superseded snapshots go.
pub fn drop_superseded(conn: &mut BulkConn) -> Result<(), StoreError> {
    for kind in [FileKind::Npidata, FileKind::Endpoints] {
        for id in import_ids(conn, kind, "superseded")? {
            drop_table(conn, kind, id)?;
            conn.exec(
                "UPDATE directory_import SET status = 'replaced' WHERE id = $1",
                &[Param::Int(id)],
            )?;
        }
    }
    Ok(())
}

/// Incremental (weekly) import: upsert the providers, and treat every NPI in the weekly
/// files as authoritative for its endpoint set (standards §5.4: removals are invisible
/// otherwise). Deactivations arrive as rows with a deactivation date and are upserted
/// like any other change.
pub fn merge(conn: &mut BulkConn, created: &[(FileKind, i64)]) -> Result<(), StoreError> {
    let staged = |k: FileKind| created.iter().find(|(c, _)| *c == k).map(|(_, id)| *id);
    let now = now_us();
    if let Some(ep) = staged(FileKind::Endpoints) {
        let live = table(
            FileKind::Endpoints,
            active_snapshot(conn, FileKind::Endpoints)?.expect("checked before loading"),
        );
        let weekly = table(FileKind::Endpoints, ep);
        let listed = match staged(FileKind::Npidata) {
            Some(np) => format!(
                "SELECT npi FROM {} UNION SELECT npi FROM {weekly}",
                table(FileKind::Npidata, np)
            ),
            None => format!("SELECT npi FROM {weekly}"),
        };
        conn.exec(&format!("DELETE FROM {live} WHERE npi IN ({listed})"), &[])?;
        let cols = all_columns(FileKind::Endpoints);
        conn.exec(
            &format!("INSERT INTO {live} ({cols}) SELECT {cols} FROM {weekly}"),
            &[],
        )?;
    }
    if let Some(np) = staged(FileKind::Npidata) {
        let live = table(
            FileKind::Npidata,
            active_snapshot(conn, FileKind::Npidata)?.expect("checked before loading"),
        );
        let weekly = table(FileKind::Npidata, np);
        conn.exec(
            &format!("DELETE FROM {live} WHERE npi IN (SELECT npi FROM {weekly})"),
            &[],
        )?;
        let cols = all_columns(FileKind::Npidata);
        conn.exec(
            &format!("INSERT INTO {live} ({cols}) SELECT {cols} FROM {weekly}"),
            &[],
        )?;
    }
    for (_, id) in created {
        conn.exec(
            "UPDATE directory_import SET status = 'applied', finished_at_us = $1 WHERE id = $2",
            &[Param::Int(now), Param::Int(*id)],
        )?;
    }
    Ok(())
}

fn all_columns(kind: FileKind) -> String {
    text_columns(kind)
        .iter()
        .chain(INT_COLUMNS)
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

/// A new `loading` import of `kind` in the history; its id names its snapshot table.
pub fn begin_import(
    conn: &mut BulkConn,
    kind: FileKind,
    mode: &str,
    file_name: &str,
) -> Result<i64, StoreError> {
    let id = conn.query_i64(
        "INSERT INTO directory_import (kind, mode, file_name, started_at_us, status) VALUES ($1, $2, $3, $4, 'loading') RETURNING id",
        &[
            Param::Text(kind.as_str()),
            Param::Text(mode),
            Param::Text(file_name),
            Param::Int(now_us()),
        ],
    )?;
    id.ok_or_else(|| StoreError::Db(sqlx::Error::RowNotFound))
}

/// Records why an import failed (its table is dropped by the caller).
pub fn import_failed(conn: &mut BulkConn, id: i64, error: &str) -> Result<(), StoreError> {
    conn.exec(
        "UPDATE directory_import SET status = 'failed', finished_at_us = $1, error = $2 WHERE id = $3",
        &[Param::Int(now_us()), Param::Text(error), Param::Int(id)],
    )
    .map(|_| ())
}

/// The rows an import loaded and the bad rows it skipped.
pub fn set_row_counts(conn: &mut BulkConn, id: i64, rows: u64, bad: u64) -> Result<(), StoreError> {
    conn.exec(
        "UPDATE directory_import SET rows_loaded = $1, bad_rows = $2 WHERE id = $3",
        &[
            Param::Int(rows as i64),
            Param::Int(bad as i64),
            Param::Int(id),
        ],
    )
    .map(|_| ())
}

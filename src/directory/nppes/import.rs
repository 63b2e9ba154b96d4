//! Streams NPPES files into a new snapshot: one thread reads and checks
//! ([`super::format::parse_file`]), this one writes, and the snapshot goes live only
//! when every file given has loaded.

use super::format::{parse_file, text_columns, BadRow, Chunk, FileKind};
use super::ImportError;
use crate::directory::csvfile::FileError;
use crate::directory::progress::Progress;
use crate::store::bulk::BulkConn;
use crate::store::nppes as sql;
use crate::store::StoreError;
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct ImportRequest {
    pub npidata: Option<PathBuf>,
    pub endpoints: Option<PathBuf>,
    pub incremental: bool,
    /// More bad rows than this in one file fail the import.
    pub max_bad_rows: u64,
    /// No progress output at all.
    pub quiet: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    pub kind: FileKind,
    pub file: String,
    pub import_id: i64,
    pub rows: u64,
    pub bad_rows: u64,
    pub bad_row_samples: Vec<BadRow>,
    pub seconds: f64,
    pub rows_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    pub mode: &'static str,
    pub files: Vec<FileReport>,
    /// From the start until the new snapshot is live (loaded, indexed, switched).
    pub live_after_s: f64,
    /// The whole import, with dropping the superseded snapshot and the checkpoint.
    pub total_s: f64,
}

/// Runs an import. Call from a blocking thread.
pub fn import(conn: &mut BulkConn, req: &ImportRequest) -> Result<ImportReport, ImportError> {
    let files: Vec<(FileKind, &Path)> = [
        (FileKind::Npidata, req.npidata.as_deref()),
        (FileKind::Endpoints, req.endpoints.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, p)| p.map(|p| (k, p)))
    .collect();
    if files.is_empty() {
        return Err(ImportError::Usage(
            "give --npidata FILE and/or --endpoints FILE".into(),
        ));
    }
    let mode = if req.incremental {
        "incremental"
    } else {
        "full"
    };
    let started = std::time::Instant::now();
    let secs = |d: std::time::Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    sql::clean_up_interrupted(conn)?;
    if req.incremental {
        for (kind, _) in &files {
            if sql::active_snapshot(conn, *kind)?.is_none() {
                return Err(ImportError::Usage(format!(
                    "--incremental needs a full {} import first",
                    kind.as_str()
                )));
            }
        }
    }
    let mut reports = Vec::new();
    let mut created = Vec::new();
    let result = (|| -> Result<(), ImportError> {
        for (kind, path) in &files {
            let id = sql::begin_import(conn, *kind, mode, &path.display().to_string())?;
            created.push((*kind, id));
            sql::create_table(conn, *kind, id)?;
            conn.set_bulk_load(true)?;
            let loaded = load_file(conn, *kind, path, id, req).and_then(|r| {
                sql::create_index(conn, *kind, id)
                    .map(|_| r)
                    .map_err(Into::into)
            });
            conn.set_bulk_load(false)?;
            reports.push(loaded?);
        }
        conn.begin()?;
        if req.incremental {
            sql::merge(conn, &created)?;
        } else {
            sql::switch(conn, &created)?;
        }
        conn.commit()?;
        Ok(())
    })();
    let live_after = started.elapsed();
    match result {
        Ok(()) => {
            if req.incremental {
                // Merged into the live tables; the weekly ones have served.
                for (kind, id) in &created {
                    sql::drop_table(conn, *kind, *id)?;
                }
            } else {
                sql::drop_superseded(conn)?;
            }
            conn.checkpoint()?;
            Ok(ImportReport {
                mode,
                files: reports,
                live_after_s: secs(live_after),
                total_s: secs(started.elapsed()),
            })
        }
        Err(e) => {
            conn.rollback();
            for (kind, id) in &created {
                let _ = sql::drop_table(conn, *kind, *id);
                let _ = sql::import_failed(conn, *id, &e.to_string());
            }
            Err(e)
        }
    }
}

fn open(path: &Path) -> Result<(Box<dyn Read + Send>, Option<u64>), ImportError> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(std::io::stdin()), None));
    }
    let f = std::fs::File::open(path).map_err(|e| FileError::io(&path.display().to_string(), e))?;
    let len = f.metadata().ok().map(|m| m.len());
    Ok((Box::new(std::io::BufReader::with_capacity(1 << 20, f)), len))
}

/// Parses on one thread and writes on this one: on two cores the CSV work and the
/// database work overlap instead of taking turns.
fn load_file(
    conn: &mut BulkConn,
    kind: FileKind,
    path: &Path,
    import_id: i64,
    req: &ImportRequest,
) -> Result<FileReport, ImportError> {
    let file = path.display().to_string();
    let (input, size) = open(path)?;
    let text_cols = text_columns(kind);
    let mut progress = Progress::new(kind.as_str(), size, req.quiet);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(1);
    let (parsed, written) = std::thread::scope(|scope| {
        let parser =
            scope.spawn(|| parse_file(kind, &file, input, import_id, req.max_bad_rows, tx));
        let mut written: Result<(), StoreError> = Ok(());
        for mut chunk in rx {
            if let Err(e) = sql::flush(conn, kind, import_id, &text_cols, &mut chunk.cols) {
                // Dropping the receiver (leaving the loop) stops the parser.
                written = Err(e);
                break;
            }
            progress.update(chunk.rows_so_far, chunk.byte);
        }
        (parser.join(), written)
    });
    written?;
    let (rows, bad, samples) = parsed.unwrap_or_else(|p| std::panic::resume_unwind(p))?;
    progress.finish();
    let seconds = progress.elapsed().as_secs_f64();
    sql::set_row_counts(conn, import_id, rows, bad)?;
    Ok(FileReport {
        kind,
        file,
        import_id,
        rows,
        bad_rows: bad,
        bad_row_samples: samples,
        seconds: (seconds * 1000.0).round() / 1000.0,
        rows_per_s: (rows as f64 / seconds.max(1e-9)).round(),
    })
}

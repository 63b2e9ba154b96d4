//! Imports the CMS NPPES downloadable files: `npidata_pfile` (one row per NPI, ~330
//! columns) and `endpoint_pfile` (one row per endpoint), streamed (standards §5).
//!
//! Atomicity: every import loads a new snapshot, a table of its own
//! (`nppes_provider_<import id>`, `nppes_endpoint_<import id>`), while the live one keeps
//! serving. Only when every file given has loaded and passed its checks does one
//! transaction switch to it (full) or merge it in (incremental). A failure at any point
//! drops the half-loaded table and leaves the directory as it was.
//!
//! A table per snapshot rather than one table tagged by snapshot: the index is built
//! once, by sorting, after the rows are in (NPPES files are not in NPI order, and
//! inserting millions of random keys into a live index was the import's main cost), and
//! retiring a snapshot is a `DROP TABLE`, not a multi-million-row `DELETE`.

use super::csvfile::{
    describe_csv_error, optional, required, us_date_to_iso, Field, FileError, HeaderMap, Tail,
};
use super::endpoint::EndpointKind;
use super::npi::Npi;
use super::progress::Progress;
use crate::store::bulk::{BulkConn, Columns, Param};
use crate::store::{now_us, StoreError};
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Rows per transaction while loading a snapshot.
const CHUNK: usize = 20_000;
/// Bad rows listed in the report (all are counted).
const SAMPLES: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Npidata,
    Endpoints,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Npidata => "npidata",
            FileKind::Endpoints => "endpoints",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{file}: {bad} bad rows, more than the limit of {limit} (first: {first})")]
    TooManyBadRows {
        file: String,
        bad: u64,
        limit: u64,
        first: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

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
pub struct BadRow {
    pub line: u64,
    pub reason: String,
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

const PROVIDER_FIELDS: &[Field] = &[
    required("npi", &["NPI"]),
    required("entity_type", &["Entity Type Code"]),
    optional("replacement_npi", &["Replacement NPI"]),
    required(
        "organization_name",
        &["Provider Organization Name (Legal Business Name)"],
    ),
    required("last_name", &["Provider Last Name (Legal Name)"]),
    required("first_name", &["Provider First Name"]),
    optional("middle_name", &["Provider Middle Name"]),
    optional("credential", &["Provider Credential Text"]),
    required(
        "address_line1",
        &["Provider First Line Business Practice Location Address"],
    ),
    optional(
        "address_line2",
        &["Provider Second Line Business Practice Location Address"],
    ),
    required(
        "city",
        &["Provider Business Practice Location Address City Name"],
    ),
    required(
        "state",
        &["Provider Business Practice Location Address State Name"],
    ),
    required(
        "postal_code",
        &["Provider Business Practice Location Address Postal Code"],
    ),
    optional(
        "country",
        &["Provider Business Practice Location Address Country Code (If outside U.S.)"],
    ),
    optional(
        "phone",
        &["Provider Business Practice Location Address Telephone Number"],
    ),
    optional("enumeration_date", &["Provider Enumeration Date"]),
    optional("last_update_date", &["Last Update Date"]),
    optional("deactivation_reason", &["NPI Deactivation Reason Code"]),
    required("deactivation_date", &["NPI Deactivation Date"]),
    optional("reactivation_date", &["NPI Reactivation Date"]),
];
const P_NPI: usize = 0;
const P_ENTITY: usize = 1;
const P_REPLACEMENT: usize = 2;
const P_DATES: [usize; 4] = [15, 16, 18, 19];

const ENDPOINT_FIELDS: &[Field] = &[
    required("npi", &["NPI"]),
    required("endpoint_type", &["Endpoint Type"]),
    optional("endpoint_type_description", &["Endpoint Type Description"]),
    required("endpoint", &["Endpoint"]),
    optional("affiliation", &["Affiliation"]),
    optional("endpoint_description", &["Endpoint Description"]),
    optional("affiliation_name", &["Affiliation Legal Business Name"]),
    optional("use_code", &["Use Code"]),
    optional("use_description", &["Use Description"]),
    optional("other_use_description", &["Other Use Description"]),
    optional("content_type", &["Content Type"]),
    optional("content_description", &["Content Description"]),
    optional("other_content_description", &["Other Content Description"]),
    optional("address_line1", &["Affiliation Address Line One"]),
    optional("address_line2", &["Affiliation Address Line Two"]),
    optional("city", &["Affiliation Address City"]),
    optional("state", &["Affiliation Address State"]),
    optional("country", &["Affiliation Address Country"]),
    // The CMS readme spells it with "Line"; copies in the wild do not.
    optional(
        "postal_code",
        &[
            "Affiliation Address Line Postal Code",
            "Affiliation Address Postal Code",
        ],
    ),
];
const E_NPI: usize = 0;
const E_TYPE: usize = 1;
const E_ENDPOINT: usize = 3;
const E_AFFILIATION: usize = 4;

/// Table columns: the fields above (plus the primary taxonomy for providers), then
/// source_import, source_line.
fn text_columns(kind: FileKind) -> Vec<&'static str> {
    match kind {
        FileKind::Npidata => PROVIDER_FIELDS
            .iter()
            .map(|f| f.name)
            .chain(["primary_taxonomy"])
            .collect(),
        FileKind::Endpoints => ENDPOINT_FIELDS.iter().map(|f| f.name).collect(),
    }
}
const INT_COLUMNS: &[&str] = &["source_import", "source_line"];

/// The table holding snapshot `id` of this kind. Ids come from the database, never from
/// input, so formatting them into SQL is safe.
pub fn table(kind: FileKind, id: i64) -> String {
    match kind {
        FileKind::Npidata => format!("nppes_provider_{id}"),
        FileKind::Endpoints => format!("nppes_endpoint_{id}"),
    }
}

fn create_table(conn: &mut BulkConn, kind: FileKind, id: i64) -> Result<(), StoreError> {
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
fn create_index(conn: &mut BulkConn, kind: FileKind, id: i64) -> Result<(), StoreError> {
    let t = table(kind, id);
    conn.exec(&format!("CREATE INDEX {t}_npi ON {t} (npi)"), &[])
        .map(|_| ())
}

fn drop_table(conn: &mut BulkConn, kind: FileKind, id: i64) -> Result<(), StoreError> {
    conn.exec(&format!("DROP TABLE IF EXISTS {}", table(kind, id)), &[])
        .map(|_| ())
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
    clean_up_interrupted(conn)?;
    if req.incremental {
        for (kind, _) in &files {
            if active_snapshot(conn, *kind)?.is_none() {
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
            let id = conn
                .query_i64(
                    "INSERT INTO directory_import (kind, mode, file_name, started_at_us, status) VALUES ($1, $2, $3, $4, 'loading') RETURNING id",
                    &[
                        Param::Text(kind.as_str()),
                        Param::Text(mode),
                        Param::Text(&path.display().to_string()),
                        Param::Int(now_us()),
                    ],
                )?
                .expect("RETURNING id");
            created.push((*kind, id));
            create_table(conn, *kind, id)?;
            conn.set_bulk_load(true)?;
            let loaded = load_file(conn, *kind, path, id, req)
                .and_then(|r| create_index(conn, *kind, id).map(|_| r).map_err(Into::into));
            conn.set_bulk_load(false)?;
            reports.push(loaded?);
        }
        conn.begin()?;
        if req.incremental {
            merge(conn, &created)?;
        } else {
            switch(conn, &created)?;
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
                    drop_table(conn, *kind, *id)?;
                }
            } else {
                drop_superseded(conn)?;
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
                let _ = drop_table(conn, *kind, *id);
                let _ = conn.exec(
                    "UPDATE directory_import SET status = 'failed', finished_at_us = $1, error = $2 WHERE id = $3",
                    &[Param::Int(now_us()), Param::Text(&e.to_string()), Param::Int(*id)],
                );
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
        let parser = scope.spawn(|| parse_file(kind, &file, input, import_id, req, tx));
        let mut written: Result<(), StoreError> = Ok(());
        for mut chunk in rx {
            if let Err(e) = flush(conn, kind, import_id, &text_cols, &mut chunk.cols) {
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
    conn.exec(
        "UPDATE directory_import SET rows_loaded = $1, bad_rows = $2 WHERE id = $3",
        &[
            Param::Int(rows as i64),
            Param::Int(bad as i64),
            Param::Int(import_id),
        ],
    )?;
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

/// Rows checked and ready to write.
struct Chunk {
    cols: Columns,
    rows_so_far: u64,
    byte: u64,
}

/// Reads and checks the file, handing chunks of good rows to the writer. Returns the
/// row count, the bad-row count and the first bad rows.
fn parse_file(
    kind: FileKind,
    file: &str,
    input: Box<dyn Read + Send>,
    import_id: i64,
    req: &ImportRequest,
    tx: std::sync::mpsc::SyncSender<Chunk>,
) -> Result<(u64, u64, Vec<BadRow>), ImportError> {
    let malformed =
        |line: u64, reason: String| ImportError::from(FileError::at(file, line, reason));
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(Tail::new(input));
    let headers = rdr
        .byte_headers()
        .map_err(|e| {
            let (line, reason) = describe_csv_error(&e);
            malformed(line.max(1), reason)
        })?
        .clone();
    if headers.is_empty() || (headers.len() == 1 && headers[0].is_empty()) {
        return Err(malformed(1, "the file is empty (no header row)".into()));
    }
    let fields = match kind {
        FileKind::Npidata => PROVIDER_FIELDS,
        FileKind::Endpoints => ENDPOINT_FIELDS,
    };
    let map = HeaderMap::resolve(&headers, fields).map_err(|r| {
        let first = String::from_utf8_lossy(&headers[0]).trim().to_string();
        if Npi::parse(&first).is_ok() {
            malformed(1, "the first line is a data row, not the header; NPPES files start with their header (prepend the bundle's _fileheader.csv)".into())
        } else {
            malformed(1, r)
        }
    })?;
    let taxonomy = taxonomy_columns(&headers);
    let width = text_columns(kind).len();
    let mut cols = Columns::new(width, INT_COLUMNS.len());
    let (mut rows, mut bad) = (0u64, 0u64);
    let mut samples = Vec::new();
    let mut rec = csv::ByteRecord::new();
    let mut last_line = 1;
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let (line, reason) = describe_csv_error(&e);
                return Err(malformed(line, reason));
            }
        }
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        last_line = line;
        // CMS turns quotes inside values into single quotes, so a quote that survived
        // parsing means the quoting is broken (and the fields may have shifted).
        if rec.as_slice().contains(&b'"') {
            return Err(malformed(
                line,
                "a double quote inside a value: broken quoting (NPPES values never contain one)"
                    .into(),
            ));
        }
        let checked = match kind {
            FileKind::Npidata => provider_row(&map, &taxonomy, &rec, &mut cols),
            FileKind::Endpoints => endpoint_row(&map, &rec, &mut cols),
        };
        match checked {
            Ok(()) => {
                cols.ints[0].push(import_id);
                cols.ints[1].push(line as i64);
                rows += 1;
            }
            Err(reason) => {
                bad += 1;
                if samples.len() < SAMPLES {
                    samples.push(BadRow { line, reason });
                }
                if bad > req.max_bad_rows {
                    let first = samples
                        .first()
                        .map(|b| format!("line {}: {}", b.line, b.reason))
                        .unwrap_or_default();
                    return Err(ImportError::TooManyBadRows {
                        file: file.to_string(),
                        bad,
                        limit: req.max_bad_rows,
                        first,
                    });
                }
            }
        }
        if cols.len() >= CHUNK {
            let full = std::mem::replace(&mut cols, Columns::new(width, INT_COLUMNS.len()));
            let byte = rec.position().map(|p| p.byte()).unwrap_or(0);
            if tx
                .send(Chunk {
                    cols: full,
                    rows_so_far: rows,
                    byte,
                })
                .is_err()
            {
                // The writer stopped; its error is the one to report.
                return Ok((rows, bad, samples));
            }
        }
    }
    // Every NPPES value is quoted, so a complete file ends with a closing quote.
    if rows + bad > 0 && rdr.get_ref().last != Some(b'"') {
        return Err(malformed(
            last_line,
            "the file ends in the middle of a value (truncated download?)".into(),
        ));
    }
    let _ = tx.send(Chunk {
        cols,
        rows_so_far: rows,
        byte: rdr.get_ref().bytes,
    });
    Ok((rows, bad, samples))
}

fn flush(
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

/// Positions of the 15 (taxonomy code, primary switch) pairs.
fn taxonomy_columns(headers: &csv::ByteRecord) -> Vec<(usize, Option<usize>)> {
    let names: Vec<String> = headers
        .iter()
        .map(|h| super::csvfile::normalize_header(&String::from_utf8_lossy(h)))
        .collect();
    (1..=15)
        .filter_map(|n| {
            let code = names
                .iter()
                .position(|h| *h == format!("healthcare provider taxonomy code_{n}"))?;
            let switch = names
                .iter()
                .position(|h| *h == format!("healthcare provider primary taxonomy switch_{n}"));
            Some((code, switch))
        })
        .collect()
}

fn provider_row(
    map: &HeaderMap,
    taxonomy: &[(usize, Option<usize>)],
    rec: &csv::ByteRecord,
    cols: &mut Columns,
) -> Result<(), String> {
    let npi = map.get(rec, P_NPI);
    Npi::parse(&npi).map_err(|e| format!("NPI '{npi}': {e}"))?;
    let entity = map.get(rec, P_ENTITY);
    if !matches!(&*entity, "1" | "2" | "") {
        return Err(format!("Entity Type Code '{entity}' is not 1, 2 or empty"));
    }
    let replacement = map.get(rec, P_REPLACEMENT);
    if !replacement.is_empty() {
        Npi::parse(&replacement).map_err(|e| format!("Replacement NPI: {e}"))?;
    }
    let mut dates = [String::new(), String::new(), String::new(), String::new()];
    for (d, &i) in dates.iter_mut().zip(&P_DATES) {
        *d = us_date_to_iso(&map.get(rec, i))?;
    }
    for i in 0..PROVIDER_FIELDS.len() {
        let v = match P_DATES.iter().position(|&d| d == i) {
            Some(k) => std::mem::take(&mut dates[k]),
            None => map.get(rec, i).into_owned(),
        };
        cols.text[i].push(v);
    }
    let text = |i: usize| {
        rec.get(i)
            .map(|b| String::from_utf8_lossy(b).trim().to_string())
            .unwrap_or_default()
    };
    let primary = taxonomy
        .iter()
        .find(|(_, s)| s.is_some_and(|s| text(s).eq_ignore_ascii_case("Y")))
        .or_else(|| taxonomy.iter().find(|(c, _)| !text(*c).is_empty()))
        .map(|(c, _)| text(*c))
        .unwrap_or_default();
    cols.text[PROVIDER_FIELDS.len()].push(primary);
    Ok(())
}

fn endpoint_row(map: &HeaderMap, rec: &csv::ByteRecord, cols: &mut Columns) -> Result<(), String> {
    let npi = map.get(rec, E_NPI);
    Npi::parse(&npi).map_err(|e| format!("NPI '{npi}': {e}"))?;
    let t = map.get(rec, E_TYPE);
    let kind = EndpointKind::parse(&t).ok_or_else(|| {
        format!("Endpoint Type '{t}' is not DIRECT, FHIR, REST, SOAP, CONNECT or OTHERS")
    })?;
    if map.get(rec, E_ENDPOINT).is_empty() {
        return Err("Endpoint is empty".into());
    }
    let aff = map.get(rec, E_AFFILIATION);
    if !matches!(&*aff, "Y" | "N" | "y" | "n" | "") {
        return Err(format!("Affiliation '{aff}' is not Y or N"));
    }
    for i in 0..ENDPOINT_FIELDS.len() {
        let v = if i == E_TYPE {
            kind.as_str().to_string()
        } else if i == E_AFFILIATION {
            aff.to_ascii_uppercase()
        } else {
            map.get(rec, i).into_owned()
        };
        cols.text[i].push(v);
    }
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
fn clean_up_interrupted(conn: &mut BulkConn) -> Result<(), StoreError> {
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
fn switch(conn: &mut BulkConn, created: &[(FileKind, i64)]) -> Result<(), StoreError> {
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
fn drop_superseded(conn: &mut BulkConn) -> Result<(), StoreError> {
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
fn merge(conn: &mut BulkConn, created: &[(FileKind, i64)]) -> Result<(), StoreError> {
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

//! Roster import: the patient lists practices, ACOs and payers send (CSV). Checked in
//! full before anything is written; then loaded in one transaction, so a bad file
//! changes nothing and a good one replaces (`--replace`) or upserts its source's rows.

use super::matching::{normalize_name, normalize_sex};
use crate::directory::csvfile::{
    check_iso_date, describe_csv_error, optional, Field, FileError, HeaderMap,
};
use crate::directory::npi::Npi;
use crate::store::bulk::{BulkConn, Columns};
use crate::store::roster as sql;
use crate::store::{now_us, StoreError};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Read;

pub const RELATIONSHIPS: [&str; 5] = ["pcp", "care_manager", "post_acute", "specialist", "other"];

const FIELDS: &[Field] = &[
    optional("patient_id", &["patient_id"]),
    optional("assigning_authority", &["assigning_authority"]),
    optional("family", &["family"]),
    optional("given", &["given"]),
    optional("birth_date", &["birth_date"]),
    optional("sex", &["sex"]),
    optional("postal_code", &["postal_code"]),
    optional("provider_npi", &["provider_npi"]),
    optional("relationship", &["relationship"]),
    optional("effective_from", &["effective_from"]),
    optional("effective_to", &["effective_to"]),
];
/// The roster file's columns, in the documented order (the synthetic roster writes them).
pub const CSV_COLUMNS: [&str; 11] = [
    "patient_id",
    "assigning_authority",
    "family",
    "given",
    "birth_date",
    "sex",
    "postal_code",
    "provider_npi",
    "relationship",
    "effective_from",
    "effective_to",
];
/// Text columns written after the file's own: the normalised names, then the source.
const DERIVED_COLUMNS: [&str; 3] = ["norm_family", "norm_given", "source"];
const INT_COLUMNS: [&str; 3] = ["import_id", "line", "loaded_at_us"];
const CHUNK: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{file}: {} bad row(s); nothing was loaded:\n{}", .errors.len(), .errors.iter().map(|e| format!("  line {}: {}", e.line, e.reason)).collect::<Vec<_>>().join("\n"))]
    BadRows { file: String, errors: Vec<RowError> },
    #[error("{0}")]
    Usage(String),
    #[error(
        "line {line}: provider_npi {npi} is not one of this caller's NPIs; nothing was loaded"
    )]
    ForeignNpi { line: u64, npi: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone, Debug, Serialize)]
pub struct RowError {
    pub line: u64,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct RosterReport {
    pub source: String,
    pub file: String,
    pub import_id: i64,
    pub mode: &'static str,
    pub rows: u64,
    /// Rows of this source before a `--replace`.
    pub replaced_rows: u64,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

/// Bad rows listed before giving up on listing (all are counted).
const MAX_LISTED: usize = 50;

/// Imports one roster. `open` is called twice (check, then load), so the source must be
/// re-readable: a file, or bytes already in memory.
/// With `only_npis`, every row's provider NPI, as this import decodes it, must be one of
/// them: the check runs on the very records that are loaded.
pub fn import(
    conn: &mut BulkConn,
    source: &str,
    file: &str,
    open: &dyn Fn() -> std::io::Result<Box<dyn Read>>,
    replace: bool,
    only_npis: Option<&[String]>,
) -> Result<RosterReport, RosterError> {
    let source = source.trim();
    if source.is_empty() || source.len() > 100 {
        return Err(RosterError::Usage(
            "--source must be 1 to 100 characters".into(),
        ));
    }
    let started = std::time::Instant::now();
    let io = |e| FileError::io(file, e);
    // Pass 1: check every row.
    let (map, warnings, rows) = {
        let mut rdr = reader(open().map_err(io)?);
        let map = headers(&mut rdr, file)?;
        let mut warnings: Vec<String> = map
            .unknown
            .iter()
            .map(|h| format!("unknown column '{h}' ignored"))
            .collect();
        if map.index[8].is_none() {
            warnings.push("no relationship column: every row is taken as pcp".into());
        }
        let mut errors = Vec::new();
        let mut rows = 0u64;
        let mut rec = csv::ByteRecord::new();
        let mut count = 0usize;
        loop {
            match rdr.read_byte_record(&mut rec) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => return Err(FileError::csv(file, &e).into()),
            }
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            if let Some(own) = only_npis {
                let npi = map.get(&rec, 7);
                if !own.iter().any(|o| *o == npi) {
                    return Err(RosterError::ForeignNpi {
                        line,
                        npi: npi.into_owned(),
                    });
                }
            }
            match check_row(&map, &rec) {
                Ok(_) => rows += 1,
                Err(reason) => {
                    count += 1;
                    if errors.len() < MAX_LISTED {
                        errors.push(RowError { line, reason });
                    }
                }
            }
        }
        if count > 0 {
            if count > errors.len() {
                errors.push(RowError {
                    line: 0,
                    reason: format!("... and {} more", count - errors.len()),
                });
            }
            return Err(RosterError::BadRows {
                file: file.to_string(),
                errors,
            });
        }
        (map, warnings, rows)
    };
    // Pass 2: load in one transaction.
    conn.begin()?;
    let result = (|| -> Result<(i64, u64), RosterError> {
        let now = now_us();
        let mode = if replace { "replace" } else { "upsert" };
        let import_id = sql::begin_import(conn, source, file, mode, now, rows)?;
        let replaced = match replace {
            true => sql::clear_source(conn, source)?,
            false => 0,
        };
        let mut rdr = reader(open().map_err(io)?);
        headers(&mut rdr, file)?;
        let mut cols = Columns::new(CSV_COLUMNS.len() + DERIVED_COLUMNS.len(), INT_COLUMNS.len());
        // The same key twice in one statement is an error on PostgreSQL: the later row
        // replaces the earlier one in the chunk, as it would across chunks.
        let mut in_chunk: HashMap<Vec<String>, usize> = HashMap::new();
        let mut rec = csv::ByteRecord::new();
        while rdr
            .read_byte_record(&mut rec)
            .map_err(|e| FileError::csv(file, &e))?
        {
            let line = rec.position().map(|p| p.line()).unwrap_or(0) as i64;
            let mut values = check_row(&map, &rec).map_err(|reason| {
                FileError::at(
                    file,
                    line as u64,
                    format!("{reason} (the file changed while loading?)"),
                )
            })?;
            values.push(source.to_string());
            let key: Vec<String> = [0, 1, 4, 11, 12, 7, 8]
                .iter()
                .map(|&i| values[i].clone())
                .collect();
            match in_chunk.get(&key) {
                Some(&at) => {
                    for (c, v) in values.into_iter().enumerate() {
                        cols.text[c][at] = v;
                    }
                    cols.ints[1][at] = line;
                }
                None => {
                    in_chunk.insert(key, cols.len());
                    for (c, v) in values.into_iter().enumerate() {
                        cols.text[c].push(v);
                    }
                    cols.ints[0].push(import_id);
                    cols.ints[1].push(line);
                    cols.ints[2].push(now);
                }
            }
            if cols.len() >= CHUNK {
                write(conn, &cols)?;
                cols.clear();
                in_chunk.clear();
            }
        }
        write(conn, &cols)?;
        Ok((import_id, replaced))
    })();
    match result {
        Ok((import_id, replaced_rows)) => {
            conn.commit()?;
            Ok(RosterReport {
                source: source.to_string(),
                file: file.to_string(),
                import_id,
                mode: if replace { "replace" } else { "upsert" },
                rows,
                replaced_rows,
                warnings,
                seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            })
        }
        Err(e) => {
            conn.rollback();
            Err(e)
        }
    }
}

fn write(conn: &mut BulkConn, cols: &Columns) -> Result<(), StoreError> {
    let names: Vec<&str> = CSV_COLUMNS
        .iter()
        .chain(&DERIVED_COLUMNS)
        .copied()
        .collect();
    sql::write_entries(conn, &names, &INT_COLUMNS, cols)
}

fn reader(input: Box<dyn Read>) -> csv::Reader<Box<dyn Read>> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(input)
}

fn headers(rdr: &mut csv::Reader<Box<dyn Read>>, file: &str) -> Result<HeaderMap, RosterError> {
    let malformed = |reason: String| RosterError::from(FileError::at(file, 1, reason));
    let h = rdr
        .byte_headers()
        .map_err(|e| malformed(describe_csv_error(&e).1))?
        .clone();
    let map = HeaderMap::resolve(&h, FIELDS).map_err(malformed)?;
    if map.index[7].is_none() {
        return Err(malformed("header has no provider_npi column".into()));
    }
    if map.index[0].is_none() && (map.index[2].is_none() || map.index[4].is_none()) {
        return Err(malformed(
            "header needs patient_id, or family and birth_date, to identify patients".into(),
        ));
    }
    Ok(map)
}

/// Checks one row; returns the text column values: [`CSV_COLUMNS`], then the two
/// normalised names of [`DERIVED_COLUMNS`].
fn check_row(map: &HeaderMap, rec: &csv::ByteRecord) -> Result<Vec<String>, String> {
    let g = |i: usize| map.get(rec, i).into_owned();
    let (patient_id, authority) = (g(0), g(1).to_ascii_uppercase());
    let (family, given, birth_date) = (g(2), g(3), g(4));
    let npi = g(7);
    Npi::parse(&npi).map_err(|e| format!("provider_npi '{npi}': {e}"))?;
    let relationship = match g(8).to_ascii_lowercase() {
        r if r.is_empty() && map.index[8].is_none() => "pcp".to_string(),
        r if RELATIONSHIPS.contains(&r.as_str()) => r,
        r => {
            return Err(format!(
                "relationship '{r}' is not one of {}",
                RELATIONSHIPS.join(", ")
            ))
        }
    };
    if patient_id.is_empty() && (family.is_empty() || birth_date.is_empty()) {
        return Err("needs patient_id, or family and birth_date".into());
    }
    if !patient_id.is_empty() && authority.is_empty() {
        return Err("patient_id without assigning_authority (identifiers are only unique within an authority)".into());
    }
    if !birth_date.is_empty() {
        check_iso_date(&birth_date)?;
    }
    let sex_raw = g(5);
    let sex = normalize_sex(&sex_raw);
    if sex.is_empty()
        && !matches!(
            sex_raw.to_ascii_uppercase().as_str(),
            "" | "U" | "O" | "X" | "UNKNOWN" | "OTHER"
        )
    {
        return Err(format!("sex '{sex_raw}' is not M, F, U, O or X"));
    }
    let (from, to) = (g(9), g(10));
    for d in [&from, &to] {
        if !d.is_empty() {
            check_iso_date(d)?;
        }
    }
    if !from.is_empty() && !to.is_empty() && to < from {
        return Err(format!("effective_to {to} is before effective_from {from}"));
    }
    let norm_family = normalize_name(&family);
    let norm_given = normalize_name(&given);
    Ok(vec![
        patient_id,
        authority,
        family,
        given,
        birth_date,
        sex.to_string(),
        g(6),
        npi,
        relationship,
        from,
        to,
        norm_family,
        norm_given,
    ])
}

//! The NPPES file format (standards §5): the columns a snapshot keeps, the checks every
//! row passes, and the streaming reader that turns a file into chunks of checked rows.
//! No database here: the reader hands its chunks to whoever loads them.

use super::ImportError;
use crate::directory::csvfile::{
    describe_csv_error, optional, required, us_date_to_iso, Field, FileError, HeaderMap, Tail,
};
use crate::directory::endpoint::EndpointKind;
use crate::directory::npi::Npi;
use crate::store::bulk::Columns;
use serde::Serialize;
use std::io::Read;

/// Rows per chunk (one transaction each while loading a snapshot).
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

#[derive(Clone, Debug, Serialize)]
pub struct BadRow {
    pub line: u64,
    pub reason: String,
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
pub fn text_columns(kind: FileKind) -> Vec<&'static str> {
    match kind {
        FileKind::Npidata => PROVIDER_FIELDS
            .iter()
            .map(|f| f.name)
            .chain(["primary_taxonomy"])
            .collect(),
        FileKind::Endpoints => ENDPOINT_FIELDS.iter().map(|f| f.name).collect(),
    }
}
pub const INT_COLUMNS: &[&str] = &["source_import", "source_line"];

/// Rows checked and ready to write.
pub struct Chunk {
    pub cols: Columns,
    pub rows_so_far: u64,
    pub byte: u64,
}

/// Reads and checks the file, handing chunks of good rows to the writer. Returns the
/// row count, the bad-row count and the first bad rows.
pub fn parse_file(
    kind: FileKind,
    file: &str,
    input: Box<dyn Read + Send>,
    import_id: i64,
    max_bad_rows: u64,
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
                if bad > max_bad_rows {
                    let first = samples
                        .first()
                        .map(|b| format!("line {}: {}", b.line, b.reason))
                        .unwrap_or_default();
                    return Err(ImportError::TooManyBadRows {
                        file: file.to_string(),
                        bad,
                        limit: max_bad_rows,
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

/// Positions of the 15 (taxonomy code, primary switch) pairs.
fn taxonomy_columns(headers: &csv::ByteRecord) -> Vec<(usize, Option<usize>)> {
    let names: Vec<String> = headers
        .iter()
        .map(|h| crate::directory::csvfile::normalize_header(&String::from_utf8_lossy(h)))
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

#[cfg(test)]
mod tests {
    //! The format against real NPPES shapes from `../shared/corpus/nppes/` (the official
    //! 330-column header with provider rows, the endpoint file's header and a row).
    use super::*;
    use std::path::PathBuf;

    fn corpus(file: &str) -> Vec<u8> {
        let shared = std::env::var_os("ADT_ROUTER_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
        let path = shared.join("corpus/nppes").join(file);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The endpoint file as CMS ships it: the header, then rows.
    fn endpoint_file() -> Vec<u8> {
        let mut file = corpus("endpoint/endpoint_pfile_header__lantern_readme.csv");
        file.extend(corpus(
            "endpoint/endpoint_pfile_row_from_lantern_test_comment.csv",
        ));
        file
    }

    struct Parsed {
        rows: u64,
        bad: u64,
        samples: Vec<BadRow>,
        /// Every row written, as its text columns by name.
        written: Vec<std::collections::HashMap<&'static str, String>>,
    }

    fn parse(kind: FileKind, bytes: Vec<u8>, max_bad_rows: u64) -> Result<Parsed, ImportError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let reader = std::thread::spawn(move || {
            parse_file(
                kind,
                "test.csv",
                Box::new(std::io::Cursor::new(bytes)),
                7,
                max_bad_rows,
                tx,
            )
        });
        let names = text_columns(kind);
        let mut written = Vec::new();
        for chunk in rx {
            for r in 0..chunk.cols.len() {
                assert_eq!(chunk.cols.ints[0][r], 7, "rows carry their import id");
                written.push(
                    names
                        .iter()
                        .enumerate()
                        .map(|(c, n)| (*n, chunk.cols.text[c][r].clone()))
                        .collect(),
                );
            }
        }
        let (rows, bad, samples) = reader.join().expect("the reader does not panic")?;
        Ok(Parsed {
            rows,
            bad,
            samples,
            written,
        })
    }

    #[test]
    fn the_official_npidata_header_and_its_rows_load() {
        let file = corpus("npidata/npidata_pfile_fixture__lantern.csv");
        // The header, then a row a line (the file may not end with a newline).
        let lines = file
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count() as u64;
        let p = parse(FileKind::Npidata, file, 0).expect("a real file loads");
        assert_eq!((p.rows, p.bad), (lines - 1, 0), "every data row, none bad");
        assert_eq!(p.written.len() as u64, p.rows);
        let hospital = p
            .written
            .iter()
            .find(|r| r["npi"] == "1497758544")
            .expect("the fixture's hospital");
        assert_eq!(hospital["entity_type"], "2");
        assert_eq!(
            hospital["organization_name"],
            "CUMBERLAND COUNTY HOSPITAL SYSTEM, INC"
        );
        assert_eq!(hospital["city"], "FAYETTEVILLE");
        // Dates are stored ISO; the file writes them MM/DD/YYYY.
        assert!(
            p.written
                .iter()
                .all(|r| r["last_update_date"].is_empty()
                    || r["last_update_date"].as_bytes()[4] == b'-'),
            "dates become ISO"
        );
        assert!(
            !hospital["primary_taxonomy"].is_empty(),
            "the primary taxonomy is picked out of the 15 pairs"
        );
    }

    #[test]
    fn the_endpoint_file_header_and_a_row_load() {
        let p = parse(FileKind::Endpoints, endpoint_file(), 0).expect("a real file loads");
        assert_eq!((p.rows, p.bad), (1, 0));
        let row = &p.written[0];
        assert_eq!(row["npi"], "1427051648");
        assert_eq!(row["endpoint_type"], "OTHERS");
        assert_eq!(row["endpoint"], "https://foobar.com/metadata/");
        // The CMS readme's "Affiliation Address Line Postal Code" has an alias.
        assert_eq!(row["postal_code"], "21804");
    }

    #[test]
    fn a_bad_row_is_counted_and_named_and_the_rest_load() {
        let mut file = endpoint_file();
        file.extend(b"\"1427051649\",\"REST\",\"\",\"https://a.example/\",\"N\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\"\n");
        let p = parse(FileKind::Endpoints, file.clone(), 5).expect("within the limit");
        assert_eq!((p.rows, p.bad), (1, 1));
        assert_eq!(p.samples[0].line, 3);
        assert!(
            p.samples[0].reason.contains("1427051649"),
            "{}",
            p.samples[0].reason
        );
        // Over the limit, the file fails.
        let e = parse(FileKind::Endpoints, file, 0)
            .err()
            .expect("over the limit");
        assert!(
            matches!(
                e,
                ImportError::TooManyBadRows {
                    bad: 1,
                    limit: 0,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_file_without_its_header_is_refused_with_the_fix() {
        let row = corpus("endpoint/endpoint_pfile_row_from_lantern_test_comment.csv");
        let e = parse(FileKind::Endpoints, row, 0).err().expect("no header");
        assert!(e.to_string().contains("_fileheader.csv"), "{e}");
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let mut file = endpoint_file();
        while file.last() != Some(&b',') {
            file.pop(); // cut inside the last row
        }
        file.extend(b"\"2180");
        let e = parse(FileKind::Endpoints, file, 0)
            .err()
            .expect("truncated");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn a_quote_inside_a_value_is_broken_quoting() {
        let mut file = corpus("endpoint/endpoint_pfile_header__lantern_readme.csv");
        let row = corpus("endpoint/endpoint_pfile_row_from_lantern_test_comment.csv");
        // `"Salis""bury"`: a quote that survives parsing.
        let row = String::from_utf8(row)
            .unwrap()
            .replacen("Salisbury", "Salis\"\"bury", 1);
        file.extend(row.into_bytes());
        let e = parse(FileKind::Endpoints, file, 0)
            .err()
            .expect("broken quoting");
        assert!(e.to_string().contains("double quote"), "{e}");
    }
}

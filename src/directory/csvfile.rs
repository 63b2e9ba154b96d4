//! What every CSV import shares: columns found by header name (with aliases, never by
//! position), line numbers in every error, and a check that the file was not cut short.

use std::io::Read;

/// A file that cannot be imported at all. Both imports (NPPES, rosters) report these the
/// same way: the file, the line, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{file}: line {line}: {reason}")]
    Malformed {
        file: String,
        line: u64,
        reason: String,
    },
    #[error("cannot read {file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
}

impl FileError {
    pub fn at(file: &str, line: u64, reason: impl Into<String>) -> FileError {
        FileError::Malformed {
            file: file.to_string(),
            line,
            reason: reason.into(),
        }
    }

    /// A csv crate error, with its line.
    pub fn csv(file: &str, e: &csv::Error) -> FileError {
        let (line, reason) = describe_csv_error(e);
        FileError::at(file, line, reason)
    }

    pub fn io(file: &str, source: std::io::Error) -> FileError {
        FileError::Io {
            file: file.to_string(),
            source,
        }
    }
}

/// One column an import reads: its name in our tables, the header names it may have in
/// the file, and whether the file is wrong without it.
pub struct Field {
    pub name: &'static str,
    pub headers: &'static [&'static str],
    pub required: bool,
}

pub const fn required(name: &'static str, headers: &'static [&'static str]) -> Field {
    Field {
        name,
        headers,
        required: true,
    }
}

pub const fn optional(name: &'static str, headers: &'static [&'static str]) -> Field {
    Field {
        name,
        headers,
        required: false,
    }
}

/// Header comparison ignores case, surrounding space, repeated spaces and a BOM.
pub fn normalize_header(h: &str) -> String {
    h.trim_start_matches('\u{feff}')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase()
}

/// Where each field is in the file.
pub struct HeaderMap {
    pub index: Vec<Option<usize>>,
    /// Header names no field asked for (rosters warn about them).
    pub unknown: Vec<String>,
    pub width: usize,
}

impl HeaderMap {
    /// Fails, naming every missing column, when a required one is absent.
    pub fn resolve(headers: &csv::ByteRecord, fields: &[Field]) -> Result<HeaderMap, String> {
        let names: Vec<String> = headers
            .iter()
            .map(|h| normalize_header(&String::from_utf8_lossy(h)))
            .collect();
        let mut index = Vec::with_capacity(fields.len());
        let mut missing = Vec::new();
        let mut used = vec![false; names.len()];
        for f in fields {
            let pos = f.headers.iter().find_map(|alias| {
                let a = normalize_header(alias);
                names.iter().position(|n| *n == a)
            });
            if let Some(p) = pos {
                used[p] = true;
            } else if f.required {
                missing.push(format!("\"{}\"", f.headers[0]));
            }
            index.push(pos);
        }
        if !missing.is_empty() {
            return Err(format!(
                "header is missing column{} {} (is this the right file?)",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", ")
            ));
        }
        let unknown = names
            .iter()
            .zip(&used)
            .filter(|(_, u)| !**u)
            .map(|(n, _)| n.clone())
            .collect();
        Ok(HeaderMap {
            index,
            unknown,
            width: names.len(),
        })
    }

    /// Field `i` of `rec`, trimmed; empty when the column is absent.
    pub fn get<'r>(&self, rec: &'r csv::ByteRecord, i: usize) -> std::borrow::Cow<'r, str> {
        match self.index[i].and_then(|p| rec.get(p)) {
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => std::borrow::Cow::Borrowed(s.trim()),
                Err(_) => std::borrow::Cow::Owned(String::from_utf8_lossy(b).trim().to_string()),
            },
            None => std::borrow::Cow::Borrowed(""),
        }
    }
}

/// A reader that remembers the last non-whitespace byte it passed on, so the import can
/// tell a complete file from one cut off inside its last value.
pub struct Tail<R> {
    inner: R,
    pub last: Option<u8>,
    pub bytes: u64,
}

impl<R: Read> Tail<R> {
    pub fn new(inner: R) -> Self {
        Tail {
            inner,
            last: None,
            bytes: 0,
        }
    }
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(&b) = buf[..n].iter().rev().find(|b| !b.is_ascii_whitespace()) {
            self.last = Some(b);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Turns a csv error into "line N: reason".
pub fn describe_csv_error(e: &csv::Error) -> (u64, String) {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => (
            pos.as_ref().map(|p| p.line()).unwrap_or(0),
            format!(
                "expected {expected_len} fields, found {len} (broken quoting, or a row cut short)"
            ),
        ),
        csv::ErrorKind::Utf8 { pos, err } => (
            pos.as_ref().map(|p| p.line()).unwrap_or(0),
            format!("invalid UTF-8 in field {}", err.field() + 1),
        ),
        csv::ErrorKind::Io(err) => (0, format!("read error: {err}")),
        _ => (0, e.to_string()),
    }
}

/// `MM/DD/YYYY` (NPPES) to `YYYY-MM-DD`; empty stays empty.
pub fn us_date_to_iso(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Ok(String::new());
    }
    let parts: Vec<&str> = s.split('/').collect();
    let ok = parts.len() == 3
        && parts[0].len() == 2
        && parts[1].len() == 2
        && parts[2].len() == 4
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        return Err(format!("date '{s}' is not MM/DD/YYYY"));
    }
    let iso = format!("{}-{}-{}", parts[2], parts[0], parts[1]);
    check_iso_date(&iso).map_err(|_| format!("date '{s}' is not a calendar date"))?;
    Ok(iso)
}

/// Checks a `YYYY-MM-DD` calendar date.
pub fn check_iso_date(s: &str) -> Result<(), String> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt)
        .map(|_| ())
        .map_err(|_| format!("date '{s}' is not YYYY-MM-DD"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(us_date_to_iso("05/23/2005").unwrap(), "2005-05-23");
        assert_eq!(us_date_to_iso("").unwrap(), "");
        assert!(us_date_to_iso("2005-05-23").is_err());
        assert!(us_date_to_iso("02/30/2005").is_err());
        assert!(check_iso_date("2024-02-29").is_ok());
        assert!(check_iso_date("2023-02-29").is_err());
    }

    #[test]
    fn headers_by_name() {
        let rec = csv::ByteRecord::from(vec!["\u{feff}NPI", "Endpoint  Type", "Extra"]);
        const F: &[Field] = &[
            required("npi", &["NPI"]),
            required("type", &["Endpoint Type"]),
            optional("x", &["Missing"]),
        ];
        let m = HeaderMap::resolve(&rec, F).unwrap();
        assert_eq!(m.index, vec![Some(0), Some(1), None]);
        assert_eq!(m.unknown, vec!["extra".to_string()]);
        const G: &[Field] = &[required("zz", &["Entity Type Code"])];
        let err = HeaderMap::resolve(&rec, G).err().unwrap();
        assert!(err.contains("Entity Type Code"), "{err}");
    }
}

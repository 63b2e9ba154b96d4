//! Local endpoint overrides: how a practice fixes stale NPPES data. They win over NPPES
//! and are shown as overrides wherever an endpoint is explained.

use super::csvfile::{optional, required, Field, HeaderMap};
use super::endpoint::{self, EndpointError, EndpointKind, EndpointPolicy};
use super::npi::Npi;
use crate::store::StoreError;

#[derive(Clone, Debug)]
pub struct Override {
    pub npi: Npi,
    pub kind: EndpointKind,
    /// Checked and normalised.
    pub endpoint: String,
    /// Per-endpoint secret (webhook signing); never printed.
    pub secret: Option<crate::secret::SecretString>,
    pub preferred: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error("NPI '{npi}': {reason}")]
    Npi { npi: String, reason: String },
    #[error("type '{0}' must be DIRECT, FHIR or REST")]
    Type(String),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("{0}")]
    Invalid(String),
    #[error("{file}: {errors} bad row(s); nothing was loaded:\n{detail}")]
    File {
        file: String,
        errors: usize,
        detail: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Override {
    /// Checks what an operator typed. Overrides are trusted more than NPPES, but they
    /// still name hosts, so they pass the same endpoint checks.
    pub fn new(
        npi: &str,
        kind: &str,
        value: &str,
        secret: Option<String>,
        preferred: bool,
        policy: EndpointPolicy,
    ) -> Result<Override, OverrideError> {
        let npi = Npi::parse(npi).map_err(|e| OverrideError::Npi {
            npi: npi.to_string(),
            reason: e.to_string(),
        })?;
        let kind = match EndpointKind::parse(kind) {
            Some(k) if k.deliverable() => k,
            _ => return Err(OverrideError::Type(kind.to_string())),
        };
        let endpoint = endpoint::check(kind, value, policy)?;
        Ok(Override {
            npi,
            kind,
            endpoint,
            secret: secret
                .filter(|s| !s.is_empty())
                .map(crate::secret::SecretString::from),
            preferred,
        })
    }
}

const FILE_FIELDS: &[Field] = &[
    required("npi", &["npi"]),
    required("type", &["type", "endpoint_type"]),
    required("endpoint", &["endpoint"]),
    optional("secret", &["secret"]),
    optional("preferred", &["preferred"]),
];

/// Reads an override file (CSV: `npi,type,endpoint[,secret][,preferred]`). Every row is
/// checked first; one bad row rejects the file.
pub fn read_file(
    bytes: &[u8],
    file: &str,
    policy: EndpointPolicy,
) -> Result<Vec<Override>, OverrideError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers = rdr
        .byte_headers()
        .map_err(|e| OverrideError::Invalid(format!("{file}: line 1: {e}")))?
        .clone();
    let map = HeaderMap::resolve(&headers, FILE_FIELDS)
        .map_err(|e| OverrideError::Invalid(format!("{file}: line 1: {e}")))?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for rec in rdr.byte_records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let (line, reason) = super::csvfile::describe_csv_error(&e);
                errors.push(format!("line {line}: {reason}"));
                break;
            }
        };
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let preferred = map.get(&rec, 4);
        let preferred = match preferred.to_ascii_lowercase().as_str() {
            "" | "n" | "no" | "false" | "0" => false,
            "y" | "yes" | "true" | "1" => true,
            other => {
                errors.push(format!("line {line}: preferred '{other}' is not yes/no"));
                continue;
            }
        };
        let secret = Some(map.get(&rec, 3).into_owned());
        match Override::new(
            &map.get(&rec, 0),
            &map.get(&rec, 1),
            &map.get(&rec, 2),
            secret,
            preferred,
            policy,
        ) {
            Ok(o) => out.push(o),
            Err(e) => errors.push(format!("line {line}: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(OverrideError::File {
            file: file.to_string(),
            errors: errors.len(),
            detail: errors.join("\n"),
        });
    }
    Ok(out)
}

//! Secrets in settings: passwords, tokens and URLs that carry passwords. Never printed:
//! `Debug`, logs and `check-config` show them masked, hashed or as keys only.

use serde::{Deserialize, Serialize};

pub use secrecy::{ExposeSecret, SecretString};

/// A URL that may carry a password (database, SMTP). Shown everywhere (Debug, logs,
/// `check-config`) with the password masked; `expose` gives the real one to its user.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        SecretUrl(s.to_string())
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::store::redact_url(&self.0))
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::store::redact_url(&self.0))
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::store::redact_url(&self.0))
    }
}

/// A map printed with its keys only (values may be passwords).
pub(crate) fn keys_only<S: serde::Serializer>(
    m: &std::collections::BTreeMap<String, SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut out = s.serialize_map(Some(m.len()))?;
    for k in m.keys() {
        out.serialize_entry(k, "<set>")?;
    }
    out.end()
}

/// A secret in printed configurations: `***` when set, empty when not.
pub(crate) fn masked<S: serde::Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.expose_secret().is_empty() {
        ""
    } else {
        "***"
    })
}

pub(crate) fn hash_secret<S: serde::Serializer>(t: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    use sha2::Digest;
    s.serialize_str(&format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(t.expose_secret().as_bytes()))
    ))
}

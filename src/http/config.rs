//! `[http]` and `[auth]` settings: the API listener, its caps and timeouts, and the
//! bearer tokens with their roles.

use crate::secret::{hash_secret, SecretString};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// What a token may do (docs/http.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Auditor,
    Ops,
    Practice,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Ops => "ops",
            Role::Practice => "practice",
        })
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address for /healthz, /readyz and /metrics.
    pub listen: SocketAddr,
    /// A client must send a request's headers within this long (slow-header attacks).
    pub header_timeout_secs: u64,
    /// A request must be answered within this long (roster uploads: `upload_timeout_secs`).
    pub request_timeout_secs: u64,
    /// Roster uploads, body and load together.
    pub upload_timeout_secs: u64,
    /// Connections at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Largest roster upload; streamed to a private temporary file, never held in memory.
    pub max_upload_bytes: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            header_timeout_secs: 10,
            request_timeout_secs: 60,
            upload_timeout_secs: 900,
            max_connections: 512,
            max_upload_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Bearer tokens for the HTTP API (roster upload now; subscriptions later).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub tokens: Vec<TokenSettings>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// The secret itself. Printed configurations show only its SHA-256.
    #[serde(serialize_with = "hash_secret")]
    pub token: SecretString,
    /// A stable name for the holder: what it creates (FHIR Subscriptions) is owned by
    /// this id, so the secret can be rotated without orphaning them. Empty: derived
    /// from the token's SHA-256 (rotating the token then changes the owner).
    #[serde(default)]
    pub id: String,
    /// admin, auditor, ops or practice.
    pub role: Role,
    /// For a practice: the NPIs it speaks for.
    #[serde(default)]
    pub npis: Vec<String>,
    /// For a practice: the roster sources it may load over HTTP (its own). Others get
    /// 403; an admin may load any source.
    #[serde(default)]
    pub roster_sources: Vec<String>,
}

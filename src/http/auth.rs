//! Bearer tokens from `[[auth.tokens]]`. Tokens are kept only as SHA-256 digests and
//! compared digest to digest, so neither a memory dump nor response timing gives a
//! token away. SMART on FHIR scopes or OIDC can slot in behind [`Caller`] later.

use super::config::TokenSettings;
use crate::secret::ExposeSecret;
use axum::http::{header, HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

pub use super::config::Role;

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The holder's stable id (`[[auth.tokens]] id`, or derived from the token's
    /// digest): what owns the subscriptions it creates.
    pub id: String,
    pub role: Role,
    /// For a practice: the NPIs it speaks for.
    pub npis: Vec<String>,
    /// For a practice: the roster sources it owns.
    pub roster_sources: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Caller)>,
}

impl Tokens {
    pub fn new(settings: &[TokenSettings]) -> Tokens {
        Tokens {
            entries: settings
                .iter()
                .map(|t| {
                    let role = t.role;
                    let digest: [u8; 32] =
                        Sha256::digest(t.token.expose_secret().as_bytes()).into();
                    let id = if t.id.is_empty() {
                        format!("sha256:{}", hex::encode(&digest[..8]))
                    } else {
                        t.id.clone()
                    };
                    (
                        digest,
                        Caller {
                            id,
                            role,
                            npis: t.npis.clone(),
                            roster_sources: t.roster_sources.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The caller behind `Authorization: Bearer ...`, or the HTTP error to answer with.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, (StatusCode, String)> {
        let unauthorized = |m: &str| (StatusCode::UNAUTHORIZED, format!("{m}\n"));
        if self.entries.is_empty() {
            return Err((
                StatusCode::FORBIDDEN,
                "no API tokens are configured ([[auth.tokens]])\n".into(),
            ));
        }
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthorized("missing Authorization: Bearer token"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| unauthorized("Authorization must be a Bearer token"))?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Look at every entry whatever the outcome: the time taken says nothing.
        let mut found = None;
        for (d, c) in &self.entries {
            if *d == digest && found.is_none() {
                found = Some(c.clone());
            }
        }
        found.ok_or_else(|| unauthorized("unknown token"))
    }
}

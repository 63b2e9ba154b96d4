//! `[attribution]` settings: matching thresholds and which roles attribute.

use serde::{Deserialize, Serialize};

/// Patient matching and attribution from the message.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionSettings {
    /// Lowest demographic score accepted (see docs/attribution.md for the weights).
    pub match_threshold: f64,
    /// The best candidate must beat the next by this much, or nobody is chosen.
    pub ambiguity_margin: f64,
    /// ROL-3 role codes that attribute a provider, and the relationship each means.
    pub rol_roles: std::collections::BTreeMap<String, String>,
    /// Use a 10-digit id that passes the NPI check even when the XCN does not say NPI.
    pub accept_unlabelled_npi: bool,
}

impl Default for AttributionSettings {
    fn default() -> Self {
        AttributionSettings {
            match_threshold: 10.0,
            ambiguity_margin: 2.0,
            rol_roles: [("PP".to_string(), "pcp".to_string())].into(),
            accept_unlabelled_npi: false,
        }
    }
}

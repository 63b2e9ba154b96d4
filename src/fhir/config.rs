//! `[fhir]` settings: the API's base URL and the limits on Subscriptions.

use serde::{Deserialize, Serialize};

/// The FHIR API.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirSettings {
    /// The public base URL of `/fhir` (Location headers, references, topic canonicals).
    /// Empty: `http://<http.listen>/fhir`.
    pub base_url: String,
    /// Live subscriptions one token may hold; one more is refused (422) until it
    /// deletes one. Bounds what a single practice can make the fan-out do.
    pub max_subscriptions_per_token: u32,
    /// The shortest heartbeat period a subscription may ask for (seconds); shorter is
    /// refused (422). A heartbeat is a request to the subscriber's endpoint.
    pub min_heartbeat_secs: u64,
}

impl Default for FhirSettings {
    fn default() -> Self {
        FhirSettings {
            base_url: String::new(),
            max_subscriptions_per_token: 50,
            min_heartbeat_secs: 60,
        }
    }
}

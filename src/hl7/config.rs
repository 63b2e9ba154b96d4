//! `[hl7]` settings: what ingest requires of a message, and the fallback charset.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hl7Settings {
    /// Charset for undeclared (empty MSH-18) bytes that are not valid UTF-8.
    pub fallback_charset: String,
    /// Accepted MSH-9.1 message codes; others get AR/CR 200. Empty accepts all.
    pub message_codes: Vec<String>,
    /// Accepted MSH-11.1 processing ids; others get AR/CR 202. Empty accepts all.
    pub processing_ids: Vec<String>,
    /// `SEG` or `SEG-N` that must be present; missing ones make the ACK AE.
    pub required_fields: Vec<String>,
}

impl Default for Hl7Settings {
    fn default() -> Self {
        Hl7Settings {
            fallback_charset: "windows-1252".into(),
            message_codes: vec!["ADT".into()],
            processing_ids: vec![],
            required_fields: vec!["PID-3".into()],
        }
    }
}

//! `[directory]` settings.

use serde::{Deserialize, Serialize};

/// The provider directory (NPPES imports).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectorySettings {
    /// More bad rows than this in one NPPES file fail the import.
    pub max_bad_rows: u64,
}

impl Default for DirectorySettings {
    fn default() -> Self {
        DirectorySettings { max_bad_rows: 1000 }
    }
}

//! `[routing]` settings: the rules directory and the encounter state machine.

use super::encounter::EncounterConfig;
use serde::{Deserialize, Serialize};

/// Routing: its rules, and the encounter state machine.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    /// Route stored messages (turn off on listener-only nodes).
    pub enabled: bool,
    /// Rule files (`*.toml`) and the opt-out list; reloaded on change.
    pub rules_dir: String,
    /// How often the rules directory is checked for changes.
    pub reload_secs: u64,
    /// An ED visit with no admission or discharge for this long is closed.
    pub ed_timeout_hours: u64,
    /// PV1-36 codes that make a discharge a transfer.
    pub transfer_dispositions: Vec<String>,
    /// Fields whose change makes an A08/A31 an update notification.
    pub watched: Vec<String>,
    /// When daily-digest notifications fall due (UTC hour).
    pub digest_hour_utc: u32,
    /// Messages routed per transaction (one commit per page, overlapped with planning
    /// the next page).
    pub page_size: u32,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        let e = crate::routing::encounter::EncounterConfig::default();
        RoutingSettings {
            enabled: true,
            rules_dir: "routing-rules".into(),
            reload_secs: 5,
            ed_timeout_hours: 24,
            transfer_dispositions: e.transfer_dispositions,
            watched: e.watched,
            digest_hour_utc: 7,
            page_size: 1000,
        }
    }
}

impl RoutingSettings {
    /// What the encounter state machine needs of these settings.
    pub fn encounter_config(&self) -> EncounterConfig {
        EncounterConfig {
            transfer_dispositions: self.transfer_dispositions.clone(),
            watched: self.watched.clone(),
            ed_timeout_us: i64::try_from(self.ed_timeout_hours)
                .unwrap_or(24)
                .saturating_mul(3_600_000_000),
        }
    }
}

//! `[database]` settings.

use crate::secret::SecretUrl;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` (created if missing) or `postgres://...`. Printed configurations
    /// mask the password.
    pub url: SecretUrl,
    pub max_connections: u32,
    /// SQLite: how long a statement waits for a lock.
    pub busy_timeout_ms: u64,
    /// How long to wait for a pooled connection.
    pub acquire_timeout_ms: u64,
    /// PostgreSQL: start even when `synchronous_commit` is `off` for our connections
    /// (an ACK could then name a message that a crash loses). Off: `serve` refuses.
    pub allow_asynchronous_commit: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: "sqlite://./data/adt-router.db".into(),
            max_connections: 8,
            busy_timeout_ms: 5000,
            acquire_timeout_ms: 5000,
            allow_asynchronous_commit: false,
        }
    }
}

//! adt-router: HL7 v2 ADT in over MLLP, durable before acknowledged, routed to the
//! community providers who must hear about it.
//!
//! The modules follow the data flow:
//! - [`mllp`]: framing (pure) and the TCP listener; writes ACKs in order per connection.
//! - [`hl7`]: charset decoding, parsing, ACK building (pure, no I/O).
//! - [`ingest`]: one frame to one ACK, with the message made durable in between.
//! - [`event_log`]: the durable event log: an embedded table with group commit, or
//!   Kafka (a producer for ingest; a consumer group that stores what it consumes;
//!   replay).
//! - [`routing`]: typed ADT events, the encounter state machine, routing rules, and the
//!   outbox rows they produce.
//! - [`deliver`]: claims notifications from the outbox and sends them (REST webhooks,
//!   FHIR rest-hooks, Direct secure email), recording every attempt and its proof.
//! - [`fhir`]: FHIR Subscriptions (backport IG on R4): topics, reading Subscriptions,
//!   the resources the `/fhir` API answers with.
//! - [`directory`]: providers and their endpoints (NPPES files, local overrides).
//! - [`attribution`]: which providers a patient's event goes to (rosters, PD1/ROL,
//!   patient matching), with provenance.
//! - [`store`]: sqlx over SQLite or PostgreSQL, migrations.
//! - [`http`]: health, readiness, metrics, rosters and the FHIR API.
//! - [`config`], [`app`]: settings and wiring; `main.rs` is the CLI.

/// `Debug` for a struct that carries PHI: only the named fields are shown and the rest
/// print as `..`, so a `{:?}` in a log line, an error or a panic cannot leak a patient.
macro_rules! debug_without_phi {
    ($t:ident { $($f:ident),* $(,)? }) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    $(.field(stringify!($f), &self.$f))*
                    .finish_non_exhaustive()
            }
        }
    };
}

pub mod hl7;
pub mod mllp;

#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod attribution;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod deliver;
#[cfg(feature = "server")]
pub mod directory;
#[cfg(feature = "server")]
pub mod event_log;
#[cfg(feature = "server")]
pub mod fhir;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod ingest;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod routing;
#[cfg(feature = "server")]
pub mod secret;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod wake;

//! MLLP: bytes to frames and back ([`codec`], pure) and the TCP listener that owns the
//! connection lifecycle ([`listener`]). The listener hands each frame to
//! [`crate::ingest::Ingest`] and writes back whatever ACK it returns, in order.

#[cfg(feature = "server")]
pub mod client;
pub mod codec;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod listener;
#[cfg(feature = "server")]
pub mod tls;

//! `[mllp]` settings: the listener, its caps and timeouts, TLS and the senders it maps.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MllpSettings {
    /// Address the MLLP listener binds.
    pub listen: SocketAddr,
    /// Largest frame accepted; a longer one closes the connection.
    pub max_frame_bytes: usize,
    /// Connections beyond this are accepted and closed at once (and counted).
    pub max_connections: usize,
    /// Connections from one address beyond this are closed at once (and counted), so
    /// one peer cannot take every slot.
    pub max_connections_per_peer: usize,
    /// A connection with no bytes for this long is closed. Senders hold connections open
    /// between messages, so this is long (standards §1.5: hours).
    pub idle_timeout_secs: u64,
    /// Once a frame has begun it must end within this (a peer trickling bytes to hold
    /// a connection and its buffer is closed).
    pub frame_timeout_secs: u64,
    /// TCP keepalive idle time; finds peers that vanished without a FIN.
    pub tcp_keepalive_secs: u64,
    /// On shutdown, how long connections get to finish frames already received.
    pub drain_timeout_secs: u64,
    /// PEM certificate chain. With `tls_key`, the listener speaks MLLP over TLS only.
    pub tls_cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    pub tls_key: String,
    /// PEM CA bundle. When set, clients must present a certificate it signed (mutual TLS).
    pub tls_client_ca: String,
    /// With mutual TLS: the MSH-4 values each client certificate may send (matched by
    /// `CN=...`, `DNS:...`, `URI:...` or `EMAIL:...`). When any is listed, a message
    /// whose MSH-4 its certificate does not map to is answered AR/CR and quarantined.
    pub tls_senders: Vec<TlsSender>,
    /// When a message cannot be stored: `close` (answer nothing and close the
    /// connection; every engine queues and resends) or `nack` (AR/CE with ERR 207, for
    /// engines configured to resend AR). docs/interop.md says why `close` is the default.
    pub on_storage_failure: crate::ingest::StorageFailure,
    /// `always` (answer every frame, even when MSH-15 is NE or ER: MLLP senders wait for
    /// an answer) or `honour` (send no accept ACK where MSH-15 says not to).
    pub accept_ack: crate::hl7::AcceptAck,
}

impl Default for MllpSettings {
    fn default() -> Self {
        MllpSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 2575)),
            max_frame_bytes: 16 * 1024 * 1024,
            max_connections: 1024,
            max_connections_per_peer: 64,
            idle_timeout_secs: 3600,
            frame_timeout_secs: 60,
            tcp_keepalive_secs: 60,
            drain_timeout_secs: 10,
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_client_ca: String::new(),
            tls_senders: Vec::new(),
            on_storage_failure: Default::default(),
            accept_ack: Default::default(),
        }
    }
}

/// One `[[mllp.tls_senders]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSender {
    /// `CN=<subject common name>`, `DNS:<name>`, `URI:<uri>` or `EMAIL:<address>`.
    pub identity: String,
    /// MSH-4 values (the whole field, or its namespace id) it may send.
    pub facilities: Vec<String>,
}

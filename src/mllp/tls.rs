//! MLLP over TLS ("MLLPS"; standards §1.4: TLS 1.2/1.3 around the TCP stream, usually
//! with client certificates). rustls with the ring provider.

use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: path.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

/// Builds the acceptor. With `client_ca`, clients must present a certificate it signed.
pub fn acceptor(cert: &str, key: &str, client_ca: Option<&str>) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(Path::new(key)).map_err(|e| TlsError::Pem {
        path: key.into(),
        reason: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::Config(format!("client CA {ca}: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The names a client certificate (DER) speaks for: `CN=<common name>` for each subject
/// common name, `DNS:<name>`, `URI:<uri>` and `EMAIL:<address>` for each subject
/// alternative name. Empty when the certificate cannot be read (it was already verified
/// against `mllp.tls_client_ca`; an unreadable one is then allowed nothing).
pub fn identities(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut out: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(|cn| format!("CN={cn}"))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => out.push(format!("DNS:{d}")),
                GeneralName::URI(u) => out.push(format!("URI:{u}")),
                GeneralName::RFC822Name(e) => out.push(format!("EMAIL:{e}")),
                _ => {}
            }
        }
    }
    out
}

/// `mllp.tls_senders`: which MSH-4 values each client certificate identity may send.
#[derive(Clone, Debug, Default)]
pub struct Senders(Vec<super::config::TlsSender>);

impl Senders {
    pub fn new(list: &[super::config::TlsSender]) -> Senders {
        Senders(list.to_vec())
    }

    /// Whether the mapping is on (any entry configured).
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// The facilities a certificate with these identities may send for (matched
    /// without regard to case).
    pub fn allowed(&self, identities: &[String]) -> Allowed {
        let mut facilities: Vec<String> = self
            .0
            .iter()
            .filter(|s| {
                identities
                    .iter()
                    .any(|i| i.eq_ignore_ascii_case(&s.identity))
            })
            .flat_map(|s| s.facilities.iter().cloned())
            .collect();
        facilities.sort();
        facilities.dedup();
        Allowed {
            identity: identities.first().cloned().unwrap_or_default(),
            facilities,
        }
    }
}

/// What one mutual-TLS connection may send: the facilities (MSH-4) its certificate maps
/// to. A value matches the whole of MSH-4 or its first component (the namespace id).
#[derive(Clone, Debug)]
pub struct Allowed {
    /// The certificate's first identity, for logs and the ERR text.
    pub identity: String,
    pub facilities: Vec<String>,
}

impl Allowed {
    pub fn permits(&self, msh4: &str) -> bool {
        let namespace = msh4.split('^').next().unwrap_or("");
        self.facilities.iter().any(|f| f == msh4 || f == namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mllp::config::TlsSender;

    #[test]
    fn senders_map_identities_to_facilities() {
        let s = Senders::new(&[
            TlsSender {
                identity: "CN=epic.genhosp.example".into(),
                facilities: vec!["GENHOSP".into(), "GENHOSP-ED".into()],
            },
            TlsSender {
                identity: "DNS:cerner.other.example".into(),
                facilities: vec!["OTHER".into()],
            },
        ]);
        let a = s.allowed(&["CN=EPIC.genhosp.example".into()]);
        assert!(a.permits("GENHOSP") && a.permits("GENHOSP-ED"));
        assert!(
            a.permits("GENHOSP^2.16.840.1.113883.3.1^ISO"),
            "the namespace id"
        );
        assert!(!a.permits("OTHER") && !a.permits("GENHOSPX") && !a.permits(""));
        let none = s.allowed(&["CN=stranger".into()]);
        assert!(
            !none.permits("GENHOSP"),
            "an unmapped certificate sends for nobody"
        );
        assert!(s
            .allowed(&["DNS:cerner.other.example".into()])
            .permits("OTHER"));
    }
}

//! Endpoint kinds and the checks an endpoint value must pass before anything is sent to
//! it. NPPES and roster data are self-reported and untrusted (design.md): a value that
//! points at loopback, link-local or private space, or is not what its type claims, is
//! kept for the record but never used.

use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// NPPES Endpoint Type codes (standards §5.3). Only the first three can carry a
/// notification; the rest are stored so `directory show` tells the whole story.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EndpointKind {
    Direct,
    Fhir,
    Rest,
    Soap,
    Connect,
    Others,
}

impl EndpointKind {
    pub fn parse(s: &str) -> Option<EndpointKind> {
        Some(match s.trim().to_ascii_uppercase().as_str() {
            "DIRECT" => EndpointKind::Direct,
            "FHIR" => EndpointKind::Fhir,
            "REST" => EndpointKind::Rest,
            "SOAP" => EndpointKind::Soap,
            "CONNECT" => EndpointKind::Connect,
            "OTHERS" | "OTHER" => EndpointKind::Others,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Direct => "DIRECT",
            EndpointKind::Fhir => "FHIR",
            EndpointKind::Rest => "REST",
            EndpointKind::Soap => "SOAP",
            EndpointKind::Connect => "CONNECT",
            EndpointKind::Others => "OTHERS",
        }
    }

    /// Can adt-router deliver over this kind at all?
    pub fn deliverable(self) -> bool {
        matches!(
            self,
            EndpointKind::Direct | EndpointKind::Fhir | EndpointKind::Rest
        )
    }
}

/// What an endpoint value must satisfy; from `[delivery]` in the configuration.
#[derive(Clone, Copy, Debug)]
pub struct EndpointPolicy {
    pub allow_private_networks: bool,
    pub require_https: bool,
}

impl Default for EndpointPolicy {
    fn default() -> Self {
        EndpointPolicy {
            allow_private_networks: false,
            require_https: true,
        }
    }
}

/// Checks an endpoint value and returns its normalised form, or why it cannot be used.
/// Host names are not resolved here; the deliverer checks the resolved address again
/// before it connects, since DNS can point a public name at a private address.
pub fn check(kind: EndpointKind, value: &str, policy: EndpointPolicy) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("endpoint is empty".into());
    }
    match kind {
        EndpointKind::Direct => check_direct(value, policy),
        EndpointKind::Fhir | EndpointKind::Rest => check_url(value, policy),
        other => Err(format!(
            "{} endpoints are not a delivery channel adt-router supports",
            other.as_str()
        )),
    }
}

/// A Direct address is an email address (RFC 5321 mailbox) on a real domain; NPPES
/// values sometimes carry a `mailto:` prefix or upper case.
fn check_direct(value: &str, policy: EndpointPolicy) -> Result<String, String> {
    let v = value
        .strip_prefix("mailto:")
        .or_else(|| value.strip_prefix("MAILTO:"))
        .unwrap_or(value)
        .to_ascii_lowercase();
    if !v.is_ascii() {
        return Err("Direct address is not ASCII".into());
    }
    let (local, domain) = v
        .rsplit_once('@')
        .ok_or("Direct address has no '@'".to_string())?;
    if local.is_empty() || local.len() > 64 {
        return Err("Direct address local part is empty or longer than 64 characters".into());
    }
    let atom_ok = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    if local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || !local.chars().all(|c| c == '.' || atom_ok(c))
    {
        return Err("Direct address local part has characters a mailbox cannot have".into());
    }
    if domain.starts_with('[') {
        return Err("Direct address uses an IP literal, not a domain".into());
    }
    check_domain(domain, policy)?;
    Ok(v)
}

fn check_domain(domain: &str, policy: EndpointPolicy) -> Result<(), String> {
    let d = domain.trim_end_matches('.');
    if d.is_empty() || d.len() > 253 {
        return Err("domain is empty or too long".into());
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err(format!("'{d}' is not a fully qualified domain"));
    }
    for l in &labels {
        if l.is_empty()
            || l.len() > 63
            || l.starts_with('-')
            || l.ends_with('-')
            || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!("'{d}' is not a valid domain name"));
        }
    }
    if !policy.allow_private_networks && is_local_name(d) {
        return Err(format!(
            "'{d}' names a local or internal host (set delivery.allow_private_networks to allow)"
        ));
    }
    Ok(())
}

/// Names that resolve to this machine or the local network by convention (RFC 6761 and
/// common internal suffixes).
fn is_local_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost"
        || [".localhost", ".local", ".internal", ".lan", ".home.arpa"]
            .iter()
            .any(|s| h.ends_with(s))
}

fn check_url(value: &str, policy: EndpointPolicy) -> Result<String, String> {
    let url = url::Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if !policy.require_https => {}
        "http" => return Err("plain http is refused (https required)".into()),
        s => return Err(format!("URL scheme '{s}' is not http(s)")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URL carries credentials".into());
    }
    match url.host() {
        None => return Err("URL has no host".into()),
        Some(url::Host::Domain(d)) => {
            if !policy.allow_private_networks && is_local_name(d) {
                return Err(format!(
                    "'{d}' names a local or internal host (set delivery.allow_private_networks to allow)"
                ));
            }
        }
        Some(url::Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), policy)?,
        Some(url::Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), policy)?,
    }
    Ok(url.to_string())
}

/// Refuses loopback, link-local, private, shared and unspecified addresses unless allowed.
pub fn check_ip(ip: IpAddr, policy: EndpointPolicy) -> Result<(), String> {
    if policy.allow_private_networks {
        return Ok(());
    }
    let bad = match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => private_v4(v4),
            None => private_v6(v6),
        },
    };
    if bad {
        Err(format!(
            "{ip} is a loopback, link-local or private address (set delivery.allow_private_networks to allow)"
        ))
    } else {
        Ok(())
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1])) // shared address space, RFC 6598
}

fn private_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: EndpointPolicy = EndpointPolicy {
        allow_private_networks: false,
        require_https: true,
    };
    const LAX: EndpointPolicy = EndpointPolicy {
        allow_private_networks: true,
        require_https: false,
    };

    #[test]
    fn direct_addresses() {
        let ok = |v| check(EndpointKind::Direct, v, STRICT);
        assert_eq!(
            ok("Dr.Smith@Direct.Example.org").as_deref(),
            Ok("dr.smith@direct.example.org")
        );
        assert_eq!(
            ok("mailto:a@b.example.com").as_deref(),
            Ok("a@b.example.com")
        );
        for bad in [
            "no-at-sign.example.org",
            "a@localhost",
            "a@host",
            "a@[127.0.0.1]",
            ".a@b.example.org",
            "a..b@b.example.org",
            "a b@b.example.org",
            "a@-b.example.org",
            "a@printer.local",
            "https://fhir.example.org/r4",
        ] {
            assert!(ok(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn urls() {
        let ok = |k, v| check(k, v, STRICT);
        assert!(ok(EndpointKind::Fhir, "https://fhir.example.org/r4").is_ok());
        for bad in [
            "http://fhir.example.org/r4",
            "ftp://fhir.example.org/r4",
            "https://127.0.0.1/hook",
            "https://10.1.2.3/hook",
            "https://172.16.0.1/hook",
            "https://192.168.1.1/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/hook",
            "https://0.0.0.0/hook",
            "https://[::1]/hook",
            "https://[fe80::1]/hook",
            "https://[fd00::1]/hook",
            "https://[::ffff:127.0.0.1]/hook",
            "https://localhost/hook",
            "https://api.localhost/hook",
            "https://user:pw@fhir.example.org/",
            "not a url",
        ] {
            assert!(
                ok(EndpointKind::Rest, bad).is_err(),
                "{bad} should be refused"
            );
        }
        // Tests and on-premises deployments can opt in.
        assert!(check(EndpointKind::Rest, "http://127.0.0.1:9000/hook", LAX).is_ok());
        assert!(check(EndpointKind::Soap, "https://soap.example.org/", LAX).is_err());
    }
}

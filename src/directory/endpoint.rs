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

impl std::fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

    /// Reads a stored channel (the outbox's `channel` column).
    pub fn decode(s: &str) -> Result<EndpointKind, crate::store::StoreError> {
        EndpointKind::parse(s).ok_or_else(|| {
            crate::store::StoreError::Db(sqlx::Error::Decode(
                format!("unknown channel '{s}'").into(),
            ))
        })
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

/// Why an endpoint value cannot be used. The text is what `directory show` and the
/// routing decision say.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint is empty")]
    Empty,
    #[error("{0} endpoints are not a delivery channel adt-router supports")]
    NotDeliverable(&'static str),
    #[error("Direct address is not ASCII")]
    NotAscii,
    #[error("Direct address has no '@'")]
    NoAt,
    #[error("Direct address local part is empty or longer than 64 characters")]
    LocalPartLength,
    #[error("Direct address local part has characters a mailbox cannot have")]
    LocalPartCharacters,
    #[error("Direct address uses an IP literal, not a domain")]
    IpLiteral,
    #[error("domain is empty or too long")]
    DomainLength,
    #[error("'{0}' is not a fully qualified domain")]
    NotQualified(String),
    #[error("'{0}' is not a valid domain name")]
    InvalidDomain(String),
    #[error("'{0}' names a local or internal host (set delivery.allow_private_networks to allow)")]
    LocalHost(String),
    #[error("not a URL: {0}")]
    NotUrl(#[from] url::ParseError),
    #[error("plain http is refused (https required)")]
    PlainHttp,
    #[error("URL scheme '{0}' is not http(s)")]
    Scheme(String),
    #[error("URL carries credentials")]
    Credentials,
    #[error("URL has no host")]
    NoHost,
    #[error("{0} is a loopback, link-local or private address (set delivery.allow_private_networks to allow)")]
    PrivateAddress(IpAddr),
}

/// Checks an endpoint value and returns its normalised form, or why it cannot be used.
/// Host names are not resolved here; the deliverer checks the resolved address again
/// before it connects, since DNS can point a public name at a private address.
pub fn check(
    kind: EndpointKind,
    value: &str,
    policy: EndpointPolicy,
) -> Result<String, EndpointError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(EndpointError::Empty);
    }
    match kind {
        EndpointKind::Direct => check_direct(value, policy),
        EndpointKind::Fhir | EndpointKind::Rest => check_url(value, policy),
        other => Err(EndpointError::NotDeliverable(other.as_str())),
    }
}

/// A Direct address is an email address (RFC 5321 mailbox) on a real domain; NPPES
/// values sometimes carry a `mailto:` prefix or upper case.
fn check_direct(value: &str, policy: EndpointPolicy) -> Result<String, EndpointError> {
    let v = value
        .strip_prefix("mailto:")
        .or_else(|| value.strip_prefix("MAILTO:"))
        .unwrap_or(value)
        .to_ascii_lowercase();
    if !v.is_ascii() {
        return Err(EndpointError::NotAscii);
    }
    let (local, domain) = v.rsplit_once('@').ok_or(EndpointError::NoAt)?;
    if local.is_empty() || local.len() > 64 {
        return Err(EndpointError::LocalPartLength);
    }
    let atom_ok = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    if local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || !local.chars().all(|c| c == '.' || atom_ok(c))
    {
        return Err(EndpointError::LocalPartCharacters);
    }
    if domain.starts_with('[') {
        return Err(EndpointError::IpLiteral);
    }
    check_domain(domain, policy)?;
    Ok(v)
}

fn check_domain(domain: &str, policy: EndpointPolicy) -> Result<(), EndpointError> {
    let d = domain.trim_end_matches('.');
    if d.is_empty() || d.len() > 253 {
        return Err(EndpointError::DomainLength);
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err(EndpointError::NotQualified(d.to_string()));
    }
    for l in &labels {
        if l.is_empty()
            || l.len() > 63
            || l.starts_with('-')
            || l.ends_with('-')
            || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(EndpointError::InvalidDomain(d.to_string()));
        }
    }
    if !policy.allow_private_networks && is_local_name(d) {
        return Err(EndpointError::LocalHost(d.to_string()));
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

fn check_url(value: &str, policy: EndpointPolicy) -> Result<String, EndpointError> {
    let url = url::Url::parse(value)?;
    match url.scheme() {
        "https" => {}
        "http" if !policy.require_https => {}
        "http" => return Err(EndpointError::PlainHttp),
        s => return Err(EndpointError::Scheme(s.to_string())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EndpointError::Credentials);
    }
    match url.host() {
        None => return Err(EndpointError::NoHost),
        Some(url::Host::Domain(d)) => {
            if !policy.allow_private_networks && is_local_name(d) {
                return Err(EndpointError::LocalHost(d.to_string()));
            }
        }
        Some(url::Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), policy)?,
        Some(url::Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), policy)?,
    }
    Ok(url.to_string())
}

/// Refuses loopback, link-local, private, shared and unspecified addresses unless allowed.
pub fn check_ip(ip: IpAddr, policy: EndpointPolicy) -> Result<(), EndpointError> {
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
        Err(EndpointError::PrivateAddress(ip))
    } else {
        Ok(())
    }
}

/// Not a public unicast address: IANA's IPv4 special-purpose registry, less the few
/// globally reachable entries, plus multicast and the reserved 240/4.
fn private_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] == 0 // "this network", RFC 791
        || (o[0] == 100 && (64..128).contains(&o[1])) // shared address space, RFC 6598
        || (o[0], o[1], o[2]) == (192, 0, 0) // IETF protocol assignments, RFC 6890
        || (o[0], o[1], o[2]) == (192, 0, 2) // TEST-NET-1, RFC 5737
        || (o[0], o[1], o[2]) == (192, 88, 99) // 6to4 relay anycast, RFC 7526
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking, RFC 2544
        || (o[0], o[1], o[2]) == (198, 51, 100) // TEST-NET-2
        || (o[0], o[1], o[2]) == (203, 0, 113) // TEST-NET-3
        || o[0] >= 240 // reserved, RFC 1112
}

/// Not a public unicast address: IANA's IPv6 special-purpose registry, plus the
/// deprecated forms that embed or reach an IPv4 address (a way around the IPv4 checks).
fn private_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || s[..6] == [0; 6] // IPv4-compatible ::a.b.c.d, deprecated (RFC 4291)
        || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] // NAT64 well-known prefix, RFC 6052
        || s[..3] == [0x64, 0xff9b, 1] // NAT64 local use, RFC 8215
        || s[..4] == [0x100, 0, 0, 0] // discard only, RFC 6666
        || (s[0] == 0x2001 && s[1] < 0x200) // IETF protocol assignments (Teredo, ...), RFC 2928
        || (s[0], s[1]) == (0x2001, 0xdb8) // documentation, RFC 3849
        || s[0] == 0x2002 // 6to4, RFC 3056
        || (s[0] & 0xfff0) == 0x3ff0 // documentation, RFC 9637
        || s[0] == 0x5f00 // SRv6 SIDs, RFC 9602
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local, deprecated (RFC 3879)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every special-purpose block is refused; public unicast addresses are not.
    #[test]
    fn special_purpose_addresses_are_refused() {
        for a in [
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(check_ip(ip, STRICT).is_err(), "{a} was allowed");
            assert!(check_ip(ip, LAX).is_ok());
        }
        for a in ["8.8.8.8", "198.20.0.1", "2606:4700::1111", "2a00:1450::1"] {
            assert!(
                check_ip(a.parse().unwrap(), STRICT).is_ok(),
                "{a} was refused"
            );
        }
    }

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

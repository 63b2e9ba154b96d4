//! REST webhooks, signed per Standard Webhooks (standards.md appendix A): `webhook-id`
//! (the idempotency key, the same on every retry), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature` (`v1,` + base64 of HMAC-SHA256 over `id.timestamp.body`, keyed by
//! the endpoint's secret from the directory override; a `whsec_` secret is base64).
//!
//! Endpoints are untrusted: the host's addresses are checked against the private-network
//! policy at send time (DNS may have changed since the directory was loaded), and the
//! request goes to a checked address only.

use super::Outcome;
use crate::directory::endpoint::{check_ip, EndpointKind, EndpointPolicy};
use crate::store::delivery::Outgoing;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;

/// The `webhook-signature` value for one request.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = match secret.strip_prefix("whsec_") {
        Some(k) => b64.decode(k).unwrap_or_else(|_| k.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}

/// Why a host name could not be used (the resolver's error, found again in reqwest's).
#[derive(Debug, thiserror::Error)]
enum Lookup {
    #[error("cannot resolve {0}: {1}")]
    Failed(String, String),
    #[error("{0}")]
    Refused(String),
}

/// The shared client's DNS resolver: it keeps only the addresses the private-network
/// policy allows, so a connection only ever goes to an address that was checked (no
/// second lookup can answer differently), and pooled connections are reused.
struct CheckedResolver(EndpointPolicy);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(Lookup::Failed(host.clone(), e.to_string())))?;
            let mut refused = None;
            let ok: Vec<SocketAddr> = found
                .filter(|a| match check_ip(a.ip(), policy) {
                    Ok(()) => true,
                    Err(e) => {
                        refused = Some(e.to_string());
                        false
                    }
                })
                .collect();
            if ok.is_empty() {
                let why = refused.unwrap_or_else(|| format!("{host} has no address"));
                return Err(Box::new(Lookup::Refused(why)) as _);
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The webhook client: one for all endpoints (connection reuse), resolving through
/// the policy check. It follows no redirect (a 3xx is a failure naming where it
/// pointed: a receiver must not steer our PHI to another host, a loopback one
/// included), and with `require_https` it speaks https only. SMART token requests go
/// through it too. An error here must stop `serve`: there is no safe fallback client.
pub fn client(policy: EndpointPolicy) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(std::sync::Arc::new(CheckedResolver(policy)))
        .redirect(reqwest::redirect::Policy::none())
        .https_only(policy.require_https)
        .build()
}

/// The most of a response body that is read (hashed for the proof, excerpted for the
/// attempt log); the rest is left unread.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Reads at most [`MAX_RESPONSE_BYTES`] of a response's body.
pub async fn bounded_body(mut resp: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_RESPONSE_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    body
}

/// The host a redirect pointed at (never the path or query: they may carry anything).
fn redirect_host(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| resp.url().join(l).ok())
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "(no Location)".into())
}

/// The resolver's verdict inside a reqwest error, if that is what failed.
fn lookup_error(e: &reqwest::Error) -> Option<&Lookup> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(l) = s.downcast_ref::<Lookup>() {
            return Some(l);
        }
        src = s.source();
    }
    None
}

/// Sends one notification; returns the outcome and the SHA-256 of the body sent.
pub async fn send(
    http: &reqwest::Client,
    n: &Outgoing,
    policy: EndpointPolicy,
    timeout: Duration,
    auth: Option<&super::smart::Client>,
) -> (Outcome, String) {
    let body_hash = hex::encode(Sha256::digest(&n.payload));
    let permanent = |reason: String| Outcome::Permanent { code: None, reason };
    let url = match url::Url::parse(&n.endpoint) {
        Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && !policy.require_https) => u,
        Ok(u) => {
            return (
                permanent(format!(
                    "{} endpoints are refused (https required)",
                    u.scheme()
                )),
                body_hash,
            )
        }
        Err(e) => return (permanent(format!("not a URL: {e}")), body_hash),
    };
    // An IP literal is never resolved, so it is checked here; a name is checked by the
    // client's resolver.
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    };
    if let Some(Err(e)) = literal.map(|ip| check_ip(ip, policy)) {
        return (permanent(e.to_string()), body_hash);
    }
    // A SMART-registered endpoint gets a bearer token; without one nothing is sent.
    let bearer = match auth {
        Some(c) => match c.token(http).await {
            Ok(t) => Some(t),
            Err(e) => {
                return (
                    Outcome::Transient {
                        code: None,
                        reason: e.to_string(),
                        retry_after: None,
                    },
                    body_hash,
                )
            }
        },
        None => None,
    };
    // A subscription may ask for less time per attempt than the engine allows.
    let timeout = match n.timeout_secs {
        Some(t) if t > 0 => timeout.min(Duration::from_secs(t as u64)),
        _ => timeout,
    };
    let ts = crate::store::now_us() / 1_000_000;
    // FHIR notifications are FHIR JSON, with the headers their subscription asked for.
    let content_type = if n.channel == EndpointKind::Fhir {
        "application/fhir+json"
    } else {
        "application/json"
    };
    let mut req = http
        .post(url)
        .timeout(timeout)
        .header("content-type", content_type)
        .header("webhook-id", &n.notification_key)
        .header("webhook-timestamp", ts.to_string());
    for (name, value) in &n.headers {
        // The token replaces a static Authorization header.
        if bearer.is_some() && name.eq_ignore_ascii_case("authorization") {
            continue;
        }
        req = req.header(name.as_str(), value.as_str());
    }
    if let Some(t) = &bearer {
        req = req.bearer_auth(t);
    }
    if let Some(secret) = n
        .secret
        .as_ref()
        .map(crate::secret::ExposeSecret::expose_secret)
        .filter(|s| !s.is_empty())
    {
        req = req.header(
            "webhook-signature",
            signature(secret, &n.notification_key, ts, &n.payload),
        );
    }
    let resp = match req.body(n.payload.clone()).send().await {
        Ok(r) => r,
        Err(e) => {
            match lookup_error(&e) {
                // A refused address is permanent; a failed lookup may be DNS having a bad day.
                Some(Lookup::Refused(why)) => return (permanent(why.clone()), body_hash),
                Some(l @ Lookup::Failed(..)) => {
                    return (
                        Outcome::Transient {
                            code: None,
                            reason: l.to_string(),
                            retry_after: None,
                        },
                        body_hash,
                    )
                }
                None => {}
            }
            let what = if e.is_timeout() {
                "timed out"
            } else {
                "connection failed"
            };
            return (
                Outcome::Transient {
                    code: None,
                    reason: format!("{what}: {}", without_url(&e)),
                    retry_after: None,
                },
                body_hash,
            );
        }
    };
    let code = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    if (300..400).contains(&code) {
        let host = redirect_host(&resp);
        return (
            Outcome::Permanent {
                code: Some(code),
                reason: format!("HTTP {code}: a redirect to {host}, not followed"),
            },
            body_hash,
        );
    }
    let body = bounded_body(resp).await;
    let excerpt: String = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    let outcome = match code {
        200..=299 => {
            let mut proof = serde_json::json!({
                "http_status": code,
                "response_sha256": hex::encode(Sha256::digest(&body)),
                "request_sha256": body_hash,
                "at": crate::directory::rfc3339_us(crate::store::now_us()),
            });
            if let Some(c) = auth {
                proof["smart_client_id"] = serde_json::json!(c.client_id());
            }
            // A FHIR notification's proof names what it carried: its type and event numbers.
            if n.channel == EndpointKind::Fhir {
                if let Some(f) = crate::fhir::event::proof_of(&n.payload) {
                    proof["fhir"] = f;
                }
            }
            Outcome::Delivered {
                code,
                proof: proof.to_string(),
            }
        }
        // A refused token may have been revoked or expired early: a new one next time.
        401 if auth.is_some() => {
            if let Some(c) = auth {
                c.forget().await;
            }
            Outcome::Transient {
                code: Some(code),
                reason: format!(
                    "HTTP 401 with a SMART token (a new one is asked for next): {excerpt}"
                ),
                retry_after,
            }
        }
        408 | 429 | 500..=599 => Outcome::Transient {
            code: Some(code),
            reason: format!("HTTP {code}: {excerpt}"),
            retry_after,
        },
        _ => Outcome::Permanent {
            code: Some(code),
            reason: format!("HTTP {code}: {excerpt}"),
        },
    };
    (outcome, body_hash)
}

/// reqwest errors name the URL; the endpoint is already recorded beside the attempt.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<endpoint>");
    }
    s
}

#[cfg(test)]
mod tests {
    use crate::directory::endpoint::EndpointPolicy;

    /// A name that resolves to loopback is refused under the default policy, through
    /// the shared client, before any connection is made; allowed when configured.
    #[tokio::test]
    async fn the_resolver_refuses_private_addresses() {
        let strict = EndpointPolicy {
            allow_private_networks: false,
            require_https: false,
        };
        let e = super::client(strict)
            .unwrap()
            .get("http://localhost:9/")
            .send()
            .await
            .unwrap_err();
        match super::lookup_error(&e) {
            Some(super::Lookup::Refused(why)) => assert!(
                why.contains("127.0.0.1") || why.contains("::1") || why.contains("loopback"),
                "{why}"
            ),
            other => panic!("{other:?}: {e}"),
        }
        let open = EndpointPolicy {
            allow_private_networks: true,
            require_https: false,
        };
        let e = super::client(open)
            .unwrap()
            .get("http://localhost:9/")
            .send()
            .await
            .unwrap_err();
        assert!(
            super::lookup_error(&e).is_none(),
            "connects (and is refused by the port): {e}"
        );
    }

    /// With `require_https` the client itself refuses plain http, whatever asked for it.
    #[tokio::test]
    async fn with_require_https_the_client_speaks_https_only() {
        let https = EndpointPolicy {
            allow_private_networks: true,
            require_https: true,
        };
        let e = super::client(https)
            .unwrap()
            .get("http://localhost:9/")
            .send()
            .await
            .unwrap_err();
        assert!(e.is_builder(), "{e}");
    }

    /// The Standard Webhooks reference example (standardwebhooks.com, the libraries'
    /// test vector): key `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`, id
    /// `msg_p5jXN8AQM9LWM0D4loKWxJek`, timestamp 1614265330, body `{"test": 2432232314}`.
    #[test]
    fn standard_webhooks_test_vector() {
        let sig = super::signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}

//! REST webhooks, signed per Standard Webhooks (standards.md appendix A): `webhook-id`
//! (the idempotency key, the same on every retry), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature` (`v1,` + base64 of HMAC-SHA256 over `id.timestamp.body`, keyed by
//! the endpoint's secret from the directory override; a `whsec_` secret is base64).
//!
//! Endpoints are untrusted: the host's addresses are checked against the private-network
//! policy at send time (DNS may have changed since the directory was loaded), and the
//! request goes to a checked address only.

use super::Outcome;
use crate::directory::endpoint::{check_ip, EndpointPolicy};
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

/// Resolves the URL's host and keeps the addresses the policy allows.
async fn checked_addr(url: &url::Url, policy: EndpointPolicy) -> Result<SocketAddr, String> {
    let host = url.host_str().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut refused = None;
    for a in &addrs {
        match check_ip(a.ip(), policy) {
            Ok(()) => return Ok(*a),
            Err(e) => refused = Some(e),
        }
    }
    Err(refused.unwrap_or_else(|| format!("{host} has no address")))
}

/// Sends one notification; returns the outcome and the SHA-256 of the body sent.
pub async fn send(
    http: &reqwest::Client,
    n: &Outgoing,
    policy: EndpointPolicy,
    timeout: Duration,
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
    let addr = match checked_addr(&url, policy).await {
        Ok(a) => a,
        // A refused address is permanent; a failed lookup may be DNS having a bad day.
        Err(e) if e.starts_with("cannot resolve") => {
            return (
                Outcome::Transient {
                    code: None,
                    reason: e,
                    retry_after: None,
                },
                body_hash,
            )
        }
        Err(e) => return (permanent(e), body_hash),
    };
    // Pin the checked address: a second lookup inside the client could answer differently.
    let client = match url.host_str() {
        Some(host)
            if url
                .host()
                .is_some_and(|h| matches!(h, url::Host::Domain(_))) =>
        {
            match reqwest::Client::builder()
                .resolve(host, addr)
                .timeout(timeout)
                .build()
            {
                Ok(c) => c,
                Err(e) => return (permanent(format!("HTTP client: {e}")), body_hash),
            }
        }
        _ => http.clone(),
    };
    let ts = crate::store::now_us() / 1_000_000;
    let mut req = client
        .post(url)
        .timeout(timeout)
        .header("content-type", "application/json")
        .header("webhook-id", &n.notification_key)
        .header("webhook-timestamp", ts.to_string());
    if let Some(secret) = n.secret.as_deref().filter(|s| !s.is_empty()) {
        req = req.header(
            "webhook-signature",
            signature(secret, &n.notification_key, ts, &n.payload),
        );
    }
    let resp = match req.body(n.payload.clone()).send().await {
        Ok(r) => r,
        Err(e) => {
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
    let body = resp.bytes().await.unwrap_or_default();
    let excerpt: String = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    let outcome = match code {
        200..=299 => Outcome::Delivered {
            code,
            proof: serde_json::json!({
                "http_status": code,
                "response_sha256": hex::encode(Sha256::digest(&body)),
                "request_sha256": body_hash,
                "at": crate::directory::rfc3339_us(crate::store::now_us()),
            })
            .to_string(),
        },
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

//! SMART Backend Services (standards.md §8): outbound auth to a subscriber's endpoint.
//!
//! For an endpoint configured in `[[delivery.smart]]`, adt-router gets an access token
//! from that party's token endpoint with the client-credentials grant, authenticating
//! with a JWT assertion signed by its own key (RS384 for an RSA key, ES384 for a P-384
//! key), and sends it as `Authorization: Bearer`. The token is cached until shortly
//! before it expires; a 401 from the endpoint drops it. The public keys are served as a
//! JWK Set at `/.well-known/jwks.json`, the URL a client registers with the server.
//!
//! ring (already in the tree for rustls) signs; a JWS is two base64url parts and a
//! signature, so no JWT crate is needed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::{Duration, Instant};

/// One registration with a party's authorization server.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmartSettings {
    /// Endpoints this applies to: every FHIR or REST endpoint whose URL starts with this
    /// (compared after URL normalisation, so `https://ehr.example.org` covers only that
    /// host).
    pub endpoint_prefix: String,
    /// The party's token endpoint (`token_endpoint` in its `.well-known/smart-configuration`).
    pub token_url: String,
    /// The client id the party gave us (`iss` and `sub` of the assertion).
    pub client_id: String,
    /// Our private key, PEM: PKCS#8 (`BEGIN PRIVATE KEY`, RSA 2048+ or EC P-384) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`).
    pub key_file: String,
    /// The key's id in our JWK Set (`kid`); registered with the party.
    pub kid: String,
    /// The scopes asked for, e.g. `system/Encounter.rs` (agreed at registration).
    pub scope: String,
    /// Optional `jku` header: the URL where the party fetches our JWK Set.
    #[serde(default)]
    pub jku: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SmartError {
    #[error("SMART key {path}: {why}")]
    Key { path: String, why: String },
    #[error("SMART endpoint_prefix {0:?} is not an absolute URL")]
    Prefix(String),
    #[error("SMART token request failed: {0}")]
    Request(String),
    #[error("SMART token endpoint answered HTTP {code}: {error}")]
    Refused { code: u16, error: String },
}

/// A private key able to sign client assertions.
enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl Signer {
    fn load(path: &str) -> Result<Signer, SmartError> {
        let bad = |why: String| SmartError::Key {
            path: path.to_string(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let (label, der) = pem(&text).ok_or_else(|| bad("no PEM block".into()))?;
        match label.as_str() {
            "PRIVATE KEY" => {
                if let Ok(k) = RsaKeyPair::from_pkcs8(&der) {
                    return Ok(Signer::Rsa(k));
                }
                EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    &der,
                    &SystemRandom::new(),
                )
                .map(Signer::Ec)
                .map_err(|e| bad(format!("neither an RSA (2048+ bits) nor a P-384 key: {e}")))
            }
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der)
                .map(Signer::Rsa)
                .map_err(|e| bad(format!("RSA key refused: {e}"))),
            "EC PRIVATE KEY" => Err(bad(
                "an SEC1 EC key; convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`".into(),
            )),
            other => Err(bad(format!("a {other:?} PEM block is not a private key"))),
        }
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Rsa(_) => "RS384",
            Signer::Ec(_) => "ES384",
        }
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SmartError> {
        let rng = SystemRandom::new();
        let failed = |_| SmartError::Request("signing failed".into());
        match self {
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA384, &rng, msg, &mut sig)
                    .map_err(failed)?;
                Ok(sig)
            }
            // FIXED signing gives r || s, the JWS form (RFC 7518 §3.4).
            Signer::Ec(k) => Ok(k.sign(&rng, msg).map_err(failed)?.as_ref().to_vec()),
        }
    }

    /// The public half as a JWK (RFC 7517/7518).
    fn jwk(&self, kid: &str) -> serde_json::Value {
        match self {
            Signer::Rsa(k) => {
                let c: signature::RsaPublicKeyComponents<Vec<u8>> = k.public().into();
                json!({"kty": "RSA", "kid": kid, "alg": "RS384", "use": "sig",
                       "n": B64URL.encode(strip_zeros(&c.n)), "e": B64URL.encode(strip_zeros(&c.e))})
            }
            Signer::Ec(k) => {
                // An uncompressed point: 0x04 || x || y, 48 bytes each on P-384.
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "kid": kid, "alg": "ES384", "use": "sig", "crv": "P-384",
                       "x": B64URL.encode(&p[1..49]), "y": B64URL.encode(&p[49..97])})
            }
        }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b
        .iter()
        .position(|&x| x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[i..]
}

/// The first PEM block: its label and DER bytes.
fn pem(text: &str) -> Option<(String, Vec<u8>)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + 11..];
    let label = rest[..rest.find("-----")?].to_string();
    let body_start = rest.find('\n')? + 1;
    let end = rest.find(&format!("-----END {label}-----"))?;
    let b64: String = rest
        .get(body_start..end)?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((label, der))
}

/// A cached access token.
struct Token {
    value: String,
    fresh_until: Instant,
}

/// One configured client: its key, and the token it holds.
pub struct Client {
    prefix: String,
    settings: SmartSettings,
    signer: Signer,
    token: tokio::sync::Mutex<Option<Token>>,
    /// `smart_token_requests_total{outcome}`.
    counter: Option<prometheus::IntCounterVec>,
}

/// How the token endpoint answers (RFC 6749 §5.1, §5.2).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Client {
    /// The signed client assertion (SMART Backend Services, "authentication JWT").
    pub fn assertion(&self, now_unix: i64) -> Result<String, SmartError> {
        let mut header = json!({"alg": self.signer.alg(), "kid": self.settings.kid, "typ": "JWT"});
        if !self.settings.jku.is_empty() {
            header["jku"] = json!(self.settings.jku);
        }
        // exp at most five minutes ahead; a little less leaves room for clock skew.
        let claims = json!({
            "iss": self.settings.client_id,
            "sub": self.settings.client_id,
            "aud": self.settings.token_url,
            "exp": now_unix + 240,
            "iat": now_unix,
            "jti": hex::encode(rand::random::<[u8; 16]>()),
        });
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let sig = self.signer.sign(signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", B64URL.encode(sig)))
    }

    /// A token for the endpoint: the cached one while fresh, else a new one.
    pub async fn token(&self, http: &reqwest::Client) -> Result<String, SmartError> {
        let mut held = self.token.lock().await;
        if let Some(t) = held.as_ref().filter(|t| Instant::now() < t.fresh_until) {
            return Ok(t.value.clone());
        }
        *held = None;
        let assertion = self.assertion(crate::store::now_us() / 1_000_000)?;
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", self.settings.scope.as_str()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ];
        let asked = Instant::now();
        let count = |outcome: &str| {
            if let Some(c) = &self.counter {
                c.with_label_values(&[outcome]).inc();
            }
        };
        let resp = http
            .post(&self.settings.token_url)
            .header("accept", "application/json")
            .form(&form)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| {
                count("failed");
                SmartError::Request(e.without_url().to_string())
            })?;
        let code = resp.status().as_u16();
        let body = super::webhook::bounded_body(resp).await;
        let parsed: Option<TokenResponse> = serde_json::from_slice(&body).ok();
        let (value, expires_in) = match parsed {
            Some(TokenResponse {
                access_token: Some(t),
                expires_in,
                ..
            }) if (200..300).contains(&code) => (t, expires_in.unwrap_or(300)),
            Some(r) => {
                count("refused");
                let error = match (r.error, r.error_description) {
                    (Some(e), Some(d)) => format!("{e} ({d})"),
                    (Some(e), None) => e,
                    _ => "no access_token in the answer".into(),
                };
                return Err(SmartError::Refused { code, error });
            }
            None => {
                count("refused");
                return Err(SmartError::Refused {
                    code,
                    error: "not a JSON token response".into(),
                });
            }
        };
        count("issued");
        // Renew a little early: a tenth of the lifetime, at most 30 s.
        let life = Duration::from_secs(expires_in);
        let margin = (life / 10).min(Duration::from_secs(30));
        *held = Some(Token {
            value: value.clone(),
            fresh_until: asked + life - margin,
        });
        tracing::info!(
            token_url = %self.settings.token_url,
            client_id = %self.settings.client_id,
            expires_in,
            "SMART access token obtained"
        );
        Ok(value)
    }

    /// The endpoint refused the token (401): the next request gets a new one.
    pub async fn forget(&self) {
        *self.token.lock().await = None;
    }

    pub fn client_id(&self) -> &str {
        &self.settings.client_id
    }
}

/// Every configured client, matched by endpoint prefix (the longest wins).
#[derive(Default)]
pub struct SmartClients {
    clients: Vec<Client>,
}

impl SmartClients {
    /// Loads every key; a key that cannot be read stops the start (no silent fallback
    /// to unauthenticated requests).
    pub fn load(
        settings: &[SmartSettings],
        counter: Option<prometheus::IntCounterVec>,
    ) -> Result<SmartClients, SmartError> {
        let mut clients = Vec::new();
        for s in settings {
            let prefix = url::Url::parse(&s.endpoint_prefix)
                .ok()
                .filter(|u| u.has_host())
                .ok_or_else(|| SmartError::Prefix(s.endpoint_prefix.clone()))?
                .to_string();
            clients.push(Client {
                prefix,
                signer: Signer::load(&s.key_file)?,
                settings: s.clone(),
                token: tokio::sync::Mutex::new(None),
                counter: counter.clone(),
            });
        }
        clients.sort_by_key(|c| std::cmp::Reverse(c.prefix.len()));
        Ok(SmartClients { clients })
    }

    /// The client for an endpoint, if one is configured.
    pub fn for_endpoint(&self, endpoint: &str) -> Option<&Client> {
        if self.clients.is_empty() {
            return None;
        }
        let normal = url::Url::parse(endpoint).ok()?.to_string();
        self.clients.iter().find(|c| normal.starts_with(&c.prefix))
    }

    /// Our JWK Set: the public keys of every client (one per `kid`).
    pub fn jwks(&self) -> serde_json::Value {
        let mut seen = std::collections::BTreeSet::new();
        let keys: Vec<_> = self
            .clients
            .iter()
            .filter(|c| seen.insert(c.settings.kid.clone()))
            .map(|c| c.signer.jwk(&c.settings.kid))
            .collect();
        json!({ "keys": keys })
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &std::path::Path, name: &str, args: &[&str]) -> String {
        let path = dir.join(name);
        let ok = std::process::Command::new("openssl")
            .args(["genpkey", "-quiet", "-out", path.to_str().unwrap()])
            .args(args)
            .status()
            .expect("openssl");
        assert!(ok.success());
        path.display().to_string()
    }

    fn settings(prefix: &str, key_file: String, kid: &str) -> SmartSettings {
        SmartSettings {
            endpoint_prefix: prefix.into(),
            token_url: "https://auth.example.org/token".into(),
            client_id: "adt-router".into(),
            key_file,
            kid: kid.into(),
            scope: "system/Encounter.rs".into(),
            jku: String::new(),
        }
    }

    /// Both algorithms sign assertions that verify against the published JWK (with
    /// ring's verifier, from the JWK's own numbers), with the claims SMART asks for.
    #[test]
    fn assertions_verify_against_the_published_keys() {
        let dir = tempfile::tempdir().unwrap();
        let rsa = key(
            dir.path(),
            "rsa.pem",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        let ec = key(
            dir.path(),
            "ec.pem",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        );
        let clients = SmartClients::load(
            &[
                settings("https://a.example.org/fhir", rsa, "k-rsa"),
                settings("https://b.example.org", ec, "k-ec"),
            ],
            None,
        )
        .unwrap();
        let jwks = clients.jwks();
        for (endpoint, alg) in [
            ("https://a.example.org/fhir/hook", "RS384"),
            ("https://b.example.org/x", "ES384"),
        ] {
            let c = clients.for_endpoint(endpoint).expect("configured");
            let jwt = c.assertion(1_700_000_000).unwrap();
            let parts: Vec<&str> = jwt.split('.').collect();
            assert_eq!(parts.len(), 3);
            let header: serde_json::Value =
                serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
            let claims: serde_json::Value =
                serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
            assert_eq!(header["alg"], alg);
            assert_eq!(header["typ"], "JWT");
            assert_eq!(claims["iss"], "adt-router");
            assert_eq!(claims["sub"], "adt-router");
            assert_eq!(claims["aud"], "https://auth.example.org/token");
            assert!(claims["exp"].as_i64().unwrap() - 1_700_000_000 <= 300);
            let jwk = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == header["kid"])
                .unwrap();
            let sig = B64URL.decode(parts[2]).unwrap();
            let msg = format!("{}.{}", parts[0], parts[1]);
            let d = |f: &str| B64URL.decode(jwk[f].as_str().unwrap()).unwrap();
            let verify = |msg: &[u8]| {
                if alg == "RS384" {
                    signature::RsaPublicKeyComponents {
                        n: d("n"),
                        e: d("e"),
                    }
                    .verify(&signature::RSA_PKCS1_2048_8192_SHA384, msg, &sig)
                    .is_ok()
                } else {
                    let point = [vec![4u8], d("x"), d("y")].concat();
                    signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                        .verify(msg, &sig)
                        .is_ok()
                }
            };
            assert!(verify(msg.as_bytes()), "{alg} signature verifies");
            // A changed claim does not.
            let forged = format!("{}.{}", parts[0], B64URL.encode(b"{\"iss\":\"x\"}"));
            assert!(!verify(forged.as_bytes()), "{alg} forged claims refused");
        }
        // Two assertions never share a jti.
        let c = clients.for_endpoint("https://b.example.org/").unwrap();
        let jti = |j: String| {
            let p: Vec<&str> = j.split('.').collect();
            serde_json::from_slice::<serde_json::Value>(&B64URL.decode(p[1]).unwrap()).unwrap()
                ["jti"]
                .clone()
        };
        assert_ne!(jti(c.assertion(1).unwrap()), jti(c.assertion(1).unwrap()));
    }

    /// Prefixes match by normalised URL: a host prefix does not cover a longer host name.
    #[test]
    fn prefixes_match_whole_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let ec = key(
            dir.path(),
            "ec.pem",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        );
        let clients =
            SmartClients::load(&[settings("https://ehr.example.org", ec, "k")], None).unwrap();
        assert!(clients
            .for_endpoint("https://ehr.example.org/hook")
            .is_some());
        assert!(clients
            .for_endpoint("https://EHR.example.org:443/hook")
            .is_some());
        assert!(clients
            .for_endpoint("https://ehr.example.org.evil.test/hook")
            .is_none());
        assert!(clients
            .for_endpoint("http://ehr.example.org/hook")
            .is_none());
    }

    /// Keys that cannot sign are refused at start, with the reason.
    #[test]
    fn unusable_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p256 = key(
            dir.path(),
            "p256.pem",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let e = SmartClients::load(&[settings("https://x.example.org", p256, "k")], None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("P-384"), "{e}");
        let missing = SmartClients::load(
            &[settings(
                "https://x.example.org",
                "/nonexistent.pem".into(),
                "k",
            )],
            None,
        );
        assert!(missing.is_err());
        let bad_prefix = dir.path().join("p256.pem").display().to_string();
        let e = SmartClients::load(&[settings("ehr.example.org", bad_prefix, "k")], None)
            .err()
            .unwrap();
        assert!(matches!(e, SmartError::Prefix(_)), "{e}");
    }
}

//! The provider directory: who a provider is (NPPES `npidata`), how to reach them (NPPES
//! `endpoint_pfile`), and local overrides that win over both. Resolution picks one
//! endpoint per provider and says why; every value is checked before it can be chosen.

pub mod csvfile;
pub mod endpoint;
pub mod npi;
pub mod nppes;
pub mod overrides;
pub mod progress;
pub mod synth;

use crate::store::{on_pool, Store, StoreError};
use endpoint::{EndpointKind, EndpointPolicy};
use npi::Npi;
use serde::Serialize;
use sqlx::Row;

/// How resolution ranks endpoints: `[delivery]` settings.
#[derive(Clone, Debug)]
pub struct ResolvePolicy {
    pub endpoints: EndpointPolicy,
    /// Channels in order of preference; kinds not listed are never chosen.
    pub channel_order: Vec<EndpointKind>,
}

impl Default for ResolvePolicy {
    fn default() -> Self {
        ResolvePolicy {
            endpoints: EndpointPolicy::default(),
            channel_order: vec![EndpointKind::Direct, EndpointKind::Fhir, EndpointKind::Rest],
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Provider {
    pub npi: String,
    /// `individual`, `organization`, or `unknown` (deactivated rows carry no type).
    pub entity_type: &'static str,
    pub name: String,
    pub credential: String,
    pub primary_taxonomy: String,
    pub practice_address: Address,
    pub last_update_date: String,
    pub deactivated: Option<Deactivation>,
    pub replacement_npi: Option<String>,
    pub source: Source,
}

#[derive(Clone, Debug, Serialize)]
pub struct Address {
    pub line1: String,
    pub city: String,
    pub state: String,
    pub postal_code: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Deactivation {
    pub date: String,
    pub reason_code: String,
}

/// Where a directory fact came from.
#[derive(Clone, Debug, Serialize)]
pub struct Source {
    /// `nppes` or `override`.
    pub kind: &'static str,
    /// The imported file, or for overrides `cli` / the override file.
    pub file: String,
    pub line: Option<i64>,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    /// `full` or `incremental` for NPPES rows.
    pub import_mode: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    pub usable: bool,
    /// Why it cannot be used, when it cannot.
    pub unusable_reason: Option<String>,
    pub preferred: bool,
    pub has_secret: bool,
    /// NPPES: `Y` when the endpoint belongs to another organisation (an HIE, a vendor).
    pub affiliation: Option<String>,
    pub affiliation_name: Option<String>,
    pub use_code: Option<String>,
    pub content_type: Option<String>,
    pub source: Source,
    /// The checked, normalised value (lower-cased Direct address, parsed URL).
    #[serde(skip)]
    pub normalized: Option<String>,
}

/// The endpoint that would be used, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Choice {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    pub source: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct DirectoryEntry {
    pub npi: String,
    pub provider: Option<Provider>,
    pub endpoints: Vec<Endpoint>,
    pub chosen: Option<Choice>,
    /// Why nothing was chosen.
    pub no_endpoint_reason: Option<String>,
}

pub fn rfc3339_us(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

const PROVIDER_SQL: &str = "SELECT p.npi, p.entity_type, p.replacement_npi, p.organization_name, p.last_name, p.first_name, p.middle_name, p.credential, p.primary_taxonomy, p.address_line1, p.city, p.state, p.postal_code, p.last_update_date, p.deactivation_reason, p.deactivation_date, p.reactivation_date, p.source_line, i.file_name, i.mode, COALESCE(i.finished_at_us, i.started_at_us) AS loaded_at_us FROM {table} p JOIN directory_import i ON i.id = p.source_import WHERE p.npi IN ({npis}) ORDER BY p.source_import, p.source_line";

const ENDPOINTS_SQL: &str = "SELECT e.npi, e.endpoint_type, e.endpoint, e.affiliation, e.affiliation_name, e.use_code, e.content_type, e.source_line, i.file_name, i.mode, COALESCE(i.finished_at_us, i.started_at_us) AS loaded_at_us FROM {table} e JOIN directory_import i ON i.id = e.source_import WHERE e.npi IN ({npis}) ORDER BY e.source_import, e.source_line";

const OVERRIDES_SQL: &str = "SELECT npi, endpoint_type, endpoint, secret, preferred, source, updated_at_us FROM directory_override WHERE npi IN ({npis}) ORDER BY id";

macro_rules! get {
    ($r:expr, $name:expr) => {
        $r.try_get($name)?
    };
}

/// Everything the directory knows about one NPI, and the endpoint it would use.
pub async fn lookup(
    store: &Store,
    npi: Npi,
    policy: &ResolvePolicy,
) -> Result<DirectoryEntry, StoreError> {
    let mut all = lookup_many(store, &[npi], policy).await?;
    Ok(all.remove(0))
}

/// [`lookup`] for several NPIs, in the same order, with one query per table whatever
/// their number (attribution resolves every provider of a patient at once).
pub async fn lookup_many(
    store: &Store,
    npis: &[Npi],
    policy: &ResolvePolicy,
) -> Result<Vec<DirectoryEntry>, StoreError> {
    if npis.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<&str> = npis.iter().map(|n| n.as_str()).collect();
    let list = (1..=keys.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let active: Vec<(String, i64)> = on_pool!(store, |p, _sql| {
        sqlx::query_as("SELECT kind, snapshot FROM directory_active")
            .fetch_all(p)
            .await?
    });
    let snapshot = |kind: nppes::FileKind| {
        active
            .iter()
            .find(|(k, _)| k == kind.as_str())
            .map(|(_, id)| nppes::table(kind, *id))
    };
    let fill = |q: &str, t: String| q.replace("{table}", &t).replace("{npis}", &list);
    let provider_sql = snapshot(nppes::FileKind::Npidata).map(|t| fill(PROVIDER_SQL, t));
    let endpoints_sql = snapshot(nppes::FileKind::Endpoints).map(|t| fill(ENDPOINTS_SQL, t));
    let overrides_sql = OVERRIDES_SQL.replace("{npis}", &list);
    let mut providers: Vec<Provider> = Vec::new();
    on_pool!(store, |p, sql| {
        let rows = match &provider_sql {
            Some(q) => {
                let sql = sql(q);
                let mut query = sqlx::query(&sql);
                for k in &keys {
                    query = query.bind(*k);
                }
                query.fetch_all(p).await?
            }
            None => Vec::new(),
        };
        for r in rows {
            {
                let entity: String = get!(r, "entity_type");
                let org: String = get!(r, "organization_name");
                let (last, first, middle): (String, String, String) = (
                    get!(r, "last_name"),
                    get!(r, "first_name"),
                    get!(r, "middle_name"),
                );
                let name = if !org.is_empty() {
                    org
                } else {
                    [first, middle, last]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let deact: String = get!(r, "deactivation_date");
                let react: String = get!(r, "reactivation_date");
                // ISO dates compare as strings. Reactivated after the deactivation: active.
                let deactivated = (!deact.is_empty() && react.as_str() < deact.as_str())
                    .then(|| -> Result<Deactivation, sqlx::Error> {
                        Ok(Deactivation {
                            date: deact.clone(),
                            reason_code: get!(r, "deactivation_reason"),
                        })
                    })
                    .transpose()?;
                let replacement: String = get!(r, "replacement_npi");
                providers.push(Provider {
                    npi: get!(r, "npi"),
                    entity_type: match entity.as_str() {
                        "1" => "individual",
                        "2" => "organization",
                        _ => "unknown",
                    },
                    name,
                    credential: get!(r, "credential"),
                    primary_taxonomy: get!(r, "primary_taxonomy"),
                    practice_address: Address {
                        line1: get!(r, "address_line1"),
                        city: get!(r, "city"),
                        state: get!(r, "state"),
                        postal_code: get!(r, "postal_code"),
                    },
                    last_update_date: get!(r, "last_update_date"),
                    deactivated,
                    replacement_npi: (!replacement.is_empty()).then_some(replacement),
                    source: Source {
                        kind: "nppes",
                        file: get!(r, "file_name"),
                        line: Some(get!(r, "source_line")),
                        loaded_at: rfc3339_us(get!(r, "loaded_at_us")),
                        import_mode: Some(get!(r, "mode")),
                    },
                });
            }
        }
    });
    // (npi, endpoint): overrides first, then NPPES, each in their query's order.
    let mut endpoints: Vec<(String, Endpoint)> = Vec::new();
    on_pool!(store, |p, sql| {
        let q = sql(&overrides_sql);
        let mut query = sqlx::query(&q);
        for k in &keys {
            query = query.bind(*k);
        }
        for r in query.fetch_all(p).await? {
            let secret: Option<String> = get!(r, "secret");
            endpoints.push((
                get!(r, "npi"),
                endpoint(
                    get!(r, "endpoint_type"),
                    get!(r, "endpoint"),
                    get!(r, "preferred"),
                    secret.is_some_and(|s| !s.is_empty()),
                    None,
                    Source {
                        kind: "override",
                        file: get!(r, "source"),
                        line: None,
                        loaded_at: rfc3339_us(get!(r, "updated_at_us")),
                        import_mode: None,
                    },
                    policy,
                ),
            ));
        }
        let rows = match &endpoints_sql {
            Some(q) => {
                let sql = sql(q);
                let mut query = sqlx::query(&sql);
                for k in &keys {
                    query = query.bind(*k);
                }
                query.fetch_all(p).await?
            }
            None => Vec::new(),
        };
        for r in rows {
            endpoints.push((
                get!(r, "npi"),
                endpoint(
                    get!(r, "endpoint_type"),
                    get!(r, "endpoint"),
                    false,
                    false,
                    Some((
                        get!(r, "affiliation"),
                        get!(r, "affiliation_name"),
                        get!(r, "use_code"),
                        get!(r, "content_type"),
                    )),
                    Source {
                        kind: "nppes",
                        file: get!(r, "file_name"),
                        line: Some(get!(r, "source_line")),
                        loaded_at: rfc3339_us(get!(r, "loaded_at_us")),
                        import_mode: Some(get!(r, "mode")),
                    },
                    policy,
                ),
            ));
        }
    });
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        // Several rows for one NPI (a file listing it twice): the last one loaded wins.
        let provider = providers.iter().rev().find(|p| p.npi == key).cloned();
        let mine: Vec<Endpoint> = endpoints
            .iter()
            .filter(|(n, _)| n == key)
            .map(|(_, e)| e.clone())
            .collect();
        let (chosen, no_endpoint_reason) = choose(provider.as_ref(), &mine, policy);
        out.push(DirectoryEntry {
            npi: key.to_string(),
            provider,
            endpoints: mine,
            chosen,
            no_endpoint_reason,
        });
    }
    Ok(out)
}

fn endpoint(
    kind: String,
    value: String,
    preferred: bool,
    has_secret: bool,
    nppes: Option<(String, String, String, String)>,
    source: Source,
    policy: &ResolvePolicy,
) -> Endpoint {
    let checked = match EndpointKind::parse(&kind) {
        Some(k) if !policy.channel_order.contains(&k) => {
            Err(format!("{} is not in delivery.channel_order", k.as_str()))
        }
        Some(k) => endpoint::check(k, &value, policy.endpoints),
        None => Err(format!("unknown endpoint type '{kind}'")),
    };
    let (affiliation, affiliation_name, use_code, content_type) = match nppes {
        Some((a, n, u, c)) => (Some(a), Some(n), Some(u), Some(c)),
        None => (None, None, None, None),
    };
    let (normalized, unusable_reason) = match checked {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    Endpoint {
        kind,
        value,
        usable: normalized.is_some(),
        unusable_reason,
        normalized,
        preferred,
        has_secret,
        affiliation,
        affiliation_name,
        use_code,
        content_type,
        source,
    }
}

/// Overrides first (a preferred one before the rest), then NPPES, each in channel
/// order; never a deactivated NPI.
fn choose(
    provider: Option<&Provider>,
    endpoints: &[Endpoint],
    policy: &ResolvePolicy,
) -> (Option<Choice>, Option<String>) {
    if let Some(d) = provider.and_then(|p| p.deactivated.as_ref()) {
        let repl = provider
            .and_then(|p| p.replacement_npi.as_deref())
            .map(|r| format!("; NPPES names replacement NPI {r}"))
            .unwrap_or_default();
        return (
            None,
            Some(format!(
                "NPI deactivated on {} (reason code '{}'){repl}",
                d.date, d.reason_code
            )),
        );
    }
    let rank = |e: &Endpoint| {
        let channel = EndpointKind::parse(&e.kind)
            .and_then(|k| policy.channel_order.iter().position(|c| *c == k))
            .unwrap_or(usize::MAX);
        (e.source.kind != "override", !e.preferred, channel)
    };
    let best = endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.usable)
        .min_by_key(|(i, e)| (rank(e), *i));
    match best {
        Some((_, e)) => {
            let why = match (e.source.kind, e.preferred) {
                ("override", true) => "preferred local override".to_string(),
                ("override", false) => "local override (wins over NPPES)".to_string(),
                _ => format!(
                    "NPPES endpoint, first usable in channel order {}",
                    policy
                        .channel_order
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(" > ")
                ),
            };
            let value = e.normalized.clone().unwrap_or_else(|| e.value.clone());
            (
                Some(Choice {
                    kind: e.kind.clone(),
                    value,
                    source: e.source.kind,
                    reason: why,
                }),
                None,
            )
        }
        None if provider.is_none() && endpoints.is_empty() => (
            None,
            Some("NPI is not in the directory and has no override".into()),
        ),
        None if endpoints.is_empty() => (
            None,
            Some("no endpoint listed in NPPES and no override".into()),
        ),
        None => (
            None,
            Some(format!(
                "none of the {} endpoints is usable: {}",
                endpoints.len(),
                endpoints
                    .iter()
                    .filter_map(|e| e.unusable_reason.as_deref())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        ),
    }
}

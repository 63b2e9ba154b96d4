//! The provider directory: who a provider is (NPPES `npidata`), how to reach them (NPPES
//! `endpoint_pfile`), and local overrides that win over both. Resolution picks one
//! endpoint per provider and says why; every value is checked before it can be chosen.

pub mod config;
pub mod csvfile;
pub mod endpoint;
pub mod npi;
pub mod nppes;
pub mod overrides;
pub mod progress;
pub mod synth;

use crate::store::directory::{DirectoryRows, EndpointRow, OverrideRow, ProviderRow};
use crate::store::{Store, StoreError};
use endpoint::{EndpointKind, EndpointPolicy};
use npi::Npi;
use serde::Serialize;
use std::collections::HashMap;

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

/// The live snapshot ids, `(kind, import id)`.
pub use crate::store::directory::ActiveSnapshots;

/// Everything the directory knows about one NPI, and the endpoint it would use.
pub async fn lookup(
    store: &Store,
    npi: Npi,
    policy: &ResolvePolicy,
) -> Result<DirectoryEntry, StoreError> {
    let active = store.active_snapshots().await?;
    let mut all = lookup_many(store, &active, &[npi], policy).await?;
    Ok(all.remove(0))
}

/// [`lookup`] for several NPIs, in the same order, in one query (attribution resolves
/// every provider of a patient at once).
pub async fn lookup_many(
    store: &Store,
    active: &ActiveSnapshots,
    npis: &[Npi],
    policy: &ResolvePolicy,
) -> Result<Vec<DirectoryEntry>, StoreError> {
    if npis.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<&str> = npis.iter().map(|n| n.as_str()).collect();
    let DirectoryRows {
        providers,
        endpoints: nppes_endpoints,
        overrides,
    } = store.directory_rows(active, &keys).await?;
    // Each NPI's rows in load order (a page asks for hundreds of NPIs at once).
    let mut latest: HashMap<&str, &ProviderRow> = HashMap::new();
    for p in &providers {
        latest.insert(&p.npi, p);
    }
    let mut by_npi: HashMap<&str, (Vec<&OverrideRow>, Vec<&EndpointRow>)> = HashMap::new();
    for o in &overrides {
        by_npi.entry(&o.npi).or_default().0.push(o);
    }
    for e in &nppes_endpoints {
        by_npi.entry(&e.npi).or_default().1.push(e);
    }
    let none = (Vec::new(), Vec::new());

    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        // Several rows for one NPI (a file listing it twice): the last one loaded wins.
        let provider = latest.get(key).map(|p| provider(p));
        let (my_overrides, my_endpoints) = by_npi.get(key).unwrap_or(&none);
        let mut mine: Vec<Endpoint> = Vec::new();
        for o in my_overrides {
            let preferred = o
                .preferred
                .as_bool()
                .unwrap_or(o.preferred.as_i64() == Some(1));
            mine.push(endpoint(
                o.endpoint_type.clone(),
                o.endpoint.clone(),
                preferred,
                o.secret.as_ref().is_some_and(|s| !s.is_empty()),
                None,
                Source {
                    kind: "override",
                    file: o.source.clone(),
                    line: None,
                    loaded_at: rfc3339_us(o.updated_at_us),
                    import_mode: None,
                },
                policy,
            ));
        }
        for e in my_endpoints {
            mine.push(endpoint(
                e.endpoint_type.clone(),
                e.endpoint.clone(),
                false,
                false,
                Some((
                    e.affiliation.clone(),
                    e.affiliation_name.clone(),
                    e.use_code.clone(),
                    e.content_type.clone(),
                )),
                Source {
                    kind: "nppes",
                    file: e.file_name.clone(),
                    line: Some(e.source_line),
                    loaded_at: rfc3339_us(e.loaded_at_us),
                    import_mode: Some(e.mode.clone()),
                },
                policy,
            ));
        }
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

fn provider(r: &ProviderRow) -> Provider {
    let name = if !r.organization_name.is_empty() {
        r.organization_name.clone()
    } else {
        [&r.first_name, &r.middle_name, &r.last_name]
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    };
    // ISO dates compare as strings. Reactivated after the deactivation: active.
    let deactivated = (!r.deactivation_date.is_empty()
        && r.reactivation_date.as_str() < r.deactivation_date.as_str())
    .then(|| Deactivation {
        date: r.deactivation_date.clone(),
        reason_code: r.deactivation_reason.clone(),
    });
    Provider {
        npi: r.npi.clone(),
        entity_type: match r.entity_type.as_str() {
            "1" => "individual",
            "2" => "organization",
            _ => "unknown",
        },
        name,
        credential: r.credential.clone(),
        primary_taxonomy: r.primary_taxonomy.clone(),
        practice_address: Address {
            line1: r.address_line1.clone(),
            city: r.city.clone(),
            state: r.state.clone(),
            postal_code: r.postal_code.clone(),
        },
        last_update_date: r.last_update_date.clone(),
        deactivated,
        replacement_npi: (!r.replacement_npi.is_empty()).then(|| r.replacement_npi.clone()),
        source: Source {
            kind: "nppes",
            file: r.file_name.clone(),
            line: Some(r.source_line),
            loaded_at: rfc3339_us(r.loaded_at_us),
            import_mode: Some(r.mode.clone()),
        },
    }
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
        Some(k) => endpoint::check(k, &value, policy.endpoints).map_err(|e| e.to_string()),
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

/// The one endpoint ranking, for `directory show` and routing alike: the usable
/// endpoints, overrides first, a preferred one before the rest, then by
/// `channel_rank` of their type (`None`: not eligible), then as listed.
pub fn ranked(
    endpoints: &[Endpoint],
    channel_rank: impl Fn(&str) -> Option<usize>,
) -> Vec<&Endpoint> {
    let mut out: Vec<(bool, bool, usize, &Endpoint)> = endpoints
        .iter()
        .filter(|e| e.usable)
        .filter_map(|e| {
            channel_rank(&e.kind).map(|r| (e.source.kind != "override", !e.preferred, r, e))
        })
        .collect();
    // Stable: ties keep the listed order.
    out.sort_by_key(|(o, p, r, _)| (*o, *p, *r));
    out.into_iter().map(|(_, _, _, e)| e).collect()
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
    let best = ranked(endpoints, |kind| {
        Some(
            EndpointKind::parse(kind)
                .and_then(|k| policy.channel_order.iter().position(|c| *c == k))
                .unwrap_or(usize::MAX),
        )
    })
    .into_iter()
    .next();
    match best {
        Some(e) => {
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

//! Who must hear about this patient: providers named in the message (PD1-4, ROL) and
//! providers attributed by rosters, each with its provenance, then the endpoint the
//! directory would use for each. Wrong recipient is a privacy breach and no recipient a
//! missed CoP notification, so every decision carries its reason.

pub mod matching;
pub mod roster;

use crate::directory::npi::Npi;
use crate::directory::{self, DirectoryEntry, ResolvePolicy};
use crate::hl7::patient::PatientFacts;
use crate::store::{Store, StoreError};
use matching::{Demographics, MatchPolicy};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// `[attribution]` settings.
#[derive(Clone, Debug)]
pub struct AttributionPolicy {
    pub matching: MatchPolicy,
    /// ROL-3 role codes that attribute, and the relationship each means.
    pub rol_roles: HashMap<String, String>,
    /// Accept a 10-digit id that passes the NPI check even when the XCN does not say it
    /// is an NPI. Off: local doctor numbers pass the check one time in ten.
    pub accept_unlabelled_npi: bool,
    pub resolve: ResolvePolicy,
}

impl Default for AttributionPolicy {
    fn default() -> Self {
        AttributionPolicy {
            matching: MatchPolicy::default(),
            rol_roles: HashMap::from([("PP".to_string(), "pcp".to_string())]),
            accept_unlabelled_npi: false,
            resolve: ResolvePolicy::default(),
        }
    }
}

/// Why a provider was chosen: one entry per roster row or message field.
#[derive(Clone, Debug, Serialize)]
pub struct Provenance {
    /// `roster` or `message`.
    pub kind: &'static str,
    pub relationship: String,
    /// Roster source name.
    pub source: Option<String>,
    pub roster_import_id: Option<i64>,
    pub roster_line: Option<i64>,
    pub loaded_at: Option<String>,
    /// `identifier` or `demographic`.
    pub matched_by: Option<&'static str>,
    pub score: Option<f64>,
    /// `PD1-4` or `ROL-4`, and the segment's position.
    pub field: Option<&'static str>,
    pub segment_index: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AttributedProvider {
    pub npi: String,
    pub relationships: Vec<String>,
    pub provenance: Vec<Provenance>,
    pub directory: DirectoryEntry,
}

#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub matched_by: &'static str,
    pub score: Option<f64>,
    pub reasons: Vec<String>,
    pub chosen: bool,
    /// Roster lines of this candidate (one per attributed provider).
    pub roster_lines: Vec<i64>,
    pub family: String,
    pub given: String,
    pub birth_date: String,
}

/// What one roster source decided for this patient.
#[derive(Clone, Debug, Serialize)]
pub struct SourceDecision {
    pub source: String,
    /// `identifier`, `demographic`, `ambiguous`, `no_match`, or `conflict`.
    pub outcome: &'static str,
    pub reason: String,
    pub candidates: Vec<Candidate>,
}

/// A provider named in the message that was not used, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Unused {
    pub id: String,
    pub field: &'static str,
    pub segment_index: usize,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Attribution {
    pub rosters: Vec<SourceDecision>,
    pub providers: Vec<AttributedProvider>,
    pub unused_message_providers: Vec<Unused>,
}

/// Deserialised from a JSON array in [`ROW_COLUMNS`] order.
#[derive(serde::Deserialize)]
struct RosterRow {
    source: String,
    patient_id: String,
    authority: String,
    family: String,
    given: String,
    norm_family: String,
    norm_given: String,
    birth_date: String,
    sex: String,
    postal_code: String,
    npi: String,
    relationship: String,
    effective_from: String,
    effective_to: String,
    import_id: i64,
    line: i64,
    loaded_at_us: i64,
}

const ROW_COLUMNS: &str = "source, patient_id, assigning_authority, family, given, norm_family, norm_given, birth_date, sex, postal_code, provider_npi, relationship, effective_from, effective_to, import_id, line, loaded_at_us";

/// Roster rows matching `where_clause`, and the directory's live snapshots, in one
/// query (see [`directory::json_rows`]).
async fn fetch(
    store: &Store,
    where_clause: &str,
    args: &[&str],
) -> Result<(Vec<RosterRow>, directory::ActiveSnapshots), StoreError> {
    let query = format!(
        "SELECT {}, {}",
        directory::json_rows(
            store,
            ROW_COLUMNS,
            &format!("roster_entry WHERE {where_clause}")
        ),
        directory::active_json(store)
    );
    let row = store
        .text_row(&query, args.iter().map(|a| a.to_string()).collect(), 2)
        .await?;
    let (rows, active) = (&row[0], &row[1]);
    Ok((directory::decode(rows)?, directory::decode(active)?))
}

impl RosterRow {
    /// A row's identity: the import that wrote it last, and its line there.
    fn key(&self) -> (i64, i64) {
        (self.import_id, self.line)
    }
}

fn in_effect(r: &RosterRow, day: &str) -> bool {
    (r.effective_from.is_empty() || r.effective_from.as_str() <= day)
        && (r.effective_to.is_empty() || r.effective_to.as_str() >= day)
}

/// Attributes providers to the patient in `facts` and resolves their endpoints.
pub async fn attribute(
    store: &Store,
    facts: &PatientFacts,
    policy: &AttributionPolicy,
) -> Result<Attribution, StoreError> {
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let day = facts.event_date.clone().unwrap_or(today);
    // Candidate rows: by identifier (either half of the assigning authority), and by
    // birth date for the demographic fallback.
    // Identifiers (either half of the assigning authority) and, for the
    // demographic fallback, the birth date: one query for all of them.
    let mut conds = Vec::new();
    let mut args: Vec<String> = Vec::new();
    let mut ids: Vec<(String, String, String)> = Vec::new();
    for ident in &facts.identifiers {
        let ns = ident.authority_namespace.to_ascii_uppercase();
        let uni = ident.authority_universal.to_ascii_uppercase();
        if ns.is_empty() && uni.is_empty() {
            continue;
        }
        let k = args.len();
        conds.push(format!(
            "(patient_id = ${} AND assigning_authority IN (${}, ${}))",
            k + 1,
            k + 2,
            k + 3
        ));
        args.extend([ident.id.clone(), ns.clone(), uni.clone()]);
        ids.push((ident.id.clone(), ns, uni));
    }
    if let Some(d) = &facts.birth_date {
        conds.push(format!("birth_date = ${}", args.len() + 1));
        args.push(d.clone());
    }
    if conds.is_empty() {
        conds.push("FALSE".into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (rows, active) = fetch(store, &conds.join(" OR "), &refs).await?;
    let by_id: Vec<&RosterRow> = rows
        .iter()
        .filter(|r| {
            ids.iter().any(|(id, ns, uni)| {
                r.patient_id == *id && (r.authority == *ns || r.authority == *uni)
            })
        })
        .collect();
    let by_dob: Vec<&RosterRow> = rows
        .iter()
        .filter(|r| facts.birth_date.as_ref() == Some(&r.birth_date))
        .collect();
    let msg = Demographics::new(
        &facts.family,
        &facts.given,
        facts.birth_date.as_deref().unwrap_or(""),
        &facts.sex,
        &facts.postal_code,
    );

    let mut sources: BTreeMap<String, ()> = BTreeMap::new();
    for r in by_id.iter().chain(&by_dob) {
        sources.insert(r.source.clone(), ());
    }
    let mut decisions = Vec::new();
    let mut chosen_rows: Vec<(&RosterRow, &'static str, Option<f64>)> = Vec::new();
    for source in sources.keys() {
        let ids: Vec<&RosterRow> = by_id
            .iter()
            .copied()
            .filter(|r| &r.source == source)
            .collect();
        if !ids.is_empty() {
            // Deterministic, unless the roster's own birth date contradicts it.
            let (ok, conflict): (Vec<&RosterRow>, Vec<&RosterRow>) =
                ids.into_iter().partition(|r| {
                    r.birth_date.is_empty()
                        || facts.birth_date.is_none()
                        || Some(&r.birth_date) == facts.birth_date.as_ref()
                });
            let live: Vec<&RosterRow> = ok.iter().copied().filter(|r| in_effect(r, &day)).collect();
            // `ids` is not empty, so with no usable row every row is a conflict.
            if ok.is_empty() {
                decisions.push(SourceDecision {
                    source: source.clone(),
                    outcome: "conflict",
                    reason: "identifier matches but the roster's birth date differs from the message; not used".into(),
                    candidates: group(&conflict, "identifier", None, &[]),
                });
                continue;
            }
            let candidates = group(&ok, "identifier", None, &live);
            let reason = if live.is_empty() {
                format!("identifier match, but no roster row is in effect on {day}")
            } else {
                "patient identifier and assigning authority match".to_string()
            };
            chosen_rows.extend(live.iter().map(|r| (*r, "identifier", None)));
            decisions.push(SourceDecision {
                source: source.clone(),
                outcome: "identifier",
                reason,
                candidates,
            });
            continue;
        }
        // Demographic fallback: group this source's same-birth-date rows by person.
        let rows: Vec<&RosterRow> = by_dob
            .iter()
            .copied()
            .filter(|r| &r.source == source)
            .collect();
        let mut people: Vec<Vec<&RosterRow>> = Vec::new();
        for r in rows {
            let same = |x: &&RosterRow| {
                x.patient_id == r.patient_id
                    && x.authority == r.authority
                    && x.norm_family == r.norm_family
                    && x.norm_given == r.norm_given
                    && x.sex == r.sex
                    && x.postal_code == r.postal_code
            };
            match people.iter_mut().find(|p| same(&p[0])) {
                Some(p) => p.push(r),
                None => people.push(vec![r]),
            }
        }
        let scored: Vec<matching::Score> = people
            .iter()
            .map(|p| {
                let c = p[0];
                matching::score(
                    &msg,
                    &Demographics::normalized(
                        &c.norm_family,
                        &c.norm_given,
                        &c.birth_date,
                        &c.sex,
                        &c.postal_code,
                    ),
                )
            })
            .collect();
        let values: Vec<f64> = scored.iter().map(|s| s.score).collect();
        let decision = matching::decide(&values, policy.matching);
        let mut candidates = Vec::new();
        for (i, (p, s)) in people.iter().zip(&scored).enumerate() {
            let chosen = decision.as_ref().is_ok_and(|&b| b == i);
            let live: Vec<&RosterRow> = p.iter().copied().filter(|r| in_effect(r, &day)).collect();
            if chosen {
                chosen_rows.extend(live.iter().map(|r| (*r, "demographic", Some(s.score))));
            }
            let mut c = group(
                p,
                "demographic",
                Some(s.score),
                if chosen { &live } else { &[] },
            );
            let mut c = c.remove(0);
            c.reasons = s.reasons.clone();
            candidates.push(c);
        }
        candidates.sort_by(|a, b| b.score.unwrap_or(0.0).total_cmp(&a.score.unwrap_or(0.0)));
        let (outcome, reason) = match decision {
            Ok(_) => (
                "demographic",
                "demographic match above threshold, clear of the next candidate".to_string(),
            ),
            Err(r) if r.starts_with("ambiguous") => ("ambiguous", r),
            Err(r) => ("no_match", r),
        };
        decisions.push(SourceDecision {
            source: source.clone(),
            outcome,
            reason,
            candidates,
        });
    }

    // Providers: roster rows chosen above, then the message's own PD1-4 / ROL.
    let mut providers: Vec<(String, Vec<Provenance>)> = Vec::new();
    let mut add = |npi: &str, p: Provenance| match providers.iter_mut().find(|(n, _)| n == npi) {
        Some((_, v)) => v.push(p),
        None => providers.push((npi.to_string(), vec![p])),
    };
    for (r, by, score) in chosen_rows {
        add(
            &r.npi,
            Provenance {
                kind: "roster",
                relationship: r.relationship.clone(),
                source: Some(r.source.clone()),
                roster_import_id: Some(r.import_id),
                roster_line: Some(r.line),
                loaded_at: Some(directory::rfc3339_us(r.loaded_at_us)),
                matched_by: Some(by),
                score,
                field: None,
                segment_index: None,
            },
        );
    }
    let mut unused = Vec::new();
    for p in &facts.providers {
        let relationship = if p.field == "PD1-4" {
            Some("pcp".to_string())
        } else {
            policy.rol_roles.get(&p.role_code).cloned()
        };
        let Some(relationship) = relationship else {
            unused.push(Unused {
                id: p.id.clone(),
                field: p.field,
                segment_index: p.segment_index,
                reason: format!(
                    "ROL role '{}' is not configured to attribute (attribution.rol_roles)",
                    p.role_code
                ),
            });
            continue;
        };
        if let Err(e) = Npi::parse(&p.id) {
            unused.push(Unused {
                id: p.id.clone(),
                field: p.field,
                segment_index: p.segment_index,
                reason: format!("not an NPI: {e}"),
            });
            continue;
        }
        if !p.labelled_npi && !policy.accept_unlabelled_npi {
            unused.push(Unused {
                id: p.id.clone(),
                field: p.field,
                segment_index: p.segment_index,
                reason: "passes the NPI check but the XCN does not say NPI (attribution.accept_unlabelled_npi is off)".into(),
            });
            continue;
        }
        add(
            &p.id,
            Provenance {
                kind: "message",
                relationship,
                source: None,
                roster_import_id: None,
                roster_line: None,
                loaded_at: None,
                matched_by: None,
                score: None,
                field: Some(p.field),
                segment_index: Some(p.segment_index),
            },
        );
    }
    let npis: Vec<Npi> = providers
        .iter()
        .filter_map(|(n, _)| Npi::parse(n).ok())
        .collect();
    let mut entries = directory::lookup_many(store, &active, &npis, &policy.resolve)
        .await?
        .into_iter();
    let mut out = Vec::new();
    for (npi, provenance) in providers {
        if Npi::parse(&npi).is_err() {
            continue;
        }
        let Some(directory) = entries.next() else {
            break;
        };
        let mut relationships: Vec<String> =
            provenance.iter().map(|p| p.relationship.clone()).collect();
        relationships.sort();
        relationships.dedup();
        out.push(AttributedProvider {
            directory,
            npi,
            relationships,
            provenance,
        });
    }
    Ok(Attribution {
        rosters: decisions,
        providers: out,
        unused_message_providers: unused,
    })
}

/// One candidate per person (rows with the same demographics), for explanations.
fn group(
    rows: &[&RosterRow],
    by: &'static str,
    score: Option<f64>,
    chosen: &[&RosterRow],
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for r in rows {
        let is_chosen = chosen.iter().any(|c| c.key() == r.key());
        match out
            .iter_mut()
            .find(|c| c.family == r.family && c.given == r.given && c.birth_date == r.birth_date)
        {
            Some(c) => {
                c.roster_lines.push(r.line);
                c.chosen |= is_chosen;
            }
            None => out.push(Candidate {
                matched_by: by,
                score,
                reasons: if by == "identifier" {
                    vec![format!("patient_id matches in authority {}", r.authority)]
                } else {
                    Vec::new()
                },
                chosen: is_chosen,
                roster_lines: vec![r.line],
                family: r.family.clone(),
                given: r.given.clone(),
                birth_date: r.birth_date.clone(),
            }),
        }
    }
    out
}

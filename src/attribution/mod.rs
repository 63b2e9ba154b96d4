//! Who must hear about this patient: providers named in the message (PD1-4, ROL) and
//! providers attributed by rosters, each with its provenance, then the endpoint the
//! directory would use for each. Wrong recipient is a privacy breach and no recipient a
//! missed CoP notification, so every decision carries its reason.

pub mod config;
pub mod matching;
pub mod roster;

use crate::directory::npi::Npi;
use crate::directory::{self, DirectoryEntry, ResolvePolicy};
use crate::hl7::patient::PatientFacts;
use crate::store::roster::RosterRow;
use crate::store::{Store, StoreError};
use matching::{Demographics, MatchPolicy};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

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

/// A filter on the demographic columns ([`crate::store::roster::DEMOGRAPHICS`]) passing the roster rows that can change the match of
/// one of `patients` ([`matching::can_matter`]); the others cannot be chosen or make a
/// choice ambiguous. Most rows sharing a birth date are nobody's match.
fn could_match(patients: &[&PatientFacts], policy: MatchPolicy) -> crate::store::Keep {
    let mut by_date: HashMap<String, Vec<Demographics>> = HashMap::new();
    for f in patients {
        if let Some(d) = &f.birth_date {
            let msg = Demographics::new(&f.family, &f.given, d, &f.sex, &f.postal_code);
            by_date.entry(d.clone()).or_default().push(msg);
        }
    }
    std::sync::Arc::new(move |c: &[&str]| {
        let row = matching::View {
            birth_date: c[0],
            family: c[1],
            given: c[2],
            sex: c[3],
            postal_code: c[4],
        };
        by_date.get(c[0]).is_some_and(|msgs| {
            msgs.iter()
                .any(|m| matching::can_matter(matching::points(m, &row), policy))
        })
    })
}

/// A patient's identifiers as the roster keeps them: (id, namespace, universal id),
/// authorities upper case; identifiers with no authority are left out.
fn roster_ids(facts: &PatientFacts) -> Vec<(&str, String, String)> {
    facts
        .identifiers
        .iter()
        .map(|i| {
            (
                i.id.as_str(),
                i.authority_namespace.to_ascii_uppercase(),
                i.authority_universal.to_ascii_uppercase(),
            )
        })
        .filter(|(_, ns, uni)| !(ns.is_empty() && uni.is_empty()))
        .collect()
}

/// Whether `r` is one of `ids` ([`roster_ids`]) in its assigning authority.
fn is_identified(r: &RosterRow, ids: &[(&str, String, String)]) -> bool {
    ids.iter()
        .any(|(id, ns, uni)| r.patient_id == *id && (r.authority == *ns || r.authority == *uni))
}

impl RosterRow {
    /// A row's identity: the import that wrote it last, and its line there.
    fn key(&self) -> (i64, i64) {
        (self.import_id, self.line)
    }

    fn view(&self) -> matching::View<'_> {
        matching::View {
            family: &self.norm_family,
            given: &self.norm_given,
            birth_date: &self.birth_date,
            sex: &self.sex,
            postal_code: &self.postal_code,
        }
    }
}

/// How much of the decision to keep: all of it for `attribution explain` and the API,
/// only the providers for routing (which reads nothing else, and asks per page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    Full,
    ProvidersOnly,
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
    let mut all = attribute_many(store, &[facts], policy, Detail::Full).await?;
    Ok(all.remove(0))
}

/// Patients per roster query: a page of messages asks in a few queries, not one per
/// patient (the query's fixed cost was most of attribution's).
const PATIENTS_PER_QUERY: usize = 200;

/// [`attribute`] for several patients, in the same order: one roster query per
/// [`PATIENTS_PER_QUERY`] patients and one directory query for all their providers.
pub async fn attribute_many(
    store: &Store,
    patients: &[&PatientFacts],
    policy: &AttributionPolicy,
    detail: Detail,
) -> Result<Vec<Attribution>, StoreError> {
    let mut matched = Vec::with_capacity(patients.len());
    let active = store.active_snapshots().await?;
    // Every source that has ever loaded a roster (a superset of those with rows).
    let sources: Vec<String> = store.roster_sources().await?;
    for chunk in patients.chunks(PATIENTS_PER_QUERY) {
        let ids: Vec<Vec<(&str, String, String)>> = chunk.iter().map(|f| roster_ids(f)).collect();
        // First by identifier (either half of the assigning authority; an empty half
        // is never looked up: the roster refuses an identifier without authority)...
        // One `IN` list of the identifiers, their authorities checked here: an `OR` of
        // (identifier, authority) terms took SQLite longer to prepare than to run, and
        // its text changed with every page, so it was prepared every time.
        let mut wanted: HashSet<(&str, &str)> = HashSet::new();
        for (id, ns, uni) in ids.iter().flatten() {
            for a in [ns, uni].into_iter().filter(|a| !a.is_empty()) {
                wanted.insert((id, a));
            }
        }
        let mut args: Vec<String> = wanted.iter().map(|(id, _)| id.to_string()).collect();
        args.sort_unstable();
        args.dedup();
        let id_rows: Vec<RosterRow> = store
            .roster_rows_by_patient_id(args)
            .await?
            .into_iter()
            .filter(|r| wanted.contains(&(r.patient_id.as_str(), r.authority.as_str())))
            .collect();
        let mut by_patient: HashMap<&str, Vec<&RosterRow>> = HashMap::new();
        for r in &id_rows {
            by_patient.entry(&r.patient_id).or_default().push(r);
        }
        let none = Vec::new();
        let identified: Vec<Vec<&RosterRow>> = ids
            .iter()
            .map(|ids| {
                ids.iter()
                    .flat_map(|(id, _, _)| by_patient.get(id).unwrap_or(&none))
                    .copied()
                    .filter(|r| is_identified(r, ids))
                    .collect()
            })
            .collect();
        // ...then, for the demographic fallback, by birth date in the sources where
        // the identifier did not match (an identifier match never looks further):
        // nothing when it matched in every source. Separate queries, not one OR: in
        // SQLite an OR of such terms cost several times the queries on their own.
        // Birth dates to read in every source, by the sex the rows may have: routing
        // leaves out the other sex when no such candidate can change the decision
        // (`matching::other_sex_can_matter`); those rows were most of what it read.
        let skip_other_sex =
            detail == Detail::ProvidersOnly && !matching::other_sex_can_matter(policy.matching);
        let mut anywhere: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let mut excluding = Vec::new();
        for (facts, found) in chunk.iter().zip(&identified) {
            let Some(d) = &facts.birth_date else {
                continue;
            };
            let mut matched: Vec<&str> = found.iter().map(|r| r.source.as_str()).collect();
            matched.sort_unstable();
            matched.dedup();
            if matched.is_empty() {
                let sex = match skip_other_sex {
                    true => matching::normalize_sex(&facts.sex),
                    false => "",
                };
                let dates = anywhere.entry(sex).or_default();
                if !dates.contains(d) {
                    dates.push(d.clone());
                }
            } else if sources.iter().any(|s| !matched.contains(&s.as_str())) {
                let matched = matched.iter().map(|m| m.to_string()).collect();
                excluding.push((d.clone(), matched));
            }
        }
        // Routing builds only the rows that can change some patient's decision;
        // explanations build them all.
        let keep = match detail {
            Detail::ProvidersOnly => Some(could_match(chunk, policy.matching)),
            Detail::Full => None,
        };
        let mut dob_rows: Vec<RosterRow> = Vec::new();
        for (sex, dates) in anywhere {
            // The roster keeps sex normalised: M, F, or empty for unknown.
            let sex = (!sex.is_empty()).then_some(sex);
            dob_rows.extend(store.roster_rows_born(dates, sex, keep.clone()).await?);
        }
        if !excluding.is_empty() {
            dob_rows.extend(store.roster_rows_born_outside(excluding, keep).await?);
        }
        let mut by_dob: HashMap<&str, Vec<&RosterRow>> = HashMap::new();
        for r in id_rows.iter().chain(&dob_rows) {
            by_dob.entry(&r.birth_date).or_default().push(r);
        }
        for ((facts, ids), found) in chunk.iter().zip(&ids).zip(&identified) {
            let dob = facts.birth_date.as_deref().unwrap_or_default();
            let by_dob = by_dob.get(dob).unwrap_or(&none);
            matched.push(match_rosters(facts, ids, found, by_dob, policy, detail));
        }
    }
    // Every provider of every patient, once, in one directory query.
    let mut npis: Vec<Npi> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (_, providers, _) in &matched {
        for (n, _) in providers {
            if let Ok(n) = Npi::parse(n) {
                if seen.insert(n.as_str().to_string()) {
                    npis.push(n);
                }
            }
        }
    }
    let entries: HashMap<String, DirectoryEntry> = npis
        .iter()
        .map(|n| n.as_str().to_string())
        .zip(directory::lookup_many(store, &active, &npis, &policy.resolve).await?)
        .collect();
    Ok(matched
        .into_iter()
        .map(|(rosters, providers, unused)| {
            let providers = providers
                .into_iter()
                .filter_map(|(npi, provenance)| {
                    let directory = entries.get(&npi)?.clone();
                    let mut relationships: Vec<String> =
                        provenance.iter().map(|p| p.relationship.clone()).collect();
                    relationships.sort();
                    relationships.dedup();
                    Some(AttributedProvider {
                        directory,
                        npi,
                        relationships,
                        provenance,
                    })
                })
                .collect();
            Attribution {
                rosters,
                providers,
                unused_message_providers: unused,
            }
        })
        .collect())
}

/// What the rosters and the message say of one patient: a decision per roster source,
/// the providers with their provenance, and the message's providers not used.
/// `id_rows` are the rows of the patient's identifiers `ids`; `dob_rows` may hold rows
/// of sources already matched by identifier and rows found twice: filtered here.
#[allow(clippy::type_complexity)]
fn match_rosters(
    facts: &PatientFacts,
    ids: &[(&str, String, String)],
    id_rows: &[&RosterRow],
    dob_rows: &[&RosterRow],
    policy: &AttributionPolicy,
    detail: Detail,
) -> (
    Vec<SourceDecision>,
    Vec<(String, Vec<Provenance>)>,
    Vec<Unused>,
) {
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let day = facts.event_date.clone().unwrap_or(today);
    let mut seen = std::collections::HashSet::new();
    let rows: Vec<&RosterRow> = id_rows
        .iter()
        .chain(dob_rows)
        .copied()
        .filter(|r| seen.insert(r.key()))
        .collect();
    let by_id: Vec<&RosterRow> = rows
        .iter()
        .copied()
        .filter(|r| is_identified(r, ids))
        .collect();
    let by_dob: Vec<&RosterRow> = rows
        .iter()
        .copied()
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
        let values: Vec<f64> = people
            .iter()
            .map(|p| matching::points(&msg, &p[0].view()))
            .collect();
        let decision = matching::decide(&values, policy.matching);
        let mut candidates = Vec::new();
        for (i, (p, &score)) in people.iter().zip(&values).enumerate() {
            let chosen = decision.as_ref().is_ok_and(|&b| b == i);
            let live: Vec<&RosterRow> = p.iter().copied().filter(|r| in_effect(r, &day)).collect();
            if chosen {
                chosen_rows.extend(live.iter().map(|r| (*r, "demographic", Some(score))));
            }
            if detail == Detail::ProvidersOnly {
                continue;
            }
            let mut c = group(
                p,
                "demographic",
                Some(score),
                if chosen { &live } else { &[] },
            );
            let mut c = c.remove(0);
            c.reasons = matching::score(&msg, &p[0].view()).reasons;
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
    (decisions, providers, unused)
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

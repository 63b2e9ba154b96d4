//! Routing: from a stored ADT message to notifications in the outbox.
//!
//! For each message, in log order: parse the whole message ([`AdtEvent`]), feed the
//! encounter's state machine ([`encounter`]), and for each notifiable transition find
//! the candidate recipients ([`crate::attribution`]), let the rules ([`rules`]) select,
//! suppress or redact, pick a channel from the directory, and write the transitions,
//! one decision per candidate, and the outbox rows in one transaction. Retractions go
//! to exactly the recipients who were sent what they retract.
//!
//! Notification identity is (transition key, recipient): reprocessing a message, or a
//! sender's resend of it, can never create a second notification.

pub mod encounter;
pub mod notification;
pub mod rules;

use notification::Notification;

use crate::attribution::{self, AttributedProvider, AttributionPolicy};
use crate::directory::endpoint::EndpointKind;
use crate::directory::DirectoryEntry;
use crate::hl7::adt::AdtEvent;
use crate::hl7::charset;
use crate::hl7::patient::PatientFacts;
use crate::store::routing::{DecisionRow, EncounterRow, OutboxRow, RoutingWrite, TransitionRow};
use crate::store::{key_hash, now_us, Store, StoreError, StoredMessage};
use encounter::{Encounter, EncounterConfig, Transition};
use rules::{Candidate, Facts, RuleSet, Verdict};
use serde::Serialize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Clone)]
pub struct Router {
    pub store: Store,
    pub rules: Arc<RwLock<Arc<RuleSet>>>,
    pub attribution: AttributionPolicy,
    pub encounters: EncounterConfig,
    pub fallback: &'static encoding_rs::Encoding,
    /// UTC hour at which daily-digest notifications fall due.
    pub digest_hour_utc: u32,
    /// Messages per page (one transaction).
    pub page_size: i64,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Woken when a message is stored; wakes the deliverer after routing.
    pub wake: crate::wake::Wakers,
    /// The page being committed while the next is planned ([`Router::step`]).
    pub pipeline: Arc<tokio::sync::Mutex<Pipeline>>,
}

/// What routing one message decided, for `rules explain` and for the write.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Plan {
    pub control_id: String,
    pub trigger: String,
    pub sending_facility: String,
    pub encounter: String,
    pub status_before: String,
    pub status_after: String,
    pub transitions: Vec<Transition>,
    pub rules_fired: Vec<String>,
    pub recipients: Vec<RecipientDecision>,
    /// Why nothing was routed at all (unparseable, duplicate, no patient).
    pub skipped: Option<String>,
    #[serde(skip)]
    pub write: RoutingWrite,
}

#[derive(Clone, Debug, Serialize)]
pub struct RecipientDecision {
    pub transition: String,
    pub kind: String,
    pub npi: String,
    pub relationships: Vec<String>,
    /// notify, suppressed, not-selected, no-endpoint.
    pub outcome: String,
    pub reason: String,
    pub rule_ids: Vec<String>,
    pub channel: Option<String>,
    pub endpoint: Option<String>,
    pub content: Option<String>,
    pub timing: Option<String>,
    pub redacted: Vec<String>,
}

/// Encounters and who was sent what, held in memory: for `rules simulate` (which never
/// touches or depends on what the live router stored) and, as an overlay on the store,
/// for a batch of messages routed in one transaction.
#[derive(Default)]
pub struct Sim {
    pub encounters: std::collections::HashMap<String, Encounter>,
    pub sent: std::collections::HashMap<String, Vec<crate::store::routing::SentTo>>,
    /// Read what is not in memory from the store (a batch) instead of starting empty.
    pub overlay: bool,
    /// Attributions already worked out in this batch, by the patient facts they were
    /// worked out from (an encounter's messages usually arrive together).
    /// Shared, not copied, by the messages that use them.
    pub attributions: std::collections::HashMap<String, Arc<[AttributedProvider]>>,
    /// Encounters looked up in the store already (found ones are in `encounters`).
    pub fetched: std::collections::HashSet<String>,
    /// Routing: the decisions are written, not explained ([`Plan::recipients`] stays
    /// empty: a dozen strings per candidate recipient that nothing reads when routing).
    pub write_only: bool,
}

/// The row that stores an encounter's state.
fn encounter_row(enc: &Encounter) -> EncounterRow {
    EncounterRow {
        facility: enc.facility.clone(),
        visit_number: enc.visit_number.clone(),
        patient_key: enc.patient_key.clone(),
        status: enc.status.clone(),
        state: serde_json::to_string(enc).unwrap_or_default(),
        last_event_us: enc.last_event_us,
    }
}

/// The row that records a transition; `ev` is the message that caused it, if any.
fn transition_row(
    enc: &Encounter,
    t: &Transition,
    ev: Option<&AdtEvent>,
    inbound_id: Option<i64>,
) -> TransitionRow {
    TransitionRow {
        transition_key: t.key.clone(),
        encounter: enc.id(),
        kind: t.kind.clone(),
        notifiable: t.notifiable,
        retracts: t.retracts.clone(),
        note: t.note.clone(),
        inbound_id,
        control_id: ev.map(|e| e.msh.control_id.clone()),
        sending_facility: enc.facility.clone(),
        trigger_event: ev.map(|e| e.msh.trigger.clone()).unwrap_or_default(),
        event_at_us: t.at_us,
    }
}

/// The usable endpoints, best first and one per channel: of the channels in `channels`
/// (any deliverable one when the rule names none), overrides first, then by the rule's
/// order. The first is used; the others are the fallbacks.
fn rank_endpoints(
    entry: &DirectoryEntry,
    channels: &[String],
) -> Result<Vec<(String, String)>, String> {
    let rank = |kind: &str| {
        if channels.is_empty() {
            EndpointKind::parse(kind)
                .filter(|k| k.deliverable())
                .map(|_| 0)
        } else {
            channels.iter().position(|c| c.eq_ignore_ascii_case(kind))
        }
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for e in crate::directory::ranked(&entry.endpoints, rank) {
        if !out.iter().any(|(k, _)| *k == e.kind) {
            out.push((
                e.kind.clone(),
                e.normalized.clone().unwrap_or_else(|| e.value.clone()),
            ));
        }
    }
    match out.is_empty() {
        false => Ok(out),
        true => Err(entry.no_endpoint_reason.clone().unwrap_or_else(|| {
            if channels.is_empty() {
                "no usable endpoint in the directory".into()
            } else {
                format!("no usable {} endpoint in the directory", channels.join("/"))
            }
        })),
    }
}

/// The notification body, cut to the content profile and the redactions.
fn payload(
    ev: &AdtEvent,
    t: &Transition,
    enc_id: &str,
    idempotency_key: &str,
    v: &Verdict,
) -> Vec<u8> {
    use rules::ContentProfile::*;
    let empty = crate::hl7::adt::Pv1::default();
    let pv1 = ev.pv1.as_ref().unwrap_or(&empty);
    let keep = |f: &str| !v.redact.contains(f);
    let standard = matches!(v.content, Standard | Full);
    let full = v.content == Full;
    let when = |on: bool, f: &str| on && keep(f);
    let owned = |s: &str| s.to_string();
    let body = Notification {
        content_profile: v.content,
        encounter: notification::Encounter {
            admit_reason: when(full, "admit_reason")
                .then(|| ev.pv2.as_ref().map(|p| p.admit_reason.clone())),
            admit_time: standard.then(|| owned(&pv1.admit_time)),
            diagnoses: when(full, "diagnosis").then(|| {
                // DG1-18 = Y never leaves.
                ev.diagnoses
                    .iter()
                    .filter(|d| !d.confidential)
                    .cloned()
                    .collect()
            }),
            discharge_disposition: when(standard, "discharge_disposition")
                .then(|| owned(&pv1.discharge_disposition)),
            discharge_time: standard.then(|| owned(&pv1.discharge_time)),
            discharged_to: when(standard, "discharged_to").then(|| owned(&pv1.discharged_to)),
            id_hash: key_hash(enc_id),
            location: when(standard, "location").then(|| pv1.location.clone()),
            patient_class: standard.then(|| owned(&pv1.patient_class)),
            visit_number: standard.then(|| owned(&pv1.visit_number)),
        },
        event_time: crate::directory::rfc3339_us(t.at_us),
        idempotency_key: owned(idempotency_key),
        kind: t.kind.clone(),
        patient: notification::Patient {
            address: when(full, "patient_address").then(|| ev.pid.address.clone()),
            birth_date: when(standard, "birth_date").then(|| ev.pid.birth_date.clone()),
            family: ev.pid.family.clone(),
            given: ev.pid.given.clone(),
            identifiers: standard.then(|| ev.pid.identifiers.clone()),
            phone: when(full, "patient_phone").then(|| ev.pid.phone.clone()),
            sex: standard.then(|| ev.pid.sex.clone()),
        },
        redacted: v.redact.clone(),
        retracts_kind: t.retracted_kind.clone(),
        schema: notification::SCHEMA.to_string(),
        sending_facility: ev.msh.sending_facility.clone(),
        treating_facility: if ev.evn.event_facility.is_empty() {
            pv1.location.facility.clone()
        } else {
            ev.evn.event_facility.clone()
        },
        treating_practitioner: ev
            .treating_practitioner()
            .map(|p| notification::Practitioner {
                name: p.display_name(),
                npi: p.labelled_npi.then(|| p.id.clone()),
            }),
        trigger: ev.msh.trigger.clone(),
    };
    body.to_json()
}

/// The message decoded and parsed, or why it cannot be routed.
/// Guarded like ingest's parse: should the parser ever panic on a stored message, that
/// message is skipped with a reason instead of stopping the router (which would retry
/// the same page forever).
fn routable(raw: &[u8], fallback: &'static encoding_rs::Encoding) -> Result<AdtEvent, String> {
    let (text, _) = charset::decode(raw, fallback).map_err(|e| format!("charset: {e}"))?;
    std::panic::catch_unwind(|| AdtEvent::parse(&text))
        .unwrap_or_else(|_| {
            tracing::error!("The ADT parser panicked on a stored message; it is skipped. Please report this with the message's id.");
            Err(crate::hl7::Rejection {
                reason: "parser_panic",
                err: crate::hl7::ErrDetail::error(207, None, "internal error while parsing".into()),
            })
        })
        .map_err(|r| format!("not routable: {}", r.err.diagnostic))
}

/// (facility, visit, patient key) of the encounter a message belongs to: PV1-19, else
/// PID-18, else one encounter per patient. `None` when the message names no patient.
fn encounter_key(ev: &AdtEvent) -> Option<(String, String, String)> {
    let patient_key = ev.patient_key()?;
    let visit = ev
        .pv1
        .as_ref()
        .map(|p| p.visit_number.as_str())
        .into_iter()
        .chain([ev.pid.account_number.as_str()])
        .find(|v| !v.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("patient:{patient_key}"));
    Some((ev.msh.sending_facility.clone(), visit, patient_key))
}

/// What attribution reads (the patient, the named providers, the date), as a key:
/// messages with the same key get the same providers.
fn attribution_key(facts: &PatientFacts) -> String {
    serde_json::to_string(&(
        &facts.identifiers,
        &facts.family,
        &facts.given,
        &facts.birth_date,
        &facts.sex,
        &facts.postal_code,
        &facts.providers,
        &facts.event_date,
        &facts.sending_facility,
    ))
    .unwrap_or_default()
}

impl Router {
    /// A router with the settings' policies.
    pub fn new(
        settings: &crate::config::Settings,
        store: Store,
        rules: Arc<RwLock<Arc<RuleSet>>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Router {
        Router {
            store,
            rules,
            attribution: settings.attribution_policy(),
            encounters: settings.encounter_config(),
            fallback: settings.fallback_charset(),
            digest_hour_utc: settings.routing.digest_hour_utc,
            page_size: settings.routing.page_size.into(),
            metrics,
            wake: crate::wake::Wakers::default(),
            pipeline: Arc::default(),
        }
    }

    fn rules(&self) -> Arc<RuleSet> {
        self.rules
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Works out what one message changes, without writing anything.
    pub async fn plan(
        &self,
        raw: &[u8],
        inbound_id: Option<i64>,
        now: i64,
        sim: Option<&mut Sim>,
    ) -> Result<Plan, StoreError> {
        match routable(raw, self.fallback) {
            Ok(ev) => self.plan_event(&ev, inbound_id, now, sim).await,
            Err(skipped) => Ok(Plan {
                skipped: Some(skipped),
                ..Plan::default()
            }),
        }
    }

    /// Reads what a page of messages needs from the store in a few queries (each
    /// encounter's state, each patient's attribution) into `sim`, where
    /// [`Self::plan_event`] finds them.
    async fn prefetch(&self, events: &[&AdtEvent], sim: &mut Sim) -> Result<(), StoreError> {
        let mut keys: Vec<(String, String)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut patients: Vec<(String, PatientFacts)> = Vec::new();
        for ev in events {
            let Some((facility, visit, _)) = encounter_key(ev) else {
                continue;
            };
            let id = format!("{facility}|{visit}");
            if !sim.encounters.contains_key(&id) && sim.fetched.insert(id) {
                keys.push((facility, visit));
            }
            let facts = PatientFacts::of(ev);
            let key = attribution_key(&facts);
            if !sim.attributions.contains_key(&key) && seen.insert(key.clone()) {
                patients.push((key, facts));
            }
        }
        for chunk in keys.chunks(500) {
            for (facility, visit, state) in self.store.load_encounters(chunk).await? {
                if let Ok(enc) = serde_json::from_str::<Encounter>(&state) {
                    sim.encounters.insert(format!("{facility}|{visit}"), enc);
                }
            }
        }
        let facts: Vec<&PatientFacts> = patients.iter().map(|(_, f)| f).collect();
        let found = attribution::attribute_many(
            &self.store,
            &facts,
            &self.attribution,
            attribution::Detail::ProvidersOnly,
        )
        .await?;
        for ((key, _), a) in patients.iter().zip(found) {
            sim.attributions.insert(key.clone(), a.providers.into());
        }
        Ok(())
    }

    /// [`Self::plan`] for a parsed message.
    pub async fn plan_event(
        &self,
        ev: &AdtEvent,
        inbound_id: Option<i64>,
        now: i64,
        mut sim: Option<&mut Sim>,
    ) -> Result<Plan, StoreError> {
        let mut plan = Plan {
            control_id: ev.msh.control_id.clone(),
            trigger: ev.msh.trigger.clone(),
            sending_facility: ev.msh.sending_facility.clone(),
            ..Plan::default()
        };
        let Some((facility, visit, patient_key)) = encounter_key(ev) else {
            plan.skipped = Some("no patient identifier (PID-3): nothing to route".into());
            return Ok(plan);
        };
        let no_pv1 = crate::hl7::adt::Pv1::default();
        let pv1 = ev.pv1.as_ref().unwrap_or(&no_pv1);
        let id = format!("{facility}|{visit}");
        // Taken out of the overlay, and put back (moved) once planned.
        let cached = sim.as_deref_mut().and_then(|s| s.encounters.remove(&id));
        let fetched = sim.as_deref().is_some_and(|s| s.fetched.contains(&id));
        let stored = match (cached, sim.as_deref().is_none_or(|s| s.overlay) && !fetched) {
            (Some(e), _) => Some(e),
            (None, true) => self
                .store
                .load_encounter(&facility, &visit)
                .await?
                .and_then(|state| serde_json::from_str(&state).ok()),
            (None, false) => None,
        };
        let mut enc = stored.unwrap_or_else(|| Encounter::new(&facility, &visit, &patient_key));
        enc.patient_key = patient_key.clone();
        plan.encounter = enc.id();
        plan.status_before = enc.status.clone();
        let transitions = enc.step(ev, &self.encounters, now);
        plan.status_after = enc.status.clone();
        if ev.msh.trigger == "A40" {
            if let Some(m) = &ev.mrg {
                for old in &m.prior_identifiers {
                    if old.key() != patient_key {
                        plan.write.merges.push((old.key(), patient_key.clone()));
                    }
                }
            }
        }
        // Routing builds a page's encounter rows once, in `plan_page`; explaining
        // builds the recipients' explanations, which routing does not read.
        let explain = sim.as_deref().is_none_or(|s| !s.write_only);
        if explain {
            plan.write.encounters.push(encounter_row(&enc));
        }
        let rules = self.rules();
        let opted_out = rules.opted_out(ev.pid.identifiers.iter().flat_map(|i| {
            [
                (i.id.as_str(), i.authority_namespace.as_str()),
                (i.id.as_str(), i.authority_universal.as_str()),
            ]
        }));
        let diagnoses: Vec<String> = ev.diagnoses.iter().map(|d| d.code.clone()).collect();
        let mut attributed: Option<Arc<[AttributedProvider]>> = None;
        let plan_encounter = plan.encounter.clone();
        for t in &transitions {
            plan.write
                .transitions
                .push(transition_row(&enc, t, Some(ev), inbound_id));
            if !t.notifiable {
                continue;
            }
            let facts = Facts {
                facility: &facility,
                event: &t.kind,
                trigger: &ev.msh.trigger,
                patient_class: &pv1.patient_class,
                unit: &pv1.location.point_of_care,
                service: &pv1.hospital_service,
                diagnoses: &diagnoses,
                age: ev.patient_age(),
                sending_application: &ev.msh.sending_application,
                opted_out,
                protected: ev.pd1.as_ref().is_some_and(|p| p.protection_indicator),
            };
            for r in rules.fired(&facts) {
                if !plan.rules_fired.contains(&r.id) {
                    plan.rules_fired.push(r.id.clone());
                }
            }
            if let Some(retracted) = &t.retracts {
                let mut sent = match sim.as_deref() {
                    Some(sim) => sim.sent.get(retracted).cloned().unwrap_or_default(),
                    None => Vec::new(),
                };
                if sim.as_deref().is_none_or(|s| s.overlay) {
                    // A page in flight may be in both, once committed.
                    for s in self.store.sent_to(retracted).await? {
                        if !sent.iter().any(|x| x.recipient_npi == s.recipient_npi) {
                            sent.push(s);
                        }
                    }
                }
                self.plan_retraction(&mut plan, ev, t, sent, &plan_encounter, now);
                continue;
            }
            if attributed.is_none() {
                let facts = PatientFacts::of(ev);
                let key = attribution_key(&facts);
                let cached = sim
                    .as_deref()
                    .and_then(|s| s.attributions.get(&key).cloned());
                let providers = match cached {
                    Some(p) => p,
                    None => {
                        let a = attribution::attribute_many(
                            &self.store,
                            &[&facts],
                            &self.attribution,
                            attribution::Detail::ProvidersOnly,
                        )
                        .await?
                        .remove(0);
                        let providers: Arc<[AttributedProvider]> = a.providers.into();
                        if let Some(s) = sim.as_deref_mut() {
                            s.attributions.insert(key, providers.clone());
                        }
                        providers
                    }
                };
                attributed = Some(providers);
            }
            for p in attributed.as_deref().unwrap_or_default() {
                let sources: Vec<String> = p
                    .provenance
                    .iter()
                    .filter_map(|pr| pr.source.clone())
                    .collect();
                let cand = Candidate {
                    relationships: &p.relationships,
                    roster_sources: &sources,
                    from_message: p.provenance.iter().any(|pr| pr.kind == "message"),
                };
                let v = rules.evaluate(&facts, &cand);
                self.decide(&mut plan, ev, t, &plan_encounter, p, &v, now, explain);
            }
        }
        if let Some(sim) = sim {
            sim.encounters.insert(plan_encounter, enc);
            for o in plan.write.outbox.iter().filter(|o| o.status == "pending") {
                sim.sent.entry(o.transition_key.clone()).or_default().push(
                    crate::store::routing::SentTo {
                        recipient_npi: o.recipient_npi.clone(),
                        channel: o.channel.clone(),
                        endpoint: o.endpoint.clone(),
                        ordering_key: o.ordering_key.clone(),
                        content_profile: o.content_profile.clone(),
                    },
                );
            }
        }
        plan.transitions = transitions;
        Ok(plan)
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        plan: &mut Plan,
        ev: &AdtEvent,
        t: &Transition,
        enc_id: &str,
        p: &AttributedProvider,
        v: &Verdict,
        now: i64,
        explain: bool,
    ) {
        let ids = v.rule_ids();
        let joined_ids = ids.join(",");
        let key = key_hash(&format!("{}|{}", t.key, p.npi));
        let mut row = OutboxRow {
            notification_key: key.clone(),
            ordering_key: key_hash(&format!("{enc_id}|{}", p.npi)),
            channel: String::new(),
            endpoint: String::new(),
            payload: Vec::new(),
            status: String::new(),
            due_at_us: now,
            last_error: None,
            fallbacks: None,
            transition_key: t.key.clone(),
            kind: t.kind.clone(),
            encounter: enc_id.to_string(),
            control_id: Some(ev.msh.control_id.clone()),
            sending_facility: ev.msh.sending_facility.clone(),
            recipient_npi: p.npi.clone(),
            rule_ids: joined_ids.clone(),
            content_profile: v.content.as_str().to_string(),
        };
        let discharge_like = matches!(t.kind.as_str(), "discharge" | "transfer");
        let (outcome, reason) = if v.selected_by.is_none() {
            (
                "not-selected",
                format!(
                    "no notify rule selects a {} for {}",
                    p.relationships.join("/"),
                    t.kind
                ),
            )
        } else if let Some((rule, why)) = &v.suppressed_by {
            row.status = "suppressed".into();
            ("suppressed", format!("{why} (rule {rule})"))
        } else if v.timing == rules::Timing::DischargeOnly && !discharge_like {
            row.status = "suppressed".into();
            (
                "suppressed",
                "recipient preference: discharge notifications only".to_string(),
            )
        } else {
            match rank_endpoints(&p.directory, &v.channels) {
                Ok(mut ranked) => {
                    let (channel, endpoint) = ranked.remove(0);
                    if !ranked.is_empty() {
                        row.fallbacks = serde_json::to_string(&ranked).ok();
                    }
                    row.status = "pending".into();
                    row.channel = channel;
                    row.endpoint = endpoint;
                    if v.timing == rules::Timing::DailyDigest {
                        row.due_at_us = next_digest(now, self.digest_hour_utc);
                    }
                    (
                        "notify",
                        format!(
                            "selected by rule {}",
                            v.selected_by.as_deref().unwrap_or_default()
                        ),
                    )
                }
                Err(why) => {
                    row.status = "dead".into();
                    ("no-endpoint", why)
                }
            }
        };
        if explain {
            let sent = outcome == "notify";
            plan.recipients.push(RecipientDecision {
                transition: key_hash(&t.key),
                kind: t.kind.clone(),
                npi: p.npi.clone(),
                relationships: p.relationships.clone(),
                outcome: outcome.into(),
                reason: reason.clone(),
                rule_ids: ids.clone(),
                channel: sent.then(|| row.channel.clone()),
                endpoint: sent.then(|| row.endpoint.clone()),
                content: Some(v.content.as_str().into()),
                timing: Some(v.timing.as_str().into()),
                redacted: v.redact.iter().cloned().collect(),
            });
        }
        if outcome != "not-selected" {
            if row.status != "pending" {
                row.last_error = Some(reason.clone());
            }
            row.payload = payload(ev, t, enc_id, &key, v);
            plan.write.outbox.push(row);
        }
        plan.write.decisions.push(DecisionRow {
            transition_key: t.key.clone(),
            recipient_npi: p.npi.clone(),
            outcome: outcome.into(),
            reason,
            rule_ids: joined_ids,
        });
    }

    fn plan_retraction(
        &self,
        plan: &mut Plan,
        ev: &AdtEvent,
        t: &Transition,
        sent: Vec<crate::store::routing::SentTo>,
        enc_id: &str,
        now: i64,
    ) {
        for s in sent {
            let key = key_hash(&format!("{}|{}", t.key, s.recipient_npi));
            let v = Verdict {
                content: match s.content_profile.as_str() {
                    "full" => rules::ContentProfile::Full,
                    "standard" => rules::ContentProfile::Standard,
                    _ => rules::ContentProfile::Minimum,
                },
                ..Verdict::default()
            };
            plan.write.decisions.push(DecisionRow {
                transition_key: t.key.clone(),
                recipient_npi: s.recipient_npi.clone(),
                outcome: "notify".into(),
                reason: format!(
                    "retraction to a recipient of the {}",
                    t.retracted_kind.clone().unwrap_or_default()
                ),
                rule_ids: String::new(),
            });
            plan.write.outbox.push(OutboxRow {
                notification_key: key.clone(),
                ordering_key: s.ordering_key.clone(),
                channel: s.channel.clone(),
                endpoint: s.endpoint.clone(),
                payload: payload(ev, t, enc_id, &key, &v),
                status: "pending".into(),
                due_at_us: now,
                last_error: None,
                fallbacks: None,
                transition_key: t.key.clone(),
                kind: "retraction".into(),
                encounter: enc_id.to_string(),
                control_id: Some(ev.msh.control_id.clone()),
                sending_facility: ev.msh.sending_facility.clone(),
                recipient_npi: s.recipient_npi.clone(),
                rule_ids: String::new(),
                content_profile: s.content_profile.clone(),
            });
            plan.recipients.push(RecipientDecision {
                transition: key_hash(&t.key),
                kind: "retraction".into(),
                npi: s.recipient_npi,
                relationships: vec![],
                outcome: "notify".into(),
                reason: "was sent what this retracts".into(),
                rule_ids: vec![],
                channel: Some(s.channel),
                endpoint: Some(s.endpoint),
                content: Some(s.content_profile),
                timing: Some("immediate".into()),
                redacted: vec![],
            });
        }
    }

    /// Works out a page of stored messages in order, on top of `sim` (what earlier
    /// messages, of this page or of pages not yet committed, did): the plans and the
    /// one write that records them all and marks the messages routed.
    async fn plan_page(
        &self,
        msgs: &[StoredMessage],
        now: i64,
        sim: &mut Sim,
    ) -> Result<(Vec<Plan>, RoutingWrite), StoreError> {
        let parsed = self.parse_page(msgs);
        let events: Vec<&AdtEvent> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
        self.prefetch(&events, sim).await?;
        let mut plans = Vec::with_capacity(msgs.len());
        let mut all = RoutingWrite::default();
        // Encounters in the order the page first touched them.
        let mut touched: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (m, ev) in msgs.iter().zip(&parsed) {
            let mut plan = match ev {
                Ok(ev) => self.plan_event(ev, Some(m.id), now, Some(sim)).await?,
                Err(skipped) => Plan {
                    skipped: Some(skipped.clone()),
                    ..Plan::default()
                },
            };
            let w = std::mem::take(&mut plan.write);
            if !plan.encounter.is_empty() && seen.insert(plan.encounter.clone()) {
                touched.push(plan.encounter.clone());
            }
            all.transitions.extend(w.transitions);
            all.decisions.extend(w.decisions);
            all.outbox.extend(w.outbox);
            all.merges.extend(w.merges);
            all.routed_inbound.push(m.id);
            plans.push(plan);
        }
        // Each encounter's row once, with its last state (stored once per page, not
        // serialised once per message).
        all.encounters = touched
            .iter()
            .filter_map(|id| sim.encounters.get(id))
            .map(encounter_row)
            .collect();
        Ok((plans, all))
    }

    /// Each message of a page parsed (duplicates are not routed), on this thread. The
    /// commit of the page before runs on another core meanwhile; parsing on threads of
    /// its own per page cost more than it saved (thread start-up, each thread's fresh
    /// allocator heap, and every parsed string freed across threads): 6 interleaved
    /// pairs, median 18,000 msgs/s against 14,350 and 1.73 s of CPU against 2.04 s.
    fn parse_page(&self, msgs: &[StoredMessage]) -> Vec<Result<AdtEvent, String>> {
        msgs.iter()
            .map(|m| match m.duplicate {
                true => Err("duplicate control id: routed when first received".to_string()),
                false => routable(m.raw.as_deref().unwrap_or_default(), self.fallback),
            })
            .collect()
    }

    /// Closes ED visits that have gone quiet ([`EncounterConfig::ed_timeout_us`]).
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        self.flush().await?;
        let now = now_us();
        let states = self
            .store
            .quiet_ed_encounters(now - self.encounters.ed_timeout_us, 500)
            .await?;
        let mut closed = 0;
        for s in states {
            let Ok(mut enc) = serde_json::from_str::<Encounter>(&s) else {
                continue;
            };
            let Some(t) = enc.sweep(&self.encounters, now) else {
                continue;
            };
            let w = RoutingWrite {
                encounters: vec![encounter_row(&enc)],
                transitions: vec![transition_row(&enc, &t, None, None)],
                ..RoutingWrite::default()
            };
            self.store.commit_routing(&w, now).await?;
            closed += 1;
        }
        Ok(closed)
    }

    /// The routing loop: routes stored messages not routed yet, oldest first, until
    /// `shutdown` fires. A database error is retried (the message is not skipped).
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut last_sweep = std::time::Instant::now();
        let mut standby_logged = false;
        let _lease = loop {
            match self.store.router_lease().await {
                Ok(Some(l)) => break l,
                Ok(None) if !standby_logged => {
                    standby_logged = true;
                    tracing::info!("Another node is routing; this one stands by.");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "Could not take the routing lease."),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        };
        tracing::info!("Routing stored messages.");
        loop {
            if *shutdown.borrow() {
                return;
            }
            let progressed = match self.step().await {
                Ok(n) => {
                    if n > 0 {
                        self.wake.routed.notify_one();
                    }
                    n > 0
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Routing failed; retrying the same message.");
                    false
                }
            };
            if last_sweep.elapsed() > Duration::from_secs(60) {
                last_sweep = std::time::Instant::now();
                match self.sweep().await {
                    Ok(n) if n > 0 => tracing::info!(closed = n, "Closed quiet ED visits."),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "ED-timeout sweep failed."),
                }
            }
            if !progressed {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = self.wake.stored.notified() => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    /// Routes the next page of messages; returns how many. The page's write goes to the
    /// database while the next page is planned (a second core's worth of work): it is
    /// planned on top of what the page in flight did, kept in memory until its commit
    /// is known. A page that returns 0 has also finished the write in flight.
    pub async fn step(&self) -> Result<usize, StoreError> {
        let mut pipe = self.pipeline.lock().await;
        let skip = pipe.inflight.as_ref().map(|f| f.ids);
        let started = std::time::Instant::now();
        let page = self.store.unrouted(self.page_size, skip).await?;
        if page.is_empty() {
            // Idle: everything is in the database; carry nothing into the next burst,
            // and hold no read snapshot open while nothing is routed.
            pipe.sim = Sim::default();
            self.store.release_reference();
            pipe.finish().await?;
            return Ok(0);
        }
        let now = now_us();
        pipe.sim.overlay = true;
        pipe.sim.write_only = true;
        // Attributions are worked out again each page (rosters change); encounters and
        // what was sent are carried over.
        pipe.sim.attributions.clear();
        let planned = self.plan_page(&page, now, &mut pipe.sim).await;
        let planned_at = std::time::Instant::now();
        // The page before must have committed for this one's plan to stand.
        let flushed = pipe.finish().await;
        let stage = |s: &str, secs: f64| {
            self.metrics
                .routing_page
                .with_label_values(&[s])
                .observe(secs)
        };
        stage("plan", (planned_at - started).as_secs_f64());
        stage("wait", planned_at.elapsed().as_secs_f64());
        let (plans, write) = match (planned, flushed) {
            (Ok(p), Ok(())) => p,
            (Err(e), _) | (_, Err(e)) => {
                pipe.sim = Sim::default();
                return Err(e);
            }
        };
        let ids = (
            page.first().map_or(0, |m| m.id),
            page.last().map_or(0, |m| m.id),
        );
        if pipe.sim.encounters.len() > CARRIED_ENCOUNTERS {
            // Bound the memory: commit this page in place and start afresh.
            pipe.sim = Sim::default();
            commit_page(&self.store, &self.metrics, &write, &plans, now).await?;
            self.wake.routed.notify_one();
            return Ok(page.len());
        }
        let (store, metrics, wake) = (self.store.clone(), self.metrics.clone(), self.wake.clone());
        pipe.inflight = Some(Inflight {
            ids,
            commit: tokio::spawn(async move {
                commit_page(&store, &metrics, &write, &plans, now).await?;
                wake.routed.notify_one();
                Ok(Box::new((write, plans)))
            }),
        });
        Ok(page.len())
    }

    /// Finishes the write in flight and forgets what was carried between pages (the
    /// ED-timeout sweep changes encounters behind the router's back).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let mut pipe = self.pipeline.lock().await;
        pipe.sim = Sim::default();
        pipe.finish().await
    }
}

/// A page's write, and the metrics once it is committed.
async fn commit_page(
    store: &Store,
    metrics: &crate::metrics::Metrics,
    write: &RoutingWrite,
    plans: &[Plan],
    now: i64,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    store.commit_routing(write, now).await?;
    metrics
        .routing_page
        .with_label_values(&["commit"])
        .observe(started.elapsed().as_secs_f64());
    for plan in plans {
        let outcome = match plan.skipped {
            Some(_) => "skipped",
            None => "routed",
        };
        metrics.routed.with_label_values(&[outcome]).inc();
    }
    for o in &write.outbox {
        metrics
            .notifications_created
            .with_label_values(&[o.status.as_str()])
            .inc();
    }
    Ok(())
}

/// Pages planned but not yet known to be committed, and what they did.
#[derive(Default)]
pub struct Pipeline {
    sim: Sim,
    inflight: Option<Inflight>,
}

/// A committed page's rows, handed back to be freed (see [`Inflight::commit`]).
type Committed = Box<(RoutingWrite, Vec<Plan>)>;

/// A page being committed: its first and last message ids, and the commit.
struct Inflight {
    ids: (i64, i64),
    /// Hands the page's rows back once committed, to be freed by the thread that
    /// allocated them: freed on the commit's thread they cost it ~3% of the CPU in
    /// cross-thread frees, and the planner then had to collect the blocks back.
    commit: tokio::task::JoinHandle<Result<Committed, StoreError>>,
}

impl Pipeline {
    /// Waits for the page in flight, if any.
    async fn finish(&mut self) -> Result<(), StoreError> {
        let Some(f) = self.inflight.take() else {
            return Ok(());
        };
        match f.commit.await {
            Ok(r) => r.map(drop),
            Err(e) => Err(StoreError::Db(sqlx::Error::Protocol(format!(
                "routing commit task failed: {e}"
            )))),
        }
    }
}

/// Encounters carried between pages before the overlay is dropped (memory bound).
const CARRIED_ENCOUNTERS: usize = 20_000;

/// The next `hour`:00 UTC after `now`.
fn next_digest(now: i64, hour: u32) -> i64 {
    let day = 86_400_000_000i64;
    let start = now - now.rem_euclid(day) + i64::from(hour) * 3_600_000_000;
    if start > now {
        start
    } else {
        start + day
    }
}

/// What identifies the rules directory's content: names, sizes and modification times.
fn fingerprint(
    dir: &std::path::Path,
) -> Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    v.sort();
    v
}

/// Reloads the rules when the directory changes. An invalid set keeps the last good
/// one, says why (file:line) and counts it.
pub async fn watch_rules(
    dir: std::path::PathBuf,
    rules: Arc<RwLock<Arc<RuleSet>>>,
    every: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut seen = fingerprint(&dir);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let now = fingerprint(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        match rules::load_dir(&dir) {
            Ok(set) => {
                tracing::info!(rules = set.rules.len(), opt_outs = set.opt_outs.len(), dir = %dir.display(), "Routing rules reloaded.");
                metrics.rule_reloads.with_label_values(&["ok"]).inc();
                if let Ok(mut w) = rules.write() {
                    *w = Arc::new(set);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Routing rules are invalid; keeping the last good rules.");
                metrics.rule_reloads.with_label_values(&["invalid"]).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn digest_is_the_next_hour() {
        let h = 3_600_000_000i64;
        assert_eq!(super::next_digest(0, 7), 7 * h);
        assert_eq!(super::next_digest(8 * h, 7), 31 * h);
    }
}

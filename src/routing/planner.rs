//! The planner: a pure function from a prefetched [`Snapshot`] and one ADT event to a
//! [`Plan`] (the encounter's transitions, a decision with its reason and rule ids for
//! every candidate recipient, the outbox rows). No I/O: [`super::Router`] fetches the
//! snapshot for a page of messages and commits the plans, and the table tests below
//! need no database.

use super::encounter::{Encounter, EncounterConfig, Transition};
use super::notification::{self, Notification};
use super::rules::{self, Candidate, Facts, RuleSet, Verdict};
use crate::attribution::AttributedProvider;
use crate::directory::endpoint::EndpointKind;
use crate::directory::DirectoryEntry;
use crate::hl7::adt::AdtEvent;
use crate::hl7::patient::PatientFacts;
use crate::store::key_hash;
use crate::store::outbox::Status;
use crate::store::routing::{
    DecisionRow, EncounterRow, OutboxRow, Outcome, RoutingWrite, SentTo, TransitionRow,
};
use serde::Serialize;
use std::borrow::Cow;
use std::sync::Arc;

/// What planning decides by: the rules, the encounter state machine's settings and
/// when daily digests fall due.
#[derive(Clone)]
pub struct Planner {
    pub rules: Arc<RuleSet>,
    pub encounters: EncounterConfig,
    /// UTC hour at which daily-digest notifications fall due.
    pub digest_hour_utc: u32,
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
    pub outcome: Outcome,
    pub reason: String,
    pub rule_ids: Vec<String>,
    pub channel: Option<EndpointKind>,
    pub endpoint: Option<String>,
    pub content: Option<String>,
    pub timing: Option<String>,
    pub redacted: Vec<String>,
}

/// What planning reads, fetched beforehand ([`super::Router`] does the I/O): encounter
/// states and who was sent what, for `rules simulate` (which never touches or depends
/// on what the live router stored) and, as an overlay on the store, for the pages of
/// messages routing plans one after another; the patients' attributions with their
/// directory entries; the rules are the [`Planner`]'s.
#[derive(Default)]
pub struct Snapshot {
    /// Each encounter's state, by `facility|visit`; taken out while a message is planned.
    pub encounters: std::collections::HashMap<String, Encounter>,
    /// Who the transitions planned so far were sent to, by transition key.
    pub sent: std::collections::HashMap<String, Vec<SentTo>>,
    /// Who was sent a transition as the store said before this page, by transition
    /// key: read for the live transitions a cancel can retract.
    pub stored_sent: std::collections::HashMap<String, Vec<SentTo>>,
    /// Fill what is not in memory from the store (routing, explain) instead of
    /// starting empty (simulate).
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
pub(super) fn encounter_row(enc: &Encounter) -> EncounterRow {
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
pub(super) fn transition_row(
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
) -> Result<Vec<(EndpointKind, String)>, String> {
    let rank = |kind: &str| {
        if channels.is_empty() {
            EndpointKind::parse(kind)
                .filter(|k| k.deliverable())
                .map(|_| 0)
        } else {
            channels.iter().position(|c| c.eq_ignore_ascii_case(kind))
        }
    };
    let mut out: Vec<(EndpointKind, String)> = Vec::new();
    for e in crate::directory::ranked(&entry.endpoints, rank) {
        let Some(kind) = EndpointKind::parse(&e.kind).filter(|k| k.deliverable()) else {
            continue; // a rule naming a channel adt-router cannot send on
        };
        if !out.iter().any(|(k, _)| *k == kind) {
            out.push((
                kind,
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
pub(super) fn payload(
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
    fn b(s: &str) -> Cow<'_, str> {
        Cow::Borrowed(s)
    }
    let body = Notification {
        content_profile: v.content,
        encounter: notification::Encounter {
            admit_reason: when(full, "admit_reason")
                .then(|| ev.pv2.as_ref().map(|p| b(&p.admit_reason))),
            admit_time: standard.then(|| b(&pv1.admit_time)),
            diagnoses: when(full, "diagnosis").then(|| {
                // DG1-18 = Y never leaves.
                ev.diagnoses
                    .iter()
                    .filter(|d| !d.confidential)
                    .map(Cow::Borrowed)
                    .collect()
            }),
            discharge_disposition: when(standard, "discharge_disposition")
                .then(|| b(&pv1.discharge_disposition)),
            discharge_time: standard.then(|| b(&pv1.discharge_time)),
            discharged_to: when(standard, "discharged_to").then(|| b(&pv1.discharged_to)),
            id_hash: key_hash(enc_id),
            location: when(standard, "location").then_some(Cow::Borrowed(&pv1.location)),
            patient_class: standard.then(|| b(&pv1.patient_class)),
            visit_number: standard.then(|| b(&pv1.visit_number)),
        },
        event_time: crate::directory::rfc3339_us(t.at_us),
        idempotency_key: b(idempotency_key),
        kind: b(&t.kind),
        patient: notification::Patient {
            address: when(full, "patient_address")
                .then(|| ev.pid.address.as_ref().map(Cow::Borrowed)),
            birth_date: when(standard, "birth_date").then(|| ev.pid.birth_date.as_deref().map(b)),
            family: b(&ev.pid.family),
            given: b(&ev.pid.given),
            identifiers: standard.then_some(Cow::Borrowed(ev.pid.identifiers.as_slice())),
            phone: when(full, "patient_phone").then(|| b(&ev.pid.phone)),
            sex: standard.then(|| b(&ev.pid.sex)),
        },
        redacted: Cow::Borrowed(&v.redact),
        retracts_kind: t.retracted_kind.as_deref().map(b),
        schema: b(notification::SCHEMA),
        sending_facility: b(&ev.msh.sending_facility),
        treating_facility: if ev.evn.event_facility.is_empty() {
            b(&pv1.location.facility)
        } else {
            b(&ev.evn.event_facility)
        },
        treating_practitioner: ev
            .treating_practitioner()
            .map(|p| notification::Practitioner {
                name: p.display_name(),
                npi: p.labelled_npi.then(|| b(&p.id)),
            }),
        trigger: b(&ev.msh.trigger),
    };
    body.to_json()
}

/// (facility, visit, patient key) of the encounter a message belongs to: PV1-19, else
/// PID-18, else one encounter per patient. `None` when the message names no patient.
pub(super) fn encounter_key(ev: &AdtEvent) -> Option<(String, String, String)> {
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
pub(super) fn attribution_key(facts: &PatientFacts) -> String {
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

impl Planner {
    /// What one message changes: its encounter's transitions, and for each notifiable
    /// one a decision per candidate recipient and the outbox rows. Everything it reads
    /// is in `snap` (what it changes goes back there, for the next message).
    pub fn plan_event(
        &self,
        snap: &mut Snapshot,
        ev: &AdtEvent,
        inbound_id: Option<i64>,
        now: i64,
    ) -> Plan {
        let mut plan = Plan {
            control_id: ev.msh.control_id.clone(),
            trigger: ev.msh.trigger.clone(),
            sending_facility: ev.msh.sending_facility.clone(),
            ..Plan::default()
        };
        let Some((facility, visit, patient_key)) = encounter_key(ev) else {
            plan.skipped = Some("no patient identifier (PID-3): nothing to route".into());
            return plan;
        };
        let no_pv1 = crate::hl7::adt::Pv1::default();
        let pv1 = ev.pv1.as_ref().unwrap_or(&no_pv1);
        let id = format!("{facility}|{visit}");
        // Taken out of the snapshot, and put back (moved) once planned.
        let stored = snap.encounters.remove(&id);
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
        let explain = !snap.write_only;
        if explain {
            plan.write.encounters.push(encounter_row(&enc));
        }
        let rules = &self.rules;
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
                let mut sent = snap.sent.get(retracted).cloned().unwrap_or_default();
                // A page in flight may be in both, once committed.
                for s in snap.stored_sent.get(retracted).into_iter().flatten() {
                    if !sent.iter().any(|x| x.recipient_npi == s.recipient_npi) {
                        sent.push(s.clone());
                    }
                }
                self.plan_retraction(&mut plan, ev, t, sent, &plan_encounter, now);
                continue;
            }
            if attributed.is_none() {
                let facts = PatientFacts::of(ev);
                let key = attribution_key(&facts);
                // Fetched for every message of the page; none would mean no candidate.
                let providers = snap
                    .attributions
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| Arc::from([]));
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
        snap.encounters.insert(plan_encounter, enc);
        for o in plan
            .write
            .outbox
            .iter()
            .filter(|o| o.status == Status::Pending)
        {
            let Some(channel) = o.channel else {
                continue; // a pending row always has its channel
            };
            snap.sent
                .entry(o.transition_key.clone())
                .or_default()
                .push(SentTo {
                    recipient_npi: o.recipient_npi.clone(),
                    channel,
                    endpoint: o.endpoint.clone(),
                    ordering_key: o.ordering_key.clone(),
                    content_profile: o.content_profile.clone(),
                });
        }
        plan.transitions = transitions;
        plan
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
            channel: None,
            endpoint: String::new(),
            payload: Vec::new(),
            // Each decision below sets it; a row not selected is not written.
            status: Status::Pending,
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
                Outcome::NotSelected,
                format!(
                    "no notify rule selects a {} for {}",
                    p.relationships.join("/"),
                    t.kind
                ),
            )
        } else if let Some((rule, why)) = &v.suppressed_by {
            row.status = Status::Suppressed;
            (Outcome::Suppressed, format!("{why} (rule {rule})"))
        } else if v.timing == rules::Timing::DischargeOnly && !discharge_like {
            row.status = Status::Suppressed;
            (
                Outcome::Suppressed,
                "recipient preference: discharge notifications only".to_string(),
            )
        } else {
            match rank_endpoints(&p.directory, &v.channels) {
                Ok(mut ranked) => {
                    let (channel, endpoint) = ranked.remove(0);
                    if !ranked.is_empty() {
                        row.fallbacks = serde_json::to_string(&ranked).ok();
                    }
                    row.status = Status::Pending;
                    row.channel = Some(channel);
                    row.endpoint = endpoint;
                    if v.timing == rules::Timing::DailyDigest {
                        row.due_at_us = next_digest(now, self.digest_hour_utc);
                    }
                    (
                        Outcome::Notify,
                        format!(
                            "selected by rule {}",
                            v.selected_by.as_deref().unwrap_or_default()
                        ),
                    )
                }
                Err(why) => {
                    row.status = Status::Dead;
                    (Outcome::NoEndpoint, why)
                }
            }
        };
        if explain {
            let sent = outcome == Outcome::Notify;
            plan.recipients.push(RecipientDecision {
                transition: key_hash(&t.key),
                kind: t.kind.clone(),
                npi: p.npi.clone(),
                relationships: p.relationships.clone(),
                outcome,
                reason: reason.clone(),
                rule_ids: ids.clone(),
                channel: row.channel.filter(|_| sent),
                endpoint: sent.then(|| row.endpoint.clone()),
                content: Some(v.content.as_str().into()),
                timing: Some(v.timing.as_str().into()),
                redacted: v.redact.iter().cloned().collect(),
            });
        }
        if outcome != Outcome::NotSelected {
            if row.status != Status::Pending {
                row.last_error = Some(reason.clone());
            }
            row.payload = payload(ev, t, enc_id, &key, v);
            plan.write.outbox.push(row);
        }
        plan.write.decisions.push(DecisionRow {
            transition_key: t.key.clone(),
            recipient_npi: p.npi.clone(),
            outcome,
            reason,
            rule_ids: joined_ids,
        });
    }

    fn plan_retraction(
        &self,
        plan: &mut Plan,
        ev: &AdtEvent,
        t: &Transition,
        sent: Vec<SentTo>,
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
                outcome: Outcome::Notify,
                reason: format!(
                    "retraction to a recipient of the {}",
                    t.retracted_kind.clone().unwrap_or_default()
                ),
                rule_ids: String::new(),
            });
            plan.write.outbox.push(OutboxRow {
                notification_key: key.clone(),
                ordering_key: s.ordering_key.clone(),
                channel: Some(s.channel),
                endpoint: s.endpoint.clone(),
                payload: payload(ev, t, enc_id, &key, &v),
                status: Status::Pending,
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
                outcome: Outcome::Notify,
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
}

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

#[cfg(test)]
mod tests {
    //! The planner's rules, one table row each, on events parsed from HL7 text and a
    //! snapshot built in memory: no database, no directory import, no clock.
    use super::*;
    use crate::attribution::Provenance;
    use crate::directory::{Endpoint, Source};
    use crate::routing::rules::{parse_file, OptOut};

    /// In priority order, as `load_dir` sorts a directory's rules.
    const RULES: &str = r#"
[[rule]]
id = "opt-out"
action = "suppress"
priority = 10
match.opted_out = true
reason = "patient opted out"

[[rule]]
id = "no-sud"
action = "redact"
priority = 20
match.diagnosis_prefixes = ["F10"]
fields = ["diagnosis", "admit_reason"]

[[rule]]
id = "aco-digest"
action = "notify"
priority = 50
match.events = ["admission", "discharge"]
recipients = ["roster:acme-aco"]
channels = ["REST"]
content = "minimum"
timing = "daily-digest"

[[rule]]
id = "snf-discharges"
action = "notify"
priority = 50
recipients = ["post_acute"]
channels = ["DIRECT"]
content = "full"
timing = "discharge-only"

[[rule]]
id = "cop"
action = "notify"
priority = 100
match.events = ["ed-registration", "admission", "discharge", "transfer"]
recipients = ["pcp", "post_acute"]
channels = ["DIRECT", "REST"]
content = "standard"
"#;

    const NOW: i64 = 1_796_000_000_000_000;

    fn planner() -> Planner {
        let mut set = RuleSet {
            rules: parse_file("t.toml", RULES).expect("the test rules parse"),
            ..RuleSet::default()
        };
        set.opt_outs.insert(OptOut {
            patient_id: "OPTED".into(),
            authority: "GENHOSP".into(),
        });
        Planner {
            rules: Arc::new(set),
            encounters: EncounterConfig::default(),
            digest_hour_utc: 7,
        }
    }

    /// An ADT message for patient `mrn` in visit V1 at hour `hour` of 2026-11-01.
    fn event(trigger: &str, mrn: &str, hour: u32, extra: &str) -> AdtEvent {
        let t = format!("20261101{hour:02}0000");
        let class = if trigger == "A04" { "E" } else { "I" };
        let text = format!(
            "MSH|^~\\&|EPIC|GENHOSP|ADTR|HIE|{t}||ADT^{trigger}|C{trigger}{hour}|P|2.5.1\r\
             EVN|{trigger}|{t}\r\
             PID|1||{mrn}^^^GENHOSP^MR||DOE^JANE||19700101|F\r\
             PV1|1|{class}|4W^1^A^GENHOSP||||1234567893^HOUSE^GREG^^^^^^NPI|||MED|||||||||V1\r{extra}"
        );
        AdtEvent::parse(&text).expect("the test message parses")
    }

    fn endpoint(kind: &str, value: &str) -> Endpoint {
        Endpoint {
            kind: kind.into(),
            value: value.into(),
            usable: true,
            unusable_reason: None,
            preferred: false,
            has_secret: false,
            affiliation: None,
            affiliation_name: None,
            use_code: None,
            content_type: None,
            source: Source {
                kind: "nppes",
                file: "npidata.csv".into(),
                line: Some(2),
                loaded_at: String::new(),
                import_mode: Some("full".into()),
            },
            normalized: None,
        }
    }

    /// A provider attributed by roster `source` as `relationship`, reachable at `endpoints`.
    fn provider(
        npi: &str,
        relationship: &str,
        source: &str,
        endpoints: Vec<Endpoint>,
    ) -> AttributedProvider {
        AttributedProvider {
            npi: npi.into(),
            relationships: vec![relationship.into()],
            provenance: vec![Provenance {
                kind: "roster",
                relationship: relationship.into(),
                source: Some(source.into()),
                roster_import_id: Some(1),
                roster_line: Some(2),
                loaded_at: None,
                matched_by: Some("identifier"),
                score: None,
                field: None,
                segment_index: None,
            }],
            directory: DirectoryEntry {
                npi: npi.into(),
                provider: None,
                no_endpoint_reason: endpoints
                    .is_empty()
                    .then(|| "no endpoint in the directory".into()),
                endpoints,
                chosen: None,
            },
        }
    }

    /// A snapshot in which every patient of `events` is attributed `providers`.
    fn snapshot(events: &[&AdtEvent], providers: Vec<AttributedProvider>) -> Snapshot {
        let mut snap = Snapshot::default();
        let providers: Arc<[AttributedProvider]> = providers.into();
        for ev in events {
            snap.attributions
                .insert(attribution_key(&PatientFacts::of(ev)), providers.clone());
        }
        snap
    }

    fn pcp() -> AttributedProvider {
        provider(
            "1234567893",
            "pcp",
            "clinic",
            vec![
                endpoint("REST", "https://clinic.example/hook"),
                endpoint("DIRECT", "dr@direct.clinic.example"),
            ],
        )
    }

    fn decision<'a>(plan: &'a Plan, npi: &str) -> &'a DecisionRow {
        plan.write
            .decisions
            .iter()
            .find(|d| d.recipient_npi == npi)
            .expect("a decision for the provider")
    }

    #[test]
    fn an_admission_notifies_the_pcp_on_the_rules_first_channel_with_the_rest_as_fallback() {
        let ev = event("A01", "MRN1", 8, "");
        let mut snap = snapshot(&[&ev], vec![pcp()]);
        let plan = planner().plan_event(&mut snap, &ev, Some(1), NOW);
        assert_eq!(
            plan.transitions
                .iter()
                .map(|t| t.kind.as_str())
                .collect::<Vec<_>>(),
            ["admission"]
        );
        let d = decision(&plan, "1234567893");
        assert_eq!(
            (d.outcome.as_str(), d.reason.as_str()),
            ("notify", "selected by rule cop")
        );
        let [o] = plan.write.outbox.as_slice() else {
            panic!("one outbox row")
        };
        assert_eq!(
            (
                o.status.as_str(),
                o.channel.map_or("", EndpointKind::as_str)
            ),
            ("pending", "DIRECT")
        );
        assert_eq!(o.endpoint, "dr@direct.clinic.example");
        assert_eq!(
            o.fallbacks.as_deref(),
            Some(r#"[["REST","https://clinic.example/hook"]]"#)
        );
        assert_eq!(o.due_at_us, NOW);
        let body = Notification::from_json(&o.payload).expect("the body reads back");
        assert_eq!(
            (body.kind.as_ref(), body.content_profile),
            ("admission", rules::ContentProfile::Standard)
        );
        assert_eq!(body.idempotency_key, o.notification_key);
        // What was sent is remembered for a later cancel.
        assert_eq!(
            snap.sent[&plan.transitions[0].key][0].recipient_npi,
            "1234567893"
        );
    }

    #[test]
    fn a_relationship_no_rule_selects_is_recorded_as_not_selected_and_not_queued() {
        let ev = event("A01", "MRN1", 8, "");
        let mut snap = snapshot(
            &[&ev],
            vec![provider(
                "1234567893",
                "specialist",
                "clinic",
                vec![endpoint("REST", "https://x.example/")],
            )],
        );
        let plan = planner().plan_event(&mut snap, &ev, Some(1), NOW);
        let d = decision(&plan, "1234567893");
        assert_eq!(d.outcome, Outcome::NotSelected);
        assert!(d.reason.contains("specialist"), "{}", d.reason);
        assert!(plan.write.outbox.is_empty());
    }

    #[test]
    fn an_opted_out_patient_is_suppressed_with_the_rule_and_its_reason() {
        let ev = event("A01", "OPTED", 8, "");
        let mut snap = snapshot(&[&ev], vec![pcp()]);
        let plan = planner().plan_event(&mut snap, &ev, Some(1), NOW);
        let d = decision(&plan, "1234567893");
        assert_eq!(
            (d.outcome.as_str(), d.reason.as_str()),
            ("suppressed", "patient opted out (rule opt-out)")
        );
        assert_eq!(plan.write.outbox[0].status, Status::Suppressed);
        assert_eq!(
            plan.write.outbox[0].last_error.as_deref(),
            Some(d.reason.as_str())
        );
        assert!(snap.sent.is_empty(), "nothing was sent");
    }

    #[test]
    fn a_provider_without_a_usable_endpoint_is_a_dead_notification_saying_why() {
        let ev = event("A01", "MRN1", 8, "");
        let mut snap = snapshot(
            &[&ev],
            vec![provider("1234567893", "pcp", "clinic", vec![])],
        );
        let plan = planner().plan_event(&mut snap, &ev, Some(1), NOW);
        let d = decision(&plan, "1234567893");
        assert_eq!(
            (d.outcome.as_str(), d.reason.as_str()),
            ("no-endpoint", "no endpoint in the directory")
        );
        assert_eq!(plan.write.outbox[0].status, Status::Dead);
    }

    #[test]
    fn a_daily_digest_recipient_is_due_at_the_next_digest_hour() {
        let ev = event("A01", "MRN1", 8, "");
        let aco = provider(
            "1234567893",
            "pcp",
            "acme-aco",
            vec![endpoint("REST", "https://aco.example/")],
        );
        let mut snap = snapshot(&[&ev], vec![aco]);
        let plan = planner().plan_event(&mut snap, &ev, Some(1), NOW);
        let o = &plan.write.outbox[0];
        assert_eq!(
            (
                o.status.as_str(),
                o.channel.map_or("", EndpointKind::as_str),
                o.content_profile.as_str()
            ),
            ("pending", "REST", "minimum")
        );
        assert_eq!(o.due_at_us, next_digest(NOW, 7));
        assert!(o.due_at_us > NOW);
    }

    #[test]
    fn a_discharge_only_recipient_is_suppressed_for_an_admission_and_told_of_the_discharge() {
        let snf = || {
            provider(
                "1234567893",
                "post_acute",
                "snf",
                vec![endpoint("DIRECT", "intake@direct.snf.example")],
            )
        };
        let admit = event("A01", "MRN1", 8, "");
        let discharge = event("A03", "MRN1", 12, "");
        let mut snap = snapshot(&[&admit, &discharge], vec![snf()]);
        let p = planner();
        let plan = p.plan_event(&mut snap, &admit, Some(1), NOW);
        let d = decision(&plan, "1234567893");
        assert_eq!(
            (d.outcome.as_str(), d.reason.as_str()),
            (
                "suppressed",
                "recipient preference: discharge notifications only"
            )
        );
        let plan = p.plan_event(&mut snap, &discharge, Some(2), NOW);
        assert_eq!(decision(&plan, "1234567893").outcome, Outcome::Notify);
        assert_eq!(plan.write.outbox[0].content_profile, "full");
    }

    #[test]
    fn a_redacted_field_is_left_out_of_the_body_and_named() {
        let dg1 = "PV2|||^Alcohol withdrawal\rDG1|1||F10.20^Alcohol dependence^I10||20261101|A\r";
        let ev = event("A03", "MRN1", 12, dg1);
        let snf = provider(
            "1234567893",
            "post_acute",
            "snf",
            vec![endpoint("DIRECT", "intake@direct.snf.example")],
        );
        let mut snap = snapshot(&[&ev], vec![snf]);
        let plan = planner().plan_event(&mut snap, &ev, Some(1), NOW);
        let o = &plan.write.outbox[0];
        assert!(o.rule_ids.contains("no-sud"), "{}", o.rule_ids);
        let body = Notification::from_json(&o.payload).unwrap();
        assert_eq!(body.content_profile, rules::ContentProfile::Full);
        assert!(body.encounter.diagnoses.is_none() && body.encounter.admit_reason.is_none());
        assert_eq!(
            body.redacted.iter().map(String::as_str).collect::<Vec<_>>(),
            ["admit_reason", "diagnosis"]
        );
        let text = String::from_utf8(o.payload.clone()).unwrap();
        assert!(!text.contains("F10") && !text.contains("Alcohol"), "{text}");
    }

    #[test]
    fn a_cancel_retracts_to_exactly_the_recipients_of_what_it_cancels() {
        let discharge = event("A03", "MRN1", 12, "");
        let cancel = event("A13", "MRN1", 13, "");
        let p = planner();
        let mut snap = snapshot(&[&discharge, &cancel], vec![pcp()]);
        let sent = p.plan_event(&mut snap, &discharge, Some(1), NOW);
        // The discharge was committed: a fresh snapshot knows it from the store.
        let mut fresh = snapshot(
            &[&cancel],
            vec![
                pcp(),
                provider(
                    "1982607933",
                    "pcp",
                    "other",
                    vec![endpoint("REST", "https://o.example/")],
                ),
            ],
        );
        fresh.encounters = std::mem::take(&mut snap.encounters);
        fresh.stored_sent = std::mem::take(&mut snap.sent);
        let plan = p.plan_event(&mut fresh, &cancel, Some(2), NOW);
        let t = &plan.transitions[0];
        assert_eq!(
            (t.kind.as_str(), t.retracts.as_ref()),
            ("retraction", Some(&sent.transitions[0].key))
        );
        let [o] = plan.write.outbox.as_slice() else {
            panic!("one retraction: only the discharge's recipient")
        };
        assert_eq!(
            (o.kind.as_str(), o.recipient_npi.as_str()),
            ("retraction", "1234567893")
        );
        assert_eq!(
            (
                o.channel.map_or("", EndpointKind::as_str),
                o.endpoint.as_str()
            ),
            ("DIRECT", "dr@direct.clinic.example")
        );
        assert_eq!(
            o.ordering_key, sent.write.outbox[0].ordering_key,
            "after the discharge, in order"
        );
        let body = Notification::from_json(&o.payload).unwrap();
        assert_eq!(body.retracts_kind.as_deref(), Some("discharge"));
    }

    #[test]
    fn a_message_without_a_patient_identifier_is_skipped_with_the_reason() {
        let text = "MSH|^~\\&|EPIC|GENHOSP|ADTR|HIE|20261101080000||ADT^A01|C1|P|2.5.1\rEVN|A01|20261101080000\rPID|1||||DOE^JANE\rPV1|1|I\r";
        let ev = AdtEvent::parse(text).expect("parses");
        let plan = planner().plan_event(&mut Snapshot::default(), &ev, Some(1), NOW);
        assert_eq!(
            plan.skipped.as_deref(),
            Some("no patient identifier (PID-3): nothing to route")
        );
        assert!(plan.write.transitions.is_empty() && plan.write.outbox.is_empty());
    }

    #[test]
    fn digest_is_the_next_hour() {
        let h = 3_600_000_000i64;
        assert_eq!(super::next_digest(0, 7), 7 * h);
        assert_eq!(super::next_digest(8 * h, 7), 31 * h);
    }
}

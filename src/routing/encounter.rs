//! The encounter state machine: one per facility + visit number, fed one ADT event at a
//! time, in whatever order the events arrive. It answers "is this a clinically
//! meaningful change that someone must hear about?" and nothing else; who hears about
//! it is the rules' business.
//!
//! Order-independence comes from event times (EVN-6, EVN-2, MSH-7), not arrival order:
//! - each notifiable kind (ED registration, admission, discharge/transfer) is emitted
//!   at most once per *generation*; a cancel retracts the live one (a `retraction`)
//!   and starts a new generation, so a re-admission after a cancelled admission is
//!   news again;
//! - a cancel remembers its time: an original that arrives late, timed before the
//!   cancel, is recorded but not notified (nothing to retract, nobody misled);
//! - an ED registration or admission timed before a discharge that was already
//!   notified is recorded as late, not notified.
//!
//! Transition keys are derived from the encounter and the generation, never from the
//! message, so replaying or re-sending a message can never mint a second notification.

use crate::hl7::adt::{hl7_time_us, AdtEvent};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// `[routing]` settings the state machine needs.
#[derive(Clone, Debug)]
pub struct EncounterConfig {
    /// Discharge dispositions (PV1-36) that make a discharge a transfer.
    pub transfer_dispositions: Vec<String>,
    /// A08/A31 produce an update only when one of these changes: patient_class, unit,
    /// discharge_disposition, diagnosis, pcp.
    pub watched: Vec<String>,
    /// An ED visit with no admission or discharge after this long is closed.
    pub ed_timeout_us: i64,
}

impl Default for EncounterConfig {
    fn default() -> Self {
        EncounterConfig {
            // NUBC UB-04 FL17: to another hospital, SNF, ICF, cancer/children's
            // hospital, federal facility, swing bed, IRF, LTCH, nursing facility,
            // psychiatric hospital, CAH, other institution (and the 8x planned-readmit
            // equivalents).
            transfer_dispositions: [
                "02", "03", "04", "05", "43", "61", "62", "63", "64", "65", "66", "70", "82", "83",
                "84", "85", "88", "89", "90", "91", "92", "93", "94", "95",
            ]
            .map(String::from)
            .to_vec(),
            watched: [
                "patient_class",
                "unit",
                "discharge_disposition",
                "diagnosis",
                "pcp",
            ]
            .map(String::from)
            .to_vec(),
            ed_timeout_us: 24 * 3600 * 1_000_000,
        }
    }
}

pub const WATCHABLE: &[&str] = &[
    "patient_class",
    "unit",
    "discharge_disposition",
    "diagnosis",
    "pcp",
    "service",
    "attending",
];

/// The notified transition of one kind group in the current generation.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Live {
    pub key: String,
    pub kind: String,
    pub at_us: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cancel {
    pub group: String,
    pub at_us: i64,
}

/// What the router keeps per encounter (stored as JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Encounter {
    pub facility: String,
    pub visit_number: String,
    pub patient_key: String,
    /// preadmit, ed, inpatient, outpatient, discharged, cancelled, leave, closed, unknown.
    pub status: String,
    pub patient_class: String,
    pub unit: String,
    pub service: String,
    pub discharge_disposition: String,
    pub diagnoses: Vec<String>,
    pub pcp: String,
    pub attending: String,
    pub last_event_us: i64,
    /// Live transition per group (ed, admission, discharge, move).
    pub live: BTreeMap<String, Live>,
    pub generation: BTreeMap<String, u32>,
    pub cancels: Vec<Cancel>,
    pub watched_hash: String,
}

/// One step of the machine.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Transition {
    /// Unique per encounter change: the notification identity is (key, recipient).
    pub key: String,
    /// ed-registration, admission, discharge, transfer, retraction, update, move,
    /// ed-timeout, and the recorded-only kinds (registration, pre-admit, ...).
    pub kind: String,
    /// Whether rules get to send it; recorded-only transitions are evidence only.
    pub notifiable: bool,
    /// For a retraction: the key of the transition it takes back, and its kind.
    pub retracts: Option<String>,
    pub retracted_kind: Option<String>,
    /// Why, in words: what changed, or why it is not notified.
    pub note: String,
    pub at_us: i64,
}

impl Encounter {
    pub fn new(facility: &str, visit_number: &str, patient_key: &str) -> Self {
        Encounter {
            facility: facility.to_string(),
            visit_number: visit_number.to_string(),
            patient_key: patient_key.to_string(),
            status: "unknown".into(),
            ..Encounter::default()
        }
    }

    /// `facility|visit`: the encounter's id in keys and exports.
    pub fn id(&self) -> String {
        format!("{}|{}", self.facility, self.visit_number)
    }

    fn live_notified(&self, group: &str) -> Option<&Live> {
        self.live.get(group)
    }

    fn has_notified(&self) -> bool {
        ["ed", "admission", "discharge"]
            .iter()
            .any(|g| self.live_notified(g).is_some())
    }

    /// Feeds one event. `now_us` stands in for an event with no readable time.
    pub fn step(&mut self, ev: &AdtEvent, cfg: &EncounterConfig, now_us: i64) -> Vec<Transition> {
        let at = hl7_time_us(ev.event_time()).unwrap_or(now_us);
        let no_pv1 = crate::hl7::adt::Pv1::default();
        let pv1 = ev.pv1.as_ref().unwrap_or(&no_pv1);
        let class = pv1.patient_class.as_str();
        let newest = at >= self.last_event_us;
        let mut out = Vec::new();
        let trigger = ev.msh.trigger.as_str();
        match trigger {
            "A01" | "A04" if class == "E" => {
                self.open("ed", "ed-registration", at, &mut out);
                self.set_status(newest, "ed");
            }
            "A01" | "A06" => {
                self.open("admission", "admission", at, &mut out);
                self.set_status(newest, "inpatient");
            }
            "A04" => {
                out.push(self.recorded("registration", at, "outpatient registration"));
                self.set_status(newest, "outpatient");
            }
            "A05" | "A14" => {
                out.push(self.recorded("pre-admit", at, "pre-admission or pending admit"));
                if self.status == "unknown" {
                    self.status = "preadmit".into();
                }
            }
            "A03" => {
                let disposition = pv1.discharge_disposition.as_str();
                let transfer = cfg.transfer_dispositions.iter().any(|d| d == disposition);
                let kind = if transfer { "transfer" } else { "discharge" };
                self.open("discharge", kind, at, &mut out);
                self.set_status(newest, "discharged");
            }
            "A02" => {
                // An internal move (Da Vinci: not a CoP transfer). Recorded, and
                // notifiable for rules that ask for moves.
                let key = format!("{}|move|{at}", self.id());
                let note = "moved within the facility".to_string();
                self.live.insert(
                    "move".into(),
                    Live {
                        key: key.clone(),
                        kind: "move".into(),
                        at_us: at,
                    },
                );
                out.push(Transition {
                    key,
                    kind: "move".into(),
                    notifiable: true,
                    retracts: None,
                    retracted_kind: None,
                    note,
                    at_us: at,
                });
            }
            "A07" => out.push(self.recorded("class-change", at, "inpatient to outpatient")),
            "A11" => {
                self.cancel(&["ed", "admission"], at, &mut out);
                self.set_status(newest, "cancelled");
            }
            "A12" => self.cancel(&["move"], at, &mut out),
            "A13" => {
                self.cancel(&["discharge"], at, &mut out);
                let back = if self.live.contains_key("admission") {
                    "inpatient"
                } else if self.live.contains_key("ed") {
                    "ed"
                } else {
                    "unknown"
                };
                self.set_status(newest, back);
            }
            "A21" => {
                out.push(self.recorded("leave", at, "leave of absence"));
                self.set_status(newest, "leave");
            }
            "A22" => {
                out.push(self.recorded("return", at, "back from leave of absence"));
                self.set_status(newest, "inpatient");
            }
            "A08" | "A31" => {}
            "A28" => out.push(self.recorded("patient-update", at, "person added")),
            "A40" => out.push(self.recorded("merge", at, "patient identifiers merged")),
            other => out.push(self.recorded(
                "unknown",
                at,
                &format!("trigger {other} has no routing meaning; stored, not notified"),
            )),
        }
        // Every event refreshes what the encounter looks like, newest wins; A08/A31
        // notify only when a watched field changed and someone has already been told
        // about this encounter.
        if newest {
            let before = self.watched_hash.clone();
            let changed = self.refresh(ev, cfg);
            if matches!(trigger, "A08" | "A31") {
                if changed.is_empty() {
                    // Nothing a recipient cares about.
                } else if self.has_notified() && !before.is_empty() {
                    out.push(Transition {
                        key: format!("{}|update|{}", self.id(), self.watched_hash),
                        kind: "update".into(),
                        notifiable: true,
                        retracts: None,
                        retracted_kind: None,
                        note: format!("changed: {}", changed.join(", ")),
                        at_us: at,
                    });
                } else {
                    out.push(self.recorded(
                        "patient-update",
                        at,
                        &format!("changed: {} (nothing notified yet)", changed.join(", ")),
                    ));
                }
            }
            self.last_event_us = at;
        } else if matches!(trigger, "A08" | "A31") {
            out.push(self.recorded("patient-update", at, "older than what is known; ignored"));
        }
        out
    }

    /// Closes an ED visit that has gone quiet for longer than the timeout.
    pub fn sweep(&mut self, cfg: &EncounterConfig, now_us: i64) -> Option<Transition> {
        if self.status != "ed" || now_us - self.last_event_us < cfg.ed_timeout_us {
            return None;
        }
        self.status = "closed".into();
        let gen = self.generation.get("ed").copied().unwrap_or(0);
        Some(Transition {
            key: format!("{}|ed-timeout|{gen}", self.id()),
            kind: "ed-timeout".into(),
            // Recorded: a timed-out visit is not a real discharge (docs/routing.md).
            notifiable: false,
            retracts: None,
            retracted_kind: None,
            note: format!(
                "no admission or discharge {} h after the last ED event; closed",
                cfg.ed_timeout_us / 3_600_000_000
            ),
            at_us: now_us,
        })
    }

    fn set_status(&mut self, newest: bool, status: &str) {
        if newest || self.status == "unknown" {
            self.status = status.to_string();
        }
    }

    fn recorded(&self, kind: &str, at: i64, note: &str) -> Transition {
        Transition {
            key: format!("{}|{kind}|{at}", self.id()),
            kind: kind.to_string(),
            notifiable: false,
            retracts: None,
            retracted_kind: None,
            note: note.to_string(),
            at_us: at,
        }
    }

    fn open(&mut self, group: &str, kind: &str, at: i64, out: &mut Vec<Transition>) {
        if self.live.contains_key(group) {
            // Already emitted in this generation: a repeat.
            return;
        }
        let gen = self.generation.get(group).copied().unwrap_or(0);
        let key = format!("{}|{group}|{gen}", self.id());
        let silent_because = if let Some(c) = self
            .cancels
            .iter()
            .find(|c| c.group == group && c.at_us > at)
        {
            Some(format!(
                "cancelled by a later cancel message (at {}); arrived after it",
                c.at_us
            ))
        } else if group != "discharge" {
            self.live_notified("discharge")
                .filter(|d| d.at_us > at)
                .map(|_| "late: the encounter was already discharged".to_string())
                .or_else(|| {
                    (group == "ed")
                        .then(|| self.live_notified("admission").filter(|a| a.at_us > at))
                        .flatten()
                        .map(|_| "late: the patient was already admitted".to_string())
                })
        } else {
            None
        };
        if let Some(note) = silent_because {
            // Recorded, not notified, and not live: it must not block a later real one.
            out.push(Transition {
                key: format!("{}|{kind}|late|{at}", self.id()),
                kind: kind.to_string(),
                notifiable: false,
                retracts: None,
                retracted_kind: None,
                note,
                at_us: at,
            });
            return;
        }
        self.live.insert(
            group.to_string(),
            Live {
                key: key.clone(),
                kind: kind.to_string(),
                at_us: at,
            },
        );
        out.push(Transition {
            key,
            kind: kind.to_string(),
            notifiable: true,
            retracts: None,
            retracted_kind: None,
            note: String::new(),
            at_us: at,
        });
    }

    fn cancel(&mut self, groups: &[&str], at: i64, out: &mut Vec<Transition>) {
        let mut any = false;
        for g in groups {
            if !self.cancels.iter().any(|c| c.group == *g && c.at_us == at) {
                self.cancels.push(Cancel {
                    group: g.to_string(),
                    at_us: at,
                });
            }
            let Some(live) = self.live.get(*g).cloned() else {
                continue;
            };
            if live.at_us >= at {
                // The live one is newer than this cancel: the cancel was for an
                // earlier generation (a repeat of an old cancel).
                continue;
            }
            self.live.remove(*g);
            *self.generation.entry(g.to_string()).or_insert(0) += 1;
            any = true;
            out.push(Transition {
                key: format!("{}|retraction", live.key),
                kind: "retraction".into(),
                notifiable: true,
                retracts: Some(live.key.clone()),
                retracted_kind: Some(live.kind.clone()),
                note: format!("the {} was cancelled", live.kind),
                at_us: at,
            });
        }
        if !any {
            out.push(self.recorded("cancel", at, "nothing live to cancel"));
        }
    }

    /// Updates the watched snapshot; returns the names of watched fields that changed.
    fn refresh(&mut self, ev: &AdtEvent, cfg: &EncounterConfig) -> Vec<String> {
        let no_pv1 = crate::hl7::adt::Pv1::default();
        let pv1 = ev.pv1.as_ref().unwrap_or(&no_pv1);
        let mut diagnoses: Vec<String> = ev.diagnoses.iter().map(|d| d.code.clone()).collect();
        diagnoses.sort();
        diagnoses.dedup();
        let pcp = ev
            .care_team
            .iter()
            .find(|p| p.role_code == "PP")
            .map(|p| p.id.clone())
            .unwrap_or_default();
        let attending = ev
            .treating_practitioner()
            .map(|p| p.id.clone())
            .unwrap_or_default();
        let mut changed = Vec::new();
        let mut set = |name: &str, slot: &mut String, value: String| {
            if *slot != value && !(value.is_empty() && ev.pv1.is_none()) {
                if cfg.watched.iter().any(|w| w == name) && !slot.is_empty() {
                    changed.push(name.to_string());
                }
                *slot = value;
            }
        };
        set(
            "patient_class",
            &mut self.patient_class,
            pv1.patient_class.clone(),
        );
        set("unit", &mut self.unit, pv1.location.point_of_care.clone());
        set("service", &mut self.service, pv1.hospital_service.clone());
        set(
            "discharge_disposition",
            &mut self.discharge_disposition,
            pv1.discharge_disposition.clone(),
        );
        set("pcp", &mut self.pcp, pcp);
        set("attending", &mut self.attending, attending);
        if self.diagnoses != diagnoses && !diagnoses.is_empty() {
            if cfg.watched.iter().any(|w| w == "diagnosis") && !self.diagnoses.is_empty() {
                changed.push("diagnosis".into());
            }
            self.diagnoses = diagnoses;
        }
        let mut h = Sha256::new();
        for w in &cfg.watched {
            let v = match w.as_str() {
                "patient_class" => self.patient_class.clone(),
                "unit" => self.unit.clone(),
                "service" => self.service.clone(),
                "discharge_disposition" => self.discharge_disposition.clone(),
                "diagnosis" => self.diagnoses.join(","),
                "pcp" => self.pcp.clone(),
                "attending" => self.attending.clone(),
                _ => String::new(),
            };
            h.update(w.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        self.watched_hash = hex::encode(&h.finalize()[..8]);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(trigger: &str, class: &str, time: &str, extra_pv1: &str) -> AdtEvent {
        let text = format!(
            "MSH|^~\\&|EPIC|GENHOSP|R|F|{time}||ADT^{trigger}|C{trigger}{time}|P|2.5.1\r\
EVN|{trigger}|{time}\r\
PID|1||MRN1^^^GENHOSP^MR||DOE^JANE||19800101|F\r\
PV1|1|{class}|4W^1^A||||1234567893^WELBY^MARCUS^^^^^^NPI|||MED|||||||||V1{extra_pv1}\r"
        );
        AdtEvent::parse(&text).unwrap()
    }

    fn kinds(ts: &[Transition]) -> Vec<(String, bool)> {
        ts.iter().map(|t| (t.kind.clone(), t.notifiable)).collect()
    }

    fn k(kind: &str, n: bool) -> (String, bool) {
        (kind.to_string(), n)
    }

    #[test]
    fn ed_admit_discharge() {
        let cfg = EncounterConfig::default();
        let mut e = Encounter::new("GENHOSP", "V1", "MRN1^GENHOSP");
        assert_eq!(
            kinds(&e.step(&msg("A04", "E", "202611280800", ""), &cfg, 0)),
            [k("ed-registration", true)]
        );
        assert_eq!(
            kinds(&e.step(&msg("A04", "E", "202611280800", ""), &cfg, 0)),
            []
        );
        assert_eq!(
            kinds(&e.step(&msg("A06", "I", "202611281000", ""), &cfg, 0)),
            [k("admission", true)]
        );
        assert_eq!(
            kinds(&e.step(&msg("A02", "I", "202611281100", ""), &cfg, 0)),
            [k("move", true)]
        );
        let d = e.step(&msg("A03", "I", "202611290900", ""), &cfg, 0);
        assert_eq!(kinds(&d), [k("discharge", true)]);
        assert_eq!(e.status, "discharged");
    }

    #[test]
    fn cancel_then_readmit_and_late_original() {
        let cfg = EncounterConfig::default();
        let mut e = Encounter::new("GENHOSP", "V1", "MRN1^GENHOSP");
        let a = e.step(&msg("A01", "I", "202611280800", ""), &cfg, 0);
        let c = e.step(&msg("A11", "I", "202611280900", ""), &cfg, 0);
        assert_eq!(kinds(&c), [k("retraction", true)]);
        assert_eq!(c[0].retracts.as_deref(), Some(a[0].key.as_str()));
        // The same A01 again (a resend of the cancelled one): silent.
        assert_eq!(
            kinds(&e.step(&msg("A01", "I", "202611280800", ""), &cfg, 0)),
            [k("admission", false)]
        );
        // A real re-admission later is news, with a new key.
        let again = e.step(&msg("A01", "I", "202611281000", ""), &cfg, 0);
        assert_eq!(kinds(&again), [k("admission", true)]);
        assert_ne!(again[0].key, a[0].key);
        // Repeating the old cancel changes nothing; a new one retracts the new admission.
        assert_eq!(
            kinds(&e.step(&msg("A11", "I", "202611280900", ""), &cfg, 0)),
            [k("cancel", false)]
        );
        let c2 = e.step(&msg("A11", "I", "202611281100", ""), &cfg, 0);
        assert_eq!(c2[0].retracts.as_deref(), Some(again[0].key.as_str()));
    }

    #[test]
    fn discharge_before_admit() {
        let cfg = EncounterConfig::default();
        let mut e = Encounter::new("GENHOSP", "V1", "MRN1^GENHOSP");
        assert_eq!(
            kinds(&e.step(&msg("A03", "I", "202611290900", ""), &cfg, 0)),
            [k("discharge", true)]
        );
        assert_eq!(
            kinds(&e.step(&msg("A01", "I", "202611280800", ""), &cfg, 0)),
            [k("admission", false)]
        );
        assert_eq!(e.status, "discharged");
    }

    #[test]
    fn a08_storm_yields_one_update_per_change() {
        let cfg = EncounterConfig::default();
        let mut e = Encounter::new("GENHOSP", "V1", "MRN1^GENHOSP");
        e.step(&msg("A01", "I", "202611280800", ""), &cfg, 0);
        for i in 0..20 {
            let t = format!("2026112809{i:02}");
            assert_eq!(
                kinds(&e.step(&msg("A08", "I", &t, ""), &cfg, 0)),
                [],
                "storm {i}"
            );
        }
        let mut moved = msg("A08", "I", "202611281000", "");
        moved.pv1.as_mut().unwrap().location.point_of_care = "ICU".into();
        let u = e.step(&moved, &cfg, 0);
        assert_eq!(kinds(&u), [k("update", true)]);
        assert!(u[0].note.contains("unit"));
    }

    #[test]
    fn ed_timeout_closes() {
        let cfg = EncounterConfig::default();
        let mut e = Encounter::new("GENHOSP", "V1", "MRN1^GENHOSP");
        e.step(&msg("A04", "E", "20261128080000+0000", ""), &cfg, 0);
        let t0 = e.last_event_us;
        assert!(e.sweep(&cfg, t0 + 3600 * 1_000_000).is_none());
        let t = e.sweep(&cfg, t0 + cfg.ed_timeout_us).unwrap();
        assert_eq!(t.kind, "ed-timeout");
        assert!(e.sweep(&cfg, t0 + 2 * cfg.ed_timeout_us).is_none());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One episode of each group at most: an ED registration, an admission (maybe
    /// cancelled), a discharge (maybe cancelled), at increasing times.
    fn episode() -> impl Strategy<Value = Vec<(&'static str, &'static str, u32)>> {
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(ed, cancel_admit, discharge, cancel_discharge)| {
                let mut v = Vec::new();
                if ed {
                    v.push(("A04", "E", 1));
                }
                v.push(("A01", "I", 2));
                if cancel_admit {
                    v.push(("A11", "I", 3));
                }
                if discharge {
                    v.push(("A03", "I", 4));
                    if cancel_discharge {
                        v.push(("A13", "I", 5));
                    }
                }
                v.push(("A08", "I", 6));
                v
            },
        )
    }

    fn event(trigger: &str, class: &str, minute: u32) -> AdtEvent {
        let text = format!(
            "MSH|^~\\&|EPIC|GENHOSP|R|F|2026112808{minute:02}||ADT^{trigger}|C{minute}|P|2.5.1\r\
EVN|{trigger}|2026112808{minute:02}\r\
PID|1||MRN1^^^GENHOSP^MR||DOE^JANE||19800101|F\r\
PV1|1|{class}|4W^1^A|||||||MED|||||||||V1\r"
        );
        AdtEvent::parse(&text).unwrap()
    }

    fn group(kind: &str) -> &'static str {
        match kind {
            "ed-registration" => "ed",
            "admission" => "admission",
            _ => "discharge",
        }
    }

    proptest! {
        /// Any order, any repeats: no notification twice, no lost retraction, and
        /// never more than one live notification per kind.
        #[test]
        fn duplicates_and_reordering(
            ep in episode(),
            copies in proptest::collection::vec(1usize..=3, 6),
            seed in any::<u64>(),
        ) {
            let mut msgs = Vec::new();
            for (i, m) in ep.iter().enumerate() {
                for _ in 0..copies[i % copies.len()] {
                    msgs.push(*m);
                }
            }
            // Fisher-Yates with a splitmix stream.
            let mut s = seed;
            for i in (1..msgs.len()).rev() {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                let j = ((z ^ (z >> 31)) % (i as u64 + 1)) as usize;
                msgs.swap(i, j);
            }
            let cfg = EncounterConfig::default();
            let mut enc = Encounter::new("GENHOSP", "V1", "MRN1^GENHOSP");
            let mut notified: Vec<Transition> = Vec::new();
            for (t, c, m) in &msgs {
                notified.extend(enc.step(&event(t, c, *m), &cfg, 0).into_iter().filter(|t| t.notifiable));
            }
            let mut keys: Vec<&str> = notified.iter().map(|t| t.key.as_str()).collect();
            keys.sort();
            let n = keys.len();
            keys.dedup();
            prop_assert_eq!(keys.len(), n, "a notification twice: {:?}", notified);
            let retracted: Vec<&str> = notified.iter().filter_map(|t| t.retracts.as_deref()).collect();
            let cancel_time = |g: &str| -> Option<i64> {
                let trig = match g { "ed" | "admission" => "A11", _ => "A13" };
                ep.iter().find(|(t, _, _)| *t == trig).map(|(t, c, m)| {
                    hl7_time_us(event(t, c, *m).event_time()).unwrap()
                })
            };
            for t in notified.iter().filter(|t| t.retracts.is_none() && t.kind != "update") {
                if let Some(c) = cancel_time(group(&t.kind)) {
                    if t.at_us < c {
                        prop_assert!(retracted.contains(&t.key.as_str()), "lost retraction of {:?} in {:?}", t, notified);
                    }
                }
            }
            for g in ["ed", "admission", "discharge"] {
                let live = notified
                    .iter()
                    .filter(|t| t.retracts.is_none() && t.kind != "update" && group(&t.kind) == g)
                    .filter(|t| !retracted.contains(&t.key.as_str()))
                    .count();
                prop_assert!(live <= 1, "{} live {} notifications: {:?}", live, g, notified);
            }
        }
    }
}

//! The whole ADT message as typed structs: what the router decides on and what a
//! notification carries. Parsed by segment id and position (standards §3.3: real feeds
//! vary too much for a rigid grammar), escapes decoded, versions 2.3 to 2.8 alike.
//!
//! Pure and panic-free on any input that [`parse_message`] accepts; the `Debug` output
//! of the patient parts is not redacted, so never log these structs.

use super::parse::{normalize, ParseRules, Rejection};
use super::read::FieldReader;
use serde::Serialize;

/// The NPI's OID, used as an assigning authority by some feeds.
const NPI_OID: &str = "2.16.840.1.113883.4.6";

#[derive(Clone, Debug, Default, Serialize)]
pub struct Msh {
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    /// MSH-7 as sent (DTM).
    pub message_time: String,
    pub message_code: String,
    pub trigger: String,
    pub structure: String,
    pub control_id: String,
    pub version: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Evn {
    /// EVN-2, recorded date/time (DTM).
    pub recorded_at: String,
    pub reason_code: String,
    /// EVN-6, when the event really happened.
    pub occurred_at: String,
    /// EVN-7.1, the treating facility.
    pub event_facility: String,
}

/// One PID-3 (or MRG-1) repetition, with both parts of its assigning authority (HD:
/// namespace and universal id), since rosters name either.
#[derive(Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Identifier {
    pub id: String,
    pub authority_namespace: String,
    pub authority_universal: String,
    pub type_code: String,
}

impl Identifier {
    /// `id^authority`: how the router keys a patient (the namespace, or the universal id
    /// when there is no namespace).
    pub fn key(&self) -> String {
        let authority = if self.authority_namespace.is_empty() {
            &self.authority_universal
        } else {
            &self.authority_namespace
        };
        format!("{}^{}", self.id, authority)
    }
}

/// A person or organisation named as an XCN (PD1-4, ROL-4, PV1-7/8/9/17).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NamedProvider {
    pub id: String,
    pub family: String,
    pub given: String,
    /// XCN-9 (assigning authority) or XCN-13 (identifier type) says NPI.
    pub labelled_npi: bool,
    /// `PP` for PD1-4, `AT`/`RP`/`CP`/`AD` for the PV1 doctors, ROL-3's code otherwise.
    pub role_code: String,
    /// Where it came from: `PD1-4`, `ROL-4`, `PV1-7`, ...
    pub field: &'static str,
    /// 1-based position of the segment in the message.
    pub segment_index: usize,
}

impl NamedProvider {
    /// "Given Family", for notification content.
    pub fn display_name(&self) -> String {
        match (self.given.is_empty(), self.family.is_empty()) {
            (true, true) => String::new(),
            (true, false) => self.family.clone(),
            (false, true) => self.given.clone(),
            (false, false) => format!("{} {}", self.given, self.family),
        }
    }
}

#[derive(Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Address {
    pub street: String,
    pub city: String,
    pub state: String,
    pub postal_code: String,
    pub country: String,
}

#[derive(Clone, Default, Serialize)]
pub struct Pid {
    pub identifiers: Vec<Identifier>,
    pub family: String,
    pub given: String,
    /// PID-7 as YYYY-MM-DD.
    pub birth_date: Option<String>,
    pub sex: String,
    pub address: Option<Address>,
    pub phone: String,
    pub account_number: String,
    pub death_time: String,
    pub death_indicator: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Pd1 {
    pub primary_facility: String,
    pub publicity_code: String,
    /// PD1-12 = Y: the patient asked that their presence not be disclosed.
    pub protection_indicator: bool,
}

/// PL: point of care ^ room ^ bed ^ facility.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Location {
    pub point_of_care: String,
    pub room: String,
    pub bed: String,
    pub facility: String,
}

impl Location {
    pub fn is_empty(&self) -> bool {
        self.point_of_care.is_empty() && self.room.is_empty() && self.bed.is_empty()
    }
}

#[derive(Clone, Default, Serialize)]
pub struct Pv1 {
    /// PV1-2 (table 0004): E, I, O, P, R, B, ... (upper-cased).
    pub patient_class: String,
    pub location: Location,
    pub admission_type: String,
    pub prior_location: Location,
    pub attending: Vec<NamedProvider>,
    pub referring: Vec<NamedProvider>,
    pub consulting: Vec<NamedProvider>,
    pub hospital_service: String,
    pub admitting: Vec<NamedProvider>,
    pub patient_type: String,
    /// PV1-19.1: with the facility, the encounter key.
    pub visit_number: String,
    pub discharge_disposition: String,
    pub discharged_to: String,
    pub admit_time: String,
    pub discharge_time: String,
}

#[derive(Clone, Default, Serialize)]
pub struct Pv2 {
    pub admit_reason: String,
    pub transfer_reason: String,
    pub clinic_organization: String,
}

#[derive(Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Diagnosis {
    pub code: String,
    pub text: String,
    pub system: String,
    /// DG1-6: A admitting, W working, F final.
    pub diagnosis_type: String,
    pub priority: String,
    /// DG1-18 = Y: keep it out of outbound content.
    pub confidential: bool,
}

#[derive(Clone, Default, Serialize)]
pub struct Mrg {
    pub prior_identifiers: Vec<Identifier>,
    pub prior_account: String,
    pub prior_visit: String,
}

/// A parsed ADT message.
#[derive(Clone, Default, Serialize)]
pub struct AdtEvent {
    pub msh: Msh,
    pub evn: Evn,
    pub pid: Pid,
    pub pd1: Option<Pd1>,
    /// PD1-4 and ROL-4 (person-level and visit-level roles alike), in message order.
    pub care_team: Vec<NamedProvider>,
    pub pv1: Option<Pv1>,
    pub pv2: Option<Pv2>,
    pub diagnoses: Vec<Diagnosis>,
    pub mrg: Option<Mrg>,
}

impl AdtEvent {
    /// Parses decoded text; rejects what ingest would reject.
    pub fn parse(text: &str) -> Result<AdtEvent, Rejection> {
        // Only the header of the ingest parse: the segments are read below.
        let norm = normalize(text).ok_or_else(super::parse::not_hl7)?;
        let segments: Vec<&str> = norm.text.split('\r').collect();
        static RULES: std::sync::LazyLock<ParseRules> =
            std::sync::LazyLock::new(ParseRules::default);
        let (seps, _, header) = super::parse::head(&segments, &RULES)?;
        let r = FieldReader { seps };
        let h = &header;
        let mut ev = AdtEvent {
            msh: Msh {
                sending_application: h.sending_application.clone(),
                sending_facility: h.sending_facility.clone(),
                receiving_application: h.receiving_application.clone(),
                receiving_facility: h.receiving_facility.clone(),
                message_time: h.message_time.clone(),
                message_code: h.message_type.code.clone(),
                trigger: h.message_type.trigger.to_ascii_uppercase(),
                structure: h.message_type.structure.clone(),
                control_id: h.control_id.as_str().to_string(),
                version: h.version.clone(),
            },
            ..AdtEvent::default()
        };
        let (mut seen_evn, mut seen_pid, mut seen_pv1, mut seen_pv2) = (false, false, false, false);
        for (i, seg) in segments.iter().enumerate().skip(1) {
            let fields: Vec<&str> = seg.split(seps.field).collect();
            let f = |n: usize| fields.get(n).copied().unwrap_or("");
            // The first of each single segment counts (A39-style messages repeat PID).
            match fields[0] {
                "EVN" if !seen_evn => {
                    seen_evn = true;
                    // EVN-1 repeats MSH-9.2 in older versions; MSH wins.
                    ev.evn = Evn {
                        recorded_at: r.component(f(2), 1),
                        reason_code: r.component(f(4), 1),
                        occurred_at: r.component(f(6), 1),
                        event_facility: r.component(f(7), 1),
                    };
                }
                "PID" if !seen_pid => {
                    seen_pid = true;
                    ev.pid = r.pid(&f);
                }
                "PD1" => {
                    ev.pd1 = Some(Pd1 {
                        primary_facility: r.component(f(3), 1),
                        publicity_code: r.component(f(11), 1),
                        protection_indicator: r.component(f(12), 1).eq_ignore_ascii_case("Y"),
                    });
                    for rep in r.repeats(f(4)) {
                        if let Some(p) = r
                            .xcn(rep, "PP", "PD1-4", i + 1)
                            .filter(|p| !p.id.is_empty())
                        {
                            ev.care_team.push(p);
                        }
                    }
                }
                "ROL" => {
                    let role = r.component(f(3), 1).to_ascii_uppercase();
                    // ROL-2 = DE removes the role; it names nobody to notify.
                    if r.component(f(2), 1).eq_ignore_ascii_case("DE") {
                        continue;
                    }
                    for rep in r.repeats(f(4)) {
                        if let Some(p) = r
                            .xcn(rep, &role, "ROL-4", i + 1)
                            .filter(|p| !p.id.is_empty())
                        {
                            ev.care_team.push(p);
                        }
                    }
                }
                "PV1" if !seen_pv1 => {
                    seen_pv1 = true;
                    let doctors = |n: usize, role: &str, field: &'static str| {
                        r.repeats(f(n))
                            .filter_map(|rep| r.xcn(rep, role, field, i + 1))
                            .collect::<Vec<_>>()
                    };
                    ev.pv1 = Some(Pv1 {
                        patient_class: r.component(f(2), 1).to_ascii_uppercase(),
                        location: r.location(f(3)),
                        admission_type: r.component(f(4), 1),
                        prior_location: r.location(f(6)),
                        attending: doctors(7, "AT", "PV1-7"),
                        referring: doctors(8, "RP", "PV1-8"),
                        consulting: doctors(9, "CP", "PV1-9"),
                        hospital_service: r.component(f(10), 1),
                        admitting: doctors(17, "AD", "PV1-17"),
                        patient_type: r.component(f(18), 1),
                        visit_number: r.component(f(19), 1),
                        discharge_disposition: r.component(f(36), 1),
                        discharged_to: r.component(f(37), 1),
                        admit_time: r.component(f(44), 1),
                        // Repeats in older versions; the first is the one.
                        discharge_time: r
                            .repeats(f(45))
                            .next()
                            .map(|v| r.component(v, 1))
                            .unwrap_or_default(),
                    });
                }
                "PV2" if !seen_pv2 => {
                    seen_pv2 = true;
                    let reason = |n: usize| {
                        let text = r.component(f(n), 2);
                        if text.is_empty() {
                            r.component(f(n), 1)
                        } else {
                            text
                        }
                    };
                    ev.pv2 = Some(Pv2 {
                        admit_reason: reason(3),
                        transfer_reason: reason(4),
                        clinic_organization: r.component(f(23), 1),
                    });
                }
                "DG1" => {
                    let code = r.component(f(3), 1);
                    let mut text = r.component(f(3), 2);
                    if text.is_empty() {
                        text = r.component(f(4), 1);
                    }
                    if code.is_empty() && text.is_empty() {
                        continue;
                    }
                    ev.diagnoses.push(Diagnosis {
                        code,
                        text,
                        system: r.component(f(3), 3),
                        diagnosis_type: r.component(f(6), 1).to_ascii_uppercase(),
                        priority: r.component(f(15), 1),
                        confidential: r.component(f(18), 1).eq_ignore_ascii_case("Y"),
                    });
                }
                "MRG" if ev.mrg.is_none() => {
                    ev.mrg = Some(Mrg {
                        prior_identifiers: r.identifiers(f(1)),
                        prior_account: r.component(f(3), 1),
                        prior_visit: r.component(f(5), 1),
                    });
                }
                _ => {}
            }
        }
        Ok(ev)
    }

    /// EVN-6, else EVN-2, else MSH-7: when the event happened.
    pub fn event_time(&self) -> &str {
        [
            &self.evn.occurred_at,
            &self.evn.recorded_at,
            &self.msh.message_time,
        ]
        .into_iter()
        .find(|t| !t.is_empty())
        .map(String::as_str)
        .unwrap_or("")
    }

    /// The event's date, YYYY-MM-DD: which roster rows are in effect, and the age.
    pub fn event_date(&self) -> Option<String> {
        [
            &self.evn.occurred_at,
            &self.evn.recorded_at,
            &self.msh.message_time,
        ]
        .into_iter()
        .find_map(|t| hl7_date(t))
    }

    /// Whole years between birth and the event date.
    pub fn patient_age(&self) -> Option<u32> {
        let birth = self.pid.birth_date.as_deref()?;
        let at = self.event_date()?;
        let ymd = |s: &str| -> Option<(i32, u32, u32)> {
            Some((
                s.get(0..4)?.parse().ok()?,
                s.get(5..7)?.parse().ok()?,
                s.get(8..10)?.parse().ok()?,
            ))
        };
        let (by, bm, bd) = ymd(birth)?;
        let (ay, am, ad) = ymd(&at)?;
        let mut age = ay - by;
        if (am, ad) < (bm, bd) {
            age -= 1;
        }
        u32::try_from(age).ok()
    }

    /// The treating practitioner (CoP minimum content): the attending doctor, else a
    /// ROL with role AT.
    pub fn treating_practitioner(&self) -> Option<&NamedProvider> {
        self.pv1
            .as_ref()
            .and_then(|p| p.attending.first())
            .or_else(|| self.care_team.iter().find(|p| p.role_code == "AT"))
    }

    /// The patient's primary key: the first PID-3 repetition.
    pub fn patient_key(&self) -> Option<String> {
        self.pid.identifiers.first().map(Identifier::key)
    }
}

/// The first 8 digits of a DTM/TS as YYYY-MM-DD, if they are a date.
pub fn hl7_date(ts: &str) -> Option<String> {
    let d = ts.trim().get(..8)?;
    if !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let iso = format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..8]);
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(&iso, &fmt).ok().map(|_| iso)
}

/// A DTM (`YYYYMMDD[HH[MM[SS[.S+]]]][+/-ZZZZ]`) as microseconds since the epoch. Without
/// an offset the time is read as UTC; senders should send one (DirectTrust requires it).
pub fn hl7_time_us(ts: &str) -> Option<i64> {
    let ts = ts.trim();
    let (body, offset_min) = match ts.find(['+', '-']) {
        Some(p) if p >= 8 => {
            let (b, o) = ts.split_at(p);
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let digits = &o[1..];
            if digits.len() != 4 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let h: i64 = digits[..2].parse().ok()?;
            let m: i64 = digits[2..].parse().ok()?;
            (b, sign * (h * 60 + m))
        }
        Some(_) => return None,
        None => (ts, 0),
    };
    let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
    if whole.len() < 8 || whole.len() > 14 || whole.len() % 2 != 0 {
        return None;
    }
    if !whole.bytes().all(|c| c.is_ascii_digit()) || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n = |a: usize| -> u8 {
        whole
            .get(a..a + 2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let year: i32 = whole[..4].parse().ok()?;
    let month = time::Month::try_from(whole[4..6].parse::<u8>().ok()?).ok()?;
    let date = time::Date::from_calendar_date(year, month, whole[6..8].parse().ok()?).ok()?;
    let t = time::Time::from_hms(n(8), n(10), n(12)).ok()?;
    let micros: i64 = if frac.is_empty() {
        0
    } else {
        let mut f = frac.to_string();
        f.truncate(6);
        while f.len() < 6 {
            f.push('0');
        }
        f.parse().ok()?
    };
    let utc = time::PrimitiveDateTime::new(date, t).assume_utc();
    Some(utc.unix_timestamp() * 1_000_000 - offset_min * 60_000_000 + micros)
}

/// The ADT segments, read with the one field reader ([`FieldReader`]).
impl FieldReader {
    fn pid<'a>(&self, f: &dyn Fn(usize) -> &'a str) -> Pid {
        let mut pid = Pid {
            identifiers: self.identifiers(f(3)),
            ..Pid::default()
        };
        // The legal name (XPN-7 = L) when there is one, else the first.
        let names: Vec<&str> = self.repeats(f(5)).collect();
        if let Some(n) = names
            .iter()
            .find(|n| self.component(n, 7) == "L")
            .or(names.first())
        {
            pid.family = self.sub(self.raw_component(n, 1), 1);
            pid.given = self.component(n, 2);
        }
        pid.birth_date = hl7_date(&self.component(f(7), 1));
        pid.sex = self.component(f(8), 1).to_ascii_uppercase();
        let addrs: Vec<&str> = self.repeats(f(11)).collect();
        if let Some(a) = addrs
            .iter()
            .find(|a| self.component(a, 7) == "H")
            .or(addrs.first())
        {
            pid.address = Some(Address {
                street: self.component(a, 1),
                city: self.component(a, 3),
                state: self.component(a, 4),
                postal_code: self.component(a, 5),
                country: self.component(a, 6),
            });
        }
        pid.phone = self
            .repeats(f(13))
            .next()
            .map(|p| self.component(p, 1))
            .unwrap_or_default();
        pid.account_number = self.component(f(18), 1);
        pid.death_time = self.component(f(29), 1);
        pid.death_indicator = self.component(f(30), 1).eq_ignore_ascii_case("Y");
        pid
    }

    fn location(&self, field: &str) -> Location {
        Location {
            point_of_care: self.component(field, 1),
            room: self.component(field, 2),
            bed: self.component(field, 3),
            facility: self.component(field, 4),
        }
    }

    fn xcn(
        &self,
        rep: &str,
        role: &str,
        field: &'static str,
        segment_index: usize,
    ) -> Option<NamedProvider> {
        let id = self.component(rep, 1);
        let family = self.sub(self.raw_component(rep, 2), 1);
        if id.is_empty() && family.is_empty() {
            return None;
        }
        let authority = self.raw_component(rep, 9);
        let labelled = [
            self.sub(authority, 1),
            self.sub(authority, 2),
            self.component(rep, 13),
        ]
        .iter()
        .any(|v| v.eq_ignore_ascii_case("NPI") || v == NPI_OID);
        Some(NamedProvider {
            id,
            family,
            given: self.component(rep, 3),
            labelled_npi: labelled,
            role_code: role.to_string(),
            field,
            segment_index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A03: &str = "MSH|^~\\&|EPIC|GENHOSP|R|F|20261128093000-0500||ADT^A03^ADT_A03|C9|P|2.5.1\r\
EVN|A03|20261128092500-0500||||20261128090000-0500|GENHOSP\r\
PID|1||MRN1^^^GENHOSP&1.2.3&ISO^MR||DOE^JANE^^^^^L||20100412|F|||1 MAIN^^SPRINGFIELD^IL^62701^USA^H||217-555-0100|||||ACC9\r\
PD1|||CLINIC^^^^^^^^^1234567893||||||||N|Y\r\
PV1|1|I|4W^401^A^GENHOSP||||1234567893^WELBY^MARCUS^^^^^^NPI|||MED|||||||||V123|||||||||||||||||03|SNF ACME|||||||20261120080000|20261128090000\r\
PV2|||R07.9^Chest pain^I10\r\
DG1|1||F10.20^Alcohol dependence^I10||20261120|A||||||||||||Y\r\
MRG|OLD1^^^GENHOSP||ACC1||V1\r";

    /// `{:?}` of a message shows its header and visit class, never the patient: no
    /// name, birth date, identifier, address, phone, visit number or diagnosis.
    #[test]
    fn debug_output_carries_no_phi() {
        let ev = AdtEvent::parse(A03).unwrap();
        let facts = crate::hl7::patient::PatientFacts::of(&ev);
        for shown in [
            format!("{ev:?}"),
            format!("{:?}", ev.pid),
            format!("{facts:?}"),
        ] {
            for phi in [
                "DOE",
                "JANE",
                "20100412",
                "MRN1",
                "MAIN",
                "62701",
                "217-555-0100",
                "ACC9",
                "V123",
                "F10.20",
                "Alcohol",
                "R07.9",
                "Chest pain",
                "OLD1",
                "4W",
            ] {
                assert!(!shown.contains(phi), "{phi} in {shown}");
            }
        }
        let shown = format!("{ev:?}");
        assert!(
            shown.contains("C9")
                && shown.contains("GENHOSP")
                && shown.contains("patient_class: \"I\""),
            "{shown}"
        );
    }

    #[test]
    fn reads_every_segment() {
        let ev = AdtEvent::parse(A03).unwrap();
        assert_eq!(ev.msh.trigger, "A03");
        assert_eq!(ev.evn.occurred_at, "20261128090000-0500");
        assert_eq!(ev.pid.identifiers[0].key(), "MRN1^GENHOSP");
        assert_eq!(
            (ev.pid.family.as_str(), ev.pid.given.as_str()),
            ("DOE", "JANE")
        );
        assert_eq!(ev.pid.address.as_ref().unwrap().city, "SPRINGFIELD");
        assert_eq!(ev.pid.account_number, "ACC9");
        assert!(ev.pd1.as_ref().unwrap().protection_indicator);
        let pv1 = ev.pv1.as_ref().unwrap();
        assert_eq!(pv1.patient_class, "I");
        assert_eq!(pv1.location.point_of_care, "4W");
        assert_eq!(pv1.hospital_service, "MED");
        assert_eq!(pv1.visit_number, "V123");
        assert_eq!(pv1.discharge_disposition, "03");
        assert_eq!(pv1.discharged_to, "SNF ACME");
        assert_eq!(pv1.discharge_time, "20261128090000");
        assert_eq!(
            ev.treating_practitioner().unwrap().display_name(),
            "MARCUS WELBY"
        );
        assert!(ev.treating_practitioner().unwrap().labelled_npi);
        assert_eq!(ev.pv2.as_ref().unwrap().admit_reason, "Chest pain");
        assert_eq!(ev.diagnoses[0].code, "F10.20");
        assert!(ev.diagnoses[0].confidential);
        assert_eq!(ev.mrg.as_ref().unwrap().prior_identifiers[0].id, "OLD1");
        assert_eq!(ev.mrg.as_ref().unwrap().prior_visit, "V1");
        assert_eq!(ev.patient_age(), Some(16));
    }

    #[test]
    fn times_with_offsets() {
        assert_eq!(hl7_time_us("19700101000000"), Some(0));
        assert_eq!(hl7_time_us("19700101010000+0100"), Some(0));
        assert_eq!(hl7_time_us("19700101"), Some(0));
        assert_eq!(hl7_time_us("19700101000001.5"), Some(1_500_000));
        assert_eq!(hl7_time_us("1970010100-0030"), Some(1_800_000_000));
        for bad in [
            "",
            "2026",
            "20261340",
            "2026010112345",
            "20260101+01",
            "abcdefgh",
        ] {
            assert_eq!(hl7_time_us(bad), None, "{bad}");
        }
    }
}

debug_without_phi!(Identifier {
    authority_namespace,
    type_code
});
debug_without_phi!(Address {});
debug_without_phi!(Pid {});
debug_without_phi!(Pv1 {
    patient_class,
    admission_type,
    hospital_service
});
debug_without_phi!(Pv2 {});
debug_without_phi!(Diagnosis {
    system,
    diagnosis_type
});
debug_without_phi!(Mrg {});
debug_without_phi!(AdtEvent { msh, evn, pv1 });

//! What attribution needs from a message: who the patient is (PID identifiers and
//! demographics) and which care providers the message itself names (PD1-4, ROL).
//! Pure; step 4's typed ADT event builds on the same readers.

use super::escape::unescape;
use super::parse::{normalize, parse_message, ParseRules, Rejection};
use hl7_parser::message::Separators;
use serde::Serialize;

/// One PID-3 repetition, with both parts of its assigning authority (HD: namespace and
/// universal id), since rosters name either.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Identifier {
    pub id: String,
    pub authority_namespace: String,
    pub authority_universal: String,
    pub type_code: String,
}

/// A provider named in the message, as an XCN.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NamedProvider {
    pub id: String,
    pub family: String,
    pub given: String,
    /// XCN-9 (assigning authority) or XCN-13 (identifier type) says NPI.
    pub labelled_npi: bool,
    /// `PP` for PD1-4; ROL-3's code otherwise.
    pub role_code: String,
    /// `PD1-4` or `ROL-4`.
    pub field: &'static str,
    /// 1-based position of the segment in the message.
    pub segment_index: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct PatientFacts {
    pub sending_facility: String,
    pub control_id: String,
    pub trigger_event: String,
    /// EVN-2 or MSH-7, as YYYY-MM-DD: which roster rows are in effect.
    pub event_date: Option<String>,
    pub identifiers: Vec<Identifier>,
    pub family: String,
    pub given: String,
    pub birth_date: Option<String>,
    pub sex: String,
    pub postal_code: String,
    pub providers: Vec<NamedProvider>,
}

/// The NPI's OID, used as an assigning authority by some feeds.
const NPI_OID: &str = "2.16.840.1.113883.4.6";

/// Reads the patient and named providers. Rejects what ingest would reject.
pub fn read_patient(text: &str) -> Result<PatientFacts, Rejection> {
    let parsed = parse_message(text, &ParseRules::default())?;
    let norm = normalize(text).expect("parse_message accepted it");
    let segments: Vec<&str> = norm.text.split('\r').collect();
    let (seps, _) = hl7_parser::parser::parse_msh(segments[0]).expect("parse_message accepted it");
    let r = Reader { seps };
    let h = &parsed.header;
    let mut out = PatientFacts {
        sending_facility: h.sending_facility.clone(),
        control_id: h.control_id.as_str().to_string(),
        trigger_event: h.message_type.trigger.clone(),
        event_date: None,
        identifiers: Vec::new(),
        family: String::new(),
        given: String::new(),
        birth_date: None,
        sex: String::new(),
        postal_code: String::new(),
        providers: Vec::new(),
    };
    out.event_date = parsed
        .routing
        .event_time
        .as_deref()
        .and_then(hl7_date)
        .or_else(|| hl7_date(&h.message_time));
    for (i, seg) in segments.iter().enumerate() {
        let fields: Vec<&str> = seg.split(seps.field).collect();
        let f = |n: usize| fields.get(n).copied().unwrap_or("");
        match fields[0] {
            "PID" if out.identifiers.is_empty() && out.family.is_empty() => {
                for rep in r.repeats(f(3)) {
                    let id = r.component(rep, 1);
                    if id.is_empty() {
                        continue;
                    }
                    let hd = r.raw_component(rep, 4);
                    out.identifiers.push(Identifier {
                        id,
                        authority_namespace: r.sub(hd, 1),
                        authority_universal: r.sub(hd, 2),
                        type_code: r.component(rep, 5),
                    });
                }
                // The legal name (XPN-7 = L) when there is one, else the first.
                let names: Vec<&str> = r.repeats(f(5)).collect();
                let name = names
                    .iter()
                    .find(|n| r.component(n, 7) == "L")
                    .or(names.first());
                if let Some(n) = name {
                    out.family = r.sub(r.raw_component(n, 1), 1);
                    out.given = r.component(n, 2);
                }
                out.birth_date = hl7_date(&r.component(f(7), 1));
                out.sex = r.component(f(8), 1).to_ascii_uppercase();
                let addrs: Vec<&str> = r.repeats(f(11)).collect();
                let home = addrs
                    .iter()
                    .find(|a| r.component(a, 7) == "H")
                    .or(addrs.first());
                if let Some(a) = home {
                    out.postal_code = r.component(a, 5);
                }
            }
            "PD1" => {
                for rep in r.repeats(f(4)) {
                    if let Some(p) = r.xcn(rep, "PP", "PD1-4", i + 1) {
                        out.providers.push(p);
                    }
                }
            }
            "ROL" => {
                let role = r.component(f(3), 1).to_ascii_uppercase();
                for rep in r.repeats(f(4)) {
                    if let Some(p) = r.xcn(rep, &role, "ROL-4", i + 1) {
                        out.providers.push(p);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The first 8 digits of a DTM/TS as YYYY-MM-DD, if they are a date.
fn hl7_date(ts: &str) -> Option<String> {
    let d = ts.trim().get(..8)?;
    if !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let iso = format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..8]);
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(&iso, &fmt).ok().map(|_| iso)
}

struct Reader {
    seps: Separators,
}

impl Reader {
    fn repeats<'a>(&self, field: &'a str) -> impl Iterator<Item = &'a str> {
        field.split(self.seps.repetition).filter(|r| !r.is_empty())
    }

    fn raw_component<'a>(&self, rep: &'a str, n: usize) -> &'a str {
        rep.split(self.seps.component).nth(n - 1).unwrap_or("")
    }

    /// Component `n` (1-based), its first subcomponent, unescaped and trimmed.
    fn component(&self, rep: &str, n: usize) -> String {
        self.sub(self.raw_component(rep, n), 1)
    }

    fn sub(&self, comp: &str, n: usize) -> String {
        let raw = comp.split(self.seps.subcomponent).nth(n - 1).unwrap_or("");
        unescape(raw, &self.seps).trim().to_string()
    }

    fn xcn(
        &self,
        rep: &str,
        role: &str,
        field: &'static str,
        segment_index: usize,
    ) -> Option<NamedProvider> {
        let id = self.component(rep, 1);
        if id.is_empty() {
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
            family: self.sub(self.raw_component(rep, 2), 1),
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

    #[test]
    fn reads_patient_and_providers() {
        let msg = "MSH|^~\\&|EPIC|GENHOSP|R|F|20261128093000||ADT^A01^ADT_A01|C1|P|2.5.1\r\
EVN|A01|20261127080000\r\
PID|1||MRN1^^^GENHOSP&1.2.3&ISO^MR~999^^^SSA^SS||O\\T\\BRIEN-SMITH^ANNE MARIE^^^^^L||19650412|f|||1 MAIN^^X^IL^62701^USA^H\r\
PD1|||CLINIC|1234567893^WELBY^MARCUS^^^DR^MD^^NPI\r\
ROL|1|AD|PP^Primary Care Provider^HL70443|1497758544^HOUSE^GREG^^^^^^^^^^NPI~555^LOCAL^ID\r\
ROL|2|AD|CP^Consulting^HL70443|1427051648^X^Y^^^^^^&2.16.840.1.113883.4.6&ISO\r";
        let p = read_patient(msg).unwrap();
        assert_eq!(p.event_date.as_deref(), Some("2026-11-27"));
        assert_eq!(p.identifiers.len(), 2);
        assert_eq!(p.identifiers[0].authority_namespace, "GENHOSP");
        assert_eq!(p.identifiers[0].authority_universal, "1.2.3");
        assert_eq!(p.family, "O&BRIEN-SMITH");
        assert_eq!(p.given, "ANNE MARIE");
        assert_eq!(p.birth_date.as_deref(), Some("1965-04-12"));
        assert_eq!(p.sex, "F");
        assert_eq!(p.postal_code, "62701");
        let ids: Vec<(&str, bool, &str)> = p
            .providers
            .iter()
            .map(|x| (x.id.as_str(), x.labelled_npi, x.role_code.as_str()))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("1234567893", true, "PP"),
                ("1497758544", true, "PP"),
                ("555", false, "PP"),
                ("1427051648", true, "CP"),
            ]
        );
        assert_eq!(p.providers[1].segment_index, 5);
    }
}

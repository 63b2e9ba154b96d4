//! What attribution needs from a message: who the patient is (PID identifiers and
//! demographics) and which care providers the message itself names (PD1-4, ROL).
//! Pure; the typed ADT event routing reads builds on the same readers.

use super::adt::AdtEvent;
pub use super::adt::{hl7_date, Identifier, NamedProvider};
use super::parse::Rejection;
use serde::Serialize;

#[derive(Clone, Serialize)]
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

impl PatientFacts {
    pub fn of(ev: &AdtEvent) -> PatientFacts {
        PatientFacts {
            sending_facility: ev.msh.sending_facility.clone(),
            control_id: ev.msh.control_id.clone(),
            trigger_event: ev.msh.trigger.clone(),
            event_date: ev.event_date(),
            identifiers: ev.pid.identifiers.clone(),
            family: ev.pid.family.clone(),
            given: ev.pid.given.clone(),
            birth_date: ev.pid.birth_date.clone(),
            sex: ev.pid.sex.clone(),
            postal_code: ev
                .pid
                .address
                .as_ref()
                .map(|a| a.postal_code.clone())
                .unwrap_or_default(),
            providers: ev.care_team.clone(),
        }
    }
}

/// Reads the patient and named providers. Rejects what ingest would reject.
pub fn read_patient(text: &str) -> Result<PatientFacts, Rejection> {
    AdtEvent::parse(text).map(|ev| PatientFacts::of(&ev))
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

debug_without_phi!(PatientFacts {
    sending_facility,
    control_id,
    trigger_event
});

//! The notification body (schema `adt-router.notification/v1`, docs/routing.md): written
//! by routing into the outbox, read back by the Direct composer and the FHIR event
//! builder as this type. Fields are in alphabetical order, as earlier releases wrote
//! them; fields left out by the content profile or a redaction are absent (`None`),
//! and a field the profile includes but the message left empty is `null`.

use super::rules::ContentProfile;
use crate::hl7::adt::{Address, Diagnosis, Identifier, Location};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeSet;

pub const SCHEMA: &str = "adt-router.notification/v1";

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Notification {
    pub content_profile: ContentProfile,
    pub encounter: Encounter,
    /// RFC 3339.
    pub event_time: String,
    pub idempotency_key: String,
    /// The transition: `admission`, `discharge`, ... (docs/routing.md).
    pub kind: String,
    pub patient: Patient,
    /// The fields a rule redacted.
    pub redacted: BTreeSet<String>,
    /// For a retraction, the kind it cancels.
    pub retracts_kind: Option<String>,
    pub schema: String,
    pub sending_facility: String,
    pub treating_facility: String,
    pub treating_practitioner: Option<Practitioner>,
    /// MSH-9.2.
    pub trigger: String,
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Practitioner {
    pub name: String,
    /// Only when the message labelled the id as an NPI.
    pub npi: Option<String>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Patient {
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "present"
    )]
    pub address: Option<Option<Address>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "present"
    )]
    pub birth_date: Option<Option<String>>,
    pub family: String,
    pub given: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub identifiers: Option<Vec<Identifier>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sex: Option<String>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Encounter {
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "present"
    )]
    pub admit_reason: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub admit_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub diagnoses: Option<Vec<Diagnosis>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub discharge_disposition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub discharge_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub discharged_to: Option<String>,
    /// A hash of the encounter key: the same visit, without its number.
    pub id_hash: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub patient_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub visit_number: Option<String>,
}

debug_without_phi!(Notification {
    content_profile,
    kind,
    trigger,
    schema
});
debug_without_phi!(Practitioner {});
debug_without_phi!(Patient {});
debug_without_phi!(Encounter {});

/// A field that is present reads as `Some`, even when it is `null`: absent (left out)
/// and `null` (included, empty) stay apart.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl Notification {
    pub fn to_json(&self) -> Vec<u8> {
        // Sized for a typical body, so it is not grown three times on the way.
        let mut out = Vec::with_capacity(1024);
        match serde_json::to_writer(&mut out, self) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Notification, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What routing writes reads back as the same value and the same bytes.
    #[test]
    fn a_body_survives_the_round_trip_byte_for_byte() {
        let mut n = Notification {
            content_profile: ContentProfile::Standard,
            kind: "admission".into(),
            schema: SCHEMA.into(),
            ..Default::default()
        };
        n.patient.birth_date = Some(None); // included, empty: null
        n.patient.sex = Some("F".into());
        n.encounter.admit_reason = Some(Some("chest pain".into()));
        n.redacted.insert("location".into());
        let bytes = n.to_json();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"birth_date\":null"), "{text}");
        assert!(!text.contains("\"address\""), "left out, not null: {text}");
        let back = Notification::from_json(&bytes).unwrap();
        assert_eq!(back.patient.birth_date, Some(None));
        assert_eq!(back.patient.address, None);
        assert_eq!(back.to_json(), bytes);
    }
}

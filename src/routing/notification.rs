//! The notification body (schema `adt-router.notification/v1`, docs/routing.md): written
//! by routing into the outbox, read back by the Direct composer and the FHIR event
//! builder as this type. Fields are in alphabetical order, as earlier releases wrote
//! them; fields left out by the content profile or a redaction are absent (`None`),
//! and a field the profile includes but the message left empty is `null`.

use super::rules::ContentProfile;
use crate::hl7::adt::{Address, Diagnosis, Identifier, Location};
use serde::{Deserialize, Deserializer, Serialize};
use std::borrow::Cow;
use std::collections::BTreeSet;

pub const SCHEMA: &str = "adt-router.notification/v1";

/// Borrowed from the event when routing writes it (a page writes thousands: copying
/// every field cost 2% of a drain's instructions), owned when a sender reads it.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Notification<'a> {
    pub content_profile: ContentProfile,
    pub encounter: Encounter<'a>,
    /// RFC 3339.
    pub event_time: String,
    pub idempotency_key: Cow<'a, str>,
    /// The transition: `admission`, `discharge`, ... (docs/routing.md).
    pub kind: Cow<'a, str>,
    pub patient: Patient<'a>,
    /// The fields a rule redacted.
    pub redacted: Cow<'a, BTreeSet<String>>,
    /// For a retraction, the kind it cancels.
    pub retracts_kind: Option<Cow<'a, str>>,
    pub schema: Cow<'a, str>,
    pub sending_facility: Cow<'a, str>,
    pub treating_facility: Cow<'a, str>,
    pub treating_practitioner: Option<Practitioner<'a>>,
    /// MSH-9.2.
    pub trigger: Cow<'a, str>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Practitioner<'a> {
    pub name: String,
    /// Only when the message labelled the id as an NPI.
    pub npi: Option<Cow<'a, str>>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Patient<'a> {
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "present"
    )]
    pub address: Option<Option<Cow<'a, Address>>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "present"
    )]
    pub birth_date: Option<Option<Cow<'a, str>>>,
    pub family: Cow<'a, str>,
    pub given: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub identifiers: Option<Cow<'a, [Identifier]>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub phone: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sex: Option<Cow<'a, str>>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Encounter<'a> {
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "present"
    )]
    pub admit_reason: Option<Option<Cow<'a, str>>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub admit_time: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub diagnoses: Option<Vec<Cow<'a, Diagnosis>>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub discharge_disposition: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub discharge_time: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub discharged_to: Option<Cow<'a, str>>,
    /// A hash of the encounter key: the same visit, without its number.
    pub id_hash: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub location: Option<Cow<'a, Location>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub patient_class: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub visit_number: Option<Cow<'a, str>>,
}

// PHI: Debug shows what kind of notification it is, never who it is about.
impl std::fmt::Debug for Notification<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notification")
            .field("content_profile", &self.content_profile)
            .field("kind", &self.kind)
            .field("trigger", &self.trigger)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// A field that is present reads as `Some`, even when it is `null`: absent (left out)
/// and `null` (included, empty) stay apart.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl Notification<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        // Sized for a typical body, so it is not grown three times on the way.
        let mut out = Vec::with_capacity(1024);
        match serde_json::to_writer(&mut out, self) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Notification<'static>, serde_json::Error> {
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
        n.redacted.to_mut().insert("location".into());
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

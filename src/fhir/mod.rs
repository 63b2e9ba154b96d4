//! FHIR Subscriptions: the R5 Backport IG on FHIR R4 (standards.md §7). This
//! module is pure: the topics adt-router offers, reading a client's Subscription into
//! what the server acts on (or an OperationOutcome saying what is wrong), and the
//! resources the server answers with. The HTTP side is `http/fhir.rs`.

pub mod config;
pub mod event;
pub mod subscription;

use serde_json::{json, Value};

/// The backport IG's canonical base.
pub const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport";

/// A topic: its name (the last path segment of its canonical) and the encounter
/// transition kinds it carries.
pub struct Topic {
    pub name: &'static str,
    pub title: &'static str,
    pub kinds: &'static [&'static str],
}

/// The topics offered. Canonical URL: `{base}/SubscriptionTopic/{name}`.
pub const TOPICS: &[Topic] = &[
    Topic {
        name: "admission",
        title: "Inpatient admission",
        kinds: &["admission"],
    },
    Topic {
        name: "ed-registration",
        title: "Emergency department registration",
        kinds: &["ed-registration"],
    },
    Topic {
        name: "transfer",
        title: "Transfer to another facility",
        kinds: &["transfer"],
    },
    Topic {
        name: "discharge",
        title: "Discharge",
        kinds: &["discharge"],
    },
];

pub fn topic_url(base: &str, name: &str) -> String {
    format!("{base}/SubscriptionTopic/{name}")
}

/// The topic a canonical names, if it is one of ours.
pub fn topic_of<'a>(base: &str, canonical: &str) -> Option<&'a Topic> {
    let name = canonical
        .split('|')
        .next()?
        .strip_prefix(base)?
        .strip_prefix("/SubscriptionTopic/")?;
    TOPICS.iter().find(|t| t.name == name)
}

/// One OperationOutcome issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// FHIR issue type: invalid, required, value, not-supported, security, forbidden, not-found...
    pub code: &'static str,
    pub text: String,
    /// FHIRPath of the element at fault.
    pub expression: Option<String>,
}

impl Issue {
    pub fn new(code: &'static str, text: impl Into<String>, at: Option<&str>) -> Issue {
        Issue {
            code,
            text: text.into(),
            expression: at.map(str::to_string),
        }
    }
}

pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(|i| {
            let mut v = json!({
                "severity": "error",
                "code": i.code,
                "details": { "text": i.text },
            });
            if let Some(e) = &i.expression {
                v["expression"] = json!([e]);
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// `GET /fhir/metadata`.
pub fn capability_statement(base: &str, now: &str) -> Value {
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now,
        "publisher": "adt-router",
        "kind": "instance",
        "instantiates": [format!("{BACKPORT}/CapabilityStatement/backport-subscription-server-r4")],
        "software": { "name": "adt-router", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "adt-router: hospital ADT event notifications (admission, ED registration, transfer, discharge)",
            "url": base,
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "implementationGuide": [format!("{BACKPORT}/ImplementationGuide/hl7.fhir.uv.subscriptions-backport")],
        "rest": [{
            "mode": "server",
            "security": {
                "description": "Bearer tokens issued by the hospital ([[auth.tokens]]); a practice token subscribes for its own NPIs and their attributed patients only.",
            },
            "resource": [{
                "extension": TOPICS.iter().map(|t| json!({
                    "url": format!("{BACKPORT}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"),
                    "valueCanonical": topic_url(base, t.name),
                })).collect::<Vec<_>>(),
                "type": "Subscription",
                "supportedProfile": [format!("{BACKPORT}/StructureDefinition/backport-subscription")],
                "interaction": [
                    { "code": "create" }, { "code": "read" }, { "code": "update" }, { "code": "search-type" }, { "code": "delete" },
                ],
                "searchParam": [
                    { "name": "status", "type": "token" },
                    { "name": "criteria", "type": "string", "documentation": "the topic canonical" },
                ],
                "operation": [
                    { "name": "status", "definition": format!("{BACKPORT}/OperationDefinition/backport-subscription-status") },
                    { "name": "events", "definition": format!("{BACKPORT}/OperationDefinition/backport-subscription-events") },
                ],
            }, {
                "type": "Encounter", "interaction": [{ "code": "read" }],
                "documentation": "The encounters notifications referred to, as the reader's subscription was told of them.",
            }, {
                "type": "Patient", "interaction": [{ "code": "read" }],
            }, {
                "type": "Practitioner", "interaction": [{ "code": "read" }],
            }, {
                "type": "Organization", "interaction": [{ "code": "read" }],
            }],
        }],
    })
}

/// The status of one subscription as a backport R4 `Parameters` resource.
pub fn status_parameters(
    base: &str,
    id: &str,
    topic: &str,
    status: &str,
    kind: &str,
    events_since_start: i64,
    error: Option<&str>,
) -> Value {
    let mut p = vec![
        json!({ "name": "subscription", "valueReference": { "reference": format!("{base}/Subscription/{id}") } }),
        json!({ "name": "topic", "valueCanonical": topic }),
        json!({ "name": "status", "valueCode": status }),
        json!({ "name": "type", "valueCode": kind }),
        json!({ "name": "events-since-subscription-start", "valueString": events_since_start.to_string() }),
    ];
    if let Some(e) = error {
        p.push(json!({ "name": "error", "valueCodeableConcept": { "text": e } }));
    }
    json!({
        "resourceType": "Parameters",
        "meta": { "profile": [format!("{BACKPORT}/StructureDefinition/backport-subscription-status-r4")] },
        "parameter": p,
    })
}

/// A UUID-shaped string from a hex id (for `urn:uuid:` full URLs).
pub fn uuid_like(hex: &str) -> String {
    let h: String = format!("{hex:0<32}").chars().take(32).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A `searchset` Bundle of resources, each with its full URL.
pub fn searchset(entries: Vec<(String, Value)>) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "entry": entries.into_iter().map(|(url, r)| json!({
            "fullUrl": url,
            "resource": r,
            "search": { "mode": "match" },
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_ours_only() {
        let base = "https://router.example.org/fhir";
        assert_eq!(
            topic_of(base, &topic_url(base, "admission")).map(|t| t.name),
            Some("admission")
        );
        assert!(topic_of(
            base,
            "https://router.example.org/fhir/SubscriptionTopic/nope"
        )
        .is_none());
        assert!(topic_of(base, "http://hl7.org/SubscriptionTopic/admission").is_none());
        assert!(topic_of(base, &format!("{}|1.0", topic_url(base, "discharge"))).is_some());
    }
}

//! Reading a client's Subscription (backport R4 shape, standards.md §7.2) into what the
//! server acts on. Everything the server cannot honour is refused, as the IG asks: an
//! unknown topic, a filter it cannot apply, a channel other than rest-hook, a payload
//! content it does not know.

use super::{topic_of, Issue, BACKPORT};
use crate::directory::endpoint::{check, EndpointKind, EndpointPolicy};
use serde_json::Value;

/// A filter adt-router can apply to encounter events.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "param", content = "value", rename_all = "kebab-case")]
pub enum Filter {
    /// `Encounter?patient.identifier=AUTHORITY|ID`
    PatientIdentifier { authority: String, id: String },
    /// `Encounter?attributed-practitioner=http://hl7.org/fhir/sid/us-npi|NPI`
    AttributedPractitioner(String),
    /// `Encounter?attributed-organization=http://hl7.org/fhir/sid/us-npi|NPI`
    AttributedOrganization(String),
}

pub const NPI_SYSTEM: &str = "http://hl7.org/fhir/sid/us-npi";

/// Why a `backport-filter-criteria` value cannot be used (the OperationOutcome says it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filters apply to Encounter: Encounter?param=value")]
    NotEncounter,
    #[error("a filter is param=value")]
    NoValue,
    #[error("one parameter per filter (give several filters to AND them)")]
    SeveralParameters,
    #[error("not an NPI: {0}")]
    NotNpi(String),
    #[error("patient.identifier needs AUTHORITY|ID")]
    NotAuthorityAndId,
    #[error("filter parameter '{0}' is not supported (patient.identifier, attributed-practitioner, attributed-organization)")]
    Unsupported(String),
}

impl Filter {
    /// Reads one `backport-filter-criteria` value.
    pub fn parse(v: &str) -> Result<Filter, FilterError> {
        let q = v
            .strip_prefix("Encounter?")
            .ok_or(FilterError::NotEncounter)?;
        let (param, value) = q.split_once('=').ok_or(FilterError::NoValue)?;
        if value.contains('&') {
            return Err(FilterError::SeveralParameters);
        }
        let npi = |value: &str| -> Result<String, FilterError> {
            let n = value
                .strip_prefix(&format!("{NPI_SYSTEM}|"))
                .unwrap_or(value);
            crate::directory::npi::Npi::parse(n)
                .map(|n| n.to_string())
                .map_err(|e| FilterError::NotNpi(e.to_string()))
        };
        match param {
            "patient.identifier" => {
                let (authority, id) = value
                    .split_once('|')
                    .filter(|(a, i)| !a.is_empty() && !i.is_empty())
                    .ok_or(FilterError::NotAuthorityAndId)?;
                Ok(Filter::PatientIdentifier {
                    authority: authority.to_string(),
                    id: id.to_string(),
                })
            }
            "attributed-practitioner" => Ok(Filter::AttributedPractitioner(npi(value)?)),
            "attributed-organization" => Ok(Filter::AttributedOrganization(npi(value)?)),
            other => Err(FilterError::Unsupported(other.to_string())),
        }
    }

    pub fn npi(&self) -> Option<&str> {
        match self {
            Filter::AttributedPractitioner(n) | Filter::AttributedOrganization(n) => Some(n),
            Filter::PatientIdentifier { .. } => None,
        }
    }
}

/// A Subscription the server will act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRequest {
    pub topic: String,
    pub filters: Vec<Filter>,
    pub endpoint: String,
    /// `Name: value` headers to send with every notification.
    pub headers: Vec<(String, String)>,
    pub content: String,
    pub heartbeat_secs: Option<u64>,
    pub timeout_secs: Option<u64>,
    pub max_count: Option<u64>,
    pub end: Option<String>,
    pub reason: String,
}

fn ext<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let url = format!("{BACKPORT}/StructureDefinition/{name}");
    v["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"].as_str() == Some(url.as_str()))
}

fn exts<'a>(v: &'a Value, name: &str) -> Vec<&'a Value> {
    let url = format!("{BACKPORT}/StructureDefinition/{name}");
    v["extension"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["url"].as_str() == Some(url.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a Subscription; every problem found is reported, not just the first.
pub fn read(
    base: &str,
    r: &Value,
    policy: EndpointPolicy,
) -> Result<SubscriptionRequest, Vec<Issue>> {
    let mut issues = Vec::new();
    if r["resourceType"] != "Subscription" {
        return Err(vec![Issue::new(
            "invalid",
            "the body is not a Subscription resource",
            Some("resourceType"),
        )]);
    }
    let reason = r["reason"].as_str().unwrap_or("").to_string();
    if reason.is_empty() {
        issues.push(Issue::new(
            "required",
            "Subscription.reason is required",
            Some("Subscription.reason"),
        ));
    }
    let criteria = r["criteria"].as_str().unwrap_or("");
    let topic = match topic_of(base, criteria) {
        Some(t) => super::topic_url(base, t.name),
        None if criteria.is_empty() => {
            issues.push(Issue::new(
                "required",
                "Subscription.criteria must name a SubscriptionTopic canonical",
                Some("Subscription.criteria"),
            ));
            String::new()
        }
        None => {
            issues.push(Issue::new(
                "not-supported",
                format!(
                    "unknown topic '{criteria}'; offered: {}",
                    super::TOPICS
                        .iter()
                        .map(|t| super::topic_url(base, t.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some("Subscription.criteria"),
            ));
            String::new()
        }
    };
    let mut filters = Vec::new();
    for f in exts(&r["_criteria"], "backport-filter-criteria") {
        match f["valueString"].as_str().map(Filter::parse) {
            Some(Ok(f)) => filters.push(f),
            Some(Err(e)) => issues.push(Issue::new(
                "not-supported",
                e.to_string(),
                Some("Subscription.criteria.extension"),
            )),
            None => issues.push(Issue::new(
                "invalid",
                "backport-filter-criteria needs a valueString",
                Some("Subscription.criteria.extension"),
            )),
        }
    }
    let ch = &r["channel"];
    let mut endpoint = String::new();
    let mut headers = Vec::new();
    let mut content = "id-only".to_string();
    if !ch.is_object() {
        issues.push(Issue::new(
            "required",
            "Subscription.channel is required",
            Some("Subscription.channel"),
        ));
    } else {
        match ch["type"].as_str() {
            Some("rest-hook") => {}
            Some(other) => issues.push(Issue::new(
                "not-supported",
                format!("channel type '{other}' is not supported (rest-hook only)"),
                Some("Subscription.channel.type"),
            )),
            None => issues.push(Issue::new(
                "required",
                "Subscription.channel.type is required",
                Some("Subscription.channel.type"),
            )),
        }
        match ch["endpoint"].as_str() {
            Some(e) => match check(EndpointKind::Fhir, e, policy) {
                Ok(e) => endpoint = e,
                Err(why) => issues.push(Issue::new(
                    "value",
                    format!("channel endpoint refused: {why}"),
                    Some("Subscription.channel.endpoint"),
                )),
            },
            None => issues.push(Issue::new(
                "required",
                "Subscription.channel.endpoint is required for rest-hook",
                Some("Subscription.channel.endpoint"),
            )),
        }
        match ch["payload"].as_str() {
            Some(p) if p.starts_with("application/fhir+json") || p == "application/json" => {}
            Some(p) => issues.push(Issue::new(
                "not-supported",
                format!("payload '{p}' is not supported (application/fhir+json)"),
                Some("Subscription.channel.payload"),
            )),
            None => issues.push(Issue::new(
                "required",
                "Subscription.channel.payload is required (application/fhir+json)",
                Some("Subscription.channel.payload"),
            )),
        }
        if let Some(c) = ext(&ch["_payload"], "backport-payload-content") {
            match c["valueCode"].as_str() {
                Some(c @ ("empty" | "id-only" | "full-resource")) => content = c.to_string(),
                other => issues.push(Issue::new(
                    "not-supported",
                    format!(
                        "payload content {other:?} is not supported (empty, id-only, full-resource)"
                    ),
                    Some("Subscription.channel.payload.extension"),
                )),
            }
        }
        for h in ch["header"].as_array().into_iter().flatten() {
            match h.as_str().and_then(|h| h.split_once(':')) {
                Some((n, v))
                    if !n.trim().is_empty()
                        && n.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                        && !v.contains(['\r', '\n']) =>
                {
                    headers.push((n.trim().to_string(), v.trim().to_string()))
                }
                _ => issues.push(Issue::new(
                    "value",
                    "each channel.header is 'Name: value'",
                    Some("Subscription.channel.header"),
                )),
            }
        }
    }
    let uint =
        |name: &str, key: &str| -> Option<u64> { ext(ch, name).and_then(|e| e[key].as_u64()) };
    if issues.is_empty() {
        Ok(SubscriptionRequest {
            topic,
            filters,
            endpoint,
            headers,
            content,
            heartbeat_secs: uint("backport-heartbeat-period", "valueUnsignedInt"),
            timeout_secs: uint("backport-timeout", "valueUnsignedInt"),
            max_count: uint("backport-max-count", "valuePositiveInt"),
            end: r["end"].as_str().map(str::to_string),
            reason,
        })
    } else {
        Err(issues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "https://router.example.org/fhir";
    const OPEN: EndpointPolicy = EndpointPolicy {
        allow_private_networks: false,
        require_https: true,
    };

    fn sub() -> Value {
        json!({
            "resourceType": "Subscription", "status": "requested", "reason": "ADT for practice X",
            "criteria": format!("{BASE}/SubscriptionTopic/admission"),
            "_criteria": { "extension": [{
                "url": format!("{BACKPORT}/StructureDefinition/backport-filter-criteria"),
                "valueString": "Encounter?attributed-practitioner=http://hl7.org/fhir/sid/us-npi|1234567893",
            }]},
            "channel": {
                "extension": [{ "url": format!("{BACKPORT}/StructureDefinition/backport-heartbeat-period"), "valueUnsignedInt": 60 }],
                "type": "rest-hook", "endpoint": "https://practice.example.org/notify",
                "header": ["Authorization: Bearer abc"], "payload": "application/fhir+json",
                "_payload": { "extension": [{ "url": format!("{BACKPORT}/StructureDefinition/backport-payload-content"), "valueCode": "full-resource" }]},
            },
        })
    }

    #[test]
    fn reads_the_backport_shape() {
        let s = read(BASE, &sub(), OPEN).unwrap();
        assert_eq!(s.topic, format!("{BASE}/SubscriptionTopic/admission"));
        assert_eq!(
            s.filters,
            [Filter::AttributedPractitioner("1234567893".into())]
        );
        assert_eq!(s.content, "full-resource");
        assert_eq!(s.heartbeat_secs, Some(60));
        assert_eq!(s.headers, [("Authorization".into(), "Bearer abc".into())]);
    }

    #[test]
    fn reports_every_problem() {
        let mut bad = sub();
        bad["criteria"] = json!("https://elsewhere.example/SubscriptionTopic/admission");
        bad["channel"]["endpoint"] = json!("http://practice.example.org/notify");
        bad["channel"]["type"] = json!("websocket");
        bad["_criteria"]["extension"][0]["valueString"] = json!("Encounter?foo=bar");
        let issues = read(BASE, &bad, OPEN).unwrap_err();
        let at: Vec<_> = issues.iter().filter_map(|i| i.expression.clone()).collect();
        assert_eq!(
            at,
            [
                "Subscription.criteria",
                "Subscription.criteria.extension",
                "Subscription.channel.type",
                "Subscription.channel.endpoint"
            ],
            "{issues:?}"
        );
        let mut none = sub();
        none.as_object_mut().unwrap().remove("channel");
        let issues = read(BASE, &none, OPEN).unwrap_err();
        assert_eq!(issues[0].code, "required");
        assert!(read(BASE, &json!({"resourceType": "Patient"}), OPEN).is_err());
    }

    #[test]
    fn filters() {
        assert_eq!(
            Filter::parse("Encounter?patient.identifier=GENHOSP|MRN1"),
            Ok(Filter::PatientIdentifier {
                authority: "GENHOSP".into(),
                id: "MRN1".into()
            })
        );
        assert!(
            Filter::parse("Encounter?attributed-practitioner=1234567890").is_err(),
            "bad check digit"
        );
        assert!(Filter::parse("Patient?x=y").is_err());
        assert!(Filter::parse("Encounter?patient.identifier=MRN1").is_err());
        assert!(Filter::parse("Encounter?a=1&b=2").is_err());
    }
}

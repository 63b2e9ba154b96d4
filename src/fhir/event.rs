//! Which subscriptions hear of an encounter transition, and the notification they get
//! (standards.md §7.4): the event numbered for its subscription, the Encounter in focus
//! and the Patient as context, by reference (`id-only`), in full (`full-resource`, from
//! the routed notification body, so the rules' content profile and redactions hold), or
//! not at all (`empty`).

use super::subscription::Filter;
use super::{status_parameters, topic_of};
use crate::store::fhir::{FanoutTransition, FhirEvent, SubscriptionRow};
use crate::store::key_hash;
use serde_json::{json, Value};

/// Whether `sub` hears of `t`. A practice's subscription hears only of transitions
/// routing chose one of its NPIs for (so suppressions hold); filters are ANDed.
pub fn matches(base: &str, sub: &SubscriptionRow, t: &FanoutTransition) -> bool {
    let Some(topic) = topic_of(base, &sub.topic) else {
        return false;
    };
    if !topic.kinds.contains(&t.kind.as_str()) {
        return false;
    }
    if sub.owner_role == "practice" && !t.recipients.iter().any(|n| sub.owner_npis.contains(n)) {
        return false;
    }
    let filters: Vec<Filter> = serde_json::from_str(&sub.filters).unwrap_or_default();
    filters.iter().all(|f| match f {
        Filter::PatientIdentifier { authority, id } => t
            .patient_key
            .rsplit_once('^')
            .is_some_and(|(i, a)| i == id && a.eq_ignore_ascii_case(authority)),
        Filter::AttributedPractitioner(n) | Filter::AttributedOrganization(n) => {
            t.recipients.contains(n)
        }
    })
}

fn gender(sex: &str) -> Option<&'static str> {
    match sex {
        "F" => Some("female"),
        "M" => Some("male"),
        "O" | "A" | "X" => Some("other"),
        "U" => Some("unknown"),
        _ => None,
    }
}

fn is_date(d: &str) -> bool {
    d.len() == 10 && d.as_bytes()[4] == b'-' && d.as_bytes()[7] == b'-'
}

/// The Encounter and Patient resources, from the routed notification body.
fn resources(t: &FanoutTransition, enc_id: &str, pat_id: &str, at: &str) -> (Value, Value) {
    let body: Value = t
        .payload
        .as_deref()
        .and_then(|p| serde_json::from_slice(p).ok())
        .unwrap_or(Value::Null);
    let (status, class) = match t.kind.as_str() {
        "ed-registration" => ("in-progress", "EMER"),
        "admission" => ("in-progress", "IMP"),
        _ => ("finished", "IMP"),
    };
    let class = match body["encounter"]["patient_class"].as_str() {
        Some("E") => "EMER",
        Some("O") => "AMB",
        _ => class,
    };
    let mut enc = json!({
        "resourceType": "Encounter",
        "id": enc_id,
        "status": status,
        "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class },
        "subject": { "reference": format!("Patient/{pat_id}") },
        "period": if status == "finished" { json!({ "end": at }) } else { json!({ "start": at }) },
    });
    if let Some(d) = body["encounter"]["discharge_disposition"]
        .as_str()
        .filter(|d| !d.is_empty())
    {
        enc["hospitalization"] = json!({ "dischargeDisposition": { "text": d } });
    }
    let p = &body["patient"];
    let mut name = json!({});
    if let Some(f) = p["family"].as_str().filter(|f| !f.is_empty()) {
        name["family"] = json!(f);
    }
    if let Some(g) = p["given"].as_str().filter(|g| !g.is_empty()) {
        name["given"] = json!([g]);
    }
    let mut pat = json!({ "resourceType": "Patient", "id": pat_id });
    if name.as_object().is_some_and(|o| !o.is_empty()) {
        pat["name"] = json!([name]);
    }
    if let Some(d) = p["birth_date"].as_str().filter(|d| is_date(d)) {
        pat["birthDate"] = json!(d);
    }
    if let Some(g) = p["sex"].as_str().and_then(gender) {
        pat["gender"] = json!(g);
    }
    (enc, pat)
}

/// Event `n` of `sub`: what is kept for `$events`, and the Bundle sent.
pub fn build(
    base: &str,
    sub: &SubscriptionRow,
    t: &FanoutTransition,
    n: i64,
    now: &str,
) -> FhirEvent {
    let enc_id = key_hash(&t.encounter);
    let pat_id = key_hash(&t.patient_key);
    let enc_url = format!("{base}/Encounter/{enc_id}");
    let pat_url = format!("{base}/Patient/{pat_id}");
    let at = crate::directory::rfc3339_us(t.event_at_us);
    let mut part = vec![
        json!({ "name": "event-number", "valueString": n.to_string() }),
        json!({ "name": "timestamp", "valueInstant": at }),
    ];
    if sub.content != "empty" {
        part.push(json!({ "name": "focus", "valueReference": { "reference": enc_url } }));
        part.push(
            json!({ "name": "additional-context", "valueReference": { "reference": pat_url } }),
        );
    }
    let part = json!({ "name": "notification-event", "part": part });
    let entries: Vec<Value> = match sub.content.as_str() {
        "empty" => vec![],
        "full-resource" => {
            let (enc, pat) = resources(t, &enc_id, &pat_id, &at);
            vec![
                json!({ "fullUrl": enc_url, "resource": enc,
                        "request": { "method": "PUT", "url": format!("Encounter/{enc_id}") }, "response": { "status": "200" } }),
                json!({ "fullUrl": pat_url, "resource": pat,
                        "request": { "method": "PUT", "url": format!("Patient/{pat_id}") }, "response": { "status": "200" } }),
            ]
        }
        _ => vec![json!({ "fullUrl": enc_url,
                          "request": { "method": "PUT", "url": format!("Encounter/{enc_id}") }, "response": { "status": "200" } })],
    };
    let bundle = bundle(
        base,
        sub,
        "event-notification",
        n,
        std::slice::from_ref(&part),
        &entries,
        now,
    );
    FhirEvent {
        part: part.to_string(),
        entries: Value::Array(entries).to_string(),
        bundle: bundle.to_string().into_bytes(),
    }
}

/// A notification Bundle (`history`): the status Parameters with the events' parts,
/// then their entries.
pub fn bundle(
    base: &str,
    sub: &SubscriptionRow,
    kind: &str,
    events_since_start: i64,
    parts: &[Value],
    entries: &[Value],
    now: &str,
) -> Value {
    let mut status = status_parameters(
        base,
        &sub.id,
        &sub.topic,
        &sub.status,
        kind,
        events_since_start,
        None,
    );
    if let Some(p) = status["parameter"].as_array_mut() {
        p.extend(parts.iter().cloned());
    }
    let mut all = vec![json!({
        "fullUrl": format!("urn:uuid:{}", super::uuid_like(&key_hash(&format!("{}|{kind}|{events_since_start}|{now}", sub.id)))),
        "resource": status,
        "request": { "method": "GET", "url": format!("{base}/Subscription/{}/$status", sub.id) },
        "response": { "status": "200" },
    })];
    all.extend(entries.iter().cloned());
    json!({ "resourceType": "Bundle", "type": "history", "timestamp": now, "entry": all })
}

//! Which subscriptions hear of an encounter transition, and the notification they get
//! (standards.md §7.4): the event numbered for its subscription, the Encounter in focus
//! and the Patient as context, by reference (`id-only`), in full (`full-resource`, from
//! the routed notification body, so the rules' content profile and redactions hold), or
//! not at all (`empty`).

use super::subscription::Filter;
use super::{status_parameters, topic_of};
use crate::routing::notification::Notification;
use crate::store::fhir::{FanoutTransition, FhirEvent, SubscriptionRow};
use crate::store::key_hash;
use serde_json::{json, Value};

/// Whether `sub` hears of `t`. Every subscription hears only within its owner's
/// scope: the hospital's (`admin`) is every transition; any other owner's is the
/// transitions routing chose one of its NPIs for (so suppressions hold), whatever the
/// filters say. Filters are ANDed within that.
pub fn matches(base: &str, sub: &SubscriptionRow, t: &FanoutTransition) -> bool {
    let Some(topic) = topic_of(base, &sub.topic) else {
        return false;
    };
    if !topic.kinds.contains(&t.kind.as_str()) {
        return false;
    }
    if sub.owner_role != "admin" && !t.recipients.iter().any(|n| sub.owner_npis.contains(n)) {
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

/// The Encounter and Patient resources, from the routed notification body, and the
/// treating Practitioner and the facility's Organization where the body names them
/// (Encounter.participant and Encounter.serviceProvider refer to them).
fn resources(
    t: &FanoutTransition,
    enc_id: &str,
    pat_id: &str,
    at: &str,
) -> (Value, Value, Vec<Value>) {
    // A transition without a body (or with one from elsewhere) gives bare resources.
    let body: Notification = t
        .payload
        .as_deref()
        .and_then(|p| Notification::from_json(p).ok())
        .unwrap_or_default();
    let (status, class) = match t.kind.as_str() {
        "ed-registration" => ("in-progress", "EMER"),
        "admission" => ("in-progress", "IMP"),
        _ => ("finished", "IMP"),
    };
    let class = match body.encounter.patient_class.as_deref() {
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
    if let Some(d) = body
        .encounter
        .discharge_disposition
        .as_deref()
        .filter(|d| !d.is_empty())
    {
        enc["hospitalization"] = json!({ "dischargeDisposition": { "text": d } });
    }
    let p = &body.patient;
    let mut name = json!({});
    if !p.family.is_empty() {
        name["family"] = json!(p.family);
    }
    if !p.given.is_empty() {
        name["given"] = json!([p.given]);
    }
    let mut pat = json!({ "resourceType": "Patient", "id": pat_id });
    if name.as_object().is_some_and(|o| !o.is_empty()) {
        pat["name"] = json!([name]);
    }
    if let Some(d) = p
        .birth_date
        .as_ref()
        .and_then(Option::as_deref)
        .filter(|d| is_date(d))
    {
        pat["birthDate"] = json!(d);
    }
    if let Some(g) = p.sex.as_deref().and_then(gender) {
        pat["gender"] = json!(g);
    }
    let mut more = Vec::new();
    let doc = body.treating_practitioner.as_ref();
    let doc_name = doc
        .map(|d| d.name.as_str())
        .filter(|n| !n.trim().is_empty());
    let doc_npi = doc.and_then(|d| d.npi.as_deref()).filter(|n| !n.is_empty());
    if doc_name.is_some() || doc_npi.is_some() {
        let id = key_hash(&format!(
            "practitioner|{}",
            doc_npi.or(doc_name).unwrap_or("")
        ));
        let mut r = json!({ "resourceType": "Practitioner", "id": id });
        if let Some(npi) = doc_npi {
            r["identifier"] = json!([{ "system": "http://hl7.org/fhir/sid/us-npi", "value": npi }]);
        }
        if let Some(n) = doc_name {
            r["name"] = json!([{ "text": n.trim() }]);
        }
        enc["participant"] = json!([{
            "type": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND" }] }],
            "individual": { "reference": format!("Practitioner/{id}") }
        }]);
        more.push(r);
    }
    let facility = [&body.treating_facility, &body.sending_facility]
        .into_iter()
        .find(|f| !f.trim().is_empty());
    if let Some(f) = facility {
        let id = key_hash(&format!("organization|{f}"));
        enc["serviceProvider"] = json!({ "reference": format!("Organization/{id}") });
        more.push(json!({ "resourceType": "Organization", "id": id, "name": f.trim() }));
    }
    (enc, pat, more)
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
    // What the notification refers to; kept so an id-only subscriber can read it back.
    let all: Vec<Value> = if sub.content == "empty" {
        Vec::new()
    } else {
        let (enc, pat, more) = resources(t, &enc_id, &pat_id, &at);
        [enc, pat].into_iter().chain(more).collect()
    };
    let path = |r: &Value| {
        format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap_or(""),
            r["id"].as_str().unwrap_or("")
        )
    };
    let entries: Vec<Value> = match sub.content.as_str() {
        "empty" => vec![],
        "full-resource" => all
            .iter()
            .map(|r| {
                json!({ "fullUrl": format!("{base}/{}", path(r)), "resource": r,
                        "request": { "method": "PUT", "url": path(r) }, "response": { "status": "200" } })
            })
            .collect(),
        _ => vec![json!({ "fullUrl": enc_url,
                          "request": { "method": "PUT", "url": format!("Encounter/{enc_id}") }, "response": { "status": "200" } })],
    };
    let kept = all
        .iter()
        .map(|r| {
            (
                r["resourceType"].as_str().unwrap_or("").to_string(),
                r["id"].as_str().unwrap_or("").to_string(),
                r.to_string(),
            )
        })
        .collect();
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
        resources: kept,
    }
}

/// A notification without events (`handshake`, `heartbeat`) for `sub` at `now_us`: its
/// outbox key (one per sending) and its Bundle.
pub fn status_only(
    base: &str,
    sub: &SubscriptionRow,
    kind: &str,
    now_us: i64,
) -> (String, Vec<u8>) {
    let b = bundle(
        base,
        sub,
        kind,
        sub.events_since_start,
        &[],
        &[],
        &crate::directory::rfc3339_us(now_us),
    );
    (
        key_hash(&format!("{}|{kind}|{now_us}", sub.id)),
        b.to_string().into_bytes(),
    )
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

/// What a delivered notification proves, read back from the Bundle sent: its type and
/// the event numbers it carried (the proof of delivery records them).
pub fn proof_of(payload: &[u8]) -> Option<Value> {
    let b: Value = serde_json::from_slice(payload).ok()?;
    let params = b["entry"][0]["resource"]["parameter"].as_array()?;
    let value = |name: &str| {
        params
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["valueCode"].clone())
    };
    let numbers: Vec<Value> = params
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .filter_map(|p| {
            p["part"]
                .as_array()?
                .iter()
                .find(|q| q["name"] == "event-number")
                .map(|q| q["valueString"].clone())
        })
        .collect();
    Some(json!({ "type": value("type")?, "event_numbers": numbers }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id-only notification carries references only, but what they refer to is kept
    /// for the subscriber to read back; an empty one keeps nothing.
    #[test]
    fn id_only_keeps_what_it_refers_to() {
        let mut sub = SubscriptionRow {
            id: "s1".into(),
            owner_role: "admin".into(),
            owner_token: "hospital".into(),
            owner_npis: vec![],
            topic: "https://r.example/fhir/SubscriptionTopic/admission".into(),
            filters: "[]".into(),
            endpoint: "https://p.example/hook".into(),
            content: "id-only".into(),
            status: "active".into(),
            error: None,
            events_since_start: 1,
            resource: "{}".into(),
            created_at_us: 0,
            deleted: false,
            headers: vec![],
            heartbeat_secs: None,
            timeout_secs: None,
        };
        let body = json!({
            "patient": {"family": "DOE", "given": "JANE", "birth_date": "1970-01-01", "sex": "F"},
            "encounter": {"patient_class": "I"},
            "treating_practitioner": {"name": "JAMES KILDARE", "npi": "1234567893"},
            "treating_facility": "GENHOSP",
        });
        let t = FanoutTransition {
            id: 1,
            transition_key: "t1".into(),
            kind: "admission".into(),
            event_at_us: 0,
            encounter: "GENHOSP|V1".into(),
            patient_key: "MRN1^GENHOSP".into(),
            recipients: vec!["1234567893".into()],
            payload: Some(body.to_string().into_bytes()),
        };
        let ev = build(
            "https://r.example/fhir",
            &sub,
            &t,
            1,
            "2026-11-29T00:00:00Z",
        );
        let entries: Vec<Value> = serde_json::from_str(&ev.entries).unwrap();
        assert!(entries.iter().all(|e| e.get("resource").is_none()));
        let kinds: Vec<&str> = ev.resources.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(
            kinds,
            ["Encounter", "Patient", "Practitioner", "Organization"]
        );
        assert_eq!(ev.resources[0].1, key_hash("GENHOSP|V1"));
        sub.content = "empty".into();
        assert!(build("https://r.example/fhir", &sub, &t, 1, "x")
            .resources
            .is_empty());

        // The owner's scope holds whatever the role and the filters: only the
        // hospital's (admin) scope is every transition.
        let base = "https://r.example/fhir";
        assert!(matches(base, &sub, &t), "the hospital hears of it");
        for role in ["practice", "ops", "auditor", ""] {
            sub.owner_role = role.into();
            sub.owner_npis = vec!["1245319599".into()];
            assert!(!matches(base, &sub, &t), "{role}: not routed to its NPIs");
            sub.owner_npis = vec![];
            assert!(
                !matches(base, &sub, &t),
                "{role}: an empty scope hears nothing"
            );
            sub.owner_npis = vec!["1234567893".into()];
            assert!(matches(base, &sub, &t), "{role}: routed to its NPI");
        }
    }
}

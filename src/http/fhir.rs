//! `/fhir`: the FHIR R4 API (Subscriptions, R5 Backport IG). JSON only
//! (`application/fhir+json`); every error is an OperationOutcome with the status that
//! fits (400 unreadable, 401/403 access, 404/410 unknown or deleted, 422 a Subscription
//! the server will not honour).

// Handlers return the ready response as their error; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use super::auth::{Caller, Role};
use super::HttpState;
use crate::fhir::subscription::{read, Filter, SubscriptionRequest};
use crate::fhir::{self, operation_outcome, Issue};
use crate::store::fhir::SubscriptionRow;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::HashMap;

const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

fn fhir(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        body.to_string(),
    )
        .into_response()
}

fn outcome(status: StatusCode, code: &'static str, text: impl Into<String>) -> Response {
    fhir(status, operation_outcome(&[Issue::new(code, text, None)]))
}

fn store_error(e: crate::store::StoreError) -> Response {
    tracing::warn!(error = %e, "FHIR request failed in the store.");
    outcome(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "the database is not answering; try again",
    )
}

fn caller(s: &HttpState, headers: &HeaderMap) -> Result<Caller, Response> {
    s.tokens.caller(headers).map_err(|(status, text)| {
        let code = if status == StatusCode::UNAUTHORIZED {
            "login"
        } else {
            "forbidden"
        };
        outcome(status, code, text.trim().to_string())
    })
}

/// The request body as JSON, or the 400 that says why not.
fn json_body(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| {
        outcome(
            StatusCode::BAD_REQUEST,
            "structure",
            format!("the body is not JSON: {e}"),
        )
    })
}

/// A caller that may change subscriptions (admin or practice); `what` says what it asked.
fn writer(s: &HttpState, headers: &HeaderMap, what: &str) -> Result<Caller, Response> {
    let c = caller(s, headers)?;
    if !matches!(c.role, Role::Admin | Role::Practice) {
        return Err(outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("only admin and practice tokens may {what}"),
        ));
    }
    Ok(c)
}

/// A practice sees (and so reads, updates and deletes) only the subscriptions its own
/// token created; the hospital's roles see all. Sharing an NPI is not ownership.
fn may_see(c: &Caller, row: &SubscriptionRow) -> bool {
    c.role != Role::Practice || (!row.owner_token.is_empty() && row.owner_token == c.id)
}

/// The shortest heartbeat and the per-token count, or the 422 that says which limit.
async fn within_limits(
    s: &HttpState,
    c: &Caller,
    req: &SubscriptionRequest,
    creating: bool,
) -> Result<(), Response> {
    if let Some(h) = req.heartbeat_secs {
        if h < s.fhir.min_heartbeat_secs {
            return Err(fhir(
                StatusCode::UNPROCESSABLE_ENTITY,
                operation_outcome(&[Issue::new(
                    "value",
                    format!(
                        "the heartbeat period must be at least {} seconds (fhir.min_heartbeat_secs)",
                        s.fhir.min_heartbeat_secs
                    ),
                    Some("Subscription.channel.extension"),
                )]),
            ));
        }
    }
    if creating {
        let held = s
            .store
            .subscriptions_owned(&c.id)
            .await
            .map_err(store_error)?;
        if held >= i64::from(s.fhir.max_subscriptions_per_token) {
            return Err(outcome(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too-costly",
                format!(
                    "this token holds {held} live subscriptions, the most allowed (fhir.max_subscriptions_per_token); delete one first"
                ),
            ));
        }
    }
    Ok(())
}

pub async fn metadata(State(s): State<HttpState>) -> Response {
    let now = crate::directory::rfc3339_us(crate::store::now_us());
    fhir(
        StatusCode::OK,
        fhir::capability_statement(&s.fhir_base, &now),
    )
}

pub async fn create(State(s): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let c = match writer(&s, &headers, "subscribe") {
        Ok(c) => c,
        Err(r) => return r,
    };
    let resource = match json_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let req = match read(&s.fhir_base, &resource, s.endpoints) {
        Ok(r) => r,
        Err(issues) => return fhir(StatusCode::UNPROCESSABLE_ENTITY, operation_outcome(&issues)),
    };
    if let Err(r) = within_limits(&s, &c, &req, true).await {
        return r;
    }
    let owner_npis = match owner_scope(&s, &c, &req).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let id = crate::store::key_hash(&format!(
        "{}|{}|{}",
        crate::store::now_us(),
        req.endpoint,
        rand::random::<u64>()
    ));
    let mut stored = held(resource, "requested");
    stored["id"] = json!(id);
    let row = SubscriptionRow {
        id: id.clone(),
        owner_role: format!("{:?}", c.role).to_ascii_lowercase(),
        owner_token: c.id.clone(),
        owner_npis,
        topic: req.topic.clone(),
        filters: serde_json::to_string(&req.filters).unwrap_or_else(|_| "[]".into()),
        endpoint: req.endpoint.clone(),
        content: req.content.clone(),
        status: "requested".into(),
        error: None,
        events_since_start: 0,
        resource: stored.to_string(),
        created_at_us: crate::store::now_us(),
        deleted: false,
        headers: req.headers.clone(),
        heartbeat_secs: req.heartbeat_secs.map(|h| h as i64),
        timeout_secs: req.timeout_secs.map(|t| t as i64),
    };
    if let Err(e) = s.store.insert_subscription(&row).await {
        return store_error(e);
    }
    if let Err(r) = handshake(&s, &row).await {
        return r;
    }
    tracing::info!(subscription = %id, topic = %req.topic, content = %req.content, "FHIR Subscription created.");
    let location = format!("{}/Subscription/{id}", s.fhir_base);
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, FHIR_JSON.to_string()),
            (header::LOCATION, location),
        ],
        masked_headers(stored).to_string(),
    )
        .into_response()
}

/// The Subscription as the server holds it: the client's resource with the server's
/// status and profile, and no error (the server sets that).
fn held(mut resource: Value, status: &str) -> Value {
    resource["status"] = json!(status);
    resource["meta"] = json!({
        "profile": [format!("{}/StructureDefinition/backport-subscription", fhir::BACKPORT)]
    });
    if let Some(o) = resource.as_object_mut() {
        o.remove("error");
    }
    resource
}

/// Queues a handshake through the delivery engine; its answer makes the subscription
/// active (or error). Each (re)activation has its own.
async fn handshake(s: &HttpState, row: &SubscriptionRow) -> Result<(), Response> {
    let now = crate::store::now_us();
    let (key, bundle) = fhir::event::status_only(&s.fhir_base, row, "handshake", now);
    s.store
        .enqueue_fhir(row, "handshake", &key, &bundle, now)
        .await
        .map_err(store_error)
}

/// The owner's scope: a practice speaks only for its own NPIs and their attributed
/// patients, and its subscription hears only of events routed to one of them (its
/// filters narrow that further). The hospital's scope is empty: every event.
async fn owner_scope(
    s: &HttpState,
    c: &Caller,
    req: &SubscriptionRequest,
) -> Result<Vec<String>, Response> {
    if c.role != Role::Practice {
        return Ok(Vec::new());
    }
    if let Some(n) = req
        .filters
        .iter()
        .filter_map(Filter::npi)
        .find(|n| !c.npis.iter().any(|m| m == n))
    {
        return Err(fhir(
            StatusCode::FORBIDDEN,
            operation_outcome(&[Issue::new(
                "forbidden",
                format!("this token does not speak for NPI {n}"),
                Some("Subscription.criteria.extension"),
            )]),
        ));
    }
    for f in &req.filters {
        if let Filter::PatientIdentifier { authority, id } = f {
            match s.store.attributed_to_any(id, authority, &c.npis).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(fhir(
                        StatusCode::FORBIDDEN,
                        operation_outcome(&[Issue::new(
                            "forbidden",
                            "that patient is not attributed to this practice",
                            Some("Subscription.criteria.extension"),
                        )]),
                    ))
                }
                Err(e) => return Err(store_error(e)),
            }
        }
    }
    Ok(c.npis.clone())
}

/// `PUT /fhir/Subscription/{id}`: the subscriber changes its subscription or asks for
/// reactivation after an error (status `requested` or `active`: a new handshake, then
/// `active`), or turns it `off`. The topic stays; the event count carries on (the IG:
/// never reset silently).
pub async fn update(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let c = match writer(&s, &headers, "change subscriptions") {
        Ok(c) => c,
        Err(r) => return r,
    };
    let old = match visible(&s, &c, &id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let resource = match json_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if resource["id"].as_str() != Some(id.as_str()) {
        return fhir(
            StatusCode::BAD_REQUEST,
            operation_outcome(&[Issue::new(
                "invalid",
                format!("an update must carry the id of the URL ({id})"),
                Some("Subscription.id"),
            )]),
        );
    }
    let req = match read(&s.fhir_base, &resource, s.endpoints) {
        Ok(r) => r,
        Err(issues) => return fhir(StatusCode::UNPROCESSABLE_ENTITY, operation_outcome(&issues)),
    };
    let mut issues = Vec::new();
    if req.topic != old.topic {
        issues.push(Issue::new(
            "not-supported",
            "the topic of a subscription cannot change; create another subscription",
            Some("Subscription.criteria"),
        ));
    }
    let status = match resource["status"].as_str() {
        Some("requested" | "active") => "requested",
        Some("off") => "off",
        other => {
            issues.push(Issue::new(
                "value",
                format!(
                    "status {} cannot be asked for: requested or active (re)activates, off stops",
                    other.unwrap_or("(none)")
                ),
                Some("Subscription.status"),
            ));
            ""
        }
    };
    if !issues.is_empty() {
        return fhir(StatusCode::UNPROCESSABLE_ENTITY, operation_outcome(&issues));
    }
    if let Err(r) = within_limits(&s, &c, &req, false).await {
        return r;
    }
    // The owner's scope stays the owner's: the hospital changing a practice's
    // subscription leaves it scoped to the practice; the practice's own update takes
    // its token's NPIs as they are now.
    let owner_npis = match owner_scope(&s, &c, &req).await {
        Ok(_) if c.id != old.owner_token => old.owner_npis.clone(),
        Ok(n) => n,
        Err(r) => return r,
    };
    let stored = held(resource, status);
    let row = SubscriptionRow {
        owner_npis,
        filters: serde_json::to_string(&req.filters).unwrap_or_else(|_| "[]".into()),
        endpoint: req.endpoint.clone(),
        content: req.content.clone(),
        status: status.into(),
        error: None,
        resource: stored.to_string(),
        headers: unmasked(&req.headers, &old.headers),
        heartbeat_secs: req.heartbeat_secs.map(|h| h as i64),
        timeout_secs: req.timeout_secs.map(|t| t as i64),
        ..old
    };
    match s.store.update_subscription(&row).await {
        Ok(true) => {}
        Ok(false) => {
            return outcome(
                StatusCode::GONE,
                "deleted",
                format!("Subscription/{id} was deleted"),
            )
        }
        Err(e) => return store_error(e),
    }
    if status == "requested" {
        if let Err(r) = handshake(&s, &row).await {
            return r;
        }
    }
    tracing::info!(subscription = %id, status, "FHIR Subscription updated.");
    fhir(StatusCode::OK, current(&row))
}

/// The subscription `id` if this caller may see it, or the answer to give.
async fn visible(s: &HttpState, c: &Caller, id: &str) -> Result<SubscriptionRow, Response> {
    match s.store.subscription(id).await {
        Ok(Some(row)) if may_see(c, &row) => {
            if row.deleted {
                Err(outcome(
                    StatusCode::GONE,
                    "deleted",
                    format!("Subscription/{id} was deleted"),
                ))
            } else {
                Ok(row)
            }
        }
        Ok(_) => Err(outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no Subscription/{id}"),
        )),
        Err(e) => Err(store_error(e)),
    }
}

/// The stored resource with the server's current status.
fn current(row: &SubscriptionRow) -> Value {
    let mut r: Value = serde_json::from_str(&row.resource).unwrap_or(Value::Null);
    r["status"] = json!(row.status);
    if let Some(e) = &row.error {
        r["error"] = json!(e);
    }
    masked_headers(r)
}

/// The headers of an update: a value sent back as `***` (as it was shown) keeps the
/// value it had, so a subscriber can PUT what it read without losing its secret.
fn unmasked(new: &[(String, String)], old: &[(String, String)]) -> Vec<(String, String)> {
    new.iter()
        .map(|(name, value)| match value.trim() {
            "***" => old
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .cloned()
                .unwrap_or_else(|| (name.clone(), value.clone())),
            _ => (name.clone(), value.clone()),
        })
        .collect()
}

/// A Subscription as it is shown: `channel.header` values (the subscriber's secrets)
/// become `***`; the names stay, so a subscriber can see what is sent.
fn masked_headers(mut r: Value) -> Value {
    if let Some(hs) = r["channel"]["header"].as_array_mut() {
        for h in hs {
            if let Some((name, _)) = h.as_str().and_then(|t| t.split_once(':')) {
                *h = json!(format!("{name}: ***"));
            }
        }
    }
    r
}

pub async fn get(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let c = match caller(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match visible(&s, &c, &id).await {
        Ok(row) => fhir(StatusCode::OK, current(&row)),
        Err(r) => r,
    }
}

pub async fn search(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let c = match caller(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let rows = match s
        .store
        .subscriptions(
            q.get("status").map(String::as_str),
            q.get("criteria").map(String::as_str),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let entries = rows
        .iter()
        .filter(|r| may_see(&c, r))
        .map(|r| (format!("{}/Subscription/{}", s.fhir_base, r.id), current(r)))
        .collect();
    fhir(StatusCode::OK, fhir::searchset(entries))
}

pub async fn delete(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let c = match writer(&s, &headers, "delete subscriptions") {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = visible(&s, &c, &id).await {
        return r;
    }
    match s
        .store
        .delete_subscription(&id, crate::store::now_us())
        .await
    {
        Ok(_) => {
            tracing::info!(subscription = %id, "FHIR Subscription deleted.");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_error(e),
    }
}

/// One subscription's status as a searchset entry (`query-status`).
fn status_entry(base: &str, row: &SubscriptionRow) -> (String, Value) {
    let p = fhir::status_parameters(
        base,
        &row.id,
        &row.topic,
        &row.status,
        "query-status",
        row.events_since_start,
        row.error.as_deref(),
    );
    (format!("urn:uuid:{}", fhir::uuid_like(&row.id)), p)
}

/// `GET /fhir/Subscription/{id}/$status`: a searchset with the status Parameters.
pub async fn status(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let c = match caller(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match visible(&s, &c, &id).await {
        Ok(row) => fhir(
            StatusCode::OK,
            fhir::searchset(vec![status_entry(&s.fhir_base, &row)]),
        ),
        Err(r) => r,
    }
}

/// `GET /fhir/Subscription/$status?id=a,b&status=error`: the statuses of every
/// subscription the caller may see, narrowed by id and status (each ORed within
/// itself, comma-separated or repeated), one searchset entry each.
pub async fn status_all(
    State(s): State<HttpState>,
    headers: HeaderMap,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    let c = match caller(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut ids = Vec::new();
    let mut statuses = Vec::new();
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        let values = v
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty());
        match k.as_ref() {
            "id" => ids.extend(values),
            "status" => statuses.extend(values),
            other => {
                return outcome(
                    StatusCode::BAD_REQUEST,
                    "not-supported",
                    format!("$status takes id and status, not {other}"),
                )
            }
        }
    }
    let rows = match s.store.subscriptions(None, None).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let entries = rows
        .iter()
        .filter(|r| may_see(&c, r))
        .filter(|r| ids.is_empty() || ids.contains(&r.id))
        .filter(|r| statuses.is_empty() || statuses.contains(&r.status))
        .map(|r| status_entry(&s.fhir_base, r))
        .collect();
    fhir(StatusCode::OK, fhir::searchset(entries))
}

/// `GET|POST /fhir/Subscription/{id}/$events`: the kept events with numbers from
/// `eventsSinceNumber` (default 1) to `eventsUntilNumber` (default the latest), as a
/// `query-event` notification Bundle, so a subscriber can fill a gap it noticed.
pub async fn events(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let c = match caller(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let row = match visible(&s, &c, &id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    // Parameters from the query, or from a Parameters body (POST).
    let mut params: HashMap<String, String> = q;
    if !body.is_empty() {
        match serde_json::from_slice::<Value>(&body) {
            Ok(p) if p["resourceType"] == "Parameters" => {
                for prm in p["parameter"].as_array().into_iter().flatten() {
                    if let (Some(n), Some(v)) = (prm["name"].as_str(), prm["valueString"].as_str())
                    {
                        params.insert(n.to_string(), v.to_string());
                    }
                }
            }
            _ => {
                return outcome(
                    StatusCode::BAD_REQUEST,
                    "structure",
                    "the body must be a Parameters resource",
                )
            }
        }
    }
    let number = |name: &str, default: i64| -> Result<i64, Response> {
        match params.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse::<i64>().map_err(|_| {
                outcome(
                    StatusCode::BAD_REQUEST,
                    "value",
                    format!("{name} must be an event number"),
                )
            }),
        }
    };
    let (since, until) = match (
        number("eventsSinceNumber", 1),
        number("eventsUntilNumber", row.events_since_start),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let kept = match s.store.fhir_events(&row.id, since, until).await {
        Ok(k) => k,
        Err(e) => return store_error(e),
    };
    let mut parts = Vec::new();
    let mut entries = Vec::new();
    for (_, part, ents) in kept {
        parts.push(serde_json::from_str(&part).unwrap_or(Value::Null));
        if let Ok(Value::Array(e)) = serde_json::from_str(&ents) {
            entries.extend(e);
        }
    }
    let now = crate::directory::rfc3339_us(crate::store::now_us());
    fhir(
        StatusCode::OK,
        fhir::event::bundle(
            &s.fhir_base,
            &row,
            "query-event",
            row.events_since_start,
            &parts,
            &entries,
            &now,
        ),
    )
}

/// `GET /fhir/{Encounter|Patient|Practitioner|Organization}/{id}`: a resource a
/// notification referred to, as the caller's subscription was told of it (an `id-only`
/// subscriber reads what it was notified of). A practice reads only through its own
/// live subscriptions; anything else is a 404, as for an unknown id.
pub async fn read_resource(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
) -> Response {
    let c = match caller(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !["Encounter", "Patient", "Practitioner", "Organization"].contains(&kind.as_str()) {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-supported",
            format!("no {kind} resources here: Subscription, and the Encounter, Patient, Practitioner and Organization its notifications refer to"),
        );
    }
    let held = match s.store.fhir_resource(&kind, &id).await {
        Ok(h) => h,
        Err(e) => return store_error(e),
    };
    for (sub, resource) in held {
        match s.store.subscription(&sub).await {
            Ok(Some(row)) if !row.deleted && may_see(&c, &row) => {
                let r: Value = serde_json::from_str(&resource).unwrap_or(Value::Null);
                return fhir(StatusCode::OK, r);
            }
            Ok(_) => {}
            Err(e) => return store_error(e),
        }
    }
    outcome(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no {kind}/{id} for this caller"),
    )
}

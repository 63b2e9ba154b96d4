//! HTTP: `/healthz` (the process answers), `/readyz` (database and event log reachable),
//! `/metrics` (Prometheus text format), `/.well-known/jwks.json` (our SMART keys),
//! `POST /rosters/{source}` (roster upload, bearer token), and `/fhir` (FHIR
//! Subscriptions, see [`fhir`]).

pub mod auth;
pub mod config;
pub mod fhir;
pub mod rosters;
pub mod serve;

use crate::metrics::Metrics;
use crate::store::Store;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub event_log: &'static str,
    pub kafka: Option<crate::event_log::kafka::KafkaLog>,
    pub tokens: Arc<auth::Tokens>,
    /// The FHIR API's base URL (`fhir.base_url`, or `http://<http.listen>/fhir`).
    pub fhir_base: String,
    /// Per-token subscription limit and minimum heartbeat (`[fhir]`).
    pub fhir: crate::fhir::config::FhirSettings,
    /// What subscription endpoints must satisfy (`[delivery]`).
    pub endpoints: crate::directory::endpoint::EndpointPolicy,
    /// SMART Backend Services keys (their public halves at `/.well-known/jwks.json`).
    pub smart: Arc<crate::deliver::smart::SmartClients>,
    /// Limits and timeouts (`[http]`).
    pub http: config::HttpSettings,
    /// Which stage, if any, ended while the service was running.
    pub stages: Arc<crate::app::StageHealth>,
}

pub fn router(state: HttpState) -> Router {
    let request_limit = Duration::from_secs(state.http.request_timeout_secs.max(1));
    let upload_limit = Duration::from_secs(state.http.upload_timeout_secs.max(1));
    let api = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/fhir/metadata", get(fhir::metadata))
        .route(
            "/fhir/Subscription",
            post(fhir::create)
                .get(fhir::search)
                .layer(axum::extract::DefaultBodyLimit::max(256 * 1024)),
        )
        .route(
            "/fhir/Subscription/{id}",
            get(fhir::get)
                .put(fhir::update)
                .delete(fhir::delete)
                .layer(axum::extract::DefaultBodyLimit::max(256 * 1024)),
        )
        .route("/fhir/Subscription/$status", get(fhir::status_all))
        .route("/fhir/{kind}/{id}", get(fhir::read_resource))
        .route("/fhir/Subscription/{id}/$status", get(fhir::status))
        .route(
            "/fhir/Subscription/{id}/$events",
            get(fhir::events).post(fhir::events),
        )
        .layer(axum::middleware::from_fn_with_state(
            request_limit,
            time_limit,
        ));
    // Streamed to a file with its own cap (`http.max_upload_bytes`) and time limit.
    let uploads = Router::new()
        .route("/rosters/{source}", post(rosters::upload))
        .layer(axum::middleware::from_fn_with_state(
            upload_limit,
            time_limit,
        ));
    api.merge(uploads).with_state(state)
}

/// Answers 408 when a request (reading its body included) takes longer than `limit`.
async fn time_limit(
    State(limit): State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {} s (http.request_timeout_secs / http.upload_timeout_secs)\n",
                limit.as_secs()
            ),
        )
            .into_response(),
    }
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if let Some(stage) = s.stages.ended() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the {stage} stage ended; the process is stopping to be restarted\n"
            ),
        );
    }
    match tokio::time::timeout(std::time::Duration::from_secs(2), s.store.ping()).await {
        Ok(Ok(())) => (
            StatusCode::OK,
            format!(
                "ready: database {} ok, event log {} ok\n",
                s.store.backend(),
                s.event_log
            ),
        ),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: database {}: {e}\n", s.store.backend()),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: database {} did not answer within 2 s\n",
                s.store.backend()
            ),
        ),
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Our JWK Set, for the authorization servers we are registered with (public, cacheable).
async fn jwks(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        state.smart.jwks().to_string(),
    )
}

//! HTTP: `/healthz` (the process answers), `/readyz` (database and event log reachable),
//! `/metrics` (Prometheus text format), `POST /rosters/{source}` (roster upload, bearer
//! token). Later steps add the audit and FHIR APIs here.

pub mod auth;
pub mod rosters;

use crate::metrics::Metrics;
use crate::store::Store;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub event_log: &'static str,
    pub kafka: Option<crate::log::kafka::KafkaLog>,
    pub tokens: Arc<auth::Tokens>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/rosters/{source}",
            post(rosters::upload).layer(axum::extract::DefaultBodyLimit::max(512 * 1024 * 1024)),
        )
        .with_state(state)
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
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

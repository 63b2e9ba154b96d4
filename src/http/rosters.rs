//! `POST /rosters/{source}[?replace=true]`: a roster upload over HTTP, the same checks and
//! the same all-or-nothing load as `adt-router roster import`. Admins may load any
//! roster; a practice only into a source configured as its own (`roster_sources`), and
//! only rows whose provider is one of its NPIs, checked by the import on the records it
//! loads.

use super::auth::Role;
use super::HttpState;
use crate::attribution::roster::{self, RosterError};
use crate::store::bulk::BulkConn;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct UploadQuery {
    #[serde(default)]
    replace: bool,
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        format!("{v}\n"),
    )
        .into_response()
}

pub async fn upload(
    State(s): State<HttpState>,
    Path(source): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match s.tokens.caller(&headers) {
        Ok(c) => c,
        Err((status, text)) => return (status, text).into_response(),
    };
    if !matches!(caller.role, Role::Admin | Role::Practice) {
        return (
            StatusCode::FORBIDDEN,
            "roster upload needs an admin or practice token\n",
        )
            .into_response();
    }
    let forbidden = |why: String| {
        s.metrics
            .roster_uploads
            .with_label_values(&["forbidden"])
            .inc();
        json(StatusCode::FORBIDDEN, serde_json::json!({ "error": why }))
    };
    let only_npis = match caller.role {
        Role::Practice => {
            if !caller.roster_sources.contains(&source) {
                return forbidden(format!(
                    "roster source '{source}' does not belong to this token"
                ));
            }
            Some(caller.npis.clone())
        }
        _ => None,
    };
    let store = s.store.clone();
    let rt = tokio::runtime::Handle::current();
    let name = format!("http upload ({source})");
    let result = tokio::task::spawn_blocking(move || {
        let mut conn = BulkConn::open(&store, rt)?;
        let body = body.clone();
        let open = move || -> std::io::Result<Box<dyn std::io::Read>> {
            Ok(Box::new(std::io::Cursor::new(body.clone())))
        };
        roster::import(
            &mut conn,
            &source,
            &name,
            &open,
            q.replace,
            only_npis.as_deref(),
        )
    })
    .await;
    match result {
        Ok(Ok(report)) => {
            s.metrics
                .roster_uploads
                .with_label_values(&["loaded"])
                .inc();
            tracing::info!(source = %report.source, rows = report.rows, mode = report.mode, "roster loaded over HTTP");
            json(
                StatusCode::OK,
                serde_json::to_value(&report).unwrap_or_default(),
            )
        }
        Ok(Err(e @ RosterError::ForeignNpi { .. })) => forbidden(e.to_string()),
        Ok(Err(RosterError::Store(e))) => {
            s.metrics.roster_uploads.with_label_values(&["error"]).inc();
            tracing::error!(error = %e, "roster upload failed in the database");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "database error; nothing was loaded"}),
            )
        }
        Ok(Err(e)) => {
            s.metrics
                .roster_uploads
                .with_label_values(&["rejected"])
                .inc();
            let rows = match &e {
                RosterError::BadRows { errors, .. } => {
                    serde_json::to_value(errors).unwrap_or_default()
                }
                _ => serde_json::Value::Null,
            };
            json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"error": e.to_string(), "bad_rows": rows}),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "roster upload task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

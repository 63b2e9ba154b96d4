//! `POST /rosters/{source}[?replace=true]`: a roster upload over HTTP, the same checks and
//! the same all-or-nothing load as `adt-router roster import`. Admins may load any
//! roster; a practice only into a source configured as its own (`roster_sources`), and
//! only rows whose provider is one of its NPIs, checked by the import on the records it
//! loads.

use super::auth::Role;
use super::HttpState;
use crate::attribution::roster::{self, RosterError};
use crate::store::bulk::BulkConn;
use axum::body::Body;
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
    body: Body,
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
    let spooled = match spool(body, s.http.max_upload_bytes).await {
        Ok(f) => f,
        Err(r) => {
            s.metrics
                .roster_uploads
                .with_label_values(&["rejected"])
                .inc();
            return r;
        }
    };
    let store = s.store.clone();
    let rt = tokio::runtime::Handle::current();
    let name = format!("http upload ({source})");
    let result = tokio::task::spawn_blocking(move || {
        let mut conn = BulkConn::open(&store, rt)?;
        let path = spooled.path.clone();
        let open = move || -> std::io::Result<Box<dyn std::io::Read>> {
            Ok(Box::new(std::io::BufReader::new(std::fs::File::open(
                &path,
            )?)))
        };
        let _kept_until_loaded = &spooled;
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

/// An upload's body in a private temporary file, removed when dropped.
struct Spooled {
    path: std::path::PathBuf,
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes the body to a temporary file (0600) as it arrives, never more than `max`
/// bytes: a large or endless upload costs disk up to the cap, not memory.
async fn spool(body: Body, max: u64) -> Result<Spooled, Response> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let path = std::env::temp_dir().join(format!(
        "adt-router-roster-{}.csv",
        hex::encode(rand::random::<[u8; 12]>())
    ));
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let failed = |e: std::io::Error| {
        tracing::error!(error = %e, "roster upload: cannot write its temporary file");
        (
            StatusCode::INSUFFICIENT_STORAGE,
            "cannot hold the upload for loading; nothing was loaded\n",
        )
            .into_response()
    };
    let mut file = opts.open(&path).await.map_err(failed)?;
    let spooled = Spooled { path };
    let mut body = body;
    let mut written: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("the upload was cut off: {e}; nothing was loaded\n"),
            )
                .into_response()
        })?;
        if let Ok(data) = frame.into_data() {
            written += data.len() as u64;
            if written > max {
                return Err(json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    serde_json::json!({
                        "error": format!("the roster is larger than http.max_upload_bytes ({max}); nothing was loaded")
                    }),
                ));
            }
            file.write_all(&data).await.map_err(failed)?;
        }
    }
    file.flush().await.map_err(failed)?;
    Ok(spooled)
}

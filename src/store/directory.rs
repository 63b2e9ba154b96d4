//! The directory as stored: the live NPPES snapshots' rows, local overrides, and which
//! snapshot of each kind is live. Ranking them is [`crate::directory`]'s.

use super::{in_list, now_us, on_pool, Store, StoreError};
use crate::directory::nppes::FileKind;
use crate::directory::overrides::Override;

/// Provider columns, in [`ProviderRow`] order.
const PROVIDER_COLUMNS: &str = "p.npi, p.entity_type, p.replacement_npi, p.organization_name, p.last_name, p.first_name, p.middle_name, p.credential, p.primary_taxonomy, p.address_line1, p.city, p.state, p.postal_code, p.last_update_date, p.deactivation_reason, p.deactivation_date, p.reactivation_date, p.source_import, p.source_line, i.file_name, i.mode, COALESCE(i.finished_at_us, i.started_at_us)";
/// Endpoint columns, in [`EndpointRow`] order.
const ENDPOINT_COLUMNS: &str = "e.npi, e.endpoint_type, e.endpoint, e.affiliation, e.affiliation_name, e.use_code, e.content_type, e.source_import, e.source_line, i.file_name, i.mode, COALESCE(i.finished_at_us, i.started_at_us)";
/// Override columns, in [`OverrideRow`] order.
const OVERRIDE_COLUMNS: &str =
    "id, npi, endpoint_type, endpoint, secret, preferred, source, updated_at_us";

#[derive(serde::Deserialize)]
pub struct ProviderRow {
    pub npi: String,
    pub entity_type: String,
    pub replacement_npi: String,
    pub organization_name: String,
    pub last_name: String,
    pub first_name: String,
    pub middle_name: String,
    pub credential: String,
    pub primary_taxonomy: String,
    pub address_line1: String,
    pub city: String,
    pub state: String,
    pub postal_code: String,
    pub last_update_date: String,
    pub deactivation_reason: String,
    pub deactivation_date: String,
    pub reactivation_date: String,
    pub source_import: i64,
    pub source_line: i64,
    pub file_name: String,
    pub mode: String,
    pub loaded_at_us: i64,
}

#[derive(serde::Deserialize)]
pub struct EndpointRow {
    pub npi: String,
    pub endpoint_type: String,
    pub endpoint: String,
    pub affiliation: String,
    pub affiliation_name: String,
    pub use_code: String,
    pub content_type: String,
    pub source_import: i64,
    pub source_line: i64,
    pub file_name: String,
    pub mode: String,
    pub loaded_at_us: i64,
}

#[derive(serde::Deserialize)]
pub struct OverrideRow {
    pub id: i64,
    pub npi: String,
    pub endpoint_type: String,
    pub endpoint: String,
    pub secret: Option<String>,
    /// SQLite says 0/1, PostgreSQL true/false.
    pub preferred: serde_json::Value,
    pub source: String,
    pub updated_at_us: i64,
}

/// The live snapshot ids, `(kind, import id)`.
pub type ActiveSnapshots = Vec<(String, i64)>;

/// What is stored for a set of NPIs, each list in load order.
pub struct DirectoryRows {
    pub providers: Vec<ProviderRow>,
    pub endpoints: Vec<EndpointRow>,
    pub overrides: Vec<OverrideRow>,
}

const UPSERT_OVERRIDE: &str = "INSERT INTO directory_override (npi, endpoint_type, endpoint, secret, preferred, source, created_at_us, updated_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (npi, endpoint_type, endpoint) DO UPDATE SET secret = excluded.secret, preferred = excluded.preferred, source = excluded.source, updated_at_us = excluded.updated_at_us";
/// One preferred endpoint per NPI: setting one clears the others.
const CLEAR_PREFERRED: &str =
    "UPDATE directory_override SET preferred = FALSE WHERE npi = $1 AND NOT (endpoint_type = $2 AND endpoint = $3)";

impl Store {
    pub async fn active_snapshots(&self) -> Result<ActiveSnapshots, StoreError> {
        self.select_reference("kind, snapshot", "directory_active", Vec::new())
            .await
    }

    /// The rows for these NPIs: providers and endpoints of the live snapshots, and
    /// overrides. One query each, whatever the number of NPIs (a routing page asks for
    /// hundreds at once).
    pub async fn directory_rows(
        &self,
        active: &ActiveSnapshots,
        npis: &[&str],
    ) -> Result<DirectoryRows, StoreError> {
        let mut args: Vec<String> = npis.iter().map(|k| k.to_string()).collect();
        let list = in_list(1, &mut args);
        let mut providers: Vec<ProviderRow> = self
            .snapshot_rows(active, FileKind::Npidata, PROVIDER_COLUMNS, &list, &args)
            .await?;
        let mut endpoints: Vec<EndpointRow> = self
            .snapshot_rows(active, FileKind::Endpoints, ENDPOINT_COLUMNS, &list, &args)
            .await?;
        let mut overrides: Vec<OverrideRow> = self
            .select_reference(
                OVERRIDE_COLUMNS,
                &format!("directory_override WHERE npi IN ({list})"),
                args,
            )
            .await?;
        providers.sort_by_key(|r| (r.source_import, r.source_line));
        endpoints.sort_by_key(|r| (r.source_import, r.source_line));
        overrides.sort_by_key(|r| r.id);
        Ok(DirectoryRows {
            providers,
            endpoints,
            overrides,
        })
    }

    /// The rows for the NPIs in `list` (placeholders for `args`) of the live snapshot of
    /// `kind`, each with its import; none when nothing of that kind is loaded.
    async fn snapshot_rows<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        active: &ActiveSnapshots,
        kind: FileKind,
        columns: &str,
        list: &str,
        args: &[String],
    ) -> Result<Vec<T>, StoreError> {
        let Some((_, id)) = active.iter().find(|(k, _)| k == kind.as_str()) else {
            return Ok(Vec::new());
        };
        let table = super::nppes::table(kind, *id);
        // The columns are written against the alias `p` (providers) or `e` (endpoints).
        let alias = match kind {
            FileKind::Npidata => "p",
            FileKind::Endpoints => "e",
        };
        let from = format!(
            "{table} {alias} JOIN directory_import i ON i.id = {alias}.source_import WHERE {alias}.npi IN ({list})"
        );
        self.select_reference(columns, &from, args.to_vec()).await
    }

    /// Stores overrides in one transaction: all or none.
    pub async fn save_overrides(&self, items: &[Override], source: &str) -> Result<(), StoreError> {
        let now = now_us();
        on_pool!(self, |p, sql| {
            let mut tx = p.begin().await?;
            for o in items {
                sqlx::query(&sql(UPSERT_OVERRIDE))
                    .bind(o.npi.as_str())
                    .bind(o.kind.as_str())
                    .bind(&o.endpoint)
                    .bind(
                        o.secret
                            .as_ref()
                            .map(crate::secret::ExposeSecret::expose_secret),
                    )
                    .bind(o.preferred)
                    .bind(source)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                if o.preferred {
                    sqlx::query(&sql(CLEAR_PREFERRED))
                        .bind(o.npi.as_str())
                        .bind(o.kind.as_str())
                        .bind(&o.endpoint)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Removes one NPI's overrides (or just the one with this endpoint value).
    pub async fn remove_overrides(
        &self,
        npi: &str,
        endpoint: Option<&str>,
    ) -> Result<u64, StoreError> {
        Ok(on_pool!(self, |p, sql| {
            match endpoint {
                Some(e) => sqlx::query(&sql(
                    "DELETE FROM directory_override WHERE npi = $1 AND lower(endpoint) = lower($2)",
                ))
                .bind(npi)
                .bind(e.trim())
                .execute(p)
                .await?
                .rows_affected(),
                None => sqlx::query(&sql("DELETE FROM directory_override WHERE npi = $1"))
                    .bind(npi)
                    .execute(p)
                    .await?
                    .rows_affected(),
            }
        }))
    }
}

//! Rosters as stored: the import's writes (on its [`BulkConn`], in the caller's
//! transaction) and the reads attribution makes, all of them reference reads
//! ([`Store::select_reference`]).

use super::bulk::{BulkConn, Columns, Param};
use super::{in_list, placeholders, Keep, Store, StoreError};

/// One roster entry as stored, read by position in [`ROW_COLUMNS`] order.
#[derive(serde::Deserialize)]
pub struct RosterRow {
    pub source: String,
    pub patient_id: String,
    pub authority: String,
    pub family: String,
    pub given: String,
    pub norm_family: String,
    pub norm_given: String,
    pub birth_date: String,
    pub sex: String,
    pub postal_code: String,
    pub npi: String,
    pub relationship: String,
    pub effective_from: String,
    pub effective_to: String,
    pub import_id: i64,
    pub line: i64,
    pub loaded_at_us: i64,
}

const ROW_COLUMNS: &str = "source, patient_id, assigning_authority, family, given, norm_family, norm_given, birth_date, sex, postal_code, provider_npi, relationship, effective_from, effective_to, import_id, line, loaded_at_us";

/// Positions in [`ROW_COLUMNS`] of what demographic matching compares: birth date,
/// normalised family and given names, sex, postal code.
pub const DEMOGRAPHICS: &[usize] = &[7, 5, 6, 8, 9];

/// How a later import's row replaces an earlier one with the same key (`--replace`
/// aside, imports upsert).
const UPSERT: &str = "ON CONFLICT (source, patient_id, assigning_authority, birth_date, norm_family, norm_given, provider_npi, relationship) DO UPDATE SET family = excluded.family, given = excluded.given, sex = excluded.sex, postal_code = excluded.postal_code, effective_from = excluded.effective_from, effective_to = excluded.effective_to, import_id = excluded.import_id, line = excluded.line, loaded_at_us = excluded.loaded_at_us";

/// Records an import of `rows` rows; its id tags them.
pub fn begin_import(
    conn: &mut BulkConn,
    source: &str,
    file: &str,
    mode: &str,
    now_us: i64,
    rows: u64,
) -> Result<i64, StoreError> {
    let id = conn.query_i64(
        "INSERT INTO roster_import (source, file_name, mode, loaded_at_us, rows_loaded) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        &[
            Param::Text(source),
            Param::Text(file),
            Param::Text(mode),
            Param::Int(now_us),
            Param::Int(rows as i64),
        ],
    )?;
    id.ok_or_else(|| StoreError::Db(sqlx::Error::RowNotFound))
}

/// Deletes every entry of `source` (a `--replace` import); returns how many.
pub fn clear_source(conn: &mut BulkConn, source: &str) -> Result<u64, StoreError> {
    conn.exec(
        "DELETE FROM roster_entry WHERE source = $1",
        &[Param::Text(source)],
    )
}

/// Writes a chunk of entries (text columns `text`, integer columns `ints`), upserting.
pub fn write_entries(
    conn: &mut BulkConn,
    text: &[&str],
    ints: &[&str],
    cols: &Columns,
) -> Result<(), StoreError> {
    conn.insert("roster_entry", text, ints, cols, UPSERT)
}

impl Store {
    /// Every source that has ever loaded a roster (a superset of those with rows).
    pub async fn roster_sources(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = self
            .select_reference(
                "source",
                "(SELECT DISTINCT source FROM roster_import) s",
                Vec::new(),
            )
            .await?;
        Ok(rows.into_iter().map(|(s,)| s).collect())
    }

    /// The entries with any of these patient identifiers (any authority).
    pub async fn roster_rows_by_patient_id(
        &self,
        mut ids: Vec<String>,
    ) -> Result<Vec<RosterRow>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = in_list(1, &mut ids);
        let from = format!("roster_entry WHERE patient_id IN ({list})");
        self.select_reference(ROW_COLUMNS, &from, ids).await
    }

    /// The entries born on any of `dates`, of sex `sex` or unknown when one is given;
    /// with `keep`, only the rows it passes on their [`DEMOGRAPHICS`].
    pub async fn roster_rows_born(
        &self,
        mut dates: Vec<String>,
        sex: Option<&str>,
        keep: Option<Keep>,
    ) -> Result<Vec<RosterRow>, StoreError> {
        let list = in_list(1, &mut dates);
        let mut from = format!("roster_entry WHERE birth_date IN ({list})");
        if let Some(sex) = sex {
            dates.push(sex.to_string());
            from.push_str(&format!(" AND sex IN ('', ${})", dates.len()));
        }
        self.roster_rows_where(&from, dates, keep).await
    }

    /// For each (birth date, sources), the entries born that day in other sources.
    pub async fn roster_rows_born_outside(
        &self,
        wanted: Vec<(String, Vec<String>)>,
        keep: Option<Keep>,
    ) -> Result<Vec<RosterRow>, StoreError> {
        let (mut conds, mut args) = (Vec::new(), Vec::new());
        for (date, sources) in wanted {
            let k = args.len();
            conds.push(format!(
                "(birth_date = ${} AND source NOT IN ({}))",
                k + 1,
                placeholders(k + 2, sources.len())
            ));
            args.push(date);
            args.extend(sources);
        }
        let from = format!("roster_entry WHERE {}", conds.join(" OR "));
        self.roster_rows_where(&from, args, keep).await
    }

    async fn roster_rows_where(
        &self,
        from: &str,
        args: Vec<String>,
        keep: Option<Keep>,
    ) -> Result<Vec<RosterRow>, StoreError> {
        let (pick, keep): (&'static [usize], Keep) = match keep {
            Some(keep) => (DEMOGRAPHICS, keep),
            None => (&[], std::sync::Arc::new(|_| true)),
        };
        self.select_reference_where(ROW_COLUMNS, from, args, pick, keep)
            .await
    }

    /// How many entries there are, and up to `samples` of them spread over the whole
    /// table (the attribution benchmark's patients): patient id, authority, family,
    /// given, birth date, sex, postal code.
    pub async fn roster_sample(
        &self,
        samples: usize,
    ) -> Result<(i64, Vec<[String; 7]>), StoreError> {
        let total: Vec<(i64,)> = self.select("COUNT(*)", "roster_entry", Vec::new()).await?;
        let total = total.first().map_or(0, |(n,)| *n);
        if total == 0 {
            return Ok((0, Vec::new()));
        }
        let stride = (total as usize / samples.max(1)).max(1);
        const COLUMNS: &str =
            "patient_id, assigning_authority, family, given, birth_date, sex, postal_code";
        // A subquery: on PostgreSQL `select` aggregates, and a LIMIT outside would
        // apply to the aggregate.
        let from = format!(
            "(SELECT {COLUMNS} FROM roster_entry WHERE line % {stride} = 0 LIMIT {samples}) s"
        );
        Ok((total, self.select(COLUMNS, &from, Vec::new()).await?))
    }
}

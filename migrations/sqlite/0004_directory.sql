-- Provider directory (NPPES files + local overrides) and patient rosters (step 3).
-- Text columns are NOT NULL DEFAULT '' so that "missing" has one spelling and unique
-- keys behave the same on SQLite and PostgreSQL.

-- One row per import run. A full import loads a new snapshot (a table named after the
-- import id) and becomes active by updating directory_active in one transaction;
-- the previous snapshot stays in place until then, so a failed import changes nothing.
CREATE TABLE directory_import (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    kind           TEXT    NOT NULL,              -- npidata | endpoints
    mode           TEXT    NOT NULL,              -- full | incremental
    file_name      TEXT    NOT NULL,
    started_at_us  BIGINT  NOT NULL,
    finished_at_us BIGINT,
    status         TEXT    NOT NULL,              -- loading | active | applied | superseded | failed
    rows_loaded    BIGINT  NOT NULL DEFAULT 0,
    bad_rows       BIGINT  NOT NULL DEFAULT 0,
    error          TEXT
);

-- Which snapshot of each file is live: kind -> directory_import.id.
CREATE TABLE directory_active (
    kind     TEXT   PRIMARY KEY,
    snapshot BIGINT NOT NULL
);

-- The snapshots themselves are tables named nppes_provider_<import id> and
-- nppes_endpoint_<import id>, created by the import (src/directory/nppes.rs): each is
-- indexed once after it is loaded, and dropped whole when superseded.

-- Local corrections; they win over NPPES.
CREATE TABLE directory_override (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    npi           TEXT    NOT NULL,
    endpoint_type TEXT    NOT NULL,
    endpoint      TEXT    NOT NULL,
    secret        TEXT,
    preferred     BOOLEAN NOT NULL DEFAULT FALSE,
    source        TEXT    NOT NULL,                -- 'cli' or the file it came from
    created_at_us BIGINT  NOT NULL,
    updated_at_us BIGINT  NOT NULL,
    UNIQUE (npi, endpoint_type, endpoint)
);

CREATE TABLE roster_import (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT   NOT NULL,
    file_name   TEXT   NOT NULL,
    mode        TEXT   NOT NULL,                   -- replace | upsert
    loaded_at_us BIGINT NOT NULL,
    rows_loaded BIGINT NOT NULL
);

-- Clustered by birth date (WITHOUT ROWID, birth date first in the key): the demographic
-- fallback reads every row sharing a birth date, and here they sit on the same pages.
CREATE TABLE roster_entry (
    source              TEXT   NOT NULL,
    patient_id          TEXT   NOT NULL DEFAULT '',
    assigning_authority TEXT   NOT NULL DEFAULT '',  -- upper case
    family              TEXT   NOT NULL DEFAULT '',
    given               TEXT   NOT NULL DEFAULT '',
    birth_date          TEXT   NOT NULL DEFAULT '',  -- YYYY-MM-DD
    sex                 TEXT   NOT NULL DEFAULT '',
    postal_code         TEXT   NOT NULL DEFAULT '',
    norm_family         TEXT   NOT NULL DEFAULT '',
    norm_given          TEXT   NOT NULL DEFAULT '',
    provider_npi        TEXT   NOT NULL,
    relationship        TEXT   NOT NULL,
    effective_from      TEXT   NOT NULL DEFAULT '',
    effective_to        TEXT   NOT NULL DEFAULT '',
    import_id           BIGINT NOT NULL,
    line                BIGINT NOT NULL,
    loaded_at_us        BIGINT NOT NULL,
    PRIMARY KEY (birth_date, source, patient_id, assigning_authority, norm_family, norm_given, provider_npi, relationship)
) WITHOUT ROWID;
CREATE INDEX roster_by_identifier ON roster_entry (patient_id, assigning_authority);

-- Provider directory (NPPES files + local overrides) and patient rosters (step 3).
-- Text columns are NOT NULL DEFAULT '' so that "missing" has one spelling and unique
-- keys behave the same on SQLite and PostgreSQL.

-- One row per import run. A full import loads a new snapshot (rows tagged with the
-- import id) and becomes active by updating directory_active in one transaction;
-- the previous snapshot stays in place until then, so a failed import changes nothing.
CREATE TABLE directory_import (
    id             BIGSERIAL PRIMARY KEY,
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

CREATE TABLE nppes_provider (
    snapshot            BIGINT NOT NULL,
    npi                 TEXT   NOT NULL,
    entity_type         TEXT   NOT NULL DEFAULT '',  -- 1 individual, 2 organization, '' deactivated
    replacement_npi     TEXT   NOT NULL DEFAULT '',
    organization_name   TEXT   NOT NULL DEFAULT '',
    last_name           TEXT   NOT NULL DEFAULT '',
    first_name          TEXT   NOT NULL DEFAULT '',
    middle_name         TEXT   NOT NULL DEFAULT '',
    credential          TEXT   NOT NULL DEFAULT '',
    primary_taxonomy    TEXT   NOT NULL DEFAULT '',
    address_line1       TEXT   NOT NULL DEFAULT '',
    address_line2       TEXT   NOT NULL DEFAULT '',
    city                TEXT   NOT NULL DEFAULT '',
    state               TEXT   NOT NULL DEFAULT '',
    postal_code         TEXT   NOT NULL DEFAULT '',
    country             TEXT   NOT NULL DEFAULT '',
    phone               TEXT   NOT NULL DEFAULT '',
    enumeration_date    TEXT   NOT NULL DEFAULT '',  -- ISO dates (the files say MM/DD/YYYY)
    last_update_date    TEXT   NOT NULL DEFAULT '',
    deactivation_reason TEXT   NOT NULL DEFAULT '',
    deactivation_date   TEXT   NOT NULL DEFAULT '',
    reactivation_date   TEXT   NOT NULL DEFAULT '',
    source_import       BIGINT NOT NULL,
    source_line         BIGINT NOT NULL,
    PRIMARY KEY (snapshot, npi)
);

CREATE TABLE nppes_endpoint (
    snapshot                  BIGINT NOT NULL,
    npi                       TEXT   NOT NULL,
    endpoint_type             TEXT   NOT NULL DEFAULT '',
    endpoint_type_description TEXT   NOT NULL DEFAULT '',
    endpoint                  TEXT   NOT NULL DEFAULT '',
    affiliation               TEXT   NOT NULL DEFAULT '',
    endpoint_description      TEXT   NOT NULL DEFAULT '',
    affiliation_name          TEXT   NOT NULL DEFAULT '',
    use_code                  TEXT   NOT NULL DEFAULT '',
    use_description           TEXT   NOT NULL DEFAULT '',
    other_use_description     TEXT   NOT NULL DEFAULT '',
    content_type              TEXT   NOT NULL DEFAULT '',
    content_description       TEXT   NOT NULL DEFAULT '',
    other_content_description TEXT   NOT NULL DEFAULT '',
    address_line1             TEXT   NOT NULL DEFAULT '',
    address_line2             TEXT   NOT NULL DEFAULT '',
    city                      TEXT   NOT NULL DEFAULT '',
    state                     TEXT   NOT NULL DEFAULT '',
    country                   TEXT   NOT NULL DEFAULT '',
    postal_code               TEXT   NOT NULL DEFAULT '',
    source_import             BIGINT NOT NULL,
    source_line               BIGINT NOT NULL
);
CREATE INDEX nppes_endpoint_npi ON nppes_endpoint (snapshot, npi);

-- Local corrections; they win over NPPES.
CREATE TABLE directory_override (
    id            BIGSERIAL PRIMARY KEY,
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
    id          BIGSERIAL PRIMARY KEY,
    source      TEXT   NOT NULL,
    file_name   TEXT   NOT NULL,
    mode        TEXT   NOT NULL,                   -- replace | upsert
    loaded_at_us BIGINT NOT NULL,
    rows_loaded BIGINT NOT NULL
);

CREATE TABLE roster_entry (
    id                  BIGSERIAL PRIMARY KEY,
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
    UNIQUE (source, patient_id, assigning_authority, birth_date, norm_family, norm_given, provider_npi, relationship)
);
CREATE INDEX roster_by_identifier ON roster_entry (patient_id, assigning_authority);
CREATE INDEX roster_by_birth_date ON roster_entry (birth_date);

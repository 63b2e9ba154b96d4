-- The embedded event log: every accepted inbound message, raw bytes unchanged.
CREATE TABLE inbound_messages (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at_us        INTEGER NOT NULL,  -- microseconds since the Unix epoch, UTC
    peer                  TEXT    NOT NULL,
    sending_application   TEXT    NOT NULL,
    sending_facility      TEXT    NOT NULL,
    receiving_application TEXT    NOT NULL,
    receiving_facility    TEXT    NOT NULL,
    control_id            TEXT    NOT NULL,
    message_type          TEXT    NOT NULL,
    trigger_event         TEXT    NOT NULL,
    version               TEXT    NOT NULL,
    processing_id         TEXT    NOT NULL,
    charset               TEXT    NOT NULL,
    ack_mode              TEXT    NOT NULL,
    ack_code              TEXT,              -- the code sent; NULL when MSH-15 asked for none
    status                TEXT    NOT NULL,  -- pending | content_error
    duplicate             BOOLEAN NOT NULL,
    error                 TEXT,              -- PHI-free description of content problems
    patient_key           TEXT,              -- PID-3 primary id ^ assigning authority (PHI)
    visit_number          TEXT,              -- PV1-19.1 (PHI)
    patient_class         TEXT,              -- PV1-2
    sha256                TEXT    NOT NULL,  -- hex of the raw bytes
    raw                   BLOB    NOT NULL
);
CREATE INDEX inbound_messages_dedup ON inbound_messages (control_id, sending_facility, sending_application);
CREATE INDEX inbound_messages_received ON inbound_messages (received_at_us);

-- Frames we could not accept (not HL7, wrong type/version): kept for inspection.
CREATE TABLE quarantine (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at_us INTEGER NOT NULL,
    peer           TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    diagnostic     TEXT    NOT NULL,
    control_id     TEXT,
    sha256         TEXT    NOT NULL,
    raw            BLOB    NOT NULL
);
CREATE INDEX quarantine_received ON quarantine (received_at_us);

-- Step 4: the router's memory and its decisions.

-- One row per encounter (facility + visit number); the state machine's memory as JSON.
CREATE TABLE encounter (
    facility       TEXT   NOT NULL,
    visit_number   TEXT   NOT NULL,
    patient_key    TEXT   NOT NULL,  -- PHI: PID-3 id^authority
    status         TEXT   NOT NULL,
    state          TEXT   NOT NULL,
    last_event_us  BIGINT NOT NULL,
    updated_at_us  BIGINT NOT NULL,
    PRIMARY KEY (facility, visit_number)
);
CREATE INDEX encounter_patient ON encounter (patient_key);
CREATE INDEX encounter_status ON encounter (status, last_event_us);

-- Every transition the state machine made, notified or recorded only.
CREATE TABLE encounter_transition (
    id              BIGSERIAL PRIMARY KEY,
    transition_key  TEXT   NOT NULL UNIQUE,
    encounter       TEXT   NOT NULL,
    kind            TEXT   NOT NULL,
    notifiable      BOOLEAN NOT NULL,
    retracts        TEXT,
    note            TEXT   NOT NULL,
    inbound_id      BIGINT,
    control_id      TEXT,
    sending_facility TEXT  NOT NULL,
    trigger_event   TEXT   NOT NULL,
    event_at_us     BIGINT NOT NULL,
    created_at_us   BIGINT NOT NULL
);
CREATE INDEX encounter_transition_encounter ON encounter_transition (encounter, id);

-- One row per (transition, candidate recipient): why they were or were not notified.
CREATE TABLE routing_decision (
    id              BIGSERIAL PRIMARY KEY,
    transition_key  TEXT   NOT NULL,
    recipient_npi   TEXT   NOT NULL,
    outcome         TEXT   NOT NULL,  -- notify | suppressed | not-selected | no-endpoint
    reason          TEXT   NOT NULL,
    rule_ids        TEXT   NOT NULL,
    created_at_us   BIGINT NOT NULL,
    UNIQUE (transition_key, recipient_npi)
);

-- Which inbound messages the router has done (in the same transaction as their
-- consequences). A flag rather than a cursor: on PostgreSQL, rows stored by several
-- consumer nodes can commit out of id order, and a cursor would skip the late ones.
ALTER TABLE inbound_messages ADD COLUMN routed_at_us BIGINT;
CREATE INDEX inbound_messages_unrouted ON inbound_messages (id) WHERE routed_at_us IS NULL;

-- What the notification is about, for exports and for the deliverers.
ALTER TABLE outbox ADD COLUMN transition_key TEXT;
ALTER TABLE outbox ADD COLUMN kind TEXT;
ALTER TABLE outbox ADD COLUMN encounter TEXT;
ALTER TABLE outbox ADD COLUMN control_id TEXT;
ALTER TABLE outbox ADD COLUMN sending_facility TEXT;
ALTER TABLE outbox ADD COLUMN recipient_npi TEXT;
ALTER TABLE outbox ADD COLUMN rule_ids TEXT;
ALTER TABLE outbox ADD COLUMN content_profile TEXT;
CREATE INDEX outbox_transition ON outbox (transition_key);

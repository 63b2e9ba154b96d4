-- Step 6: FHIR Subscriptions (R5 Backport IG on R4). One row per Subscription; the
-- resource as the server holds it is kept whole, beside the fields the server acts on.
CREATE TABLE fhir_subscription (
    id              TEXT    PRIMARY KEY,
    owner_role      TEXT    NOT NULL,           -- admin | practice | ...
    owner_npis      TEXT    NOT NULL,           -- JSON array: the practice's NPIs
    topic           TEXT    NOT NULL,           -- the SubscriptionTopic canonical
    filters         TEXT    NOT NULL,           -- JSON: [{"param": ..., "value": ...}]
    endpoint        TEXT    NOT NULL,
    content         TEXT    NOT NULL,           -- empty | id-only | full-resource
    status          TEXT    NOT NULL,           -- requested | active | error | off
    error           TEXT,
    events_since_start BIGINT NOT NULL DEFAULT 0,
    headers         TEXT    NOT NULL DEFAULT '[]', -- JSON: [[name, value]] sent with every notification
    heartbeat_secs  BIGINT,                     -- backport-heartbeat-period
    last_sent_us    BIGINT,                     -- last notification enqueued (heartbeats count from it)
    resource        TEXT    NOT NULL,           -- the Subscription JSON
    created_at_us   BIGINT  NOT NULL,
    deleted_at_us   BIGINT
);
CREATE INDEX fhir_subscription_topic ON fhir_subscription (topic, status);

-- FHIR notifications (handshake, heartbeat, events) go through the step 5 outbox.
ALTER TABLE outbox ADD COLUMN subscription_id TEXT;

-- Every event a subscription was told of, by its event number (for $events): the
-- notification-event part and the bundle entries that went with it.
CREATE TABLE fhir_event (
    subscription_id TEXT    NOT NULL,
    event_number    BIGINT  NOT NULL,
    transition_key  TEXT    NOT NULL,
    event_at_us     BIGINT  NOT NULL,
    part            TEXT    NOT NULL,
    entries         TEXT    NOT NULL,
    created_at_us   BIGINT  NOT NULL,
    PRIMARY KEY (subscription_id, event_number)
);
-- How far the FHIR fan-out has read encounter_transition (by id).
CREATE TABLE fhir_cursor (
    name    TEXT   PRIMARY KEY,
    last_id BIGINT NOT NULL
);
INSERT INTO fhir_cursor (name, last_id) VALUES ('events', 0);

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

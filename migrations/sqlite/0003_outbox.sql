-- Notifications waiting for delivery (filled by the router from step 4, drained by the
-- deliverers of step 5). Claimed by several nodes at once on PostgreSQL.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_key TEXT    NOT NULL UNIQUE, -- (encounter transition, recipient): enqueue is idempotent
    ordering_key     TEXT    NOT NULL,        -- (encounter, recipient): delivered strictly in id order
    channel          TEXT    NOT NULL,
    endpoint         TEXT    NOT NULL,
    payload          BLOB    NOT NULL,
    status           TEXT    NOT NULL,        -- pending | sending | delivered | failed | dead | suppressed
    attempts         INTEGER NOT NULL DEFAULT 0,
    due_at_us        BIGINT  NOT NULL,
    lease_owner      TEXT,
    lease_until_us   BIGINT,
    last_error       TEXT,
    created_at_us    BIGINT  NOT NULL
);
CREATE INDEX outbox_due ON outbox (status, due_at_us);
CREATE INDEX outbox_ordering ON outbox (ordering_key, id);

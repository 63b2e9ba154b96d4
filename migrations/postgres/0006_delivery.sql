-- Step 5: every delivery attempt, and the proof of the one that delivered.
CREATE TABLE delivery_attempt (
    id             BIGSERIAL PRIMARY KEY,
    outbox_id      BIGINT  NOT NULL,
    attempt        INTEGER NOT NULL,
    started_at_us  BIGINT  NOT NULL,
    channel        TEXT    NOT NULL,
    endpoint       TEXT    NOT NULL,
    request_sha256 TEXT    NOT NULL,  -- of the body sent
    outcome        TEXT    NOT NULL,  -- delivered | retry | failed | dead
    response_code  INTEGER,
    response_text  TEXT    NOT NULL,  -- the first 200 bytes of the answer, or the error
    latency_us     BIGINT  NOT NULL
);
CREATE INDEX delivery_attempt_outbox ON delivery_attempt (outbox_id, id);

ALTER TABLE outbox ADD COLUMN proof TEXT;
ALTER TABLE outbox ADD COLUMN delivered_at_us BIGINT;

-- Step 5, Direct: every MDN and DSN (and anything else) the HISP sends back, kept raw
-- as proof, with what was read from it and the notification it was matched to.
CREATE TABLE direct_report (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at_us      BIGINT  NOT NULL,
    kind                TEXT    NOT NULL,  -- mdn | dsn | other
    disposition         TEXT    NOT NULL,  -- processed | dispatched | failed | delayed | ...
    final_recipient     TEXT,
    original_message_id TEXT,
    outbox_id           BIGINT,            -- NULL: matched no Direct notification
    effect              TEXT    NOT NULL,  -- what it changed, in words
    sha256              TEXT    NOT NULL,
    raw                 BLOB   NOT NULL
);
CREATE INDEX direct_report_outbox ON direct_report (outbox_id, id);
-- Claims read due rows in (due, id) order along this index and stop at their limit.
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox (status, due_at_us, id);

-- The in-order check (`IN_ORDER` in src/store/outbox.rs) looks only for earlier rows that
-- are still pending or sending. Indexing only those keeps the index the size of the live
-- backlog rather than of the whole history, and spares the router an index entry for
-- every suppressed or undeliverable row. Same index as SQLite's 0013.
DROP INDEX outbox_ordering;
CREATE INDEX outbox_ordering ON outbox (ordering_key, id) WHERE status IN ('pending', 'sending');

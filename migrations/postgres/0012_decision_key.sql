-- SQLite's 0012 re-keys routing_decision as a WITHOUT ROWID table. PostgreSQL keeps its
-- heap table with the unique index on (transition_key, recipient_npi): nothing to do.
-- This file keeps the two sequences numbered and named alike (databases made before it
-- had outbox_live_order as 0012: Store::connect renumbers their history first).
SELECT 1;

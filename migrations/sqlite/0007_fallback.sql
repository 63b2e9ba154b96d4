-- Step 5: the channels a notification can fall back to when its own fails for good,
-- in the rule's preference order (JSON: [["DIRECT", "addr"], ...]).
ALTER TABLE outbox ADD COLUMN fallbacks TEXT;

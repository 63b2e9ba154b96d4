-- A duplicate is now the same sender, facility and control id with the same bytes
-- (SHA-256). The same key with other bytes is a control-id collision: stored, routed and
-- flagged here. Rows stored before this migration are not collisions. SQLite's 0014.
ALTER TABLE inbound_messages ADD COLUMN control_id_collision BOOLEAN NOT NULL DEFAULT false;

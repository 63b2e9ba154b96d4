-- Kafka mode: where a stored row came from, so a replayed record changes nothing.
ALTER TABLE inbound_messages ADD COLUMN log_source TEXT;
ALTER TABLE inbound_messages ADD COLUMN log_partition INTEGER;
ALTER TABLE inbound_messages ADD COLUMN log_offset BIGINT;
CREATE UNIQUE INDEX inbound_messages_origin ON inbound_messages (log_source, log_partition, log_offset);
ALTER TABLE quarantine ADD COLUMN log_source TEXT;
ALTER TABLE quarantine ADD COLUMN log_partition INTEGER;
ALTER TABLE quarantine ADD COLUMN log_offset BIGINT;
CREATE UNIQUE INDEX quarantine_origin ON quarantine (log_source, log_partition, log_offset);

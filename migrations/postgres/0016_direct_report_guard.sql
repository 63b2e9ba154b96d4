-- Secrets the nodes share, made once (the Direct Message-ID nonce key).
CREATE TABLE router_secret (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
-- A report that moved nothing because it could not be trusted (another domain, a forged
-- nonce, the wrong Final-Recipient, no notification): kept, bounded in number.
ALTER TABLE direct_report ADD COLUMN refused BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX direct_report_refused ON direct_report (id) WHERE refused;

-- Routing decisions kept in the order of their key, (transition, recipient): one b-tree
-- per row instead of a rowid table and a unique index beside it. Routing writes one
-- decision per candidate recipient, on the commit path; nothing reads them by id.
CREATE TABLE routing_decision_by_key (
    transition_key  TEXT   NOT NULL,
    recipient_npi   TEXT   NOT NULL,
    outcome         TEXT   NOT NULL,  -- notify | suppressed | not-selected | no-endpoint
    reason          TEXT   NOT NULL,
    rule_ids        TEXT   NOT NULL,
    created_at_us   BIGINT NOT NULL,
    PRIMARY KEY (transition_key, recipient_npi)
) WITHOUT ROWID;
INSERT INTO routing_decision_by_key (transition_key, recipient_npi, outcome, reason, rule_ids, created_at_us)
    SELECT transition_key, recipient_npi, outcome, reason, rule_ids, created_at_us FROM routing_decision;
DROP TABLE routing_decision;
ALTER TABLE routing_decision_by_key RENAME TO routing_decision;

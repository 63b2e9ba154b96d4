-- The resources an id-only (or full-resource) notification refers to, so the subscriber
-- can read them back (GET /fhir/Encounter/{id}, ...): the latest version each
-- subscription was told of, already cut to the rule's content profile.
CREATE TABLE fhir_resource (
    subscription_id TEXT    NOT NULL,
    resource_type   TEXT    NOT NULL,
    resource_id     TEXT    NOT NULL,
    resource        TEXT    NOT NULL,
    updated_at_us   BIGINT  NOT NULL,
    PRIMARY KEY (subscription_id, resource_type, resource_id)
);
CREATE INDEX fhir_resource_by_id ON fhir_resource (resource_type, resource_id);

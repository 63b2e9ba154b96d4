-- A subscription belongs to the token that created it (its stable id, `[[auth.tokens]] id`
-- or a digest of the token), not to the NPIs it shares with other tokens. Subscriptions
-- made before this migration have no owner: only hospital roles see them.
ALTER TABLE fhir_subscription ADD COLUMN owner_token TEXT NOT NULL DEFAULT '';
CREATE INDEX fhir_subscription_owner ON fhir_subscription (owner_token) WHERE deleted_at_us IS NULL;

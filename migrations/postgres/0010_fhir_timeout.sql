-- A subscription's backport-timeout: seconds allowed per delivery attempt (capped by delivery.timeout_ms).
ALTER TABLE fhir_subscription ADD COLUMN timeout_secs BIGINT;

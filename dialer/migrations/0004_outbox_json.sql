-- Webhook payloads carry the record's meta exactly as given: json keeps the
-- text (key order, number spelling) where jsonb normalises it. The notifier's
-- ->/->> look-ups work on json as on jsonb.
ALTER TABLE outbox ALTER COLUMN payload TYPE json USING payload::json;

-- Outbox rows the relay can never publish (an undecodable payload, an unknown event type, a
-- value the schema refuses) are parked instead of blocking every later row: they stay in the
-- table with the reason, are skipped by the relay, and can be released by setting parked_at back
-- to NULL once repaired. Nothing is ever deleted.
ALTER TABLE outbox
    ADD COLUMN parked_at  timestamptz,
    ADD COLUMN last_error text;

-- The relay's work queue and the backlog metrics: unpublished rows that are not parked.
DROP INDEX IF EXISTS outbox_unpublished;
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked ON outbox (id) WHERE published_at IS NULL AND parked_at IS NOT NULL;

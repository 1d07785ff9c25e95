-- Indexes for the retention pruners (paystream_core::retention, docs/operations.md
-- "Retention"): each pruner selects its table's oldest prunable rows in small batches, and
-- without these every batch would scan the whole table. Each index is shaped like its rule's
-- condition, so the planner can use it. Plain CREATE INDEX: migrations run in a transaction,
-- where CONCURRENTLY is not allowed; on a large existing table, create them CONCURRENTLY by
-- hand first (IF NOT EXISTS then makes this migration a no-op).

-- Published rows by publication time (the gateway: `published_at < $1`); unpublished and
-- parked rows, the relay's work queue, are not in it.
CREATE INDEX IF NOT EXISTS outbox_published_at ON outbox (published_at)
    WHERE published_at IS NOT NULL;

-- One group's ledger by age (every consumer service: `consumer_group = $3 AND processed_at < $1`).
CREATE INDEX IF NOT EXISTS processed_events_group_processed_at
    ON processed_events (consumer_group, processed_at);

-- Settled deliveries by settlement time (the notifier); claims in flight are not in it.
CREATE INDEX IF NOT EXISTS notification_deliveries_settled
    ON notification_deliveries ((coalesce(delivered_at, claimed_at)))
    WHERE status <> 'sending';

-- Payment facts by event time (analytics: whole sealed days); the window index leads with the
-- merchant and cannot serve a range over every merchant.
CREATE INDEX IF NOT EXISTS analytics_payments_requested_at ON analytics_payments (requested_at);

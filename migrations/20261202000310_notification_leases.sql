-- Notification claims with a lease: a 'sending' row is its sender's (`claimed_by`, a notifier
-- instance's transactional id) until `lease_until`. Another instance finding it under a live
-- lease does not resend (the sender may be mid-call); the record is retried later. A lapsed
-- lease, or one of the same instance (a redelivery after its own abort or crash), means the
-- send's result is unknown: resent with the same id, as before.
ALTER TABLE notification_deliveries
    ADD COLUMN lease_until  timestamptz,
    ADD COLUMN claimed_by   text;

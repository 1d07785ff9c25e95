-- Payment claims: the processor claims a payment in one short statement before calling the PSP
-- (no transaction is held across the call), then records the PSP's answer.
--
-- PROCESSING is a real, visible state: the payment is claimed by `claimed_by` (a processor
-- instance's transactional id) until `lease_until`, and its PSP call may be in flight. A
-- claim whose lease has passed may be taken over by another instance; the PSP call carries
-- the payment id as its idempotency key, so the takeover gets the same charge.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('PENDING', 'PROCESSING', 'SUCCEEDED', 'FAILED'));

ALTER TABLE payments
    -- Claims taken (PSP calls started) for this payment.
    ADD COLUMN attempts          integer     NOT NULL DEFAULT 0,
    ADD COLUMN lease_until       timestamptz,
    ADD COLUMN claimed_by        text,
    -- Set with the terminal state: what a redelivered request re-produces, field for field,
    -- without calling the PSP again.
    ADD COLUMN outcome_event_id  uuid,
    ADD COLUMN decided_at        timestamptz;

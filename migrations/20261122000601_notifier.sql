-- Notifier: merchants' notification settings, the customer address on file, and the
-- per (event, channel) delivery claims that keep notifications at most once.

-- Where a payment's outcome e-mail goes (optional in the payment request).
ALTER TABLE payments ADD COLUMN customer_email text;

CREATE TABLE merchants (
    merchant_id         text        PRIMARY KEY,
    webhook_url         text,
    notification_email  text,
    -- HMAC key of the webhook signatures. Kept in clear because signing needs it; shown to the
    -- merchant once, on creation or rotation, and never returned by a read.
    webhook_secret      text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- One row per (outcome event, channel). The claim ('sending') commits in its own transaction
-- before anything is sent; 'delivered' commits right after the receiver accepted it. A row
-- still 'sending' when the event is processed again means the process died between the two:
-- the result of that send is unknown.
CREATE TABLE notification_deliveries (
    event_id          uuid        NOT NULL,
    channel           text        NOT NULL CHECK (channel IN ('webhook', 'email')),
    payment_id        uuid        NOT NULL,
    target            text        NOT NULL,
    status            text        NOT NULL CHECK (status IN ('sending', 'delivered', 'failed')),
    attempts          integer     NOT NULL DEFAULT 1,
    in_doubt_resends  integer     NOT NULL DEFAULT 0,
    last_error        text,
    claimed_at        timestamptz NOT NULL DEFAULT now(),
    delivered_at      timestamptz,
    PRIMARY KEY (event_id, channel)
);

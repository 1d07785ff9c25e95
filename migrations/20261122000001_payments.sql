-- Payments, idempotency keys, the transactional outbox, and the idempotent-consumer ledger.

-- The payment read model: written PENDING by the gateway, moved to a terminal state by the
-- payment processor with a conditional update (only from PENDING).
CREATE TABLE payments (
    id              uuid PRIMARY KEY,
    client_id       text        NOT NULL,
    merchant_id     text        NOT NULL,
    customer_id     text        NOT NULL,
    amount_minor    bigint      NOT NULL CHECK (amount_minor > 0),
    currency        char(3)     NOT NULL,
    payment_method  text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('PENDING', 'SUCCEEDED', 'FAILED')),
    failure_reason  text,
    psp_charge_id   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_merchant_created ON payments (merchant_id, created_at);

-- Idempotency keys, scoped per client. The stored response is replayed for the same request.
CREATE TABLE idempotency_keys (
    client_id           text        NOT NULL,
    idempotency_key     text        NOT NULL,
    request_fingerprint text        NOT NULL,
    response_status     smallint    NOT NULL,
    response_body       jsonb       NOT NULL,
    payment_id          uuid,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    PRIMARY KEY (client_id, idempotency_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Transactional outbox: written in the same transaction as the payment; a row is marked
-- published only after the broker acknowledged the record.
CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    event_id      uuid        NOT NULL UNIQUE,
    topic         text        NOT NULL,
    message_key   text        NOT NULL,
    event_type    text        NOT NULL,
    payload       jsonb       NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '[]',
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Idempotent consumer: one row per (group, event) applied, written in the same transaction as
-- the handler's effects, with the outputs it produced so a redelivery can re-produce them.
CREATE TABLE processed_events (
    consumer_group  text        NOT NULL,
    event_id        uuid        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    outputs         jsonb       NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);

-- Analytics: per-payment facts and the window state computed from them.
--
-- Each consumed event upserts its payment's facts (idempotent: it sets fields, it adds
-- nothing), then the windows the payment belongs to are recomputed from the facts and upserted
-- as full state. The runtime's processed_events row commits in the same transaction, so an
-- event is counted exactly once, and a late or replayed event cannot skew a window.

CREATE TABLE analytics_payments (
    payment_id      uuid        PRIMARY KEY,
    merchant_id     text        NOT NULL,
    currency        text        NOT NULL,
    amount_minor    bigint      NOT NULL,
    -- Event time: the payment counts in the windows of its requested_at.
    requested_at    timestamptz NOT NULL,
    -- PaymentRequested seen (an outcome may arrive first: the topics are not ordered together).
    requested_seen  boolean     NOT NULL DEFAULT false,
    status          text        CHECK (status IN ('SUCCEEDED', 'FAILED')),
    failure_reason  text,
    decided_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX analytics_payments_window ON analytics_payments (merchant_id, currency, requested_at);

CREATE TABLE analytics_windows (
    merchant_id             text             NOT NULL,
    currency                text             NOT NULL,
    granularity             text             NOT NULL CHECK (granularity IN ('minute', 'day')),
    window_start            timestamptz      NOT NULL,
    window_end              timestamptz      NOT NULL,
    requested_count         bigint           NOT NULL,
    requested_amount_minor  bigint           NOT NULL,
    succeeded_count         bigint           NOT NULL,
    succeeded_amount_minor  bigint           NOT NULL,
    failed_count            bigint           NOT NULL,
    failed_by_reason        jsonb            NOT NULL DEFAULT '{}',
    success_rate            double precision,
    latency_p50_ms          bigint,
    latency_p95_ms          bigint,
    latency_p99_ms          bigint,
    updated_at              timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, granularity, window_start, currency)
);

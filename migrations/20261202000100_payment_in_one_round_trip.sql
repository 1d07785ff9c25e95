-- A new payment in one database round trip (issue 15): the gateway calls this function once per
-- `POST /v1/payments`, in autocommit, and it does what used to take a transaction of several
-- statements: the client's merchant binding, the Idempotency-Key's lock, the stored answer, the
-- payment and its outbox row. The protocol itself is unchanged (docs/architecture.md).
--
-- Why a PL/pgSQL function rather than one plain statement with data-modifying CTEs: a plain
-- statement locks every table it writes (payments among them) before it runs, so a request
-- queued behind a lock on `payments` would not yet hold its key, and a concurrent request with
-- the same key would queue too instead of getting `409` at once. PL/pgSQL takes each
-- statement's locks when it reaches it: binding check and key lock first, then the writes.
-- And since nothing here waits for the gateway, a lock wait is bounded by what is left of the
-- request's own time (`p_lock_budget_ms`, set as `lock_timeout` before anything else; the
-- gateway passes its time left minus a margin): the call rolls back with 55P03 and the gateway
-- answers `503` (timed out, "nothing stored"), so such a request cannot commit afterwards.
--
-- Outcomes (`outcome`):
--   'forbidden'  the client is not bound to `p_acting_for` (NULL: nothing to check); no lock
--                tried, nothing written;
--   'in_flight'  another transaction holds the key; nothing written;
--   'stored'     the key was free (or its entry expired): `p_status`/`p_body` are stored under
--                it and, when `p_payment` is given, the payment and outbox rows inserted;
--   'answered'   an unexpired answer is stored under the key: returned in the other columns
--                (the gateway replays it, or answers 422 for a different fingerprint).
--
-- `p_payment` and `p_outbox` are the rows as JSON (`jsonb_populate_record` with the tables'
-- column names). A column the gateway starts writing needs a migration replacing this function.
-- The lock id is the one the gateway took before this function existed, so replicas of both
-- versions exclude each other during a rolling upgrade.
CREATE FUNCTION idempotent_payment(
    p_client text,
    p_key text,
    p_fingerprint text,
    p_acting_for text,
    p_lock_budget_ms integer,
    p_retention_hours integer,
    p_status smallint,
    p_body jsonb,
    p_payment_id uuid,
    p_payment jsonb,
    p_outbox jsonb,
    OUT outcome text,
    OUT stored_fingerprint text,
    OUT stored_status smallint,
    OUT stored_body jsonb,
    OUT stored_payment_id uuid)
LANGUAGE plpgsql AS $$
BEGIN
    -- For this transaction only; the advisory lock below does not wait at all.
    PERFORM set_config('lock_timeout', greatest(p_lock_budget_ms, 1) || 'ms', true);
    IF p_acting_for IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM client_merchants m
        WHERE m.client_id = p_client AND m.merchant_id = p_acting_for) THEN
        outcome := 'forbidden';
        RETURN;
    END IF;
    -- Length-prefixed, so no two (client, key) pairs collide by concatenation; a 64-bit hash
    -- collision would only cost a spurious 409.
    IF NOT pg_try_advisory_xact_lock(hashtextextended(
            format('idempotency:%s:%s:%s:%s', current_schema(), length(p_client), p_client, p_key),
            0)) THEN
        outcome := 'in_flight';
        RETURN;
    END IF;
    -- An expired entry is overwritten; an unexpired one stays, and is locked by ON CONFLICT, so
    -- the purger (SKIP LOCKED) cannot delete it before it is read below.
    INSERT INTO idempotency_keys AS k
        (client_id, idempotency_key, request_fingerprint, response_status, response_body,
         payment_id, created_at, expires_at)
    VALUES (p_client, p_key, p_fingerprint, p_status, p_body, p_payment_id, now(),
            now() + make_interval(hours => p_retention_hours))
    ON CONFLICT (client_id, idempotency_key) DO UPDATE
        SET request_fingerprint = excluded.request_fingerprint,
            response_status = excluded.response_status,
            response_body = excluded.response_body,
            payment_id = excluded.payment_id,
            created_at = excluded.created_at,
            expires_at = excluded.expires_at
        WHERE k.expires_at <= now()
    RETURNING 'stored' INTO outcome;
    IF outcome IS NULL THEN
        SELECT 'answered', k.request_fingerprint, k.response_status, k.response_body, k.payment_id
        INTO outcome, stored_fingerprint, stored_status, stored_body, stored_payment_id
        FROM idempotency_keys k
        WHERE k.client_id = p_client AND k.idempotency_key = p_key;
        RETURN;
    END IF;
    IF p_payment IS NOT NULL THEN
        INSERT INTO payments (id, client_id, merchant_id, customer_id, amount_minor, currency,
                              payment_method, status, created_at, updated_at, customer_email)
        SELECT id, client_id, merchant_id, customer_id, amount_minor, currency,
               payment_method, status, created_at, updated_at, customer_email
        FROM jsonb_populate_record(NULL::payments, p_payment);
        INSERT INTO outbox (event_id, topic, message_key, event_type, payload, headers)
        SELECT event_id, topic, message_key, event_type, payload, headers
        FROM jsonb_populate_record(NULL::outbox, p_outbox);
    END IF;
END
$$;

-- pgbench script: a new payment as the gateway wrote it before issue 15, nine round trips (docs/performance.md).
\set n random(1, 2000000000)
BEGIN;
SELECT CASE WHEN NULL::text IS NULL OR EXISTS (SELECT 1 FROM client_merchants WHERE client_id = 'bench' AND merchant_id = NULL) THEN pg_try_advisory_xact_lock(hashtextextended(format('idempotency:%s:%s:%s:%s', current_schema(), 5, 'bench', 'o' || :n || '-' || :client_id), 0)) END;
SELECT request_fingerprint, response_status, response_body, payment_id FROM idempotency_keys WHERE client_id = 'bench' AND idempotency_key = 'o' || :n || '-' || :client_id AND expires_at > now();
SAVEPOINT s;
INSERT INTO payments (id, client_id, merchant_id, customer_id, amount_minor, currency, payment_method, status, created_at, updated_at, customer_email) VALUES (gen_random_uuid(), 'bench', 'm_1', 'c_1', 100, 'EUR', 'card', 'PENDING', now(), now(), NULL);
INSERT INTO outbox (event_id, topic, message_key, event_type, payload, headers) VALUES (gen_random_uuid(), 't', 'k', 'e', '{"a":1}', '[]');
RELEASE SAVEPOINT s;
INSERT INTO idempotency_keys (client_id, idempotency_key, request_fingerprint, response_status, response_body, payment_id, created_at, expires_at) VALUES ('bench', 'o' || :n || '-' || :client_id, 'fp', 202, '{"id":"x"}', gen_random_uuid(), now(), now() + make_interval(hours => 24)) ON CONFLICT (client_id, idempotency_key) DO UPDATE SET request_fingerprint = excluded.request_fingerprint WHERE idempotency_keys.expires_at <= now();
COMMIT;

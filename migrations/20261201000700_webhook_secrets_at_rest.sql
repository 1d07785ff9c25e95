-- Webhook signing secrets at rest, and their rotation with an overlap window.
--
-- merchants.webhook_secret now holds the secret sealed with AES-256-GCM
-- (`v1:<key id>:<base64 nonce||ciphertext>`, see paystream_core::secrets), never the secret in
-- clear. The column stays `text`: the sealed form fits. Rows written before this migration
-- still hold `whsec_…` in clear: the gateway seals them at start-up (merchants_seal_plaintext
-- in services/gateway/src/routes/merchants.rs), and the notifier refuses to sign with a value
-- that is not sealed.
COMMENT ON COLUMN merchants.webhook_secret IS
    'HMAC key of the webhook signatures, sealed (AES-256-GCM, v1:<key id>:<base64>); never in clear';

-- The secret a rotation replaced, sealed like the current one, and until when it still signs:
-- during the window the notifier signs with both (`v1=<new>,v1=<previous>`) so a receiver that
-- has not switched yet keeps accepting; after it, only the current one.
ALTER TABLE merchants
    ADD COLUMN previous_webhook_secret      text,
    ADD COLUMN previous_secret_expires_at   timestamptz;

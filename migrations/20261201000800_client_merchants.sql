-- Which merchants each API client may act for (issue 16: any client could act for any
-- merchant). With authentication on, the gateway accepts `POST /v1/payments` and answers
-- `GET /v1/analytics/merchants/{id}/stats` only for a merchant the client is bound to (403
-- otherwise); the admin API manages the rows (`PUT`/`DELETE
-- /v1/clients/{client_id}/merchants/{merchant_id}`, `GET /v1/clients/{client_id}/merchants`).
--
-- Neither side references another table: API clients live in the gateway's configuration
-- (hashed keys), and a merchant needs no `merchants` row (that table holds notification
-- settings only) to receive payments. A binding may therefore be made before the client's key
-- is rolled out. The formats are those the gateway validates (client ids as API-key client ids,
-- merchant ids as in payment requests), checked here too so no other writer can slip past.
CREATE TABLE client_merchants (
    client_id    text        NOT NULL CHECK (client_id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    merchant_id  text        NOT NULL CHECK (merchant_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- The check of every payment is one lookup of this key, and a client's list is a range of it.
    PRIMARY KEY (client_id, merchant_id)
);

-- Tenure catalog, migration 0004: Idempotency-Key records for the HTTP API (issue 5).
-- A creating call with an Idempotency-Key stores the request's hash and, once done, the
-- response it gave, so a retry with the same key and body gets the first result and a
-- retry with another body is refused. Keys are scoped to the API key that sent them.
-- The stored response never holds a secret: a new database's password is left out.

CREATE TABLE idempotency_keys (
    api_key_id    text NOT NULL,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    operation     text NOT NULL,
    request_hash  text NOT NULL CHECK (request_hash ~ '^[0-9a-f]{64}$'),
    -- NULL while the first request is still running.
    status        integer,
    response      text,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

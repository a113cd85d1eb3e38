-- Tenure catalog, migration 0003: API keys for the HTTP API (issue 5).
-- Only a SHA-256 of each key is stored; the key itself is shown once, at creation.

CREATE TABLE api_keys (
    id            text PRIMARY KEY CHECK (id ~ '^key_[0-9a-hjkmnp-tv-z]{20}$'),
    name          text NOT NULL CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    scopes        text[] NOT NULL CHECK (scopes <@ ARRAY['read', 'write', 'admin'] AND cardinality(scopes) > 0),
    -- SHA-256 of the whole key, hex. Keys carry 190 random bits, so no salt is needed.
    key_hash      text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    created_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);

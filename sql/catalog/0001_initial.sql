-- Tenure catalog, migration 0001: servers, databases, intents, audit events, sweeps.
-- Forward-only: never edit an applied migration; add a new numbered file instead.
-- Timestamps are written by Tenure from its one clock; defaults are not used for decisions.

CREATE TABLE tenant_servers (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    -- NULL for `default`, which is the catalog's own server. May hold a password: never printed.
    admin_url     text,
    public_host   text NOT NULL,
    public_port   integer NOT NULL CHECK (public_port BETWEEN 1 AND 65535),
    created_at    timestamptz NOT NULL
);

CREATE TABLE databases (
    id                  text PRIMARY KEY CHECK (id ~ '^db_[0-9a-hjkmnp-tv-z]{20}$'),
    name                text NOT NULL CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    state               text NOT NULL CHECK (state IN ('provisioning', 'trial', 'active', 'deactivated', 'destroyed')),
    version             bigint NOT NULL CHECK (version > 0),
    plan                text NOT NULL CHECK (plan IN ('trial', 'paid')),
    server_name         text NOT NULL REFERENCES tenant_servers (name),
    pg_database         text NOT NULL,
    pg_role             text NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    trial_ends_at       timestamptz,
    deactivated_at      timestamptz,
    destroy_after       timestamptz,
    -- Tombstone fields: set once, when the database is destroyed.
    destroyed_at        timestamptz,
    destroy_reason      text,
    destroyed_by        text,
    legal_hold          boolean NOT NULL DEFAULT false,
    legal_hold_reason   text,
    legal_hold_since    timestamptz,
    CHECK (state <> 'trial' OR trial_ends_at IS NOT NULL),
    CHECK (state <> 'deactivated' OR (deactivated_at IS NOT NULL AND destroy_after IS NOT NULL)),
    CHECK (state <> 'destroyed' OR (destroyed_at IS NOT NULL AND destroy_reason IS NOT NULL)),
    CHECK (legal_hold = (legal_hold_reason IS NOT NULL))
);

-- A customer name identifies one live database; destroyed ones keep theirs in the tombstone.
CREATE UNIQUE INDEX databases_live_name ON databases (name) WHERE state <> 'destroyed';
CREATE UNIQUE INDEX databases_pg_database ON databases (server_name, pg_database);
CREATE INDEX databases_state ON databases (state);

-- Work that cannot run inside a catalog transaction (CREATE/DROP DATABASE): recorded first,
-- completed after; a pending intent whose owner is gone is finished or rolled back at start.
CREATE TABLE intents (
    id              text PRIMARY KEY CHECK (id ~ '^in_[0-9a-hjkmnp-tv-z]{20}$'),
    kind            text NOT NULL CHECK (kind IN ('create_database', 'drop_database')),
    database_id     text NOT NULL,
    server_name     text NOT NULL REFERENCES tenant_servers (name),
    pg_database     text NOT NULL,
    pg_role         text NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'completed', 'rolled_back')),
    created_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    -- Session advisory lock key held by the process carrying the intent out.
    lock_key        bigint NOT NULL
);
CREATE INDEX intents_pending ON intents (created_at) WHERE status = 'pending';

CREATE TABLE audit_events (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL,
    database_id   text,
    actor         text NOT NULL,
    action        text NOT NULL,
    from_state    text,
    to_state      text,
    reason        text,
    detail        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_database ON audit_events (database_id, id);

-- One row per expiry sweep; its id is the fencing token, and its instant guards the clock.
CREATE TABLE sweeps (
    id            bigserial PRIMARY KEY,
    as_of         timestamptz NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    outcome       text NOT NULL CHECK (outcome IN ('running', 'completed', 'refused', 'failed')),
    detail        jsonb NOT NULL DEFAULT '{}'
);

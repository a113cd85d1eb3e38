-- Tenure catalog, migration 0002: the backup store's records and restore intents.

CREATE TABLE backups (
    id            text PRIMARY KEY CHECK (id ~ '^bk_[0-9a-hjkmnp-tv-z]{20}$'),
    database_id   text NOT NULL REFERENCES databases (id),
    -- Only 'verified' backups count: a running or failed one never replaces a good one.
    state         text NOT NULL CHECK (state IN ('running', 'verified', 'failed', 'deleted')),
    format        text NOT NULL CHECK (format IN ('native')),
    -- Relative to the backup store.
    path          text NOT NULL,
    byte_count    bigint,
    row_count     bigint,
    table_count   integer,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    error         text,
    -- Session advisory lock held while the backup runs (recovery tells abandoned from running).
    lock_key      bigint NOT NULL
);
CREATE INDEX backups_database ON backups (database_id, started_at);

-- Restores swap databases, which cannot happen in a transaction: an intent records the names.
ALTER TABLE intents DROP CONSTRAINT intents_kind_check;
ALTER TABLE intents ADD CONSTRAINT intents_kind_check CHECK (kind IN ('create_database', 'drop_database', 'restore_database'));
ALTER TABLE intents ADD COLUMN detail jsonb NOT NULL DEFAULT '{}';

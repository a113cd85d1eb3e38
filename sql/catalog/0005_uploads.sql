-- Tenure catalog, migration 0005: the upgrade service's uploads.
-- An upload's PostgreSQL objects are named from its id: the role <id>_owner and the
-- databases <id>_g<generation> (g0 the uploaded original, g1... the upgrade results).

CREATE TABLE uploads (
    id                 text PRIMARY KEY CHECK (id ~ '^up_[0-9a-hjkmnp-tv-z]{20}$'),
    state              text NOT NULL CHECK (state IN ('uploading', 'uploaded', 'rejected', 'upgrading', 'upgraded', 'upgrade-failed', 'destroyed')),
    version            bigint NOT NULL CHECK (version > 0),
    -- The file name the customer gave, for display only (never a path).
    label              text NOT NULL DEFAULT '',
    format             text CHECK (format IN ('tenure', 'pg_dump-custom', 'sql', 'sql.zst')),
    server_name        text NOT NULL REFERENCES tenant_servers (name),
    pg_role            text NOT NULL,
    -- The database holding the current data: the original until the first successful
    -- upgrade, then the latest good result. NULL once nothing exists.
    pg_database        text,
    generation         integer NOT NULL DEFAULT 0,
    byte_count         bigint NOT NULL DEFAULT 0,
    statement_count    bigint NOT NULL DEFAULT 0,
    skipped_count      bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL,
    uploaded_at        timestamptz,
    last_run_at        timestamptz,
    last_upgraded_at   timestamptz,
    upgrade_count      integer NOT NULL DEFAULT 0,
    original_deleted_at timestamptz,
    reject_reason      text,
    failed_script      text,
    failed_error       text,
    failed_sqlstate    text,
    applied_scripts    jsonb NOT NULL DEFAULT '[]',
    legal_hold_reason  text,
    legal_hold_since   timestamptz,
    destroyed_at       timestamptz,
    destroyed_by       text,
    destroy_reason     text,
    -- Set with the state change to destroyed or rejected; cleared once the databases, the
    -- role and the files are gone. Recovery finishes what a crash left set.
    cleanup_pending    boolean NOT NULL DEFAULT false,
    -- Session advisory lock held by the process working on the upload.
    lock_key           bigint NOT NULL,
    updated_at         timestamptz NOT NULL
);
CREATE INDEX uploads_state ON uploads (state);

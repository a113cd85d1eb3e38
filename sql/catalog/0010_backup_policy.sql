-- Backup policy: scheduled backups held to a per-server limit, retention, restore drills.
-- A backup that failed a restore drill is 'drill_failed': it no longer counts as verified
-- (never restored from, never the newest verified), and retention lets it go once a newer
-- verified backup exists.
ALTER TABLE backups DROP CONSTRAINT backups_state_check;
ALTER TABLE backups ADD CONSTRAINT backups_state_check CHECK (state IN ('running', 'verified', 'failed', 'deleted', 'drill_failed'));
-- Taken by the scheduler (false: asked for). Both count alike for retention.
ALTER TABLE backups ADD COLUMN scheduled boolean NOT NULL DEFAULT false;
-- The backup's last restore drill.
ALTER TABLE backups ADD COLUMN drilled_at timestamptz;
ALTER TABLE backups ADD COLUMN drill_outcome text CHECK (drill_outcome IN ('passed', 'failed'));

-- Every restore drill: a backup restored into a scratch database, checked against its
-- manifest, analyzed, dropped. Kept with the backup's row (backups are never removed).
CREATE TABLE drills (
    id           text PRIMARY KEY CHECK (id ~ '^dr_[0-9a-hjkmnp-tv-z]{20}$'),
    backup_id    text NOT NULL REFERENCES backups (id),
    database_id  text NOT NULL,
    server_name  text NOT NULL,
    job_id       text,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    duration_ms  bigint NOT NULL CHECK (duration_ms >= 0),
    outcome      text NOT NULL CHECK (outcome IN ('passed', 'failed')),
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX drills_backup ON drills (backup_id, finished_at);
CREATE INDEX drills_finished ON drills (finished_at);

-- Jobs on a tenant server carry its name, so that backups and drills are held to
-- TENURE_BACKUP_CONCURRENCY_PER_SERVER when claimed.
ALTER TABLE jobs ADD COLUMN server_name text;
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('backup', 'restore', 'upgrade', 'export', 'purge', 'drill'));
CREATE INDEX jobs_running_by_server ON jobs (server_name) WHERE state = 'running';

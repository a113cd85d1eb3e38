-- Exports over HTTP take their turn among a database's jobs: each is a job row of kind
-- 'export', run only by the replica streaming it (never claimed by a worker), leased while it
-- streams, so that a backup or restore requested meanwhile waits for it.
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('backup', 'restore', 'upgrade', 'export'));

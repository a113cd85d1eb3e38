-- The store deletion of a destroyed database is a durable job of its own ('purge'): queued in
-- the transaction that completes the drop, run in the database's turn (after its cancelled
-- backups have stopped), retried until its files are gone, visible in GET /v1/jobs.
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('backup', 'restore', 'upgrade', 'export', 'purge'));

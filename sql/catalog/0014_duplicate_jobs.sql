-- A duplicate (issue 17) is a durable job of its own: a new database made from a live one's
-- snapshot, streamed from backup into restore. Its subject is the new database.
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('backup', 'restore', 'upgrade', 'export', 'purge', 'drill', 'duplicate'));

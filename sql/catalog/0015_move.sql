-- Moving a database to another server (issue 17): a job of its own, carried out under a
-- 'move_database' intent (detail: from, to) so that a crash is rolled back or finished.
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('backup', 'restore', 'upgrade', 'export', 'purge', 'drill', 'duplicate', 'move'));
ALTER TABLE intents DROP CONSTRAINT intents_kind_check;
ALTER TABLE intents ADD CONSTRAINT intents_kind_check CHECK (kind IN ('create_database', 'drop_database', 'restore_database', 'move_database'));

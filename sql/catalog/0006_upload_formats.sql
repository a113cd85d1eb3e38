-- Upload formats added for the dumps customers really have: pg_dump's tar format, gzip
-- compressed SQL, and zip archives holding a dump.sql.
ALTER TABLE uploads DROP CONSTRAINT uploads_format_check;
ALTER TABLE uploads ADD CONSTRAINT uploads_format_check
    CHECK (format IN ('tenure', 'pg_dump-custom', 'pg_dump-tar', 'sql', 'sql.zst', 'sql.gz', 'zip'));

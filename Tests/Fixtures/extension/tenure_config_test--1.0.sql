-- Tenure's test extension: configuration tables as real extensions (PostGIS's
-- spatial_ref_sys, say) declare them. Rows the extension inserts itself are marked standard
-- and filtered out of dumps; rows users add are configuration data and must be carried.
\echo Use "CREATE EXTENSION tenure_config_test" to load this file. \quit

CREATE TABLE tenure_settings (key text PRIMARY KEY, value text, standard boolean NOT NULL DEFAULT false);
INSERT INTO tenure_settings VALUES ('builtin', 'shipped with the extension', true);
SELECT pg_catalog.pg_extension_config_dump('tenure_settings', 'WHERE NOT standard');

CREATE TABLE tenure_journal (id bigint PRIMARY KEY, note text, setting text REFERENCES tenure_settings (key));
SELECT pg_catalog.pg_extension_config_dump('tenure_journal', '');

CREATE SEQUENCE tenure_journal_id;
SELECT pg_catalog.pg_extension_config_dump('tenure_journal_id', '');

CREATE FUNCTION tenure_setting(name text) RETURNS text LANGUAGE sql STABLE
    AS 'SELECT value FROM @extschema@.tenure_settings WHERE key = name';

-- The XXH64 of a backup's bytes as written and read back from the store when it was verified:
-- a whole download checks the bytes it streams against it, so an object altered in the store
-- is caught when it is downloaded (its last bytes are never sent), not only by a drill.
ALTER TABLE backups ADD COLUMN xxh64 text CHECK (xxh64 ~ '^[0-9a-f]{16}$');

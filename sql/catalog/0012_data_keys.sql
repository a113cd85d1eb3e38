-- Provable deletion (issue 16). Every database and upload has a data key: 32 random bytes that
-- seal its stored backups and upgrade results. The catalog holds it only wrapped (AES-256-GCM)
-- by the master key named in master_key_id; the row is deleted in the transaction that writes
-- the owner's tombstone, and the destruction's audit event records its id.
CREATE TABLE data_keys (
    id text PRIMARY KEY CHECK (id ~ '^dk_[0-9a-hjkmnp-tv-z]{20}$'),
    owner text NOT NULL UNIQUE,
    -- hex of nonce (12) ‖ ciphertext (32) ‖ tag (16), authenticated with id and owner
    wrapped text NOT NULL CHECK (wrapped ~ '^[0-9a-f]{120}$'),
    master_key_id text NOT NULL,
    created_at timestamptz NOT NULL
);

-- The signed statement issued when a destruction has completed (key row gone, database and
-- role dropped, every stored file deleted): payload and Ed25519 signature, both base64.
CREATE TABLE deletion_certificates (
    subject text PRIMARY KEY,
    payload text NOT NULL,
    signature text NOT NULL,
    key_id text NOT NULL,
    issued_at timestamptz NOT NULL
);


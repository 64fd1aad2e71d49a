-- Package views, derived from v1.package.created (with the files of the
-- manifest it names) and the retention events.
CREATE TABLE packages (
    id              TEXT    NOT NULL PRIMARY KEY,
    name            TEXT    NOT NULL,
    manifest_sha256 BLOB    NOT NULL,
    manifest_blake3 BLOB    NOT NULL,
    file_count      INTEGER NOT NULL,
    total_size      INTEGER NOT NULL,
    retention_class TEXT    NOT NULL,
    created_seq     INTEGER NOT NULL UNIQUE,
    created_at      TEXT    NOT NULL,
    created_by      TEXT    NOT NULL
) STRICT, WITHOUT ROWID;
-- Listing pages by created_seq (keyset), optionally filtered.
CREATE INDEX packages_by_name ON packages (name, created_seq);
CREATE INDEX packages_by_class ON packages (retention_class, created_seq);

CREATE TABLE package_files (
    package_id TEXT    NOT NULL REFERENCES packages (id),
    path       TEXT    NOT NULL,  -- BINARY collation: bytewise, as manifests sort
    sha256     BLOB    NOT NULL,
    blake3     BLOB    NOT NULL,
    size       INTEGER NOT NULL,
    media_type TEXT,
    PRIMARY KEY (package_id, path)
) STRICT, WITHOUT ROWID;
-- "Which packages reference this blob?" (garbage collection).
CREATE INDEX package_files_by_blob ON package_files (sha256);

CREATE TABLE retention_state (
    package_id            TEXT    NOT NULL PRIMARY KEY REFERENCES packages (id),
    class                 TEXT    NOT NULL,
    current_expires_at    TEXT,              -- NULL: permanent
    active_holds          INTEGER NOT NULL DEFAULT 0,
    eligible_for_deletion INTEGER NOT NULL DEFAULT 0,
    last_eligibility_seq  INTEGER
) STRICT, WITHOUT ROWID;
-- The sweeper's work is proportional to what expires, not to all packages.
CREATE INDEX retention_by_expiry ON retention_state (current_expires_at)
    WHERE current_expires_at IS NOT NULL AND eligible_for_deletion = 0;

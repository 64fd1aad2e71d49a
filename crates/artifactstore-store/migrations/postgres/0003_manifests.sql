-- Manifests kept in the database, as SQLite's 0006 (a heap table already
-- keeps the bodies apart from the digest index).
CREATE TABLE manifests (
    sha256 BYTEA NOT NULL PRIMARY KEY,
    blake3 BYTEA NOT NULL,
    body   BYTEA NOT NULL
);

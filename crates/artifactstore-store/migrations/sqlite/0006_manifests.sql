-- Manifests kept in the database, written with the `v1.package.created`
-- that first names them (docs/decisions.md, "manifests live in the
-- database"). Not a view: `views rebuild` keeps the table and reads
-- manifests from it. A rowid table, so that the bodies (up to megabytes)
-- are appended in order; only the digest index takes a random page.
CREATE TABLE manifests (
    sha256 BLOB NOT NULL UNIQUE,
    blake3 BLOB NOT NULL,
    body   BLOB NOT NULL   -- the canonical CBOR bytes
) STRICT;

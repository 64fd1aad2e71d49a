-- The PostgreSQL schema: the tables of the SQLite migrations 0001-0004 in
-- PostgreSQL types, columns in the same order (so both backends give the same
-- views digest for the same log). Text is compared bytewise (COLLATE "C"):
-- timestamps are fixed-width RFC 3339, and paths sort as manifests sort them.

-- The event log: the source of truth. `seq` is taken from log_head under its
-- row lock, never from a sequence.
CREATE TABLE events (
    seq     BIGINT PRIMARY KEY,
    id      TEXT COLLATE "C" NOT NULL UNIQUE,
    type    TEXT COLLATE "C" NOT NULL,
    subject TEXT COLLATE "C" NOT NULL,
    at      TEXT COLLATE "C" NOT NULL,
    body    BYTEA  NOT NULL,  -- canonical CBOR of the envelope
    hash    BYTEA  NOT NULL   -- blake3(body)
);
CREATE INDEX events_by_subject ON events (subject, seq);

-- The head of the chain, and the row every write transaction locks first.
CREATE TABLE log_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash BYTEA  NOT NULL
);
INSERT INTO log_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

CREATE TABLE views_state (
    id          BIGINT PRIMARY KEY CHECK (id = 1),
    applied_seq BIGINT NOT NULL
);
INSERT INTO views_state (id, applied_seq) VALUES (1, 0);

CREATE TABLE blobs (
    sha256     BYTEA  NOT NULL PRIMARY KEY,
    blake3     BYTEA  NOT NULL UNIQUE,
    size       BIGINT NOT NULL,
    location   TEXT COLLATE "C" NOT NULL,
    stored_seq BIGINT NOT NULL,
    stored_at  TEXT COLLATE "C" NOT NULL
);
CREATE INDEX blobs_by_location ON blobs (location);

-- Transient data-plane state, not derived from the log.
CREATE TABLE upload_sessions (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created_at TEXT COLLATE "C" NOT NULL,
    actor      TEXT COLLATE "C" NOT NULL
);
CREATE INDEX upload_sessions_by_age ON upload_sessions (created_at);

CREATE TABLE packages (
    id              TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name            TEXT COLLATE "C" NOT NULL,
    manifest_sha256 BYTEA  NOT NULL,
    manifest_blake3 BYTEA  NOT NULL,
    file_count      BIGINT NOT NULL,
    total_size      BIGINT NOT NULL,
    retention_class TEXT COLLATE "C" NOT NULL,
    created_seq     BIGINT NOT NULL UNIQUE,
    created_at      TEXT COLLATE "C" NOT NULL,
    created_by      TEXT COLLATE "C" NOT NULL
);
CREATE INDEX packages_by_name ON packages (name, created_seq);
CREATE INDEX packages_by_class ON packages (retention_class, created_seq);
CREATE INDEX packages_by_manifest ON packages (manifest_sha256);

CREATE TABLE package_files (
    package_id TEXT COLLATE "C" NOT NULL REFERENCES packages (id),
    path       TEXT COLLATE "C" NOT NULL,
    sha256     BYTEA  NOT NULL,
    blake3     BYTEA  NOT NULL,
    size       BIGINT NOT NULL,
    media_type TEXT COLLATE "C",
    PRIMARY KEY (package_id, path)
);
CREATE INDEX package_files_by_blob ON package_files (sha256);

CREATE TABLE retention_state (
    package_id            TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES packages (id),
    class                 TEXT COLLATE "C" NOT NULL,
    current_expires_at    TEXT COLLATE "C",  -- NULL: permanent
    active_holds          BIGINT NOT NULL DEFAULT 0,
    eligible_for_deletion BIGINT NOT NULL DEFAULT 0,
    last_eligibility_seq  BIGINT,
    deleted_seq           BIGINT,
    deleted_at            TEXT COLLATE "C",
    deleted_reason        TEXT COLLATE "C",
    bytes_freed           BIGINT
);
CREATE INDEX retention_by_expiry ON retention_state (current_expires_at)
    WHERE current_expires_at IS NOT NULL AND eligible_for_deletion = 0;
CREATE INDEX retention_collectable ON retention_state (package_id)
    WHERE eligible_for_deletion = 1 AND deleted_seq IS NULL;

CREATE TABLE holds (
    package_id     TEXT COLLATE "C" NOT NULL REFERENCES packages (id),
    hold_id        TEXT COLLATE "C" NOT NULL,
    reason         TEXT COLLATE "C" NOT NULL,
    applied_by     TEXT COLLATE "C" NOT NULL,
    applied_at     TEXT COLLATE "C" NOT NULL,
    applied_seq    BIGINT NOT NULL,
    released_by    TEXT COLLATE "C",
    released_at    TEXT COLLATE "C",
    release_reason TEXT COLLATE "C",
    released_seq   BIGINT,
    PRIMARY KEY (package_id, hold_id)
);

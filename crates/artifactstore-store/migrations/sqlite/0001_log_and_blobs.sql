-- The event log: the source of truth. `seq` is assigned by the engine under
-- the write lock (see log_head), never by AUTOINCREMENT.
CREATE TABLE events (
    seq     INTEGER PRIMARY KEY,
    id      TEXT    NOT NULL UNIQUE,
    type    TEXT    NOT NULL,
    subject TEXT    NOT NULL,
    at      TEXT    NOT NULL,
    body    BLOB    NOT NULL,  -- canonical CBOR of the envelope
    hash    BLOB    NOT NULL   -- blake3(body)
) STRICT;
CREATE INDEX events_by_subject ON events (subject, seq);

-- The head of the chain, updated with every append. It is the lock under
-- which the next seq is taken, and lets verify detect a truncated tail.
CREATE TABLE log_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB    NOT NULL
) STRICT;
INSERT INTO log_head (id, seq, hash) VALUES (1, 0, zeroblob(32));

-- Views, derived from the log; views_state records the last seq applied.
CREATE TABLE views_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    applied_seq INTEGER NOT NULL
) STRICT;
INSERT INTO views_state (id, applied_seq) VALUES (1, 0);

CREATE TABLE blobs (
    sha256     BLOB    NOT NULL PRIMARY KEY,
    blake3     BLOB    NOT NULL UNIQUE,
    size       INTEGER NOT NULL,
    location   TEXT    NOT NULL,
    stored_seq INTEGER NOT NULL,
    stored_at  TEXT    NOT NULL
) STRICT, WITHOUT ROWID;

-- Transient data-plane state, not derived from the log.
CREATE TABLE upload_sessions (
    id         TEXT NOT NULL PRIMARY KEY,
    created_at TEXT NOT NULL,
    actor      TEXT NOT NULL
) STRICT, WITHOUT ROWID;

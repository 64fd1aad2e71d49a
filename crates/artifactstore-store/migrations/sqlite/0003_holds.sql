-- Holds, from v1.retention.hold_applied / hold_released. A hold is active
-- while released_seq is NULL.
CREATE TABLE holds (
    package_id     TEXT    NOT NULL REFERENCES packages (id),
    hold_id        TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    applied_by     TEXT    NOT NULL,
    applied_at     TEXT    NOT NULL,
    applied_seq    INTEGER NOT NULL,
    released_by    TEXT,
    released_at    TEXT,
    release_reason TEXT,
    released_seq   INTEGER,
    PRIMARY KEY (package_id, hold_id)
) STRICT, WITHOUT ROWID;

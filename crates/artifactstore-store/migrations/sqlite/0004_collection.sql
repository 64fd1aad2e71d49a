-- Garbage collection (v1.package.deleted, v1.blob.deleted). A deleted
-- package keeps its row, its retention state and its history; what goes is
-- its rows in package_files, so its blobs become collectable.
ALTER TABLE retention_state ADD COLUMN deleted_seq INTEGER;
ALTER TABLE retention_state ADD COLUMN deleted_at TEXT;
ALTER TABLE retention_state ADD COLUMN deleted_reason TEXT;
ALTER TABLE retention_state ADD COLUMN bytes_freed INTEGER;
-- The collector's package work: marked eligible, not yet deleted.
CREATE INDEX retention_collectable ON retention_state (package_id)
    WHERE eligible_for_deletion = 1 AND deleted_seq IS NULL;
-- Every package, deleted or not, references its manifest (rebuilds read it).
CREATE INDEX packages_by_manifest ON packages (manifest_sha256);
-- "Does a row name these bytes?" (the collector's sweep for orphaned bytes).
CREATE INDEX blobs_by_location ON blobs (location);
-- Upload sessions by age, for expiry.
CREATE INDEX upload_sessions_by_age ON upload_sessions (created_at);

-- Retrieval tiers (v1.package.tier_changed): where each blob's bytes are
-- ('hot': the blob backend; 'cold': the configured cold backend), and
-- which tier each package has reached.
ALTER TABLE blobs ADD COLUMN tier TEXT NOT NULL DEFAULT 'hot';
ALTER TABLE packages ADD COLUMN tier TEXT NOT NULL DEFAULT 'hot';
-- The tiering run's work: live packages still hot, by age.
CREATE INDEX packages_hot_by_age ON packages (created_at) WHERE tier = 'hot';

-- Retrieval tiers, as SQLite's 0005 (the columns again last, in the same
-- order).
ALTER TABLE blobs ADD COLUMN tier TEXT COLLATE "C" NOT NULL DEFAULT 'hot';
ALTER TABLE packages ADD COLUMN tier TEXT COLLATE "C" NOT NULL DEFAULT 'hot';
CREATE INDEX packages_hot_by_age ON packages (created_at) WHERE tier = 'hot';

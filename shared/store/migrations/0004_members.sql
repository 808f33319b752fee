-- Each member's digest bucket (the top byte of the xxh3-64 of the member id), so a realignment
-- fetches only the members of the buckets that differ. Rows written before this migration are
-- filled in by the store right after it (SQL has no xxh3).
ALTER TABLE group_members ADD COLUMN bucket BIGINT;
CREATE INDEX group_members_bucket ON group_members (group_id, bucket, user_id);

-- Tombstones at or below a group's horizon were purged: a member-list diff from an older
-- version cannot be served, and the client realigns instead.
ALTER TABLE groups ADD COLUMN horizon BIGINT NOT NULL DEFAULT 0;

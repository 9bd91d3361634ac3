-- The sweeper forgets claims (anchors and release tombstones) older than the claim retention
-- (`<SERVICE>_CLAIM_RETENTION`), oldest first; this index finds them without a scan.
CREATE INDEX claims_by_age ON claims (created_at);

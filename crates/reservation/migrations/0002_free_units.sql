-- The claim's index: per pool, only the units a reserve can take at once. It stays as small as
-- the free stock however many units a pool has handed out. The (pool, status) index orders
-- 'assigned' before 'available', so a claim through it walked past every assigned unit of the
-- pool, and claims grew slower as a pool's assignments grew.
CREATE INDEX units_free ON units (pool, unit_id) WHERE status = 'available';

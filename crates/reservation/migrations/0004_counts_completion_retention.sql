-- Maintained unit counts per pool. Every statement that changes a unit's status updates its
-- pool's counts in the same transaction, so reading a pool's counts reads one row, however many
-- units the pool ever handed out. Expired but unswept reservations still count as `reserved`
-- here; readers move them to available through `units_reserved_by_pool`, which holds only live
-- units. available + reserved + assigned + retired = units ever added.
ALTER TABLE pools ADD COLUMN available BIGINT NOT NULL DEFAULT 0;
ALTER TABLE pools ADD COLUMN reserved BIGINT NOT NULL DEFAULT 0;
ALTER TABLE pools ADD COLUMN assigned BIGINT NOT NULL DEFAULT 0;
-- Assigned units removed by the unit retention (`<SERVICE>_ASSIGNED_RETENTION`): the store's
-- delivered packets, counted but no longer kept one by one.
ALTER TABLE pools ADD COLUMN retired BIGINT NOT NULL DEFAULT 0;
UPDATE pools SET
    available = (SELECT COUNT(*) FROM units u WHERE u.pool = pools.pool AND u.status = 'available'),
    reserved = (SELECT COUNT(*) FROM units u WHERE u.pool = pools.pool AND u.status = 'reserved'),
    assigned = (SELECT COUNT(*) FROM units u WHERE u.pool = pools.pool AND u.status = 'assigned');

-- A pool's reservations by expiry: its expired ones are counted without reading the pool.
CREATE INDEX units_reserved_by_pool ON units (pool, expires_at) WHERE status = 'reserved';
-- The retention sweep takes the oldest assignments first.
CREATE INDEX units_assigned_by_age ON units (updated_at) WHERE status = 'assigned';

-- Set when the orchestrator confirmed the order PLACED and its work done (`Complete`): the
-- order's unit was freed for reuse, and `released_at` refuses any later reserve for it.
ALTER TABLE claims ADD COLUMN completed_at BIGINT;

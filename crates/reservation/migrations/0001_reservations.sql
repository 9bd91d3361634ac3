-- Schema of a participant (store or delivery). Written in the SQL that PostgreSQL and SQLite
-- share; times are BIGINT milliseconds since the Unix epoch from the database clock.

-- A pool of interchangeable units: a food at the store, a zone at delivery.
CREATE TABLE pools (
    pool       TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- One row per unit (a packet, an agent). The row is the single source of truth for who holds
-- the unit: `order_id` is the holder, `expires_at` the end of an unassigned reservation.
CREATE TABLE units (
    unit_id    TEXT PRIMARY KEY,
    pool       TEXT NOT NULL REFERENCES pools (pool),
    status     TEXT NOT NULL CHECK (status IN ('available', 'reserved', 'assigned')),
    order_id   TEXT,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CHECK ((status = 'available') = (order_id IS NULL)),
    CHECK ((status = 'reserved') = (expires_at IS NOT NULL))
);

-- Invariant guard: an order holds at most one unit of a participant.
CREATE UNIQUE INDEX units_one_per_order ON units (order_id) WHERE order_id IS NOT NULL;
CREATE INDEX units_by_pool_status ON units (pool, status);
CREATE INDEX units_reserved_expiry ON units (expires_at) WHERE status = 'reserved';

-- One row per order that ever reserved or released here. Reserve and release lock this row
-- first, which serialises them per order; `released_at` set is the tombstone that refuses a
-- reserve arriving after the release.
CREATE TABLE claims (
    order_id    TEXT PRIMARY KEY,
    released_at BIGINT,
    created_at  BIGINT NOT NULL
);

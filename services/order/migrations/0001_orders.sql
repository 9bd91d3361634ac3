-- The order service's database: one row per order, holding the saga state machine's persisted
-- state. Shared SQL for PostgreSQL and SQLite; times are BIGINT Unix milliseconds from the
-- database clock.
CREATE TABLE orders (
    order_id         TEXT PRIMARY KEY,
    -- One key never yields two orders.
    idempotency_key  TEXT NOT NULL UNIQUE,
    customer_id      TEXT NOT NULL,
    food_id          TEXT NOT NULL,
    zone             TEXT NOT NULL,
    -- Customer-facing state, derived from `phase` (pending | placed | not_placed); stored for
    -- filtering.
    state            TEXT NOT NULL,
    -- The saga (order_saga_saga::Saga).
    phase            TEXT NOT NULL,
    store_leg        TEXT NOT NULL,
    delivery_leg     TEXT NOT NULL,
    packet_id        TEXT,
    agent_id         TEXT,
    reason           TEXT,
    detail           TEXT,
    last_transient   TEXT,
    -- Operator view: transient failures so far and the last error.
    attempts         BIGINT NOT NULL DEFAULT 0,
    last_error       TEXT,
    -- The instance driving the saga, and until when. Every write of a driver is fenced on
    -- `lease_owner`; recovery claims unfinished sagas whose lease ran out.
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE INDEX orders_unfinished ON orders (lease_expires_at)
    WHERE phase IN ('reserving', 'assigning', 'compensating');
CREATE INDEX orders_newest ON orders (created_at, order_id);
CREATE INDEX orders_by_state ON orders (state, created_at, order_id);

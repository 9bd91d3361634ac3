-- Idempotency keys are scoped per customer: alice's "order-1" and bob's "order-1" are two
-- orders, and no customer learns which keys another used. The table is rebuilt because SQLite
-- cannot drop the old column constraint (UNIQUE on the key alone); keys were unique across
-- customers before, so every existing row satisfies the new constraint.
CREATE TABLE orders_v2 (
    order_id         TEXT PRIMARY KEY,
    idempotency_key  TEXT NOT NULL,
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
    attempts         BIGINT NOT NULL DEFAULT 0,
    last_error       TEXT,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    -- The fencing token (0002_epoch.sql).
    epoch            BIGINT NOT NULL DEFAULT 0,
    -- One key of one customer never yields two orders.
    CONSTRAINT orders_customer_key UNIQUE (customer_id, idempotency_key)
);

INSERT INTO orders_v2 (order_id, idempotency_key, customer_id, food_id, zone, state, phase,
    store_leg, delivery_leg, packet_id, agent_id, reason, detail, last_transient, attempts,
    last_error, lease_owner, lease_expires_at, created_at, updated_at, epoch)
SELECT order_id, idempotency_key, customer_id, food_id, zone, state, phase, store_leg,
    delivery_leg, packet_id, agent_id, reason, detail, last_transient, attempts, last_error,
    lease_owner, lease_expires_at, created_at, updated_at, epoch
FROM orders;

DROP TABLE orders;
ALTER TABLE orders_v2 RENAME TO orders;

CREATE INDEX orders_unfinished ON orders (lease_expires_at)
    WHERE phase IN ('reserving', 'assigning', 'compensating');
CREATE INDEX orders_newest ON orders (created_at, order_id);
CREATE INDEX orders_by_state ON orders (state, created_at, order_id);
-- The console's search by idempotency key (any customer's, for operators).
CREATE INDEX orders_by_key ON orders (idempotency_key);

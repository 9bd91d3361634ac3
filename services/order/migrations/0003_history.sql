-- Saga history (docs/design.md, "Saga history"): one row per write of an orders row, appended in
-- the same transaction. `calls` is a JSON array of the step's participant calls:
-- [{"side":"store","call":"reserve","code":"Ok","unit":"...","ms":3,"error":"..."}].
CREATE TABLE saga_events (
    order_id    TEXT NOT NULL,
    -- 1, 2, ... per order.
    seq         BIGINT NOT NULL,
    -- The fencing epoch and instance of the writer.
    epoch       BIGINT NOT NULL,
    instance    TEXT NOT NULL,
    -- created | recovered | taken_over | redriven | force_failed | step
    kind        TEXT NOT NULL,
    phase_from  TEXT,
    phase_to    TEXT NOT NULL,
    calls       TEXT,
    packet_id   TEXT,
    agent_id    TEXT,
    error       TEXT,
    -- Database time, Unix milliseconds.
    at          BIGINT NOT NULL,
    PRIMARY KEY (order_id, seq)
);

-- Retention deletes the oldest events first.
CREATE INDEX saga_events_by_time ON saga_events (at);

-- Fencing tokens (docs/design.md, "Leases and fencing"). Every claim or take-over of a saga
-- (creation, the recovery loop, a waiting client, an operator) increments `epoch`, and every
-- write of a driver is conditional on its owner, its epoch and a non-terminal phase. A driver
-- whose write is refused has been superseded and stops; a terminal row is never rewritten.
ALTER TABLE orders ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;

-- Scale-out: the process executing a run holds a lease on it (renewed by its
-- heartbeat); a run whose lease ended is claimed by another executor. A cancel
-- asked for on any server is recorded here for the executor to act on.
ALTER TABLE runs ADD COLUMN lease_owner TEXT;
ALTER TABLE runs ADD COLUMN lease_expires_at BIGINT;
ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_unfinished ON runs (status, lease_expires_at);
-- Every allocation decision locks this one row: grants from several processes
-- are serialised, so pools are never over-allocated.
CREATE TABLE resource_guard (id INTEGER PRIMARY KEY);
INSERT INTO resource_guard (id) VALUES (1);

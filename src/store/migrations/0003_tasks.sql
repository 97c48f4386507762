-- A session's task graph. `version` increases by one with every update, and
-- every update names the version it read: concurrent writers (several
-- processes on one database) cannot overwrite each other unnoticed.
CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    session_id       TEXT NOT NULL,
    principal        TEXT NOT NULL,
    seq              BIGINT NOT NULL,    -- creation order within the session (FIFO)
    name             TEXT NOT NULL,
    description      TEXT,
    module           TEXT,
    action           TEXT,
    parameters       TEXT NOT NULL,      -- JSON object
    dependencies     TEXT NOT NULL,      -- JSON array of task ids
    priority         TEXT NOT NULL,
    timeout_seconds  BIGINT,
    max_retries      BIGINT NOT NULL,
    retry            TEXT,               -- JSON retry policy
    resources        TEXT,               -- JSON requirements, as given
    tags             TEXT NOT NULL,      -- JSON array
    metadata         TEXT NOT NULL,      -- JSON object
    status           TEXT NOT NULL,
    result           TEXT,               -- JSON
    summary          TEXT,
    error            TEXT,               -- {code, message} JSON
    attempts         BIGINT NOT NULL,
    claimed_by       TEXT,
    lease_id         TEXT,
    lease_expires_at BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    version          BIGINT NOT NULL
);
CREATE UNIQUE INDEX tasks_by_session_name ON tasks (session_id, name);
CREATE INDEX tasks_by_session_seq ON tasks (session_id, seq);
CREATE INDEX tasks_by_status ON tasks (status);

-- Workflow definitions created through tools (library files are not stored).
CREATE TABLE workflows (
    scope       TEXT NOT NULL,      -- 'session' or 'global'
    owner       TEXT NOT NULL,      -- the session id, or the principal for 'global'
    name        TEXT NOT NULL,
    principal   TEXT NOT NULL,
    version     BIGINT NOT NULL,
    definition  TEXT NOT NULL,      -- WorkflowSpec as JSON
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (scope, owner, name)
);

-- Workflow runs. The definition is pinned: a copy of what the run started with.
CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    session_id       TEXT NOT NULL,
    principal        TEXT NOT NULL,
    workflow_name    TEXT NOT NULL,
    workflow_version BIGINT NOT NULL,
    workflow_source  TEXT NOT NULL,
    definition       TEXT NOT NULL,
    parameters       TEXT NOT NULL,
    status           TEXT NOT NULL,
    priority         TEXT NOT NULL,
    max_parallel     BIGINT NOT NULL,
    mode             TEXT NOT NULL,
    timeout_seconds  BIGINT,
    resources        TEXT,
    error            TEXT,
    retry_of         TEXT,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX runs_by_session ON runs (session_id, created_at, id);
CREATE INDEX runs_by_principal ON runs (principal, created_at, id);
CREATE INDEX runs_by_status ON runs (status);

-- The state of every step of every run.
CREATE TABLE run_steps (
    run_id       TEXT NOT NULL,
    name         TEXT NOT NULL,
    position     BIGINT NOT NULL,
    status       TEXT NOT NULL,
    attempts     BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    output       TEXT,
    error        TEXT,
    input_hash   TEXT,
    reused       BOOLEAN NOT NULL,
    prior_output TEXT,
    prior_hash   TEXT,
    PRIMARY KEY (run_id, name)
);

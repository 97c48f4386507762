-- Sessions: one engine instance per row, bound to the principal that made it.
-- Portable SQL (SQLite and PostgreSQL): times are BIGINT milliseconds since
-- the Unix epoch, JSON is TEXT.
CREATE TABLE sessions (
    id                     TEXT PRIMARY KEY,
    principal              TEXT NOT NULL,
    name                   TEXT NOT NULL,
    description            TEXT NOT NULL,
    mode                   TEXT NOT NULL,
    max_parallel_tasks     BIGINT NOT NULL,
    max_parallel_workflows BIGINT NOT NULL,
    timeout_seconds        BIGINT,
    idle_ttl_seconds       BIGINT NOT NULL,
    metadata               TEXT NOT NULL,
    status                 TEXT NOT NULL,
    is_default             BOOLEAN NOT NULL,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL,
    last_active_at         BIGINT NOT NULL,
    closed_at              BIGINT,
    close_reason           TEXT
);

CREATE INDEX sessions_by_principal ON sessions (principal, created_at, id);
CREATE INDEX sessions_by_status ON sessions (status, last_active_at);
-- At most one active default session per principal, even under races.
CREATE UNIQUE INDEX sessions_one_default ON sessions (principal)
    WHERE is_default AND status = 'active';

-- Small key/value facts about the store itself (health probe, instance info).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

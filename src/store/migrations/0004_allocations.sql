-- Resource allocations. Pool usage and lock holders are derived from the
-- active rows, so a restart neither leaks nor double-grants anything.
CREATE TABLE allocations (
    id            TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL,
    principal     TEXT NOT NULL,
    holder        TEXT NOT NULL,    -- a label: the original user_id, or the step/task
    owner_kind    TEXT NOT NULL,    -- api, step, task, claim, run
    owner_ref     TEXT,             -- run id/step, task id
    requirements  TEXT NOT NULL,    -- canonical JSON
    priority      TEXT NOT NULL,
    status        TEXT NOT NULL,    -- active, released, expired
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    released_at   BIGINT,
    release_reason TEXT
);
CREATE INDEX allocations_by_status ON allocations (status);
CREATE INDEX allocations_by_principal ON allocations (principal, created_at, id);

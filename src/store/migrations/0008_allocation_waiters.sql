-- Requests waiting for resources, from every process: each process's allocator
-- keeps what waiters of other processes ahead of its own need free for them,
-- so priority order and aging hold across processes. A row is renewed by its
-- process's heartbeat (seen_at); rows of a process that died are ignored, then removed.
CREATE TABLE allocation_waiters (
    id           TEXT PRIMARY KEY,
    node         TEXT NOT NULL,
    principal    TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    holder       TEXT NOT NULL,
    requirements TEXT NOT NULL,
    priority     TEXT NOT NULL,
    since        BIGINT NOT NULL,
    seen_at      BIGINT NOT NULL
);

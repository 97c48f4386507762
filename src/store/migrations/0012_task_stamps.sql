-- Each session's task stamp, kept by every write of its tasks in the same
-- transaction: `(tasks, versions)` is the count of the session's tasks and
-- the sum of their versions. A process compares it with the graph it holds
-- in memory before each claim to notice another process's writes: one row
-- read instead of a scan of the session's tasks.
CREATE TABLE task_stamps (
    session_id TEXT PRIMARY KEY,
    tasks      BIGINT NOT NULL,
    versions   BIGINT NOT NULL
);
INSERT INTO task_stamps (session_id, tasks, versions)
    SELECT session_id, COUNT(*), SUM(version) FROM tasks GROUP BY session_id;

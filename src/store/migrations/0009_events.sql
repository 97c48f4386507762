-- The event log (see src/store/events.rs). `seq` is assigned by the store:
-- on SQLite from event_counter under the write lock, on PostgreSQL from the
-- sequence events_seq (created when the store opens, with the column
-- defaults); `xid` is the writing transaction's id on PostgreSQL, 0 on SQLite.
CREATE TABLE events (
    xid        BIGINT NOT NULL DEFAULT 0,
    seq        BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    principal  TEXT,
    session_id TEXT,
    run_id     TEXT,
    kind       TEXT NOT NULL,
    subject    TEXT NOT NULL,
    status     TEXT NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (xid, seq)
);
CREATE INDEX events_at ON events (at);

CREATE TABLE event_counter (
    id   INTEGER PRIMARY KEY,
    last BIGINT NOT NULL
);
INSERT INTO event_counter (id, last) VALUES (1, 0);

-- Every process working on this store (servers, workers, `myrmex run`),
-- renewed by its heartbeat: get_system_status lists the live ones, and a
-- process finds the work of one that died on its own machine at once.
CREATE TABLE processes (
    node         TEXT PRIMARY KEY,
    -- host name and pid namespace: where `pid` means that process.
    locality     TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    version      TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
-- Wake-ups between processes on a store without LISTEN/NOTIFY (SQLite): a
-- counter per topic, bumped by `notify`, watched by every process.
CREATE TABLE signals (
    topic   TEXT PRIMARY KEY,
    counter BIGINT NOT NULL
);

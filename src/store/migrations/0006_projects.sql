-- Projects: one row per project folder. `record` is the project's metadata as JSON
-- (the same document as <project>/.myrmex/project.json).
CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    principal   TEXT NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    path        TEXT NOT NULL,
    status      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    template    TEXT,
    tags        TEXT NOT NULL,
    record      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX projects_by_principal ON projects (principal, created_at, id);

-- A run for a project pins the project's context ({id, name, path, config}) it started with.
ALTER TABLE runs ADD COLUMN project_id TEXT;
ALTER TABLE runs ADD COLUMN project TEXT;
CREATE INDEX runs_by_project ON runs (project_id, created_at, id);

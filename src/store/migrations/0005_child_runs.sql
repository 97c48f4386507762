-- workflow.run: a child run names the run and step that started it.
ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
ALTER TABLE runs ADD COLUMN parent_step TEXT;
CREATE INDEX runs_by_parent ON runs (parent_run_id, parent_step);

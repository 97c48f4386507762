-- The original module's user_id of a session: a label the caller gives,
-- recorded and shown (never a way to act as another principal).
ALTER TABLE sessions ADD COLUMN user_id TEXT;

-- Static registration, drain, and session lifetimes (SQLite).
-- `declared` defaults to true so that an operator's own INSERT INTO runtime_nodes declares the
-- node; nodes that registered themselves before this migration were not declared.
ALTER TABLE runtime_nodes ADD COLUMN declared BOOLEAN NOT NULL DEFAULT 1;
UPDATE runtime_nodes SET declared = 0;
ALTER TABLE runtime_nodes ADD COLUMN drained BOOLEAN NOT NULL DEFAULT 0;

ALTER TABLE sessions ADD COLUMN timeout_seconds BIGINT NOT NULL DEFAULT 300;
ALTER TABLE sessions ADD COLUMN expires_at TEXT;
CREATE INDEX sessions_by_expiry ON sessions (status, expires_at);

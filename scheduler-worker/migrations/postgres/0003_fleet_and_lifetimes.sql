-- Static registration, drain, and session lifetimes (PostgreSQL).
-- `declared` defaults to true so that the seed's own INSERT INTO runtime_nodes (...) declares
-- the node; nodes that registered themselves before this migration were not declared.
ALTER TABLE runtime_nodes ADD COLUMN declared BOOLEAN NOT NULL DEFAULT TRUE;
UPDATE runtime_nodes SET declared = FALSE;
ALTER TABLE runtime_nodes ADD COLUMN drained BOOLEAN NOT NULL DEFAULT FALSE;

ALTER TABLE sessions ADD COLUMN timeout_seconds BIGINT NOT NULL DEFAULT 300;
ALTER TABLE sessions ADD COLUMN expires_at TIMESTAMPTZ;
CREATE INDEX sessions_by_expiry ON sessions (status, expires_at);

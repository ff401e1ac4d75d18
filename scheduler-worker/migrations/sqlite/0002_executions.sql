-- Executions (DESIGN.md: id, session_id, status, code, stdout, stderr, exit_code, ...), for SQLite.
-- stdout and stderr hold at most the node's output cap each; booleans are 0/1.

CREATE TABLE executions (
    id           TEXT PRIMARY KEY,
    session_id   TEXT NOT NULL,
    status       TEXT NOT NULL,
    language     TEXT NOT NULL,
    code         TEXT NOT NULL,
    stdout       TEXT NOT NULL DEFAULT '',
    stderr       TEXT NOT NULL DEFAULT '',
    exit_code    BIGINT,
    truncated    BOOLEAN NOT NULL DEFAULT FALSE,
    error        TEXT,
    state_lost   BOOLEAN NOT NULL DEFAULT FALSE,
    return_value TEXT,
    fresh        BOOLEAN NOT NULL DEFAULT FALSE,
    timeout_secs BIGINT NOT NULL,
    runtime_node TEXT,
    duration_ms  BIGINT,
    metrics      TEXT,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    completed_at TEXT,
    -- When the schedulers stop waiting for the node's result: created_at + timeout + grace.
    result_due_at TEXT NOT NULL
);

CREATE INDEX executions_by_session ON executions (session_id, created_at);
CREATE INDEX executions_due ON executions (status, result_due_at);

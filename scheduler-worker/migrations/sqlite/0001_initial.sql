-- The seed's tables and columns (DESIGN.md, fixed names), for SQLite.
-- Timestamps are RFC 3339 text in UTC, so ORDER BY on them is chronological.

CREATE TABLE runtime_nodes (
    node_id               TEXT PRIMARY KEY,
    hostname              TEXT NOT NULL,
    runtime_type          TEXT NOT NULL DEFAULT 'docker',
    ip_address            TEXT NOT NULL DEFAULT '',
    api_endpoint          TEXT NOT NULL DEFAULT '',
    status                TEXT NOT NULL DEFAULT 'offline',
    total_cpu_cores       REAL NOT NULL DEFAULT 0,
    total_memory_mb       BIGINT NOT NULL DEFAULT 0,
    running_containers    BIGINT NOT NULL DEFAULT 0,
    max_containers        BIGINT NOT NULL DEFAULT 0,
    allocated_cpu_cores   REAL NOT NULL DEFAULT 0,
    allocated_memory_mb   BIGINT NOT NULL DEFAULT 0,
    cached_images         TEXT NOT NULL DEFAULT '[]',
    labels                TEXT NOT NULL DEFAULT '{}',
    daemon_version        TEXT NOT NULL DEFAULT '',
    heartbeat_interval_ms BIGINT NOT NULL DEFAULT 5000,
    last_heartbeat_at     TEXT,
    registered_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE templates (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    image_url       TEXT NOT NULL,
    cpu_cores       REAL NOT NULL,
    memory_mb       BIGINT NOT NULL,
    pids_limit      BIGINT NOT NULL,
    network         TEXT NOT NULL DEFAULT 'none',
    env             TEXT NOT NULL DEFAULT '{}',
    timeout_seconds BIGINT NOT NULL DEFAULT 300,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    template_id    TEXT NOT NULL,
    status         TEXT NOT NULL,
    runtime_node   TEXT,
    container_id   TEXT,
    image          TEXT NOT NULL,
    cpu_cores      REAL NOT NULL,
    memory_mb      BIGINT NOT NULL,
    pids_limit     BIGINT NOT NULL,
    network        TEXT NOT NULL,
    env            TEXT NOT NULL DEFAULT '{}',
    failure_code   TEXT,
    failure_reason TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    started_at     TEXT,
    ended_at       TEXT
);

CREATE INDEX sessions_by_created_at ON sessions (created_at);
CREATE INDEX sessions_by_status ON sessions (status, created_at);
CREATE INDEX sessions_by_node ON sessions (runtime_node, status);

-- The seed's tables and columns (DESIGN.md, fixed names), for PostgreSQL. Column types accept
-- the seed's own statement: INSERT INTO runtime_nodes (...) VALUES (..., 8.0, 16384, 0, 100,
-- '["sandbox-executor:v1.0"]', NOW());

CREATE TABLE runtime_nodes (
    node_id               TEXT PRIMARY KEY,
    hostname              TEXT NOT NULL,
    runtime_type          TEXT NOT NULL DEFAULT 'docker',
    ip_address            TEXT NOT NULL DEFAULT '',
    api_endpoint          TEXT NOT NULL DEFAULT '',
    status                TEXT NOT NULL DEFAULT 'offline',
    total_cpu_cores       DOUBLE PRECISION NOT NULL DEFAULT 0,
    total_memory_mb       BIGINT NOT NULL DEFAULT 0,
    running_containers    BIGINT NOT NULL DEFAULT 0,
    max_containers        BIGINT NOT NULL DEFAULT 0,
    allocated_cpu_cores   DOUBLE PRECISION NOT NULL DEFAULT 0,
    allocated_memory_mb   BIGINT NOT NULL DEFAULT 0,
    cached_images         TEXT NOT NULL DEFAULT '[]',
    labels                TEXT NOT NULL DEFAULT '{}',
    daemon_version        TEXT NOT NULL DEFAULT '',
    heartbeat_interval_ms BIGINT NOT NULL DEFAULT 5000,
    last_heartbeat_at     TIMESTAMPTZ,
    registered_at         TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE templates (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    image_url       TEXT NOT NULL,
    cpu_cores       DOUBLE PRECISION NOT NULL,
    memory_mb       BIGINT NOT NULL,
    pids_limit      BIGINT NOT NULL,
    network         TEXT NOT NULL DEFAULT 'none',
    env             TEXT NOT NULL DEFAULT '{}',
    timeout_seconds BIGINT NOT NULL DEFAULT 300,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    template_id    TEXT NOT NULL,
    status         TEXT NOT NULL,
    runtime_node   TEXT,
    container_id   TEXT,
    image          TEXT NOT NULL,
    cpu_cores      DOUBLE PRECISION NOT NULL,
    memory_mb      BIGINT NOT NULL,
    pids_limit     BIGINT NOT NULL,
    network        TEXT NOT NULL,
    env            TEXT NOT NULL DEFAULT '{}',
    failure_code   TEXT,
    failure_reason TEXT,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    started_at     TIMESTAMPTZ,
    ended_at       TIMESTAMPTZ
);

CREATE INDEX sessions_by_created_at ON sessions (created_at);
CREATE INDEX sessions_by_status ON sessions (status, created_at);
CREATE INDEX sessions_by_node ON sessions (runtime_node, status);

-- Holding strangers' code: each template's and session's disk quota, CPU and memory requests
-- (what placement counts; cpu_cores and memory_mb stay the limits), container runtime, and
-- egress rules (JSON: {"allow": [...], "deny": [...]}).
ALTER TABLE templates ADD COLUMN disk_mb BIGINT NOT NULL DEFAULT 2048;
ALTER TABLE templates ADD COLUMN cpu_request_cores DOUBLE PRECISION;
ALTER TABLE templates ADD COLUMN memory_request_mb BIGINT;
ALTER TABLE templates ADD COLUMN runtime TEXT NOT NULL DEFAULT 'runc';
ALTER TABLE templates ADD COLUMN egress TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sessions ADD COLUMN disk_mb BIGINT NOT NULL DEFAULT 2048;
ALTER TABLE sessions ADD COLUMN cpu_request_cores DOUBLE PRECISION;
ALTER TABLE sessions ADD COLUMN memory_request_mb BIGINT;
ALTER TABLE sessions ADD COLUMN runtime TEXT NOT NULL DEFAULT 'runc';
ALTER TABLE sessions ADD COLUMN egress TEXT NOT NULL DEFAULT '{}';

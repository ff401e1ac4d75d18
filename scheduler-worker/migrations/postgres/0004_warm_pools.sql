-- Warm pools: how many ready containers of a template each node keeps for sessions to claim.
ALTER TABLE templates ADD COLUMN warm_pool_size BIGINT NOT NULL DEFAULT 0;

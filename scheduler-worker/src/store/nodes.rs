//! The `runtime_nodes` table: registrations, the heartbeats' latest figures, the health the
//! schedulers judge, and the operators' declarations and drain.

use chrono::{DateTime, Utc};
use messages::NodeId;
use messages::api::nodes::NodeDeclaration;
use messages::node::{Heartbeat, NodeRegistration};

use super::rows::{self, NodeRecord, NodeRow};
use super::{Store, StoreError};

impl Store {
    /// Records a node's registration, keeping its heartbeat fields and its status (the health the
    /// schedulers judge, [`Store::set_node_statuses`]). A declared node keeps its declared
    /// capacity; a node new to the table is recorded as not declared and online.
    pub async fn upsert_node(
        &self,
        registration: &NodeRegistration,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_writer!(self, pool => {
            sqlx::query(
                "INSERT INTO runtime_nodes (node_id, hostname, runtime_type, ip_address, \
                 api_endpoint, status, total_cpu_cores, total_memory_mb, max_containers, \
                 cached_images, labels, daemon_version, heartbeat_interval_ms, last_heartbeat_at, \
                 registered_at, declared) \
                 VALUES ($1, $2, $3, $4, $5, 'online', $6, $7, $8, $9, $10, $11, $12, $13, $13, \
                 FALSE) \
                 ON CONFLICT (node_id) DO UPDATE SET hostname = excluded.hostname, \
                 runtime_type = excluded.runtime_type, ip_address = excluded.ip_address, \
                 api_endpoint = excluded.api_endpoint, \
                 total_cpu_cores = CASE WHEN runtime_nodes.declared \
                   THEN runtime_nodes.total_cpu_cores ELSE excluded.total_cpu_cores END, \
                 total_memory_mb = CASE WHEN runtime_nodes.declared \
                   THEN runtime_nodes.total_memory_mb ELSE excluded.total_memory_mb END, \
                 max_containers = CASE WHEN runtime_nodes.declared \
                   THEN runtime_nodes.max_containers ELSE excluded.max_containers END, \
                 cached_images = excluded.cached_images, \
                 labels = excluded.labels, daemon_version = excluded.daemon_version, \
                 heartbeat_interval_ms = excluded.heartbeat_interval_ms, \
                 last_heartbeat_at = excluded.last_heartbeat_at, \
                 registered_at = excluded.registered_at",
            )
            .bind(registration.node_id.as_str())
            .bind(&registration.hostname)
            .bind(&registration.runtime_type)
            .bind(&registration.ip_address)
            .bind(&registration.api_endpoint)
            .bind(registration.total_cpu_cores)
            .bind(rows::to_i64(registration.total_memory_mb))
            .bind(i64::from(registration.max_containers))
            .bind(rows::to_json(&registration.cached_images))
            .bind(rows::to_json(&registration.labels))
            .bind(&registration.daemon_version)
            .bind(rows::to_i64(registration.heartbeat_interval_ms))
            .bind(at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records the latest heartbeat of each node (with when it was received) on the nodes' rows,
    /// in one transaction; rows of nodes never registered are left alone, and so is a row that
    /// holds a later heartbeat (from another replica's batch). The `status` column is not
    /// touched: it is the node's health as the schedulers judge it
    /// ([`Store::set_node_statuses`]), which a late batch must not overwrite. Callers pass the
    /// rows in `node_id` order, so replicas writing the same rows on PostgreSQL take their row
    /// locks in one order and never deadlock.
    pub async fn record_heartbeats(
        &self,
        heartbeats: &[(Heartbeat, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        on_writer!(self, pool => {
            let mut transaction = pool.begin().await?;
            for (heartbeat, at) in heartbeats {
                sqlx::query(
                    "UPDATE runtime_nodes SET last_heartbeat_at = $2, running_containers = $3, \
                     allocated_cpu_cores = $4, allocated_memory_mb = $5 \
                     WHERE node_id = $1 \
                     AND (last_heartbeat_at IS NULL OR last_heartbeat_at < $2)",
                )
                .bind(heartbeat.node_id.as_str())
                .bind(*at)
                .bind(i64::from(heartbeat.running_containers))
                .bind(heartbeat.allocated_cpu_cores)
                .bind(rows::to_i64(heartbeat.allocated_memory_mb))
                .execute(&mut *transaction)
                .await?;
            }
            transaction.commit().await?;
        });
        Ok(())
    }

    /// Records nodes' health (`online`, `suspect`, ...) in one transaction; callers pass the rows
    /// in `node_id` order (see [`Store::record_heartbeats`]).
    pub async fn set_node_statuses(
        &self,
        statuses: &[(NodeId, &'static str)],
    ) -> Result<(), StoreError> {
        on_writer!(self, pool => {
            let mut transaction = pool.begin().await?;
            for (node_id, status) in statuses {
                sqlx::query("UPDATE runtime_nodes SET status = $2 WHERE node_id = $1")
                    .bind(node_id.as_str())
                    .bind(*status)
                    .execute(&mut *transaction)
                    .await?;
            }
            transaction.commit().await?;
        });
        Ok(())
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows: Vec<NodeRow> = on_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM runtime_nodes ORDER BY node_id")
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(NodeRecord::try_from).collect()
    }

    /// Declares a node, or changes its declaration; its heartbeat figures are kept.
    pub async fn declare_node(
        &self,
        declaration: &NodeDeclaration,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_writer!(self, pool => {
            sqlx::query(
                "INSERT INTO runtime_nodes (node_id, hostname, runtime_type, ip_address, \
                 api_endpoint, status, total_cpu_cores, total_memory_mb, max_containers, labels, \
                 registered_at, declared) \
                 VALUES ($1, $2, $3, $4, $5, 'offline', $6, $7, $8, $9, $10, TRUE) \
                 ON CONFLICT (node_id) DO UPDATE SET hostname = excluded.hostname, \
                 runtime_type = excluded.runtime_type, ip_address = excluded.ip_address, \
                 api_endpoint = excluded.api_endpoint, total_cpu_cores = excluded.total_cpu_cores, \
                 total_memory_mb = excluded.total_memory_mb, \
                 max_containers = excluded.max_containers, labels = excluded.labels, \
                 declared = TRUE",
            )
            .bind(declaration.node_id.as_str())
            .bind(&declaration.hostname)
            .bind(&declaration.runtime_type)
            .bind(&declaration.ip_address)
            .bind(&declaration.api_endpoint)
            .bind(declaration.total_cpu_cores)
            .bind(rows::to_i64(declaration.total_memory_mb))
            .bind(i64::from(declaration.max_containers))
            .bind(rows::to_json(&declaration.labels))
            .bind(at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn get_node(&self, node_id: &NodeId) -> Result<Option<NodeRecord>, StoreError> {
        let row: Option<NodeRow> = on_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM runtime_nodes WHERE node_id = $1")
                .bind(node_id.as_str())
                .fetch_optional(pool)
                .await?
        });
        row.map(NodeRecord::try_from).transpose()
    }

    /// Drains or undrains a node; `false` when no such node is recorded.
    pub async fn set_node_drained(
        &self,
        node_id: &NodeId,
        drained: bool,
    ) -> Result<bool, StoreError> {
        let changed = on_writer!(self, pool => {
            sqlx::query("UPDATE runtime_nodes SET drained = $2 WHERE node_id = $1")
                .bind(node_id.as_str())
                .bind(drained)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(changed == 1)
    }
}

//! What operators change (node declarations, drain, templates, session timeouts) and the
//! queries the lifetime sweeps run.

use chrono::{DateTime, Utc};
use messages::control::{NodeDeclaration, TemplateDefinition};
use messages::session::{Session, SessionStatus, Template};
use messages::{NodeId, SessionId};

use super::rows::{self, NodeRow, SessionRow, TemplateRow};
use super::{NodeRecord, Pool, Store, StoreError};

/// The statuses of a session that has not ended.
pub const LIVE: [SessionStatus; 3] = [
    SessionStatus::Pending,
    SessionStatus::Creating,
    SessionStatus::Running,
];

/// `'a', 'b'` for an `IN (...)` list. The statuses come from the enum, never from input.
fn status_list(statuses: &[SessionStatus]) -> String {
    statuses
        .iter()
        .map(|status| format!("'{}'", status.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
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

    /// Adds a template; `false` when one with its id exists.
    pub async fn create_template(
        &self,
        definition: &TemplateDefinition,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.insert_template_if_absent(&template_of(definition, at))
            .await
    }

    /// Replaces a template; `None` when there is none with its id.
    pub async fn update_template(
        &self,
        definition: &TemplateDefinition,
        at: DateTime<Utc>,
    ) -> Result<Option<Template>, StoreError> {
        let updated = on_writer!(self, pool => {
            sqlx::query(
                "UPDATE templates SET name = $2, description = $3, image_url = $4, \
                 cpu_cores = $5, memory_mb = $6, pids_limit = $7, network = $8, env = $9, \
                 timeout_seconds = $10, warm_pool_size = $12, updated_at = $11 WHERE id = $1",
            )
            .bind(&definition.id)
            .bind(&definition.name)
            .bind(&definition.description)
            .bind(&definition.image_url)
            .bind(definition.resources.cpu_cores)
            .bind(rows::to_i64(definition.resources.memory_mb))
            .bind(i64::from(definition.resources.pids_limit))
            .bind(definition.network.as_str())
            .bind(rows::to_json(&definition.env))
            .bind(rows::to_i64(definition.timeout_seconds))
            .bind(at)
            .bind(i64::from(definition.warm_pool_size))
            .execute(pool)
            .await?
            .rows_affected()
        });
        if updated == 0 {
            return Ok(None);
        }
        self.get_template(&definition.id).await
    }

    /// Deletes a template and answers what it was; `None` when there is none.
    pub async fn delete_template(&self, id: &str) -> Result<Option<Template>, StoreError> {
        let row: Option<TemplateRow> = on_writer!(self, pool => {
            sqlx::query_as("DELETE FROM templates WHERE id = $1 RETURNING *")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        row.map(Template::try_from).transpose()
    }

    /// Sets a live session's timeout, counted from `at`; the session as it is afterwards and
    /// whether it was live (so changed).
    pub async fn set_session_timeout(
        &self,
        id: &SessionId,
        timeout_seconds: u64,
        at: DateTime<Utc>,
    ) -> Result<Option<(Session, bool)>, StoreError> {
        let sql = format!(
            "UPDATE sessions SET timeout_seconds = $2, expires_at = $3, updated_at = $4 \
             WHERE id = $1 AND status IN ({})",
            status_list(&LIVE)
        );
        let changed = on_writer!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id.as_str())
                .bind(rows::to_i64(timeout_seconds))
                .bind(messages::session::expiry(at, timeout_seconds))
                .bind(at)
                .execute(pool)
                .await?
                .rows_affected()
        }) == 1;
        Ok(self
            .get_session(id)
            .await?
            .map(|session| (session, changed)))
    }

    /// Live sessions whose time ran out by `now`.
    pub async fn expired_sessions(&self, now: DateTime<Utc>) -> Result<Vec<Session>, StoreError> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE status IN ({}) AND expires_at < $1 \
             ORDER BY expires_at LIMIT 500",
            session_columns!(),
            status_list(&LIVE)
        );
        self.sessions_where(sql, Param::Time(now)).await
    }

    /// Sessions still not running that were accepted before `before`.
    pub async fn sessions_not_started_since(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE status IN ('pending', 'creating') AND created_at < $1 \
             ORDER BY created_at LIMIT 500",
            session_columns!()
        );
        self.sessions_where(sql, Param::Time(before)).await
    }

    /// The live sessions recorded on `node`.
    pub async fn live_sessions_on(&self, node: &NodeId) -> Result<Vec<Session>, StoreError> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE runtime_node = $1 AND status IN ({}) ORDER BY id",
            session_columns!(),
            status_list(&LIVE)
        );
        self.sessions_where(sql, Param::Text(node.as_str())).await
    }

    /// Runs a session query with its one parameter.
    async fn sessions_where(
        &self,
        sql: String,
        param: Param<'_>,
    ) -> Result<Vec<Session>, StoreError> {
        let rows: Vec<SessionRow> = on_pool!(self, pool => {
            let query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
            let query = match param {
                Param::Time(at) => query.bind(at),
                Param::Text(text) => query.bind(text),
            };
            query.fetch_all(pool).await?
        });
        rows.into_iter()
            .map(|row| row.into_session_and_env().map(|(session, _)| session))
            .collect()
    }
}

/// The one parameter of a session query.
enum Param<'a> {
    Time(DateTime<Utc>),
    Text(&'a str),
}

fn template_of(definition: &TemplateDefinition, at: DateTime<Utc>) -> Template {
    Template {
        id: definition.id.clone(),
        name: definition.name.clone(),
        description: definition.description.clone(),
        image_url: definition.image_url.clone(),
        resources: definition.resources,
        network: definition.network,
        env: definition.env.clone(),
        timeout_seconds: definition.timeout_seconds,
        warm_pool_size: definition.warm_pool_size,
        created_at: at,
        updated_at: at,
    }
}

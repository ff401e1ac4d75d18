//! The scheduler's database: SQLite by default, PostgreSQL when the URL says `postgres://`.
//! One set of SQL serves both (placeholders `$n` work in each); migrations differ only in types.

mod rows;

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use messages::api::ListSessions;
use messages::node::{Heartbeat, NodeRegistration};
use messages::session::{NetworkMode, Resources, Session, SessionStatus, Template};
use messages::{ErrorCode, NodeId, SessionId};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use executions::OverdueExecution;
pub use rows::NodeRecord;
use rows::{NodeRow, SessionRow, TemplateRow};

/// A database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported DATABASE_URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database writer stopped")]
    WriterGone,
    #[error("a batch of database writes failed: {0}")]
    BatchFailed(String),
    #[error("row {table}/{id} holds an invalid value: {reason}")]
    Corrupt {
        table: &'static str,
        id: String,
        reason: String,
    },
}

#[derive(Debug, Clone)]
enum Pool {
    /// Reads share `readers`; every write goes through the one `writer` connection. SQLite
    /// takes one writer at a time, and a second connection that tries waits in SQLite's busy
    /// handler, which sleeps in steps of milliseconds: queueing writers on one connection
    /// in-process instead keeps a busy scheduler's writes at their real cost.
    Sqlite {
        readers: SqlitePool,
        writer: SqlitePool,
        /// Commits the placements' session writes in batches, on `writer`.
        batcher: batch::Batcher,
    },
    Postgres(PgPool),
}

/// Runs the same read on whichever backend the store has.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite { readers: $pool, .. } => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// Runs the same write (or a transaction) on whichever backend the store has.
macro_rules! on_writer {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite { writer: $pool, .. } => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

// After `on_pool!`, which it uses.
mod executions;

/// The database of sessions, templates, nodes and executions. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
}

/// The current time at the database's precision (microseconds), so what is written reads back
/// equal.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// The templates every fresh database has. `python-basic` is the seed's, with the executor
/// image; it has no network, the safe default for untrusted code. `python-network` joins the
/// node's `sandbox_network` bridge.
fn seed_templates(at: DateTime<Utc>) -> [Template; 2] {
    let resources = Resources {
        cpu_cores: 1.0,
        memory_mb: 512,
        pids_limit: 256,
    };
    let env = BTreeMap::from([("LANG".to_owned(), "C.UTF-8".to_owned())]);
    [
        Template {
            id: "python-basic".into(),
            name: "Python 3".into(),
            description: "Python 3 on Debian, no network".into(),
            image_url: "sandbox-executor:v1.0".into(),
            resources,
            network: NetworkMode::None,
            env: env.clone(),
            timeout_seconds: 300,
            warm_pool_size: 0,
            created_at: at,
            updated_at: at,
        },
        Template {
            id: "python-network".into(),
            name: "Python 3 on sandbox_network".into(),
            description: "Python 3 on Debian, attached to the node's sandbox_network bridge".into(),
            image_url: "sandbox-executor:v1.0".into(),
            resources,
            network: NetworkMode::SandboxNetwork,
            env,
            timeout_seconds: 300,
            warm_pool_size: 0,
            created_at: at,
            updated_at: at,
        },
    ]
}

/// The columns of a session row, spelled once for every query that reads sessions.
macro_rules! session_columns {
    () => {
        "id, template_id, status, runtime_node, container_id, image, cpu_cores, memory_mb, \
         pids_limit, network, env, failure_code, failure_reason, created_at, updated_at, \
         started_at, ended_at, timeout_seconds, expires_at"
    };
}

/// The insert of a new session (unless one with its id exists), bound to its values; for
/// either backend.
macro_rules! insert_session_query {
    ($session:expr, $env:expr) => {{
        let (session, env) = ($session, $env);
        sqlx::query(
            "INSERT INTO sessions (id, template_id, status, runtime_node, container_id, image, \
             cpu_cores, memory_mb, pids_limit, network, env, failure_code, failure_reason, \
             created_at, updated_at, started_at, ended_at, timeout_seconds, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(session.id.as_str())
        .bind(&session.template_id)
        .bind(session.status.as_str())
        .bind(session.runtime_node.as_ref().map(messages::NodeId::as_str))
        .bind(session.container_id.as_deref())
        .bind(&session.image)
        .bind(session.resources.cpu_cores)
        .bind($crate::store::rows::to_i64(session.resources.memory_mb))
        .bind(i64::from(session.resources.pids_limit))
        .bind(session.network.as_str())
        .bind($crate::store::rows::to_json(env))
        .bind(session.failure_code.map(messages::ErrorCode::as_str))
        .bind(session.failure_reason.as_deref())
        .bind(session.created_at)
        .bind(session.updated_at)
        .bind(session.started_at)
        .bind(session.ended_at)
        .bind($crate::store::rows::to_i64(session.timeout_seconds))
        .bind(session.expires_at)
    }};
}

/// A guarded session transition (the `UPDATE` of [`Store::transition`]) bound to its values; for either
/// backend.
macro_rules! transition_query {
    ($sql:expr, $id:expr, $change:expr, $at:expr) => {{
        let (id, change): (&messages::SessionId, &$crate::store::Transition) = ($id, $change);
        sqlx::query_as(sqlx::AssertSqlSafe($sql))
            .bind(id.as_str())
            .bind(change.status.as_str())
            .bind(change.runtime_node.as_ref().map(messages::NodeId::as_str))
            .bind(change.container_id.as_deref())
            .bind(change.failure_code.map(messages::ErrorCode::as_str))
            .bind(change.failure_reason.as_deref())
            .bind($at)
    }};
}

// After the query macros, which it uses.
mod batch;

mod operations;

pub use operations::LIVE;

/// The filter of [`Store::list_sessions`], spelled once for the page and the count.
macro_rules! session_filter {
    () => {
        "($1 IS NULL OR status = $1) AND ($2 IS NULL OR template_id = $2)"
    };
}

impl Store {
    /// Connects and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?,
            )
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                // WAL lets readers and the one writer proceed together; the busy timeout lets
                // several replicas on one host share the file.
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10))
                // In WAL mode, NORMAL syncs at checkpoints rather than at every commit: a
                // crash of the process loses nothing, a power cut may lose the last commits.
                // That is the durability JetStream's file store gives the requests themselves
                // (it syncs periodically), and the node daemons' inventories reconcile what
                // the database forgot. FULL would bound placements by the disk's fsync rate.
                .synchronous(SqliteSynchronous::Normal);
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            let readers = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await?;
            let batcher = batch::Batcher::start(writer.clone());
            Pool::Sqlite {
                readers,
                writer,
                batcher,
            }
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let store = Self { pool };
        store.migrate().await?;
        store.seed().await?;
        Ok(store)
    }

    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite { .. } => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite { writer, .. } => {
                sqlx::migrate!("./migrations/sqlite").run(writer).await?;
            }
            Pool::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Adds the seed templates that are missing; an operator's edits to them are kept.
    async fn seed(&self) -> Result<(), StoreError> {
        for template in seed_templates(now()) {
            self.insert_template_if_absent(&template).await?;
        }
        Ok(())
    }

    /// Adds a template unless one with its id exists; whether it was added.
    pub async fn insert_template_if_absent(&self, template: &Template) -> Result<bool, StoreError> {
        let env = rows::to_json(&template.env);
        let added = on_writer!(self, pool => {
            sqlx::query(
                "INSERT INTO templates (id, name, description, image_url, cpu_cores, memory_mb, \
                 pids_limit, network, env, timeout_seconds, warm_pool_size, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&template.id)
            .bind(&template.name)
            .bind(&template.description)
            .bind(&template.image_url)
            .bind(template.resources.cpu_cores)
            .bind(rows::to_i64(template.resources.memory_mb))
            .bind(i64::from(template.resources.pids_limit))
            .bind(template.network.as_str())
            .bind(&env)
            .bind(rows::to_i64(template.timeout_seconds))
            .bind(i64::from(template.warm_pool_size))
            .bind(template.created_at)
            .bind(template.updated_at)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(added == 1)
    }

    pub async fn get_template(&self, id: &str) -> Result<Option<Template>, StoreError> {
        let row: Option<TemplateRow> = on_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM templates WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        row.map(Template::try_from).transpose()
    }

    pub async fn list_templates(&self) -> Result<Vec<Template>, StoreError> {
        let rows: Vec<TemplateRow> = on_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM templates ORDER BY id")
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(Template::try_from).collect()
    }

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

    /// Records a new session; `false` when one with this id exists already (a redelivery).
    pub async fn insert_session_if_absent(
        &self,
        session: &Session,
        env: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        let inserted = match &self.pool {
            Pool::Sqlite { batcher, .. } => {
                batcher
                    .submit(|done| batch::Write::InsertSession {
                        session: session.clone(),
                        env: env.clone(),
                        done,
                        inserted: false,
                    })
                    .await?
            }
            Pool::Postgres(pool) => {
                insert_session_query!(session, env)
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            }
        };
        Ok(inserted)
    }

    pub async fn get_session(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self
            .get_session_with_env(id)
            .await?
            .map(|(session, _)| session))
    }

    /// A session and the environment it was requested with (kept out of [`Session`], which the
    /// API shows, because it may hold secrets).
    pub async fn get_session_with_env(
        &self,
        id: &SessionId,
    ) -> Result<Option<(Session, BTreeMap<String, String>)>, StoreError> {
        let sql = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE id = $1"
        );
        let row: Option<SessionRow> = on_pool!(self, pool => {
            sqlx::query_as(sql).bind(id.as_str()).fetch_optional(pool).await?
        });
        row.map(SessionRow::into_session_and_env).transpose()
    }

    /// Sessions newest first, and how many match the filter in all.
    pub async fn list_sessions(
        &self,
        filter: &ListSessions,
    ) -> Result<(Vec<Session>, u64), StoreError> {
        let status = filter.status.map(SessionStatus::as_str);
        let template = filter.template_id.as_deref();
        let page_sql = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE ",
            session_filter!(),
            " ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
        );
        let count_sql = concat!("SELECT COUNT(*) FROM sessions WHERE ", session_filter!());
        let (rows, total): (Vec<SessionRow>, i64) = on_pool!(self, pool => {
            let rows = sqlx::query_as(page_sql)
                .bind(status)
                .bind(template)
                .bind(i64::from(filter.limit))
                .bind(i64::from(filter.offset))
                .fetch_all(pool)
                .await?;
            let total = sqlx::query_scalar(count_sql)
                .bind(status)
                .bind(template)
                .fetch_one(pool)
                .await?;
            (rows, total)
        });
        let sessions = rows
            .into_iter()
            .map(|row| row.into_session_and_env().map(|(session, _)| session))
            .collect::<Result<_, _>>()?;
        Ok((sessions, u64::try_from(total).unwrap_or_default()))
    }

    /// Applies `change` to the session if its status is one of `from`; returns the session as it
    /// is afterwards and whether this call changed it. Guarding on the current status is what
    /// keeps racing replicas from undoing each other (say, a late "running" after a delete).
    pub async fn transition(
        &self,
        id: &SessionId,
        from: &[SessionStatus],
        change: &Transition,
    ) -> Result<Option<(Session, bool)>, StoreError> {
        let at = now();
        // The statuses come from the enum, never from input, so they can be spelled inline.
        let in_list = from
            .iter()
            .map(|status| format!("'{}'", status.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE sessions SET status = $2, \
             runtime_node = COALESCE($3, runtime_node), \
             container_id = COALESCE($4, container_id), \
             failure_code = COALESCE($5, failure_code), \
             failure_reason = COALESCE($6, failure_reason), \
             updated_at = $7, \
             started_at = CASE WHEN $2 = 'running' THEN $7 ELSE started_at END, \
             ended_at = CASE WHEN $2 IN ('failed', 'terminated', 'lost') THEN COALESCE(ended_at, $7) \
                        ELSE ended_at END \
             WHERE id = $1 AND status IN ({in_list}) RETURNING {}",
            session_columns!()
        );
        let updated: Option<SessionRow> = match &self.pool {
            Pool::Sqlite { batcher, .. } => {
                batcher
                    .submit(|done| batch::Write::Transition {
                        sql,
                        id: id.clone(),
                        change: change.clone(),
                        at,
                        done,
                        row: None,
                    })
                    .await?
            }
            Pool::Postgres(pool) => {
                transition_query!(sql, id, change, at)
                    .fetch_optional(pool)
                    .await?
            }
        };
        match updated {
            Some(row) => Ok(Some((row.into_session_and_env()?.0, true))),
            // Not in one of `from` (or absent): as it is.
            None => Ok(self.get_session(id).await?.map(|session| (session, false))),
        }
    }
}

/// A change of a session's state, applied by [`Store::transition`].
#[derive(Debug, Clone)]
pub struct Transition {
    pub status: SessionStatus,
    pub runtime_node: Option<NodeId>,
    pub container_id: Option<String>,
    pub failure_code: Option<ErrorCode>,
    pub failure_reason: Option<String>,
}

impl Transition {
    pub fn to(status: SessionStatus) -> Self {
        Self {
            status,
            runtime_node: None,
            container_id: None,
            failure_code: None,
            failure_reason: None,
        }
    }

    pub fn creating_on(node: NodeId) -> Self {
        Self {
            runtime_node: Some(node),
            ..Self::to(SessionStatus::Creating)
        }
    }

    pub fn running(node: NodeId, container_id: String) -> Self {
        Self {
            runtime_node: Some(node),
            container_id: Some(container_id),
            ..Self::to(SessionStatus::Running)
        }
    }

    pub fn failed(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self::ended(SessionStatus::Failed, code, reason)
    }

    /// Ends the session in `status` (failed, terminated or lost) with the reason.
    pub fn ended(status: SessionStatus, code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            failure_code: Some(code),
            failure_reason: Some(reason.into()),
            ..Self::to(status)
        }
    }
}

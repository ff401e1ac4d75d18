//! Database rows and their conversion into the wire types, checking every stored value.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use messages::egress::Egress;
use messages::execution::{Execution, ExecutionStatus, Language};
use messages::node::NodeRegistration;
use messages::session::{Session, SessionStatus};
use messages::template::{
    ContainerSpec, NetworkMode, Resources, Runtime, Template, TemplateDefinition,
};
use messages::{ErrorCode, ExecutionId, NodeId, SessionId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

pub(super) fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// Counts and sizes are unsigned in the wire types and BIGINT in the database.
pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

struct Check {
    table: &'static str,
    id: String,
}

impl Check {
    /// Checks the values of row `id` of `table`.
    fn row(table: &'static str, id: &str) -> Self {
        Self {
            table,
            id: id.to_owned(),
        }
    }

    fn corrupt(&self, reason: impl ToString) -> StoreError {
        StoreError::Corrupt {
            table: self.table,
            id: self.id.clone(),
            reason: reason.to_string(),
        }
    }

    fn json<T: DeserializeOwned>(&self, column: &str, text: &str) -> Result<T, StoreError> {
        serde_json::from_str(text).map_err(|error| self.corrupt(format!("{column}: {error}")))
    }

    fn unsigned<T: TryFrom<i64>>(&self, column: &str, value: i64) -> Result<T, StoreError> {
        T::try_from(value).map_err(|_| self.corrupt(format!("{column} = {value} is out of range")))
    }

    fn parse<T: FromStr>(&self, column: &str, text: &str) -> Result<T, StoreError>
    where
        T::Err: std::fmt::Display,
    {
        text.parse()
            .map_err(|error: T::Err| self.corrupt(format!("{column}: {error}")))
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct TemplateRow {
    id: String,
    name: String,
    description: String,
    image_url: String,
    cpu_cores: f64,
    memory_mb: i64,
    pids_limit: i64,
    network: String,
    env: String,
    timeout_seconds: i64,
    warm_pool_size: i64,
    #[sqlx(flatten)]
    isolation: IsolationColumns,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The columns templates and sessions share beyond the limits: the disk quota, the requests,
/// the runtime and the egress rules (migration 0005).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct IsolationColumns {
    disk_mb: i64,
    cpu_request_cores: Option<f64>,
    memory_request_mb: Option<i64>,
    runtime: String,
    egress: String,
}

impl IsolationColumns {
    fn resources(
        &self,
        check: &Check,
        cpu_cores: f64,
        memory_mb: i64,
        pids_limit: i64,
    ) -> Result<Resources, StoreError> {
        Ok(Resources {
            cpu_cores,
            memory_mb: check.unsigned("memory_mb", memory_mb)?,
            pids_limit: check.unsigned("pids_limit", pids_limit)?,
            disk_mb: check.unsigned("disk_mb", self.disk_mb)?,
            cpu_request_cores: self.cpu_request_cores,
            memory_request_mb: self
                .memory_request_mb
                .map(|mb| check.unsigned("memory_request_mb", mb))
                .transpose()?,
        })
    }

    fn runtime(&self, check: &Check) -> Result<Runtime, StoreError> {
        check.parse("runtime", &self.runtime)
    }

    fn egress(&self, check: &Check) -> Result<Egress, StoreError> {
        check.json("egress", &self.egress)
    }
}

impl TryFrom<TemplateRow> for Template {
    type Error = StoreError;
    fn try_from(row: TemplateRow) -> Result<Self, StoreError> {
        let check = Check::row("templates", &row.id);
        let isolation = &row.isolation;
        let definition = TemplateDefinition {
            resources: isolation.resources(&check, row.cpu_cores, row.memory_mb, row.pids_limit)?,
            runtime: isolation.runtime(&check)?,
            egress: isolation.egress(&check)?,
            network: check.parse("network", &row.network)?,
            env: check.json("env", &row.env)?,
            timeout_seconds: check.unsigned("timeout_seconds", row.timeout_seconds)?,
            warm_pool_size: check.unsigned("warm_pool_size", row.warm_pool_size)?,
            id: row.id,
            name: row.name,
            description: row.description,
            image_url: row.image_url,
        };
        Ok(Template {
            definition,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct SessionRow {
    id: String,
    template_id: String,
    status: String,
    runtime_node: Option<String>,
    container_id: Option<String>,
    image: String,
    cpu_cores: f64,
    memory_mb: i64,
    pids_limit: i64,
    network: String,
    env: String,
    failure_code: Option<String>,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    timeout_seconds: i64,
    expires_at: Option<DateTime<Utc>>,
    #[sqlx(flatten)]
    isolation: IsolationColumns,
}

impl SessionRow {
    /// The session, and the spec its container is made from (its image, limits and network
    /// are the session's; its environment is kept only here).
    pub(super) fn into_session_and_spec(self) -> Result<(Session, ContainerSpec), StoreError> {
        let check = Check::row("sessions", &self.id);
        let session = Session {
            id: check.parse::<SessionId>("id", &self.id)?,
            status: check.parse::<SessionStatus>("status", &self.status)?,
            runtime_node: self
                .runtime_node
                .as_deref()
                .map(|node| check.parse::<NodeId>("runtime_node", node))
                .transpose()?,
            resources: self.isolation.resources(
                &check,
                self.cpu_cores,
                self.memory_mb,
                self.pids_limit,
            )?,
            network: check.parse::<NetworkMode>("network", &self.network)?,
            runtime: self.isolation.runtime(&check)?,
            failure_code: self.failure_code.as_deref().map(ErrorCode::parse),
            template_id: self.template_id,
            container_id: self.container_id,
            image: self.image,
            failure_reason: self.failure_reason,
            created_at: self.created_at,
            updated_at: self.updated_at,
            started_at: self.started_at,
            ended_at: self.ended_at,
            timeout_seconds: check.unsigned("timeout_seconds", self.timeout_seconds)?,
            expires_at: self.expires_at,
        };
        let spec = ContainerSpec {
            image: session.image.clone(),
            resources: session.resources,
            network: session.network,
            env: check.json("env", &self.env)?,
            runtime: session.runtime,
            egress: self.isolation.egress(&check)?,
        };
        Ok((session, spec))
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct NodeRow {
    node_id: String,
    hostname: String,
    runtime_type: String,
    ip_address: String,
    api_endpoint: String,
    status: String,
    total_cpu_cores: f64,
    total_memory_mb: i64,
    running_containers: i64,
    max_containers: i64,
    allocated_cpu_cores: f64,
    allocated_memory_mb: i64,
    cached_images: String,
    labels: String,
    daemon_version: String,
    heartbeat_interval_ms: i64,
    last_heartbeat_at: Option<DateTime<Utc>>,
    registered_at: DateTime<Utc>,
    declared: bool,
    drained: bool,
}

/// A node as the database remembers it: its registration and the last figures it reported.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub registration: NodeRegistration,
    pub status: String,
    pub running_containers: u32,
    pub allocated_cpu_cores: f64,
    pub allocated_memory_mb: u64,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// An operator declared it: only such nodes join in static mode, and its capacity is the
    /// declared one.
    pub declared: bool,
    /// An operator drained it.
    pub drained: bool,
}

impl TryFrom<NodeRow> for NodeRecord {
    type Error = StoreError;
    fn try_from(row: NodeRow) -> Result<Self, StoreError> {
        let check = Check::row("runtime_nodes", &row.node_id);
        Ok(NodeRecord {
            registration: NodeRegistration {
                node_id: check.parse("node_id", &row.node_id)?,
                hostname: row.hostname,
                runtime_type: row.runtime_type,
                ip_address: row.ip_address,
                api_endpoint: row.api_endpoint,
                total_cpu_cores: row.total_cpu_cores,
                total_memory_mb: check.unsigned("total_memory_mb", row.total_memory_mb)?,
                max_containers: check.unsigned("max_containers", row.max_containers)?,
                cached_images: check.json("cached_images", &row.cached_images)?,
                labels: check.json("labels", &row.labels)?,
                daemon_version: row.daemon_version,
                heartbeat_interval_ms: check
                    .unsigned("heartbeat_interval_ms", row.heartbeat_interval_ms)?,
                started_at: row.registered_at,
                inventory: None,
                // Not stored: what the node offers is known again when it announces itself.
                runtimes: vec![Runtime::Runc],
                network_refusal: None,
            },
            status: row.status,
            running_containers: check.unsigned("running_containers", row.running_containers)?,
            allocated_cpu_cores: row.allocated_cpu_cores,
            allocated_memory_mb: check.unsigned("allocated_memory_mb", row.allocated_memory_mb)?,
            last_heartbeat_at: row.last_heartbeat_at,
            declared: row.declared,
            drained: row.drained,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct ExecutionRow {
    id: String,
    session_id: String,
    status: String,
    language: String,
    code: String,
    stdout: String,
    stderr: String,
    exit_code: Option<i64>,
    truncated: bool,
    error: Option<String>,
    state_lost: bool,
    return_value: Option<String>,
    fresh: bool,
    timeout_secs: i64,
    runtime_node: Option<String>,
    duration_ms: Option<i64>,
    metrics: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
}

impl TryFrom<ExecutionRow> for Execution {
    type Error = StoreError;
    fn try_from(row: ExecutionRow) -> Result<Self, StoreError> {
        let check = Check::row("executions", &row.id);
        Ok(Execution {
            id: check.parse::<ExecutionId>("id", &row.id)?,
            session_id: check.parse::<SessionId>("session_id", &row.session_id)?,
            language: check.parse::<Language>("language", &row.language)?,
            code: row.code,
            status: check.parse::<ExecutionStatus>("status", &row.status)?,
            exit_code: row
                .exit_code
                .map(|code| {
                    i32::try_from(code)
                        .map_err(|_| check.corrupt(format!("exit_code = {code} is out of range")))
                })
                .transpose()?,
            stdout: row.stdout,
            stderr: row.stderr,
            truncated: row.truncated,
            error: row.error,
            state_lost: row.state_lost,
            return_value: row.return_value,
            fresh: row.fresh,
            timeout_secs: check.unsigned("timeout_secs", row.timeout_secs)?,
            runtime_node: row
                .runtime_node
                .as_deref()
                .map(|node| check.parse::<NodeId>("runtime_node", node))
                .transpose()?,
            duration_ms: row
                .duration_ms
                .map(|ms| check.unsigned("duration_ms", ms))
                .transpose()?,
            metrics: row
                .metrics
                .as_deref()
                .map(|text| check.json("metrics", text))
                .transpose()?,
            created_at: row.created_at,
            started_at: row.started_at,
            completed_at: row.completed_at,
        })
    }
}

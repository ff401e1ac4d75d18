//! Replies and errors shared by every request-reply subject, and the requests the gateway sends
//! to the scheduler replicas.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::execution::{Execution, ExecutionResult, Language};
use crate::ids::{ExecutionId, NodeId, SessionId};
use crate::session::{Session, SessionStatus, Template};
use crate::subjects::ApiOp;

/// What went wrong, as a stable machine-readable code. The gateway maps it to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The input is malformed or out of range.
    InvalidRequest,
    NotFound,
    /// The request conflicts with the current state (say, a session that is not running).
    Conflict,
    /// No healthy node can take the session.
    NoHealthyNodes,
    /// The chosen node is full; another may not be.
    Capacity,
    /// A node did not answer or refused a command.
    NodeUnavailable,
    /// The container engine failed.
    RuntimeError,
    /// A bounded wait ran out.
    Timeout,
    /// A part of the control plane is not reachable.
    Unavailable,
    Internal,
    /// The session's node went offline and did not come back within the grace period.
    NodeLost,
    /// The caller may not do this (say, an undeclared node joining in static registration mode).
    Forbidden,
    /// A code from a newer peer that this build does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NoHealthyNodes => "no_healthy_nodes",
            ErrorCode::Capacity => "capacity",
            ErrorCode::NodeUnavailable => "node_unavailable",
            ErrorCode::RuntimeError => "runtime_error",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::NodeLost => "node_lost",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// Parses what [`ErrorCode::as_str`] wrote (say, from a database column).
    pub fn parse(value: &str) -> Self {
        serde_json::from_value(serde_json::Value::String(value.to_owned()))
            .unwrap_or(ErrorCode::Unknown)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it travels, and as the HTTP API shows it under `"error"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The answer to every request on a request-reply subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    Ok(T),
    Error(ErrorBody),
}

impl<T> From<Result<T, ErrorBody>> for Reply<T> {
    fn from(result: Result<T, ErrorBody>) -> Self {
        match result {
            Ok(value) => Reply::Ok(value),
            Err(error) => Reply::Error(error),
        }
    }
}

impl<T> From<Reply<T>> for Result<T, ErrorBody> {
    fn from(reply: Reply<T>) -> Self {
        match reply {
            Reply::Ok(value) => Ok(value),
            Reply::Error(error) => Err(error),
        }
    }
}

/// A request the gateway sends to the scheduler replicas (queue group) on [`ApiOp`]'s subject.
pub trait ApiRequest: Serialize + for<'de> Deserialize<'de> {
    const OP: ApiOp;
    type Response: Serialize + for<'de> Deserialize<'de>;
}

macro_rules! api_request {
    ($request:ty, $op:expr, $response:ty) => {
        impl ApiRequest for $request {
            const OP: ApiOp = $op;
            type Response = $response;
        }
    };
}
pub(crate) use api_request;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetSession {
    pub session_id: SessionId,
}
api_request!(GetSession, ApiOp::SessionsGet, Session);

/// Sessions newest first, optionally filtered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListSessions {
    #[serde(default)]
    pub status: Option<SessionStatus>,
    #[serde(default)]
    pub template_id: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionPage {
    pub sessions: Vec<Session>,
    /// How many sessions match the filter, across all pages.
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
}
api_request!(ListSessions, ApiOp::SessionsList, SessionPage);

/// End a session: its container is removed and it turns `terminated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteSession {
    pub session_id: SessionId,
}
api_request!(DeleteSession, ApiOp::SessionsDelete, Session);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetTemplate {
    pub template_id: String,
}
api_request!(GetTemplate, ApiOp::TemplatesGet, Template);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListTemplates {}
api_request!(ListTemplates, ApiOp::TemplatesList, Vec<Template>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetNode {
    pub node_id: NodeId,
}
api_request!(GetNode, ApiOp::NodesGet, NodeInfo);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListNodes {}
api_request!(ListNodes, ApiOp::NodesList, Vec<NodeInfo>);

/// Record an execution of a running session and start it on the session's node. The gateway
/// names the execution, so it can wait on [`crate::subjects::execution_status`] before asking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartExecution {
    pub execution_id: ExecutionId,
    pub session_id: SessionId,
    pub language: Language,
    pub code: String,
    #[serde(default)]
    pub stdin: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub timeout_secs: u32,
    #[serde(default)]
    pub fresh: bool,
}
api_request!(StartExecution, ApiOp::ExecutionsStart, Execution);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetExecution {
    pub execution_id: ExecutionId,
}
api_request!(GetExecution, ApiOp::ExecutionsGet, Execution);

/// A session's executions, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListExecutions {
    pub session_id: SessionId,
    pub limit: u32,
    pub offset: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionPage {
    pub executions: Vec<Execution>,
    /// How many executions the session has, across all pages.
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
}
api_request!(ListExecutions, ApiOp::ExecutionsList, ExecutionPage);

/// A result reported over the seed's HTTP callback. Recording the same result twice answers the
/// record both times; a different result for an execution that already has one is a conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordExecutionResult {
    pub result: ExecutionResult,
}
api_request!(RecordExecutionResult, ApiOp::ExecutionsRecord, Execution);

/// A node's health as the scheduler judges it from heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealth {
    /// Heartbeats arrive; it takes sessions.
    Online,
    /// It asked for no new sessions.
    Draining,
    /// No heartbeat for three intervals, or it said it stopped: no placements.
    Offline,
    /// Two heartbeat intervals without one: no placements; offline at the third.
    Suspect,
}

impl NodeHealth {
    /// As stored in `runtime_nodes.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeHealth::Online => "online",
            NodeHealth::Draining => "draining",
            NodeHealth::Offline => "offline",
            NodeHealth::Suspect => "suspect",
        }
    }
}

/// A node as the API shows it: its registration and the scheduler's latest view of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: NodeId,
    pub hostname: String,
    pub runtime_type: String,
    pub ip_address: String,
    pub api_endpoint: String,
    pub status: NodeHealth,
    pub total_cpu_cores: f64,
    pub total_memory_mb: u64,
    pub max_containers: u32,
    pub running_containers: u32,
    pub allocated_cpu_cores: f64,
    pub allocated_memory_mb: u64,
    pub cached_images: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub daemon_version: String,
    pub heartbeat_interval_ms: u64,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub registered_at: DateTime<Utc>,
    /// An operator declared it (its capacity is the declared one).
    #[serde(default)]
    pub declared: bool,
    /// An operator drained it: no new sessions, the running ones run on.
    #[serde(default)]
    pub drained: bool,
}

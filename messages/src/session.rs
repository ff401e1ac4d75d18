//! Templates, sessions, and the session-create request that rides the JetStream stream.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::ErrorCode;
use crate::ids::{NodeId, SessionId};

/// The seed's reason when nothing can take a session.
pub const NO_HEALTHY_NODES: &str = "No healthy runtime nodes available";

/// Which network a sandbox joins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// No network at all: the safe default for untrusted code.
    #[default]
    None,
    /// The node's `sandbox_network` bridge, for executors that call back to the control plane.
    SandboxNetwork,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::SandboxNetwork => "sandbox_network",
        }
    }
}

impl FromStr for NetworkMode {
    type Err = UnknownValue;
    fn from_str(value: &str) -> Result<Self, UnknownValue> {
        match value {
            "none" => Ok(NetworkMode::None),
            "sandbox_network" => Ok(NetworkMode::SandboxNetwork),
            other => Err(UnknownValue::new("network", other)),
        }
    }
}

/// A string that names no known value of an enumeration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

impl UnknownValue {
    pub(crate) fn new(kind: &'static str, value: &str) -> Self {
        Self {
            kind,
            value: value.chars().take(64).collect(),
        }
    }
}

/// The limits a sandbox runs under.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_cores: f64,
    pub memory_mb: u64,
    pub pids_limit: u32,
}

/// What a node needs to start a session's container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub image: String,
    pub resources: Resources,
    pub network: NetworkMode,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A template sessions are made from (the seed's `python-basic`, for one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub image_url: String,
    pub resources: Resources,
    pub network: NetworkMode,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub timeout_seconds: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Accepted and recorded; no node chosen yet.
    Pending,
    /// A node was chosen and asked for the container.
    Creating,
    /// The container runs; `container_id` and `runtime_node` are set.
    Running,
    /// It could not start or its container died; `failure_reason` says why.
    Failed,
    /// Ended on request; its container is removed.
    Terminated,
}

impl SessionStatus {
    pub const ALL: [SessionStatus; 5] = [
        SessionStatus::Pending,
        SessionStatus::Creating,
        SessionStatus::Running,
        SessionStatus::Failed,
        SessionStatus::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Pending => "pending",
            SessionStatus::Creating => "creating",
            SessionStatus::Running => "running",
            SessionStatus::Failed => "failed",
            SessionStatus::Terminated => "terminated",
        }
    }

    /// A session in a final state never changes again.
    pub fn is_final(self) -> bool {
        matches!(self, SessionStatus::Failed | SessionStatus::Terminated)
    }

    /// The state a waiting create answers on: running, or any final state.
    pub fn is_settled(self) -> bool {
        self == SessionStatus::Running || self.is_final()
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SessionStatus {
    type Err = UnknownValue;
    fn from_str(value: &str) -> Result<Self, UnknownValue> {
        SessionStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
            .ok_or_else(|| UnknownValue::new("session status", value))
    }
}

/// A session as recorded by the scheduler; also its JSON shape in the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub template_id: String,
    pub status: SessionStatus,
    pub runtime_node: Option<NodeId>,
    pub container_id: Option<String>,
    pub image: String,
    pub resources: Resources,
    pub network: NetworkMode,
    pub failure_code: Option<ErrorCode>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

impl Session {
    /// A session as first recorded: accepted, its image and limits taken from `template`, no
    /// node yet.
    pub fn pending(id: SessionId, template: &Template, at: DateTime<Utc>) -> Self {
        Session {
            id,
            template_id: template.id.clone(),
            status: SessionStatus::Pending,
            runtime_node: None,
            container_id: None,
            image: template.image_url.clone(),
            resources: template.resources,
            network: template.network,
            failure_code: None,
            failure_reason: None,
            created_at: at,
            updated_at: at,
            started_at: None,
            ended_at: None,
        }
    }
}

/// On `sessions.create` (JetStream, `Nats-Msg-Id` = the session id): make this session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateSession {
    pub session_id: SessionId,
    pub template_id: String,
    /// Added to (and overriding) the template's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub requested_at: DateTime<Utc>,
}

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
    /// Containers of this template each node keeps created and running, ready to be claimed by
    /// a session instead of starting one.
    #[serde(default)]
    pub warm_pool_size: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Template {
    /// The container a session of this template gets when its request adds no environment; the
    /// node's warm pools hold containers of exactly this spec.
    pub fn container_spec(&self) -> ContainerSpec {
        ContainerSpec {
            image: self.image_url.clone(),
            resources: self.resources,
            network: self.network,
            env: self.env.clone(),
        }
    }
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
    /// Ended on request, or its timeout ran out; its container is removed.
    Terminated,
    /// Its node went offline and stayed away past the grace period (`failure_code` node_lost).
    Lost,
}

impl SessionStatus {
    pub const ALL: [SessionStatus; 6] = [
        SessionStatus::Pending,
        SessionStatus::Creating,
        SessionStatus::Running,
        SessionStatus::Failed,
        SessionStatus::Terminated,
        SessionStatus::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Pending => "pending",
            SessionStatus::Creating => "creating",
            SessionStatus::Running => "running",
            SessionStatus::Failed => "failed",
            SessionStatus::Terminated => "terminated",
            SessionStatus::Lost => "lost",
        }
    }

    /// A session in a final state never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SessionStatus::Failed | SessionStatus::Terminated | SessionStatus::Lost
        )
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
    /// Seconds the session may live; kept alive with `POST /api/v1/sessions/{id}/timeout`.
    #[serde(default)]
    pub timeout_seconds: u64,
    /// When the session is ended unless kept alive (`None` for sessions already ended).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

impl Session {
    /// A session as first recorded: accepted, its image, limits and timeout taken from
    /// `template` (unless the request set a timeout), no node yet.
    pub fn pending(
        id: SessionId,
        template: &Template,
        timeout_seconds: Option<u64>,
        at: DateTime<Utc>,
    ) -> Self {
        let timeout_seconds = timeout_seconds.unwrap_or(template.timeout_seconds);
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
            timeout_seconds,
            expires_at: Some(expiry(at, timeout_seconds)),
        }
    }
}

/// The moment a session with `timeout_seconds` from `from` expires.
pub fn expiry(from: DateTime<Utc>, timeout_seconds: u64) -> DateTime<Utc> {
    let seconds = i64::try_from(timeout_seconds).unwrap_or(i64::MAX);
    from.checked_add_signed(
        chrono::TimeDelta::try_seconds(seconds).unwrap_or(chrono::TimeDelta::MAX),
    )
    .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The longest timeout a session or template may have: one week.
pub const MAX_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;

/// Checks a session or template timeout, in seconds.
pub fn check_timeout(seconds: u64) -> Result<(), String> {
    if (1..=MAX_TIMEOUT_SECONDS).contains(&seconds) {
        Ok(())
    } else {
        Err(format!(
            "timeout must be between 1 and {MAX_TIMEOUT_SECONDS} seconds, not {seconds}"
        ))
    }
}

/// Image references reach the engine inside URL paths; nothing outside this alphabet is needed.
const IMAGE_REFERENCE_EXTRA_CHARS: &[char] = &['.', '_', '-', '/', ':', '@'];

/// Whether `image` is a plain image reference (it is sent inside a URL path).
pub fn is_image_reference(image: &str) -> bool {
    !image.is_empty()
        && image.len() <= 255
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || IMAGE_REFERENCE_EXTRA_CHARS.contains(&c))
}

/// Whether `name` can be an environment variable's name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
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
    /// Overrides the template's timeout, in seconds.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_are_plain() {
        assert!(is_image_reference("sandbox-executor:v1.0"));
        assert!(is_image_reference("registry.local/team/image@sha256:abc"));
        assert!(!is_image_reference(""));
        assert!(!is_image_reference("image?x=1"));
        assert!(!is_image_reference("image name"));
    }

    #[test]
    fn env_names_and_timeouts_are_checked() {
        assert!(is_env_name("_X1") && is_env_name("PATH"));
        assert!(!is_env_name("1X") && !is_env_name("A-B") && !is_env_name(""));
        assert!(check_timeout(300).is_ok());
        assert!(check_timeout(0).is_err());
        assert!(check_timeout(MAX_TIMEOUT_SECONDS + 1).is_err());
    }
}

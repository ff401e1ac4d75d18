//! Sessions, and the session-create request that rides the JetStream stream.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, SessionId};
use crate::reply::ErrorCode;
use crate::template::{ContainerSpec, NetworkMode, Resources, Runtime};

/// The seed's reason when nothing can take a session.
pub const NO_HEALTHY_NODES: &str = "No healthy runtime nodes available";

wire_enum! {
    /// Where a session is in its life.
    pub enum SessionStatus ("session status") {
        /// Accepted and recorded; no node chosen yet.
        Pending = "pending",
        /// A node was chosen and asked for the container.
        Creating = "creating",
        /// The container runs; `container_id` and `runtime_node` are set.
        Running = "running",
        /// It could not start or its container died; `failure_reason` says why.
        Failed = "failed",
        /// Ended on request, or its timeout ran out; its container is removed.
        Terminated = "terminated",
        /// Its node went offline and stayed away past the grace period (`failure_code` node_lost).
        Lost = "lost",
    }
}

impl SessionStatus {
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
    #[serde(default)]
    pub runtime: Runtime,
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
    /// A session as first recorded: accepted at `at` (the moment the gateway took the request,
    /// so the gateway's early answer and every later read agree), with its container's image,
    /// limits, network and runtime (from `spec`), no node yet.
    pub fn pending(
        id: SessionId,
        template_id: &str,
        spec: &ContainerSpec,
        timeout_seconds: u64,
        at: DateTime<Utc>,
    ) -> Self {
        Session {
            id,
            template_id: template_id.to_owned(),
            status: SessionStatus::Pending,
            runtime_node: None,
            container_id: None,
            image: spec.image.clone(),
            resources: spec.resources,
            network: spec.network,
            runtime: spec.runtime,
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

/// `at` cut to the microseconds a database keeps, so a time written reads back equal.
pub fn at_storage_precision(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// On `sessions.create` (JetStream, `Nats-Msg-Id` = the session id): make this session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateSession {
    pub session_id: SessionId,
    pub template_id: String,
    /// Added to (and overriding) the template's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// When the gateway accepted it (at storage precision): the session's `created_at`.
    pub requested_at: DateTime<Utc>,
    /// Overrides the template's timeout, in seconds.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

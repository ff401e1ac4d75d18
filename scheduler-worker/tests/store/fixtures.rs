//! Sample values for the store tests, written as the JSON the HTTP API and the wire carry (the
//! same field names) and decoded into the types: one short block each, read as the data it is,
//! and not a copy of the struct literals the services and the wire tests write.

use chrono::{DateTime, Utc};
use messages::api::nodes::NodeDeclaration;
use messages::execution::Execution;
use messages::node::{Heartbeat, NodeRegistration};
use messages::session::{Session, SessionStatus, expiry};
use messages::template::TemplateDefinition;
use messages::{ErrorCode, NodeId};
use scheduler_worker::store::{Applied, Transition};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The node the samples are on.
pub const NODE: &str = "docker-local";

pub fn node_id() -> NodeId {
    NodeId::parse(NODE).expect("valid node id")
}

fn decode<T: DeserializeOwned>(sample: Value) -> T {
    serde_json::from_value(sample.clone())
        .unwrap_or_else(|error| panic!("the sample {sample} does not decode: {error}"))
}

/// A pending session of `template_id` made at `created_at`, with a 300 s timeout.
pub fn session(id: &str, template_id: &str, created_at: DateTime<Utc>) -> Session {
    decode(json!({
        "id": id, "template_id": template_id, "status": "pending",
        "image": "sandbox-executor:v1.0",
        "resources": {"cpu_cores": 0.5, "memory_mb": 256, "pids_limit": 64},
        "network": "none", "created_at": created_at, "updated_at": created_at,
        "timeout_seconds": 300, "expires_at": expiry(created_at, 300),
    }))
}

/// A Python run of `session_id` on [`NODE`], recorded running with no result yet.
pub fn execution(id: &str, session_id: &str, created_at: DateTime<Utc>) -> Execution {
    decode(json!({
        "id": id, "session_id": session_id, "language": "python", "code": "print(6*7)",
        "status": "running", "stdout": "", "stderr": "", "truncated": false,
        "state_lost": false, "fresh": false, "timeout_secs": 30,
        "runtime_node": NODE, "created_at": created_at,
    }))
}

/// [`NODE`]'s registration as its daemon sends it.
pub fn registration(started_at: DateTime<Utc>) -> NodeRegistration {
    decode(json!({
        "node_id": NODE, "hostname": "localhost", "runtime_type": "docker",
        "ip_address": "127.0.0.1", "api_endpoint": "unix:///var/run/docker.sock",
        "total_cpu_cores": 8.0, "total_memory_mb": 16384, "max_containers": 100,
        "cached_images": ["sandbox-executor:v1.0"], "labels": {"zone": "a"},
        "daemon_version": "0.1.0", "heartbeat_interval_ms": 5000, "started_at": started_at,
    }))
}

/// [`NODE`]'s first heartbeat: two containers, 1.5 cores and 768 MiB.
pub fn heartbeat(timestamp: DateTime<Utc>) -> Heartbeat {
    decode(json!({
        "node_id": NODE, "timestamp": timestamp, "sequence": 1, "running_containers": 2,
        "allocated_cpu_cores": 1.5, "allocated_memory_mb": 768, "status": "online",
    }))
}

/// An operator's declaration of [`NODE`], with less room than it registers.
pub fn declaration() -> NodeDeclaration {
    decode(json!({
        "node_id": NODE, "hostname": "declared-host", "runtime_type": "docker",
        "ip_address": "10.0.0.1", "api_endpoint": "unix:///var/run/docker.sock",
        "total_cpu_cores": 2.0, "total_memory_mb": 2048, "max_containers": 3,
    }))
}

/// A template on `sandbox_network` with a 30 s timeout and no warm pool.
pub fn template_definition(id: &str) -> TemplateDefinition {
    decode(json!({
        "id": id, "name": "ops", "image_url": "busybox:latest",
        "resources": {"cpu_cores": 0.25, "memory_mb": 64, "pids_limit": 16},
        "network": "sandbox_network", "timeout_seconds": 30,
    }))
}

/// A transition's outcome as the cases read it: the session and whether it changed; `None`
/// for no such session.
pub trait AsPair {
    fn pair(self) -> Option<(Session, bool)>;
}

impl AsPair for Applied {
    fn pair(self) -> Option<(Session, bool)> {
        match self {
            Applied::Changed(session) => Some((session, true)),
            Applied::Unchanged(session) => Some((session, false)),
            Applied::Missing => None,
        }
    }
}

pub fn creating_on(node: NodeId) -> Transition {
    Transition {
        runtime_node: Some(node),
        ..Transition::to(SessionStatus::Creating)
    }
}

pub fn running(node: NodeId, container_id: &str) -> Transition {
    Transition {
        runtime_node: Some(node),
        container_id: Some(container_id.to_owned()),
        ..Transition::to(SessionStatus::Running)
    }
}

/// The change that ends a session in `status` with the code and reason.
pub fn ended(status: SessionStatus, code: ErrorCode, reason: &str) -> Transition {
    Transition {
        failure_code: Some(code),
        failure_reason: Some(reason.to_owned()),
        ..Transition::to(status)
    }
}

//! What node daemons announce, and the commands they answer.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, SessionId};
use crate::template::{ContainerSpec, Runtime};

/// On `runtime.nodes.register`: who a node is and what it can hold. Field names are the seed's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub node_id: NodeId,
    pub hostname: String,
    /// `docker` for a real engine; `simulated` for the benchmark fleet.
    pub runtime_type: String,
    pub ip_address: String,
    pub api_endpoint: String,
    pub total_cpu_cores: f64,
    pub total_memory_mb: u64,
    pub max_containers: u32,
    pub cached_images: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub daemon_version: String,
    /// How often this node heartbeats; health is judged against it.
    pub heartbeat_interval_ms: u64,
    pub started_at: DateTime<Utc>,
    /// The sandbox containers the node holds, so a scheduler can reconcile them with the
    /// sessions it recorded (adopt, remove, or fail). `None` from agents that do not report.
    #[serde(default)]
    pub inventory: Option<ContainerInventory>,
    /// The container runtimes the node's engine really has; older daemons offer runc only.
    #[serde(default = "runc_only")]
    pub runtimes: Vec<Runtime>,
    /// Why the node takes no networked sessions (it could not install the egress rules that
    /// must hold them); `None` when it takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_refusal: Option<String>,
}

fn runc_only() -> Vec<Runtime> {
    vec![Runtime::Runc]
}

/// What a node's sandboxes may use at most, and what its host really has free: the figures
/// beside the guarantees (`allocated_*`) that placement counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HostFigures {
    /// The sums of the limits of the sandboxes it holds.
    pub limit_cpu_cores: f64,
    pub limit_memory_mb: u64,
    /// The host's free memory (`MemAvailable`), what the node admits sessions against.
    pub memory_available_mb: u64,
    /// Free space where the sandboxes' disks are made.
    pub disk_available_mb: u64,
}

/// The containers a node daemon found labelled as its own, and when it listed them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerInventory {
    pub listed_at: DateTime<Utc>,
    pub containers: Vec<ReportedContainer>,
}

/// One container of a node's inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportedContainer {
    pub container_id: String,
    /// From its session label; `None` when the label is missing or not a session id.
    #[serde(default)]
    pub session_id: Option<SessionId>,
    pub running: bool,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
}

/// A registration is sent as a request: a scheduler answers whether the node may join.
impl crate::request::Request for NodeRegistration {
    type Response = RegistrationAccepted;
}

/// The answer to a registration sent as a request: the node may join. A refusal is a
/// [`crate::Reply::Error`] whose message says why (say, an undeclared node in static mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrationAccepted {
    pub node_id: NodeId,
    /// An operator declared the node; its declared capacity is what schedulers place against.
    pub declared: bool,
    pub total_cpu_cores: f64,
    pub total_memory_mb: u64,
    pub max_containers: u32,
}

/// On [`crate::subjects::nodes_updated`]: an operator changed a node's record (declared or
/// drained it); every scheduler replica reads it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeUpdated {
    pub node_id: NodeId,
}

wire_enum! {
    /// What a node says of itself.
    pub enum NodeSelfStatus ("node status") {
        Online = "online",
        Draining = "draining",
        /// Sent once by a daemon stopping cleanly.
        Stopping = "stopping",
        #[serde(other)]
        Unknown = "unknown",
    }
}

wire_enum! {
    /// A node's health as the scheduler judges it from heartbeats (`runtime_nodes.status`).
    pub enum NodeHealth ("node health") {
        /// Heartbeats arrive; it takes sessions.
        Online = "online",
        /// It asked for no new sessions.
        Draining = "draining",
        /// No heartbeat for three intervals, or it said it stopped: no placements.
        Offline = "offline",
        /// Two heartbeat intervals without one: no placements; offline at the third.
        Suspect = "suspect",
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
    /// The sums of what its sandboxes are guaranteed (their requests).
    pub allocated_cpu_cores: f64,
    pub allocated_memory_mb: u64,
    /// Their limits and the host's real free memory and disk, from its last heartbeat.
    #[serde(default)]
    pub host: Option<HostFigures>,
    #[serde(default = "runc_only")]
    pub runtimes: Vec<Runtime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_refusal: Option<String>,
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

/// On `runtime.heartbeat`, every interval. Fixed size: it never lists containers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: NodeId,
    pub timestamp: DateTime<Utc>,
    /// Counts up from 1 at each daemon start; a reset tells a scheduler the daemon restarted.
    pub sequence: u64,
    pub running_containers: u32,
    /// The sums of what its sandboxes are guaranteed (their requests).
    pub allocated_cpu_cores: f64,
    pub allocated_memory_mb: u64,
    pub status: NodeSelfStatus,
    /// Of `running_containers`, how many wait in warm pools, unclaimed.
    #[serde(default)]
    pub warm_containers: u32,
    /// Limits and real free memory and disk; `None` from older daemons.
    #[serde(default)]
    pub host: Option<HostFigures>,
}

/// A node's allocations right after it handled a command, so the scheduler that asked can count
/// them at once instead of waiting for heartbeats. Heartbeats with a sequence above
/// `after_heartbeat` were sent later and supersede it; those up to it are older.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NodeUsage {
    /// The sequence of the last heartbeat the node had sent when it took this snapshot.
    pub after_heartbeat: u64,
    pub running_containers: u32,
    pub allocated_cpu_cores: f64,
    pub allocated_memory_mb: u64,
}

/// On `runtime.nodes.discover`: schedulers ask nodes to publish their registration again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoverNodes {
    /// Only this node answers; `None` asks every node.
    #[serde(default)]
    pub node_id: Option<NodeId>,
    /// Only the images are asked for: the node announces itself without its container
    /// inventory, so no scheduler reconciles anything (a placement that found an image missing
    /// asks this way).
    #[serde(default)]
    pub images_only: bool,
}

/// On `runtime.containers.ready`: the seed's container-ready signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerReady {
    pub container_id: String,
    pub session_id: SessionId,
    pub node_id: NodeId,
    #[serde(default)]
    pub executor_url: Option<String>,
    pub ready_at: DateTime<Utc>,
}

wire_enum! {
    /// Why a container stopped.
    pub enum ExitReason ("exit reason") {
        /// Exit code 0.
        Normal = "normal",
        /// The kernel's OOM killer ended it.
        OomKilled = "oom_killed",
        /// A signal ended it (`docker kill`, a forced removal).
        Killed = "killed",
        /// It exited with a non-zero code of its own.
        Error = "error",
        #[serde(other)]
        Unknown = "unknown",
    }
}

impl ExitReason {
    /// Classifies an exit from Docker's view of it.
    pub fn classify(exit_code: Option<i64>, oom_killed: bool) -> Self {
        match (exit_code, oom_killed) {
            (_, true) => ExitReason::OomKilled,
            (Some(0), false) => ExitReason::Normal,
            // 128 + signal number is how a container reports being signalled.
            (Some(code), false) if code > 128 => ExitReason::Killed,
            (Some(_), false) => ExitReason::Error,
            (None, false) => ExitReason::Unknown,
        }
    }
}

/// On `runtime.containers.exited`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerExited {
    pub container_id: String,
    pub session_id: SessionId,
    pub node_id: NodeId,
    pub exit_code: Option<i64>,
    pub reason: ExitReason,
    pub exited_at: DateTime<Utc>,
}

/// `containers.create`: start the session's container. Idempotent on the session id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateContainer {
    pub session_id: SessionId,
    pub spec: ContainerSpec,
}

/// The container is running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerCreated {
    pub session_id: SessionId,
    pub node_id: NodeId,
    pub container_id: String,
    /// The container already existed (a redelivered request); nothing new was made.
    pub existed: bool,
    #[serde(default)]
    pub executor_url: Option<String>,
    /// The node's allocations with this container counted.
    #[serde(default)]
    pub usage: Option<NodeUsage>,
}

node_command!(CreateContainer => "containers.create", ContainerCreated);

/// `containers.remove`: stop and delete the session's container. Removing what is not there
/// succeeds with `removed: false`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoveContainer {
    pub session_id: SessionId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRemoved {
    pub session_id: SessionId,
    pub removed: bool,
    /// The node's allocations with this container gone.
    #[serde(default)]
    pub usage: Option<NodeUsage>,
}

node_command!(RemoveContainer => "containers.remove", ContainerRemoved);

/// `node.ping`: is the daemon there?
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PingNode {}

/// The daemon is there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodePong {
    pub node_id: NodeId,
    /// When this daemon process started (as in its registration).
    pub started_at: DateTime<Utc>,
}

node_command!(PingNode => "node.ping", NodePong);

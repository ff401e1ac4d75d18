//! Helpers of the fleet's unit tests: registrations, specs, heartbeats and snapshots made
//! short.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;
use messages::node::{Heartbeat, NodeRegistration, NodeSelfStatus, NodeUsage};
use messages::template::{ContainerSpec, NetworkMode, Resources, Runtime};
use messages::{NodeId, SessionId};

use super::Fleet;

pub(super) fn registration(id: &str, max_containers: u32, images: &[&str]) -> NodeRegistration {
    NodeRegistration {
        node_id: NodeId::parse(id).expect("valid"),
        hostname: id.into(),
        runtime_type: "docker".into(),
        ip_address: "127.0.0.1".into(),
        api_endpoint: "unix:///var/run/docker.sock".into(),
        total_cpu_cores: 4.0,
        total_memory_mb: 4096,
        max_containers,
        cached_images: images.iter().map(|image| (*image).to_owned()).collect(),
        labels: BTreeMap::new(),
        daemon_version: "test".into(),
        heartbeat_interval_ms: 1000,
        started_at: Utc::now(),
        inventory: None,
        runtimes: vec![Runtime::Runc],
        network_refusal: None,
    }
}

impl Fleet {
    pub(super) fn register_plain(&mut self, registration: NodeRegistration, now: Instant) {
        self.register(registration, None, now);
    }
}

pub(super) fn spec(cpu_cores: f64) -> ContainerSpec {
    ContainerSpec {
        image: "img".into(),
        // Guaranteed what they may use, so these tests count limits.
        resources: Resources {
            cpu_cores,
            memory_mb: 256,
            pids_limit: 64,
            cpu_request_cores: Some(cpu_cores),
            memory_request_mb: Some(256),
            ..Resources::default()
        },
        network: NetworkMode::None,
        env: BTreeMap::new(),
        runtime: Runtime::Runc,
        egress: Default::default(),
    }
}

pub(super) fn session(n: u32) -> SessionId {
    SessionId::parse(format!("s{n}")).expect("valid")
}

pub(super) fn heartbeat(
    id: &str,
    sequence: u64,
    containers: u32,
    status: NodeSelfStatus,
) -> Heartbeat {
    Heartbeat {
        node_id: NodeId::parse(id).expect("valid"),
        timestamp: Utc::now(),
        sequence,
        running_containers: containers,
        allocated_cpu_cores: 0.0,
        allocated_memory_mb: 0,
        status,
        warm_containers: 0,
        host: None,
    }
}

pub(super) fn snapshot(after_heartbeat: u64, containers: u32) -> NodeUsage {
    NodeUsage {
        after_heartbeat,
        running_containers: containers,
        allocated_cpu_cores: f64::from(containers),
        allocated_memory_mb: 256 * u64::from(containers),
    }
}

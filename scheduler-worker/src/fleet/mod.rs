//! Each replica's live view of the runtime nodes, built from registrations and heartbeats, and
//! the placement choice made from it. Pure: no I/O, every answer from what it was told.
//!
//! Every replica hears every heartbeat, so their views agree up to message delay. What a view
//! cannot know is what other replicas placed a moment ago: the node daemon's admission check is
//! the final word, and a refused placement is retried elsewhere.
//!
//! One question per file, as Nomad's scheduler has them: this one is the registry (who the nodes
//! are, what they last said); `health.rs` judges them from their heartbeats; `usage.rs` counts
//! what they hold, with this replica's placements in flight; `choose.rs` picks a node for a
//! session.

mod choose;
mod health;
#[cfg(test)]
mod testing;
mod usage;

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use messages::node::{
    Heartbeat, HostFigures, NodeHealth, NodeInfo, NodeRegistration, NodeSelfStatus,
};
use messages::{NodeId, SessionId};

use crate::store::NodeRecord;

pub use choose::{image_missing, runtime_missing};
pub use health::{HealthChange, MISSED_HEARTBEATS_OFFLINE, MISSED_HEARTBEATS_SUSPECT};
use usage::{Reservation, Usage};

#[derive(Debug, Clone)]
struct NodeState {
    registration: NodeRegistration,
    registered_at: DateTime<Utc>,
    last_seen: Option<Instant>,
    last_heartbeat_at: Option<DateTime<Utc>>,
    last_sequence: u64,
    reported: Usage,
    /// How recent `reported` is: the heartbeat it came from, or (`true`) a command's snapshot
    /// taken after that heartbeat. Older figures never overwrite newer ones.
    reported_as_of: (u64, bool),
    /// Limits and the host's real free memory and disk, from the last heartbeat with them.
    host: Option<HostFigures>,
    self_status: NodeSelfStatus,
    reservations: HashMap<SessionId, Reservation>,
    /// The health last announced by [`Fleet::health_changes`].
    announced: NodeHealth,
    /// An operator declared it; its registration carries the declared capacity.
    declared: bool,
    /// An operator drained it.
    drained: bool,
    /// Since when it is offline, as last announced; `None` while it is not.
    offline_since: Option<Instant>,
    /// Its sessions were marked lost during this offline spell.
    sessions_lost: bool,
}

impl NodeState {
    /// A node as the database remembers it (at start, or an operator's declaration of a node
    /// not heard from yet).
    fn from_record(record: NodeRecord, now: Instant) -> Self {
        let wall_now = Utc::now();
        let last_seen = record.last_heartbeat_at.and_then(|at| {
            let age = (wall_now - at).to_std().unwrap_or_default();
            now.checked_sub(age)
        });
        let mut state = NodeState {
            registered_at: record.registration.started_at,
            last_seen,
            last_heartbeat_at: record.last_heartbeat_at,
            last_sequence: 0,
            reported: Usage {
                containers: record.running_containers,
                cpu_cores: record.allocated_cpu_cores,
                memory_mb: record.allocated_memory_mb,
            },
            reported_as_of: (0, false),
            host: None,
            self_status: match record.status.as_str() {
                // It said it stopped: no placements until it is heard from again.
                "offline" => NodeSelfStatus::Stopping,
                _ => NodeSelfStatus::Online,
            },
            reservations: HashMap::new(),
            announced: NodeHealth::Offline,
            declared: record.declared,
            drained: record.drained,
            offline_since: None,
            sessions_lost: false,
            registration: record.registration,
        };
        state.announced = state.health(now);
        // Offline already: the grace before its sessions are lost counts from now.
        if state.announced == NodeHealth::Offline {
            state.offline_since = Some(now);
        }
        state
    }

    fn info(&self, now: Instant) -> NodeInfo {
        let registration = &self.registration;
        NodeInfo {
            node_id: registration.node_id.clone(),
            hostname: registration.hostname.clone(),
            runtime_type: registration.runtime_type.clone(),
            ip_address: registration.ip_address.clone(),
            api_endpoint: registration.api_endpoint.clone(),
            status: self.health(now),
            total_cpu_cores: registration.total_cpu_cores,
            total_memory_mb: registration.total_memory_mb,
            max_containers: registration.max_containers,
            running_containers: self.reported.containers,
            allocated_cpu_cores: self.reported.cpu_cores,
            allocated_memory_mb: self.reported.memory_mb,
            host: self.host,
            runtimes: registration.runtimes.clone(),
            network_refusal: registration.network_refusal.clone(),
            cached_images: registration.cached_images.clone(),
            labels: registration.labels.clone(),
            daemon_version: registration.daemon_version.clone(),
            heartbeat_interval_ms: registration.heartbeat_interval_ms,
            last_heartbeat_at: self.last_heartbeat_at,
            registered_at: self.registered_at,
            declared: self.declared,
            drained: self.drained,
        }
    }
}

/// What a heartbeat told the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    Recorded,
    /// From a node this replica has no registration of: ask it to announce itself.
    UnknownNode,
}

/// The live view of the nodes. Not shared across tasks by itself: wrap it in a mutex, and hold
/// the lock only for these short, non-async calls.
#[derive(Debug, Default)]
pub struct Fleet {
    nodes: HashMap<NodeId, NodeState>,
    /// Every key of `nodes`, for drawing nodes at random. Nodes are never forgotten.
    ids: Vec<NodeId>,
}

impl Fleet {
    /// Seeds the view from the database at start, so a fresh replica can place at once; the
    /// nodes' next heartbeats (and the discover request sent at start) bring it up to date.
    pub fn load(&mut self, records: Vec<NodeRecord>, now: Instant) {
        for record in records {
            self.insert(NodeState::from_record(record, now));
        }
    }

    /// An operator changed the node's record: take its declaration and drain flag (and, for a
    /// node not heard from yet, the whole record, so it shows as declared and offline).
    pub fn apply_record(&mut self, record: NodeRecord, now: Instant) {
        match self.nodes.get_mut(&record.registration.node_id) {
            Some(node) => {
                node.drained = record.drained;
                node.declared = record.declared;
                if record.declared {
                    declare_capacity(&mut node.registration, &record.registration);
                }
            }
            None => self.insert(NodeState::from_record(record, now)),
        }
    }

    /// A node announced itself. The same daemon announcing again (asked to by a discover
    /// request) keeps its figures; a new or restarted daemon starts afresh, and the containers
    /// this replica saw it confirm are gone with the old process.
    ///
    /// `record` is what the database holds of the node: a declared node keeps its declared
    /// capacity whatever it reports, and a drained one stays drained.
    pub fn register(
        &mut self,
        mut registration: NodeRegistration,
        record: Option<&NodeRecord>,
        now: Instant,
    ) {
        let node_id = registration.node_id.clone();
        let declared = record.is_some_and(|record| record.declared);
        let drained = record.is_some_and(|record| record.drained);
        if let Some(record) = record.filter(|record| record.declared) {
            declare_capacity(&mut registration, &record.registration);
        }
        // The inventory was for reconciliation; the view does not keep it.
        registration.inventory = None;
        if let Some(node) = self.nodes.get_mut(&node_id)
            && node.registration.started_at == registration.started_at
        {
            node.registration = registration;
            node.last_seen = Some(now);
            node.declared = declared;
            node.drained = drained;
            return;
        }
        let mut reservations = self
            .nodes
            .get_mut(&node_id)
            .map(|old| std::mem::take(&mut old.reservations))
            .unwrap_or_default();
        reservations.retain(|_, reservation| reservation.counted_after_heartbeat.is_none());
        self.insert(NodeState {
            registered_at: Utc::now(),
            last_seen: Some(now),
            last_heartbeat_at: None,
            last_sequence: 0,
            reported: Usage::default(),
            reported_as_of: (0, false),
            host: None,
            self_status: NodeSelfStatus::Online,
            reservations,
            announced: NodeHealth::Offline,
            declared,
            drained,
            offline_since: None,
            sessions_lost: false,
            registration,
        });
    }

    /// Adds or replaces a node's state.
    fn insert(&mut self, state: NodeState) {
        let node_id = state.registration.node_id.clone();
        if self.nodes.insert(node_id.clone(), state).is_none() {
            self.ids.push(node_id);
        }
    }

    pub fn heartbeat(&mut self, heartbeat: &Heartbeat, now: Instant) -> HeartbeatOutcome {
        let Some(node) = self.nodes.get_mut(&heartbeat.node_id) else {
            return HeartbeatOutcome::UnknownNode;
        };
        let sequence = heartbeat.sequence;
        if sequence < node.last_sequence {
            // The daemon restarted (and its registration went unheard): what it reports now is
            // all there is.
            node.reported_as_of = (0, false);
            node.reservations
                .retain(|_, reservation| reservation.counted_after_heartbeat.is_none());
        }
        node.last_seen = Some(now);
        node.last_heartbeat_at = Some(heartbeat.timestamp);
        node.last_sequence = sequence;
        node.self_status = heartbeat.status;
        if heartbeat.host.is_some() {
            node.host = heartbeat.host;
        }
        if (sequence, false) >= node.reported_as_of {
            node.reported_as_of = (sequence, false);
            node.reported = Usage {
                containers: heartbeat.running_containers,
                cpu_cores: heartbeat.allocated_cpu_cores,
                memory_mb: heartbeat.allocated_memory_mb,
            };
        }
        node.reservations.retain(|_, reservation| {
            reservation
                .counted_after_heartbeat
                .is_none_or(|after| sequence <= after)
        });
        HeartbeatOutcome::Recorded
    }

    /// The view's copy of a node's record (declaration, drain flag, declared capacity), so a
    /// node the view holds registers again without a database read.
    pub fn record(&self, node_id: &NodeId, now: Instant) -> Option<NodeRecord> {
        let node = self.nodes.get(node_id)?;
        Some(NodeRecord {
            registration: node.registration.clone(),
            status: node.health(now).as_str().to_owned(),
            running_containers: node.reported.containers,
            allocated_cpu_cores: node.reported.cpu_cores,
            allocated_memory_mb: node.reported.memory_mb,
            last_heartbeat_at: node.last_heartbeat_at,
            declared: node.declared,
            drained: node.drained,
        })
    }

    pub fn info(&self, node_id: &NodeId, now: Instant) -> Option<NodeInfo> {
        self.nodes.get(node_id).map(|node| node.info(now))
    }

    pub fn infos(&self, now: Instant) -> Vec<NodeInfo> {
        let mut infos: Vec<NodeInfo> = self.nodes.values().map(|node| node.info(now)).collect();
        infos.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        infos
    }
}

/// A declared node's capacity, which overrides what its daemon reports.
fn declare_capacity(registration: &mut NodeRegistration, declared: &NodeRegistration) {
    registration.total_cpu_cores = declared.total_cpu_cores;
    registration.total_memory_mb = declared.total_memory_mb;
    registration.max_containers = declared.max_containers;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::testing::*;
    use super::*;

    #[test]
    fn a_restarted_daemon_drops_what_it_confirmed_but_a_reannouncement_does_not() {
        let now = Instant::now();
        let mut fleet = Fleet::default();
        let id = NodeId::parse("a").expect("valid");
        let first = registration("a", 1, &["img"]);
        fleet.register(first.clone(), None, now);
        fleet.heartbeat(&heartbeat("a", 5, 0, NodeSelfStatus::Online), now);
        fleet
            .reserve(&session(1), &spec(1.0), &[], now)
            .expect("placed");
        fleet.confirm(&id, &session(1), None);
        // Asked to announce itself again: the same daemon, the room stays held.
        fleet.register(first.clone(), None, now);
        assert!(fleet.reserve(&session(2), &spec(1.0), &[], now).is_err());
        // A new process (its start time differs): what it had is gone.
        let restarted = NodeRegistration {
            started_at: first.started_at + chrono::Duration::seconds(1),
            ..first
        };
        fleet.register(restarted, None, now);
        fleet
            .reserve(&session(2), &spec(1.0), &[], now)
            .expect("room after restart");
    }
}

//! Health: a node is online while its heartbeats arrive, suspect after two missed intervals,
//! offline after three (or at once when it says it stops, or a probe finds no daemon); the
//! changes are reported once each, and nodes offline past the grace are named for their
//! sessions to be marked lost.

use std::time::{Duration, Instant};

use messages::NodeId;
use messages::node::{NodeHealth, NodeSelfStatus};

use super::{Fleet, NodeState};

/// A node is offline once this many heartbeat intervals pass without one (docs/DESIGN.md,
/// invariant 5).
pub const MISSED_HEARTBEATS_OFFLINE: u32 = 3;
/// A node is suspect (no new sessions) once this many intervals pass without a heartbeat.
pub const MISSED_HEARTBEATS_SUSPECT: u32 = 2;

impl NodeState {
    pub(super) fn interval(&self) -> Duration {
        Duration::from_millis(self.registration.heartbeat_interval_ms.max(1))
    }

    pub(super) fn health(&self, now: Instant) -> NodeHealth {
        let Some(seen) = self.last_seen else {
            return NodeHealth::Offline;
        };
        let silent = now.saturating_duration_since(seen);
        match self.self_status {
            _ if silent >= self.interval() * MISSED_HEARTBEATS_OFFLINE => NodeHealth::Offline,
            NodeSelfStatus::Stopping => NodeHealth::Offline,
            _ if silent >= self.interval() * MISSED_HEARTBEATS_SUSPECT => NodeHealth::Suspect,
            _ if self.drained => NodeHealth::Draining,
            NodeSelfStatus::Draining => NodeHealth::Draining,
            NodeSelfStatus::Online | NodeSelfStatus::Unknown => NodeHealth::Online,
        }
    }
}

/// A node's health as it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    pub node_id: NodeId,
    pub health: NodeHealth,
    /// It came back after its sessions were marked lost: the containers it still runs for them
    /// must go, so it is asked for its inventory.
    pub back_after_loss: bool,
}

impl Fleet {
    /// How long a replica that just started should listen before placing: long enough for the
    /// nodes it remembers to be heard from again (one heartbeat interval, at most 5 s); nothing
    /// when it remembers none.
    pub fn settle_time(&self) -> Duration {
        self.nodes
            .values()
            .map(NodeState::interval)
            .max()
            .unwrap_or_default()
            .min(Duration::from_secs(5))
    }

    /// Nodes whose health changed since the last call, with their new health.
    pub fn health_changes(&mut self, now: Instant) -> Vec<HealthChange> {
        let mut changes = Vec::new();
        for (node_id, node) in &mut self.nodes {
            let health = node.health(now);
            if health != node.announced {
                node.announced = health;
                let mut back_after_loss = false;
                if health == NodeHealth::Offline {
                    node.offline_since = Some(now);
                } else if node.offline_since.is_some() {
                    node.offline_since = None;
                    back_after_loss = std::mem::take(&mut node.sessions_lost);
                }
                changes.push(HealthChange {
                    node_id: node_id.clone(),
                    health,
                    back_after_loss,
                });
            }
        }
        changes
    }

    /// A probe of a suspect node found nobody listening on its subjects: its daemon is gone,
    /// so it is offline now rather than at the third missed heartbeat. A heartbeat brings it
    /// back as usual.
    pub fn unreachable(&mut self, node_id: &NodeId, now: Instant) {
        if let Some(node) = self.nodes.get_mut(node_id)
            && node.health(now) == NodeHealth::Suspect
        {
            node.self_status = NodeSelfStatus::Stopping;
        }
    }

    /// Nodes offline for `grace` or longer whose sessions are not marked lost yet.
    pub fn lost_nodes(&self, now: Instant, grace: Duration) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, node)| !node.sessions_lost)
            .filter(|(_, node)| {
                node.offline_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= grace)
            })
            .map(|(node_id, _)| node_id.clone())
            .collect()
    }

    /// The sessions of a lost node were marked lost; not again until it comes back and goes.
    pub fn sessions_marked_lost(&mut self, node_id: &NodeId) {
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.sessions_lost = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use messages::node::NodeSelfStatus;

    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn a_node_turns_suspect_then_offline_and_back_online_on_a_heartbeat() {
        let start = Instant::now();
        let mut fleet = Fleet::default();
        fleet.register_plain(registration("a", 10, &["img"]), start);
        let id = NodeId::parse("a").expect("valid");
        let status_at = |fleet: &Fleet, at: Instant| fleet.info(&id, at).map(|node| node.status);
        assert_eq!(status_at(&fleet, start), Some(NodeHealth::Online));
        let late = start + Duration::from_millis(1999);
        assert_eq!(status_at(&fleet, late), Some(NodeHealth::Online));
        let two_missed = start + Duration::from_millis(2000);
        assert_eq!(status_at(&fleet, two_missed), Some(NodeHealth::Suspect));
        assert!(
            fleet
                .reserve(&session(1), &spec(1.0), &[], two_missed)
                .is_err(),
            "a suspect node takes no sessions"
        );
        let late = start + Duration::from_millis(2999);
        assert_eq!(status_at(&fleet, late), Some(NodeHealth::Suspect));
        let later = start + Duration::from_millis(3000);
        assert_eq!(
            fleet.info(&id, later).map(|node| node.status),
            Some(NodeHealth::Offline)
        );
        assert!(fleet.reserve(&session(1), &spec(1.0), &[], later).is_err());
        fleet.heartbeat(&heartbeat("a", 1, 0, NodeSelfStatus::Online), later);
        assert_eq!(status_at(&fleet, later), Some(NodeHealth::Online));
        // A probe finding nobody there makes a suspect node offline at once; online nodes
        // are left alone.
        fleet.unreachable(&id, later);
        assert_eq!(status_at(&fleet, later), Some(NodeHealth::Online));
        let suspect = later + Duration::from_millis(2000);
        fleet.unreachable(&id, suspect);
        assert_eq!(status_at(&fleet, suspect), Some(NodeHealth::Offline));
        fleet.heartbeat(&heartbeat("a", 2, 0, NodeSelfStatus::Online), suspect);
        assert_eq!(
            fleet.info(&id, later).map(|node| node.status),
            Some(NodeHealth::Online)
        );
    }

    #[test]
    fn an_operator_drain_stops_placements_and_lost_nodes_are_reported_once() {
        let start = Instant::now();
        let mut fleet = Fleet::default();
        fleet.register_plain(registration("a", 10, &["img"]), start);
        let id = NodeId::parse("a").expect("valid");
        let mut record = NodeRecord {
            registration: registration("a", 10, &["img"]),
            status: "online".into(),
            running_containers: 0,
            allocated_cpu_cores: 0.0,
            allocated_memory_mb: 0,
            last_heartbeat_at: None,
            declared: false,
            drained: true,
        };
        fleet.apply_record(record.clone(), start);
        assert_eq!(
            fleet.info(&id, start).map(|node| node.status),
            Some(NodeHealth::Draining)
        );
        assert!(fleet.reserve(&session(1), &spec(1.0), &[], start).is_err());
        record.drained = false;
        fleet.apply_record(record, start);
        fleet
            .reserve(&session(1), &spec(1.0), &[], start)
            .expect("undrained");

        fleet.health_changes(start);
        let gone = start + Duration::from_secs(3);
        fleet.health_changes(gone);
        let grace = Duration::from_secs(5);
        assert!(
            fleet
                .lost_nodes(gone + Duration::from_secs(4), grace)
                .is_empty()
        );
        assert_eq!(fleet.lost_nodes(gone + grace, grace), vec![id.clone()]);
        fleet.sessions_marked_lost(&id);
        assert!(fleet.lost_nodes(gone + grace, grace).is_empty());
    }

    #[test]
    fn health_changes_are_reported_once() {
        let start = Instant::now();
        let mut fleet = Fleet::default();
        fleet.register_plain(registration("a", 10, &[]), start);
        assert_eq!(fleet.health_changes(start).len(), 1);
        assert!(fleet.health_changes(start).is_empty());
        let later = start + Duration::from_secs(10);
        let changes = fleet.health_changes(later);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].health, NodeHealth::Offline);
    }
}

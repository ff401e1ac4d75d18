//! Usage: what each node holds as it last said, plus the room this replica holds for its own
//! placements in flight until the node's figures count them; the fill ratios placements weigh.

use messages::node::NodeUsage;
use messages::template::Resources;
use messages::{NodeId, SessionId};

use super::{Fleet, NodeState};

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Usage {
    pub(super) containers: u32,
    pub(super) cpu_cores: f64,
    pub(super) memory_mb: u64,
}

impl Usage {
    /// Counts a sandbox by what it is guaranteed, as the node's admission does.
    fn add(&mut self, resources: &Resources) {
        let guarantee = resources.guarantee();
        self.containers += 1;
        self.cpu_cores += guarantee.cpu_cores;
        self.memory_mb += guarantee.memory_mb;
    }
}

/// Room held on a node for a placement this replica made, until the node's figures show it.
#[derive(Debug, Clone)]
pub(super) struct Reservation {
    pub(super) resources: Resources,
    /// Heartbeats numbered above this count the container; `None` while the create is in
    /// flight.
    pub(super) counted_after_heartbeat: Option<u64>,
}

impl NodeState {
    /// What the node reported plus what this replica placed there since.
    pub(super) fn usage(&self) -> Usage {
        let mut usage = self.reported;
        for reservation in self.reservations.values() {
            usage.add(&reservation.resources);
        }
        usage
    }

    /// Whether the node has room for the guarantee of `resources` (and for one more
    /// container); limits may add up past the node's size.
    pub(super) fn has_room_for(&self, resources: &Resources) -> bool {
        let usage = self.usage();
        let registration = &self.registration;
        let guarantee = resources.guarantee();
        // A little slack for float sums such as 0.1 + 0.2.
        usage.containers < registration.max_containers
            && usage.cpu_cores + guarantee.cpu_cores <= registration.total_cpu_cores + 1e-9
            && usage.memory_mb + guarantee.memory_mb <= registration.total_memory_mb
            && self
                .host
                .is_none_or(|host| guarantee.memory_mb <= host.memory_available_mb)
    }

    /// The highest of the container, CPU and memory fill ratios after adding `resources`.
    pub(super) fn load_with(&self, resources: &Resources) -> f64 {
        let usage = self.usage();
        let registration = &self.registration;
        let resources = resources.guarantee();
        let ratio = |used: f64, total: f64| if total > 0.0 { used / total } else { 1.0 };
        ratio(
            f64::from(usage.containers + 1),
            f64::from(registration.max_containers),
        )
        .max(ratio(
            usage.cpu_cores + resources.cpu_cores,
            registration.total_cpu_cores,
        ))
        .max(ratio(
            (usage.memory_mb + resources.memory_mb) as f64,
            registration.total_memory_mb as f64,
        ))
    }

    /// Takes a command's usage snapshot unless newer figures are in already.
    pub(super) fn apply_snapshot(&mut self, usage: &NodeUsage) {
        let as_of = (usage.after_heartbeat, true);
        if as_of >= self.reported_as_of {
            self.reported_as_of = as_of;
            self.reported = Usage {
                containers: usage.running_containers,
                cpu_cores: usage.allocated_cpu_cores,
                memory_mb: usage.allocated_memory_mb,
            };
        }
    }
}

impl Fleet {
    /// The node made the container. With the node's usage snapshot, which counts it, the room
    /// held is let go at once; without one (an older daemon), it is held until a heartbeat sent
    /// surely after the create counts it.
    pub fn confirm(&mut self, node_id: &NodeId, session_id: &SessionId, usage: Option<NodeUsage>) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        match usage {
            Some(usage) => {
                node.apply_snapshot(&usage);
                node.reservations.remove(session_id);
            }
            None => {
                let after = node.last_sequence + 1;
                if let Some(reservation) = node.reservations.get_mut(session_id) {
                    reservation.counted_after_heartbeat = Some(after);
                }
            }
        }
    }

    /// The placement did not happen: give the room back.
    pub fn release(&mut self, node_id: &NodeId, session_id: &SessionId) {
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.reservations.remove(session_id);
        }
    }

    /// The node removed the session's container; its snapshot no longer counts it.
    pub fn removed(&mut self, node_id: &NodeId, session_id: &SessionId, usage: Option<NodeUsage>) {
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.reservations.remove(session_id);
            if let Some(usage) = usage {
                node.apply_snapshot(&usage);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use messages::ErrorCode;
    use messages::node::NodeSelfStatus;

    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn reservations_keep_a_replica_from_overfilling_a_node() {
        let now = Instant::now();
        let mut fleet = Fleet::default();
        fleet.register_plain(registration("a", 2, &["img"]), now);
        fleet
            .reserve(&session(1), &spec(1.0), &[], now)
            .expect("first");
        fleet
            .reserve(&session(2), &spec(1.0), &[], now)
            .expect("second");
        let error = fleet
            .reserve(&session(3), &spec(1.0), &[], now)
            .expect_err("full");
        assert_eq!(error.code, ErrorCode::Capacity);
        // A failed placement gives its room back.
        let id = NodeId::parse("a").expect("valid");
        fleet.release(&id, &session(2));
        fleet
            .reserve(&session(3), &spec(1.0), &[], now)
            .expect("room again");
    }

    #[test]
    fn cpu_is_a_limit_too() {
        let now = Instant::now();
        let mut fleet = Fleet::default();
        fleet.register_plain(registration("a", 100, &["img"]), now);
        for n in 0..4 {
            fleet
                .reserve(&session(n), &spec(1.0), &[], now)
                .expect("fits");
        }
        assert!(fleet.reserve(&session(9), &spec(0.5), &[], now).is_err());
    }

    #[test]
    fn a_confirmed_reservation_is_dropped_once_heartbeats_count_it() {
        let now = Instant::now();
        let mut fleet = Fleet::default();
        let id = NodeId::parse("a").expect("valid");
        fleet.register_plain(registration("a", 1, &["img"]), now);
        fleet.heartbeat(&heartbeat("a", 1, 0, NodeSelfStatus::Online), now);
        fleet
            .reserve(&session(1), &spec(1.0), &[], now)
            .expect("placed");
        fleet.confirm(&id, &session(1), None);
        // The next beat may have left before the container existed: still held.
        fleet.heartbeat(&heartbeat("a", 2, 0, NodeSelfStatus::Online), now);
        assert!(fleet.reserve(&session(2), &spec(1.0), &[], now).is_err());
        // Two beats later the node counts it itself; the room is not counted twice.
        fleet.heartbeat(&heartbeat("a", 3, 1, NodeSelfStatus::Online), now);
        let info = fleet.info(&id, now).expect("known");
        assert_eq!(info.running_containers, 1);
        assert!(fleet.reserve(&session(2), &spec(1.0), &[], now).is_err());
        fleet.heartbeat(&heartbeat("a", 4, 0, NodeSelfStatus::Online), now);
        fleet
            .reserve(&session(2), &spec(1.0), &[], now)
            .expect("room after exit");
    }

    #[test]
    fn usage_in_command_replies_counts_at_once_and_older_heartbeats_do_not_undo_it() {
        let now = Instant::now();
        let mut fleet = Fleet::default();
        let id = NodeId::parse("a").expect("valid");
        fleet.register_plain(registration("a", 1, &["img"]), now);
        fleet.heartbeat(&heartbeat("a", 3, 0, NodeSelfStatus::Online), now);
        // Create, then delete, then create again, all within one heartbeat interval.
        fleet
            .reserve(&session(1), &spec(1.0), &[], now)
            .expect("placed");
        fleet.confirm(&id, &session(1), Some(snapshot(3, 1)));
        assert!(
            fleet.reserve(&session(2), &spec(1.0), &[], now).is_err(),
            "full"
        );
        fleet.removed(&id, &session(1), Some(snapshot(3, 0)));
        fleet
            .reserve(&session(2), &spec(1.0), &[], now)
            .expect("room at once after delete");
        fleet.confirm(&id, &session(2), Some(snapshot(3, 1)));
        // Heartbeat 3 was sent before those snapshots: it must not bring back stale figures.
        fleet.heartbeat(&heartbeat("a", 3, 0, NodeSelfStatus::Online), now);
        assert!(
            fleet.reserve(&session(3), &spec(1.0), &[], now).is_err(),
            "still full"
        );
        // Heartbeat 4 was sent after: it is the truth.
        fleet.heartbeat(&heartbeat("a", 4, 0, NodeSelfStatus::Online), now);
        fleet
            .reserve(&session(3), &spec(1.0), &[], now)
            .expect("room after it exited");
    }
}

//! The choice of a node for a session: online, holding the image, with room, not among the
//! nodes that refused it; the least loaded of the whole fleet, or of a random sample of a large
//! one (the "power of d choices", Nomad's `LimitIterator`).

use std::time::Instant;

use messages::node::NodeHealth;
use messages::session::NO_HEALTHY_NODES;
use messages::template::{ContainerSpec, NetworkMode, Runtime};
use messages::{ErrorBody, ErrorCode, NodeId, SessionId};

use super::{Fleet, NodeState, Reservation};

/// Fleets up to this size are weighed whole by each placement; larger ones by a sample.
const WEIGH_WHOLE_FLEET_UP_TO: usize = 64;
/// How many eligible nodes a sampled placement weighs.
const PLACEMENT_SAMPLE: usize = 8;
/// How many random draws a sampled placement makes looking for them before it scans the fleet.
const PLACEMENT_DRAWS: usize = 64;

impl NodeState {
    /// Whether a placement of `spec` may go here: online, holding the image, not among the
    /// nodes that refused it already, and with room.
    pub(super) fn eligible_for(
        &self,
        spec: &ContainerSpec,
        exclude: &[NodeId],
        now: Instant,
    ) -> bool {
        self.health(now) == NodeHealth::Online
            && holds_image(&self.registration.cached_images, &spec.image)
            && self.offers_runtime(spec.runtime)
            && self.takes_network(spec.network)
            && !exclude.contains(&self.registration.node_id)
            && self.has_room_for(&spec.resources)
    }

    fn offers_runtime(&self, runtime: Runtime) -> bool {
        self.registration.runtimes.contains(&runtime)
    }

    /// Networked sessions go only to nodes that hold them behind their egress rules.
    fn takes_network(&self, network: NetworkMode) -> bool {
        network == NetworkMode::None || self.registration.network_refusal.is_none()
    }
}

/// The refusal of a session whose runtime no healthy node offers; it names the runtime.
pub fn runtime_missing(runtime: Runtime) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::InvalidRequest,
        format!(
            "runtime '{runtime}' is offered by no healthy node: install it on a node \
             (ops/install-deps.sh registers gVisor as runsc) or use runtime 'runc'"
        ),
    )
}

/// Whether `cached` (a node's `repo:tag` list) holds `image`. A reference by digest cannot be
/// checked against tags and counts as present; the node's own check is the final word.
fn holds_image(cached: &[String], image: &str) -> bool {
    if image.contains('@') {
        return true;
    }
    let tagged = image
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'));
    cached
        .iter()
        .any(|tag| tag == image || (!tagged && *tag == format!("{image}:latest")))
}

/// The refusal of a session whose image no healthy node has; it names the image.
pub fn image_missing(image: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::InvalidRequest,
        format!(
            "image '{image}' is on no healthy node: images are never pulled, so build or load it \
             on a node (ops/images/build.sh), or point the template at an image the nodes have"
        ),
    )
}

impl Fleet {
    /// Chooses a node for `spec` and holds room there: a healthy node that has the image and
    /// room, the least loaded of those weighed. `exclude` lists nodes that already refused this
    /// session.
    ///
    /// A small fleet is weighed whole. In a large one, a placement weighs a random sample of
    /// eligible nodes and takes the least loaded of them: the cost stays flat as the fleet grows
    /// (the view's lock is held for microseconds, not a scan of every node), the load still
    /// evens out (the "power of d choices"), and replicas racing for the same moment rarely
    /// pick the same node, so the nodes' admission refuses less. When the draws find fewer than
    /// two eligible nodes the whole fleet is scanned, which also says why none fits.
    pub fn reserve(
        &mut self,
        session_id: &SessionId,
        spec: &ContainerSpec,
        exclude: &[NodeId],
        now: Instant,
    ) -> Result<NodeId, ErrorBody> {
        let resources = &spec.resources;
        let node_id = match self.sample_best(spec, exclude, now) {
            Some(node_id) => node_id,
            None => self.scan_best(spec, exclude, now)?,
        };
        if let Some(node) = self.nodes.get_mut(&node_id) {
            node.reservations.insert(
                session_id.clone(),
                Reservation {
                    resources: *resources,
                    counted_after_heartbeat: None,
                },
            );
        }
        Ok(node_id)
    }

    /// The least loaded of up to [`PLACEMENT_SAMPLE`] eligible nodes drawn at random; `None`
    /// for a small fleet (weighed whole instead) or when the draws found fewer than two.
    fn sample_best(
        &self,
        spec: &ContainerSpec,
        exclude: &[NodeId],
        now: Instant,
    ) -> Option<NodeId> {
        if self.ids.len() <= WEIGH_WHOLE_FLEET_UP_TO {
            return None;
        }
        let resources = &spec.resources;
        let mut best: Option<(f64, &NodeState)> = None;
        let mut eligible = 0;
        for _ in 0..PLACEMENT_DRAWS {
            let node_id = &self.ids[fastrand::usize(..self.ids.len())];
            let Some(node) = self.nodes.get(node_id) else {
                continue;
            };
            if !node.eligible_for(spec, exclude, now) {
                continue;
            }
            let load = node.load_with(resources);
            if best.is_none_or(|(best_load, _)| load < best_load) {
                best = Some((load, node));
            }
            eligible += 1;
            if eligible == PLACEMENT_SAMPLE {
                break;
            }
        }
        // One eligible node drawn is no comparison: where eligible nodes are that sparse, the
        // scan weighs them all.
        if eligible < 2 {
            return None;
        }
        best.map(|(_, node)| node.registration.node_id.clone())
    }

    /// The least loaded eligible node of the whole fleet, or why there is none.
    fn scan_best(
        &self,
        spec: &ContainerSpec,
        exclude: &[NodeId],
        now: Instant,
    ) -> Result<NodeId, ErrorBody> {
        let online: Vec<&NodeState> = self
            .nodes
            .values()
            .filter(|node| node.health(now) == NodeHealth::Online)
            .collect();
        if online.is_empty() {
            return Err(ErrorBody::new(ErrorCode::NoHealthyNodes, NO_HEALTHY_NODES));
        }
        // Images are never pulled: a node without the image cannot take the session.
        let healthy: Vec<&NodeState> = online
            .into_iter()
            .filter(|node| holds_image(&node.registration.cached_images, &spec.image))
            .collect();
        if healthy.is_empty() {
            return Err(image_missing(&spec.image));
        }
        let healthy: Vec<&NodeState> = healthy
            .into_iter()
            .filter(|node| node.offers_runtime(spec.runtime))
            .collect();
        if healthy.is_empty() {
            return Err(runtime_missing(spec.runtime));
        }
        if !healthy.iter().any(|node| node.takes_network(spec.network)) {
            let reasons: Vec<String> = healthy
                .iter()
                .filter_map(|node| {
                    let refusal = node.registration.network_refusal.as_ref()?;
                    Some(format!("{}: {refusal}", node.registration.node_id))
                })
                .take(3)
                .collect();
            return Err(ErrorBody::new(
                ErrorCode::Capacity,
                format!(
                    "no healthy node takes networked sessions ({})",
                    reasons.join("; ")
                ),
            ));
        }
        let resources = &spec.resources;
        let guarantee = resources.guarantee();
        let candidates: Vec<&NodeState> = healthy
            .iter()
            .copied()
            .filter(|node| node.eligible_for(spec, exclude, now))
            .collect();
        candidates
            .iter()
            .min_by(|a, b| {
                a.load_with(resources)
                    .total_cmp(&b.load_with(resources))
                    .then_with(|| a.registration.node_id.cmp(&b.registration.node_id))
            })
            .map(|node| node.registration.node_id.clone())
            .ok_or_else(|| {
                ErrorBody::new(
                    ErrorCode::Capacity,
                    format!(
                        "no healthy node has room for a guarantee of {} CPU and {} MB ({} healthy, \
                         all full)",
                        guarantee.cpu_cores,
                        guarantee.memory_mb,
                        healthy.len()
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use messages::ErrorCode;
    use messages::node::NodeSelfStatus;
    use messages::session::NO_HEALTHY_NODES;

    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn no_nodes_fails_with_the_seeds_reason() {
        let mut fleet = Fleet::default();
        let error = fleet
            .reserve(&session(1), &spec(1.0), &[], Instant::now())
            .expect_err("no node");
        assert_eq!(error.code, ErrorCode::NoHealthyNodes);
        assert_eq!(error.message, NO_HEALTHY_NODES);
    }

    #[test]
    fn a_missing_image_is_named_and_declared_capacity_wins() {
        let now = Instant::now();
        let mut fleet = Fleet::default();
        fleet.register_plain(registration("a", 10, &["other:1"]), now);
        let error = fleet
            .reserve(&session(1), &spec(1.0), &[], now)
            .expect_err("no node has img");
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert!(error.message.contains("'img'"), "{}", error.message);

        let declared = NodeRecord {
            registration: NodeRegistration {
                max_containers: 1,
                ..registration("b", 1, &[])
            },
            status: "offline".into(),
            running_containers: 0,
            allocated_cpu_cores: 0.0,
            allocated_memory_mb: 0,
            last_heartbeat_at: None,
            declared: true,
            drained: false,
        };
        // The daemon says 50 containers; the operator declared 1.
        fleet.register(registration("b", 50, &["img"]), Some(&declared), now);
        let b = NodeId::parse("b").expect("valid");
        assert_eq!(fleet.info(&b, now).map(|node| node.max_containers), Some(1));
        fleet
            .reserve(&session(2), &spec(1.0), &[], now)
            .expect("one fits");
        assert!(fleet.reserve(&session(3), &spec(1.0), &[], now).is_err());
    }

    #[test]
    fn stopping_and_draining_nodes_take_no_sessions() {
        let now = Instant::now();
        let mut fleet = Fleet::default();
        fleet.register_plain(registration("a", 10, &[]), now);
        fleet.heartbeat(&heartbeat("a", 1, 0, NodeSelfStatus::Draining), now);
        assert!(fleet.reserve(&session(1), &spec(1.0), &[], now).is_err());
        fleet.heartbeat(&heartbeat("a", 2, 0, NodeSelfStatus::Stopping), now);
        let id = NodeId::parse("a").expect("valid");
        assert_eq!(
            fleet.info(&id, now).map(|node| node.status),
            Some(NodeHealth::Offline)
        );
    }

    #[test]
    fn prefers_a_node_with_the_image_then_the_least_loaded() {
        let now = Instant::now();
        let mut fleet = Fleet::default();
        fleet.register_plain(registration("empty-no-image", 10, &[]), now);
        fleet.register_plain(registration("busy-with-image", 10, &["img"]), now);
        fleet.register_plain(registration("idle-with-image", 10, &["img"]), now);
        fleet.heartbeat(
            &heartbeat("busy-with-image", 1, 5, NodeSelfStatus::Online),
            now,
        );
        let chosen = fleet
            .reserve(&session(1), &spec(0.5), &[], now)
            .expect("placed");
        assert_eq!(chosen.as_str(), "idle-with-image");
    }

    #[test]
    fn excluded_nodes_are_skipped_and_unknown_heartbeats_reported() {
        let now = Instant::now();
        let mut fleet = Fleet::default();
        fleet.register_plain(registration("a", 10, &["img"]), now);
        fleet.register_plain(registration("b", 10, &["img"]), now);
        let a = NodeId::parse("a").expect("valid");
        let chosen = fleet
            .reserve(&session(1), &spec(1.0), &[a], now)
            .expect("b");
        assert_eq!(chosen.as_str(), "b");
        assert_eq!(
            fleet.heartbeat(&heartbeat("zzz", 1, 0, NodeSelfStatus::Online), now),
            HeartbeatOutcome::UnknownNode
        );
    }

    #[test]
    fn a_large_fleet_is_sampled_yet_fills_exactly_to_capacity() {
        let now = Instant::now();
        let mut fleet = Fleet::default();
        // 1,000 nodes of 4 containers: a quarter without the image, a quarter stopping, so
        // half are eligible, with room for 2,000 sessions in all.
        for n in 0..1000 {
            let id = format!("n{n}");
            let images: &[&str] = if n % 4 == 0 { &[] } else { &["img"] };
            fleet.register_plain(registration(&id, 4, images), now);
            if n % 4 == 1 {
                fleet.heartbeat(&heartbeat(&id, 1, 0, NodeSelfStatus::Stopping), now);
            }
        }
        let mut placed: HashMap<NodeId, u32> = HashMap::new();
        for n in 0..2000 {
            let node = fleet
                .reserve(&session(n), &spec(0.5), &[], now)
                .expect("room is left");
            let index: u32 = node.as_str()[1..].parse().expect("numbered");
            assert!(index % 4 >= 2, "{node} is not eligible");
            *placed.entry(node).or_default() += 1;
        }
        assert_eq!(placed.len(), 500, "every eligible node is used");
        assert!(placed.values().all(|&count| count == 4));
        let error = fleet
            .reserve(&session(2000), &spec(0.5), &[], now)
            .expect_err("full");
        assert_eq!(error.code, ErrorCode::Capacity);
        // A restarted daemon replaces its node; it is drawn no more often than before.
        let mut restarted = registration("n2", 4, &["img"]);
        restarted.started_at += chrono::Duration::seconds(1);
        fleet.register_plain(restarted, now);
        assert_eq!(fleet.ids.len(), 1000);
    }
}

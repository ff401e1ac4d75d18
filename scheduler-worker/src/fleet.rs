//! Each replica's live view of the runtime nodes, built from registrations and heartbeats, and
//! the placement choice made from it.
//!
//! Every replica hears every heartbeat, so their views agree up to message delay. What a view
//! cannot know is what other replicas placed a moment ago: the node daemon's admission check is
//! the final word, and a refused placement is retried elsewhere.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use messages::api::{NodeHealth, NodeInfo};
use messages::node::{Heartbeat, NodeRegistration, NodeSelfStatus, NodeUsage};
use messages::session::{ContainerSpec, NO_HEALTHY_NODES, Resources};
use messages::{ErrorBody, ErrorCode, NodeId, SessionId};

use crate::store::NodeRecord;

/// A node is offline once this many heartbeat intervals pass without one (DESIGN invariant 5).
pub const MISSED_HEARTBEATS_OFFLINE: u32 = 3;
/// A node is suspect (no new sessions) once this many intervals pass without a heartbeat.
pub const MISSED_HEARTBEATS_SUSPECT: u32 = 2;
/// Fleets up to this size are weighed whole by each placement; larger ones by a sample.
const WEIGH_WHOLE_FLEET_UP_TO: usize = 64;
/// How many eligible nodes a sampled placement weighs.
const PLACEMENT_SAMPLE: usize = 8;
/// How many random draws a sampled placement makes looking for them before it scans the fleet.
const PLACEMENT_DRAWS: usize = 64;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Usage {
    containers: u32,
    cpu_cores: f64,
    memory_mb: u64,
}

impl Usage {
    fn add(&mut self, resources: &Resources) {
        self.containers += 1;
        self.cpu_cores += resources.cpu_cores;
        self.memory_mb += resources.memory_mb;
    }
}

/// Room held on a node for a placement this replica made, until the node's figures show it.
#[derive(Debug, Clone)]
struct Reservation {
    resources: Resources,
    /// Heartbeats numbered above this count the container; `None` while the create is in
    /// flight.
    counted_after_heartbeat: Option<u64>,
}

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
    fn interval(&self) -> Duration {
        Duration::from_millis(self.registration.heartbeat_interval_ms.max(1))
    }

    fn health(&self, now: Instant) -> NodeHealth {
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

    /// What the node reported plus what this replica placed there since.
    fn usage(&self) -> Usage {
        let mut usage = self.reported;
        for reservation in self.reservations.values() {
            usage.add(&reservation.resources);
        }
        usage
    }

    fn has_room_for(&self, resources: &Resources) -> bool {
        let usage = self.usage();
        let registration = &self.registration;
        // A little slack for float sums such as 0.1 + 0.2.
        usage.containers < registration.max_containers
            && usage.cpu_cores + resources.cpu_cores <= registration.total_cpu_cores + 1e-9
            && usage.memory_mb + resources.memory_mb <= registration.total_memory_mb
    }

    /// Whether a placement of `spec` may go here: online, holding the image, not among the
    /// nodes that refused it already, and with room.
    fn eligible_for(&self, spec: &ContainerSpec, exclude: &[NodeId], now: Instant) -> bool {
        self.health(now) == NodeHealth::Online
            && holds_image(&self.registration.cached_images, &spec.image)
            && !exclude.contains(&self.registration.node_id)
            && self.has_room_for(&spec.resources)
    }

    /// The highest of the container, CPU and memory fill ratios after adding `resources`.
    fn load_with(&self, resources: &Resources) -> f64 {
        let usage = self.usage();
        let registration = &self.registration;
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
    fn apply_snapshot(&mut self, usage: &NodeUsage) {
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

/// A node's health as it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    pub node_id: NodeId,
    pub health: NodeHealth,
    /// It came back after its sessions were marked lost: the containers it still runs for them
    /// must go, so it is asked for its inventory.
    pub back_after_loss: bool,
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
        let resources = &spec.resources;
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
                        "no healthy node has room for {} CPU and {} MB ({} healthy, all full)",
                        resources.cpu_cores,
                        resources.memory_mb,
                        healthy.len()
                    ),
                )
            })
    }

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

/// A declared node's capacity, which overrides what its daemon reports.
fn declare_capacity(registration: &mut NodeRegistration, declared: &NodeRegistration) {
    registration.total_cpu_cores = declared.total_cpu_cores;
    registration.total_memory_mb = declared.total_memory_mb;
    registration.max_containers = declared.max_containers;
}

#[cfg(test)]
mod tests {
    use super::*;
    use messages::session::NetworkMode;
    use std::collections::BTreeMap;

    fn registration(id: &str, max_containers: u32, images: &[&str]) -> NodeRegistration {
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
        }
    }

    impl Fleet {
        fn register_plain(&mut self, registration: NodeRegistration, now: Instant) {
            self.register(registration, None, now);
        }
    }

    fn spec(cpu_cores: f64) -> ContainerSpec {
        ContainerSpec {
            image: "img".into(),
            resources: Resources {
                cpu_cores,
                memory_mb: 256,
                pids_limit: 64,
            },
            network: NetworkMode::None,
            env: BTreeMap::new(),
        }
    }

    fn session(n: u32) -> SessionId {
        SessionId::parse(format!("s{n}")).expect("valid")
    }

    fn heartbeat(id: &str, sequence: u64, containers: u32, status: NodeSelfStatus) -> Heartbeat {
        Heartbeat {
            node_id: NodeId::parse(id).expect("valid"),
            timestamp: Utc::now(),
            sequence,
            running_containers: containers,
            allocated_cpu_cores: 0.0,
            allocated_memory_mb: 0,
            status,
            warm_containers: 0,
        }
    }

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

    fn snapshot(after_heartbeat: u64, containers: u32) -> NodeUsage {
        NodeUsage {
            after_heartbeat,
            running_containers: containers,
            allocated_cpu_cores: f64::from(containers),
            allocated_memory_mb: 256 * u64::from(containers),
        }
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

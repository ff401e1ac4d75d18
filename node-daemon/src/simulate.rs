//! The simulated fleet, for scale benchmarks of the control plane only: N nodes in one process,
//! each with its own node id, registration, heartbeats and ledger on the real NATS, whose
//! containers are in-memory records that take a configurable time to start. It answers
//! `containers.create`, `containers.remove` and `node.ping` with the daemon's payloads and
//! admission rule; executions and files are not served (a requester gets "no responders" or a
//! timeout). Never used in behaviour tests in place of Docker.
//!
//! Built for 10,000 nodes on two cores: one wildcard subscription per verb dispatches on the
//! node-id token, one timer task sends every node's heartbeats with their phases spread over the
//! interval, and registrations go out a bounded number at a time.
//!
//! A node told to go silent (on `sandbox.simulation.silence`) models a hung daemon: its
//! connection and subscriptions stay, but it sends no heartbeat and answers nothing (pings
//! included, so a probe times out instead of finding "no responders"), and the schedulers mark it
//! offline after three missed intervals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::{Message, Subscriber};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use messages::node::{
    ContainerCreated, ContainerReady, ContainerRemoved, CreateContainer, DiscoverNodes, NodePong,
    NodeRegistration, NodeSelfStatus, PingNode, RemoveContainer,
};
use messages::simulation::{FleetStats, NodesSilenced, SilenceNodes};
use messages::{ErrorBody, ErrorCode, NodeCommand, NodeId, Reply, SessionId, subjects};
use service_kit::bus;
use service_kit::tasks::Tasks;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::docker::HostResources;
use crate::ledger::{Capacity, Demand, Ledger};
use crate::{Running, announce};

/// What `runtime_type` says of a simulated node.
const RUNTIME_TYPE: &str = "simulated";
/// CPU and memory each simulated node offers when the flags do not say.
const DEFAULT_CPU_CORES: f64 = 8.0;
const DEFAULT_MEMORY_MB: u64 = 16_384;
/// Registrations in flight at once: paced by how fast the schedulers answer them.
const REGISTRATIONS_IN_FLIGHT: usize = 64;
/// How often the heartbeat task wakes to send the heartbeats that fell due.
const HEARTBEAT_TICK: Duration = Duration::from_millis(10);

/// A simulated container: still starting, or running with its id.
#[derive(Debug, Clone)]
enum Container {
    Starting,
    Running(String),
}

#[derive(Debug)]
struct NodeState {
    ledger: Ledger,
    containers: HashMap<SessionId, Container>,
    peak_containers: u32,
    over_capacity: bool,
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    started_at: DateTime<Utc>,
    registered: AtomicBool,
    silent: AtomicBool,
    state: Mutex<NodeState>,
}

impl SimNode {
    /// Held only for bookkeeping, never across an await.
    fn state(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn silent(&self) -> bool {
        self.silent.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct Counters {
    created: AtomicU64,
    existed: AtomicU64,
    refused: AtomicU64,
    removed: AtomicU64,
    heartbeats: AtomicU64,
}

#[derive(Debug)]
struct Fleet {
    nats: async_nats::Client,
    /// Every node's registration but for its id and start time.
    template: NodeRegistration,
    capacity: Capacity,
    interval: Duration,
    start_delay: Duration,
    /// In heartbeat-phase order.
    nodes: Vec<Arc<SimNode>>,
    by_id: HashMap<String, Arc<SimNode>>,
    /// A re-registration of the whole fleet is under way (a scheduler started).
    announcing_all: AtomicBool,
    counters: Counters,
    /// Re-registrations on discovery, waited for at shutdown.
    background: TaskTracker,
}

impl Fleet {
    /// The live node `message` is addressed to as a `verb` command.
    fn node(&self, message: &Message, verb: &str) -> Option<&Arc<SimNode>> {
        let node = self
            .by_id
            .get(subjects::node_of_command(&message.subject, verb)?)?;
        (!node.silent()).then_some(node)
    }

    async fn register(&self, node: &SimNode) -> anyhow::Result<()> {
        let registration = NodeRegistration {
            node_id: node.id.clone(),
            started_at: node.started_at,
            ..self.template.clone()
        };
        announce::request_registration(&self.nats, &registration)
            .await
            .with_context(|| format!("registering simulated node {}", node.id))?;
        node.registered.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Registers every node not silent, a bounded number at a time.
    async fn register_all(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut in_flight = JoinSet::new();
        for node in self.nodes.iter().filter(|node| !node.silent()) {
            if in_flight.len() >= REGISTRATIONS_IN_FLIGHT
                && let Some(done) = in_flight.join_next().await
            {
                done.context("a registration task panicked")??;
            }
            let (fleet, node) = (Arc::clone(self), Arc::clone(node));
            in_flight.spawn(async move { fleet.register(&node).await });
        }
        while let Some(done) = in_flight.join_next().await {
            done.context("a registration task panicked")??;
        }
        Ok(())
    }

    fn stats(&self) -> FleetStats {
        let mut stats = FleetStats {
            nodes: u32::try_from(self.nodes.len()).unwrap_or(u32::MAX),
            created: self.counters.created.load(Ordering::Relaxed),
            existed: self.counters.existed.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
            removed: self.counters.removed.load(Ordering::Relaxed),
            heartbeats: self.counters.heartbeats.load(Ordering::Relaxed),
            ..FleetStats::default()
        };
        for node in &self.nodes {
            let state = node.state();
            stats.running += u64::from(state.ledger.usage().containers);
            stats.peak_containers = stats.peak_containers.max(state.peak_containers);
            stats.over_capacity_nodes += u32::from(state.over_capacity);
        }
        stats
    }
}

/// Starts the fleet and returns once every node has registered.
pub(crate) async fn start(config: Config, cancel: CancellationToken) -> anyhow::Result<Running> {
    let count = config.simulate_nodes.context("simulate_nodes is not set")?;
    let offered = HostResources {
        cpu_cores: config.cpu_cores.unwrap_or(DEFAULT_CPU_CORES),
        memory_mb: config.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
    };
    let capacity = Capacity::new(config.max_containers, offered.cpu_cores, offered.memory_mb);
    let images: Vec<String> = config
        .simulated_images
        .iter()
        .map(|image| image.trim().to_owned())
        .filter(|image| !image.is_empty())
        .collect();
    let started_at = Utc::now();
    let mut nodes = Vec::with_capacity(count as usize);
    for index in 0..count {
        let id = NodeId::parse(format!("{}-{index:05}", config.node_id_prefix))
            .context("making a simulated node id")?;
        nodes.push(Arc::new(SimNode {
            id,
            started_at,
            registered: AtomicBool::new(false),
            silent: AtomicBool::new(false),
            state: Mutex::new(NodeState {
                ledger: Ledger::new(capacity),
                containers: HashMap::new(),
                peak_containers: 0,
                over_capacity: false,
            }),
        }));
    }
    let first = nodes.first().context("no simulated nodes")?.id.clone();
    let template = announce::registration_as(
        &config,
        first.clone(),
        RUNTIME_TYPE,
        "simulated://".to_owned(),
        offered,
        images,
    );

    let nats = service_kit::bus::connect(
        &config.nats_url,
        &format!("node-daemon simulated fleet {}", config.node_id_prefix),
    )
    .await?;
    let subscribe = |subject: String| {
        let nats = nats.clone();
        async move {
            nats.subscribe(subject.clone())
                .await
                .with_context(|| format!("subscribing to {subject}"))
        }
    };
    let creates = subscribe(subjects::node_command_any(CreateContainer::VERB)).await?;
    let removes = subscribe(subjects::node_command_any(RemoveContainer::VERB)).await?;
    let pings = subscribe(subjects::node_command_any(PingNode::VERB)).await?;
    let discover = subscribe(subjects::nodes_discover().to_owned()).await?;
    let silence = subscribe(subjects::simulation_silence().to_owned()).await?;
    let stats = subscribe(subjects::simulation_stats().to_owned()).await?;

    let fleet = Arc::new(Fleet {
        by_id: nodes
            .iter()
            .map(|node| (node.id.as_str().to_owned(), Arc::clone(node)))
            .collect(),
        nodes,
        nats,
        template,
        capacity,
        interval: config.heartbeat_interval,
        start_delay: config.simulated_start_delay,
        announcing_all: AtomicBool::new(false),
        counters: Counters::default(),
        background: TaskTracker::new(),
    });

    let mut tasks = Tasks::new(cancel.child_token());
    let stop = tasks.cancel_token().clone();
    tasks.spawn(
        "simulated-creates",
        serve_creates(Arc::clone(&fleet), creates, stop.clone()),
    );
    tasks.spawn(
        "simulated-removes",
        serve_removes(Arc::clone(&fleet), removes, stop.clone()),
    );
    tasks.spawn(
        "simulated-pings",
        serve_pings(Arc::clone(&fleet), pings, stop.clone()),
    );
    tasks.spawn(
        "simulated-discover",
        serve_discover(Arc::clone(&fleet), discover, stop.clone()),
    );
    tasks.spawn(
        "simulation-control",
        serve_control(Arc::clone(&fleet), silence, stats, stop.clone()),
    );
    tasks.spawn(
        "simulated-heartbeats",
        heartbeats(Arc::clone(&fleet), stop.clone()),
    );

    // Heartbeats start for each node once its registration went out, so no scheduler hears of a
    // node it would have to ask to announce itself.
    if let Err(error) = fleet.register_all().await {
        stop.cancel();
        return Err(error);
    }
    if let Err(error) = bus::sync_with_server(&fleet.nats).await {
        stop.cancel();
        return Err(error);
    }
    tracing::info!(
        nodes = count,
        prefix = config.node_id_prefix,
        start_delay = ?config.simulated_start_delay,
        "simulated fleet registered"
    );
    let background = fleet.background.clone();
    Ok(Running::new(first, tasks, background))
}

/// Takes messages from `subscriber` until cancelled, handing each to `handle`.
async fn next_message(
    subscriber: &mut Subscriber,
    cancel: &CancellationToken,
    what: &str,
) -> anyhow::Result<Option<Message>> {
    tokio::select! {
        () = cancel.cancelled() => Ok(None),
        message = subscriber.next() => match message {
            Some(message) => Ok(Some(message)),
            None => anyhow::bail!("the {what} subscription ended"),
        },
    }
}

async fn reply<T: serde::Serialize>(fleet: &Fleet, message: &Message, reply: &Reply<T>) {
    if let Err(error) = bus::respond(&fleet.nats, message, reply).await {
        tracing::warn!(%error, "answering a simulated node's command failed");
    }
}

/// Each create runs in a task of its own, as its start takes the configured delay.
async fn serve_creates(
    fleet: Arc<Fleet>,
    mut subscriber: Subscriber,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut in_progress = JoinSet::new();
    loop {
        tokio::select! {
            Some(finished) = in_progress.join_next(), if !in_progress.is_empty() => {
                if let Err(error) = finished {
                    tracing::error!(%error, "a simulated create panicked");
                }
            }
            message = next_message(&mut subscriber, &cancel, "create") => {
                let Some(message) = message? else { break };
                let Some(node) = fleet.node(&message, CreateContainer::VERB).cloned() else {
                    continue;
                };
                let fleet = Arc::clone(&fleet);
                in_progress.spawn(async move {
                    let answer = match bus::decode_message::<CreateContainer>(&message) {
                        Ok(command) => Reply::from(create(&fleet, &node, command).await),
                        Err(error) => Reply::Error(error),
                    };
                    reply(&fleet, &message, &answer).await;
                });
            }
        }
    }
    while in_progress.join_next().await.is_some() {}
    Ok(())
}

/// The daemon's create, with an in-memory record for the container: idempotent on the session,
/// admitted by the node's ledger, announced ready once it "runs".
async fn create(
    fleet: &Fleet,
    node: &SimNode,
    command: CreateContainer,
) -> Result<ContainerCreated, ErrorBody> {
    let CreateContainer { session_id, spec } = command;
    if !fleet.template.cached_images.contains(&spec.image) {
        return Err(ErrorBody::new(
            ErrorCode::NotFound,
            format!(
                "image {} is not on node {} (images are never pulled)",
                spec.image, node.id
            ),
        ));
    }
    let demand = Demand::of(&spec.resources);
    // A create repeated while the first is starting waits for it, as the daemon's session lock
    // makes it do.
    loop {
        let starting_elsewhere = {
            let mut state = node.state();
            match state.containers.get(&session_id) {
                Some(Container::Running(container_id)) => {
                    let container_id = container_id.clone();
                    fleet.counters.existed.fetch_add(1, Ordering::Relaxed);
                    return Ok(created(node, session_id, container_id, true, &state));
                }
                Some(Container::Starting) => true,
                None => {
                    admit(fleet, node, &mut state, &session_id, demand)?;
                    false
                }
            }
        };
        if !starting_elsewhere {
            break;
        }
        tokio::time::sleep(fleet.start_delay / 4).await;
    }
    tokio::time::sleep(fleet.start_delay).await;
    let container_id = format!("simulated-{session_id}");
    let answer = {
        let mut state = node.state();
        if matches!(state.containers.get(&session_id), Some(Container::Starting)) {
            state
                .ledger
                .mark_running(&session_id, &container_id, demand);
            state
                .containers
                .insert(session_id.clone(), Container::Running(container_id.clone()));
            fleet.counters.created.fetch_add(1, Ordering::Relaxed);
            Ok(created(
                node,
                session_id.clone(),
                container_id.clone(),
                false,
                &state,
            ))
        } else {
            Err(ErrorBody::new(
                ErrorCode::RuntimeError,
                format!("container {container_id} was removed while starting"),
            ))
        }
    }?;
    let ready = ContainerReady {
        container_id,
        session_id,
        node_id: node.id.clone(),
        executor_url: None,
        ready_at: Utc::now(),
    };
    if let Err(error) = bus::publish(&fleet.nats, subjects::containers_ready(), &ready).await {
        tracing::warn!(%error, "announcing a simulated container ready failed");
    }
    Ok(answer)
}

/// The daemon's admission rule, atomic with the reservation; also tracks the node's peak use.
fn admit(
    fleet: &Fleet,
    node: &SimNode,
    state: &mut NodeState,
    session_id: &SessionId,
    demand: Demand,
) -> Result<(), ErrorBody> {
    if let Err(refusal) = state.ledger.admit(session_id, demand) {
        fleet.counters.refused.fetch_add(1, Ordering::Relaxed);
        return Err(ErrorBody::new(
            ErrorCode::Capacity,
            format!("node {}: {refusal}", node.id),
        ));
    }
    state
        .containers
        .insert(session_id.clone(), Container::Starting);
    let usage = state.ledger.usage();
    state.peak_containers = state.peak_containers.max(usage.containers);
    let capacity = fleet.capacity;
    state.over_capacity |= usage.containers > capacity.max_containers
        || usage.cpu_millicores > capacity.cpu_millicores
        || usage.memory_mb > capacity.memory_mb;
    Ok(())
}

fn created(
    node: &SimNode,
    session_id: SessionId,
    container_id: String,
    existed: bool,
    state: &NodeState,
) -> ContainerCreated {
    ContainerCreated {
        session_id,
        node_id: node.id.clone(),
        container_id,
        existed,
        executor_url: None,
        usage: Some(state.ledger.snapshot()),
    }
}

/// Removes answer at once: no Docker call to wait for. A container still starting is given up
/// (its create answers that it was removed).
async fn serve_removes(
    fleet: Arc<Fleet>,
    mut subscriber: Subscriber,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    while let Some(message) = next_message(&mut subscriber, &cancel, "remove").await? {
        let Some(node) = fleet.node(&message, RemoveContainer::VERB) else {
            continue;
        };
        let answer = match bus::decode_message::<RemoveContainer>(&message) {
            Ok(RemoveContainer { session_id }) => {
                let mut state = node.state();
                let removed = match state.containers.remove(&session_id) {
                    Some(Container::Running(container_id)) => {
                        state.ledger.forget(&session_id, &container_id);
                        true
                    }
                    Some(Container::Starting) => {
                        state.ledger.release(&session_id);
                        true
                    }
                    None => false,
                };
                if removed {
                    fleet.counters.removed.fetch_add(1, Ordering::Relaxed);
                }
                Reply::Ok(ContainerRemoved {
                    session_id,
                    removed,
                    usage: Some(state.ledger.snapshot()),
                })
            }
            Err(error) => Reply::Error(error),
        };
        reply(&fleet, &message, &answer).await;
    }
    Ok(())
}

async fn serve_pings(
    fleet: Arc<Fleet>,
    mut subscriber: Subscriber,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    while let Some(message) = next_message(&mut subscriber, &cancel, "ping").await? {
        if let Some(node) = fleet.node(&message, PingNode::VERB) {
            let answer = bus::decode_message(&message).map(|PingNode {}| NodePong {
                node_id: node.id.clone(),
                started_at: node.started_at,
            });
            reply(&fleet, &message, &Reply::from(answer)).await;
        }
    }
    Ok(())
}

/// Announces the nodes again when a scheduler asks: one node at once, the whole fleet in the
/// background (one such round at a time).
async fn serve_discover(
    fleet: Arc<Fleet>,
    mut subscriber: Subscriber,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    while let Some(message) = next_message(&mut subscriber, &cancel, "discovery").await? {
        let request: DiscoverNodes = match bus::decode_message(&message) {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(%error, "ignoring a malformed discovery request");
                continue;
            }
        };
        let fleet = Arc::clone(&fleet);
        match request.node_id {
            Some(node_id) => {
                let Some(node) = fleet.by_id.get(node_id.as_str()).cloned() else {
                    continue;
                };
                if node.silent() {
                    continue;
                }
                let background = fleet.background.clone();
                background.spawn(async move {
                    if let Err(error) = fleet.register(&node).await {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "announcing a node on discovery failed"
                        );
                    }
                });
            }
            None => {
                if fleet.announcing_all.swap(true, Ordering::AcqRel) {
                    continue;
                }
                let background = fleet.background.clone();
                background.spawn(async move {
                    if let Err(error) = fleet.register_all().await {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "announcing the fleet on discovery failed"
                        );
                    }
                    fleet.announcing_all.store(false, Ordering::Release);
                });
            }
        }
    }
    Ok(())
}

/// The benchmark's requests: silence nodes, read the counters.
async fn serve_control(
    fleet: Arc<Fleet>,
    mut silence: Subscriber,
    mut stats: Subscriber,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            message = silence.next() => {
                let Some(message) = message else { anyhow::bail!("the silence subscription ended") };
                let answer = match bus::decode_message::<SilenceNodes>(&message) {
                    Ok(request) => {
                        let mut silenced = 0;
                        for node_id in &request.node_ids {
                            if let Some(node) = fleet.by_id.get(node_id.as_str()) {
                                node.silent.store(true, Ordering::Relaxed);
                                silenced += 1;
                            }
                        }
                        tracing::info!(silenced, "simulated nodes went silent");
                        Reply::Ok(NodesSilenced { silenced })
                    }
                    Err(error) => Reply::Error(error),
                };
                reply(&fleet, &message, &answer).await;
            }
            message = stats.next() => {
                let Some(message) = message else { anyhow::bail!("the stats subscription ended") };
                reply(&fleet, &message, &Reply::Ok(fleet.stats())).await;
            }
        }
    }
}

/// Sends every node's heartbeat once per interval, node `i` at `i / N` of the way through it,
/// so the schedulers see an even rate rather than bursts. Falls behind gracefully: what fell
/// due while the task was starved is sent at its next tick, at most one round of it.
async fn heartbeats(fleet: Arc<Fleet>, cancel: CancellationToken) -> anyhow::Result<()> {
    let count = fleet.nodes.len() as u64;
    let interval = fleet.interval.as_secs_f64();
    let begun = tokio::time::Instant::now();
    let mut sent: u64 = 0;
    let mut ticker = tokio::time::interval(HEARTBEAT_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let elapsed = begun.elapsed().as_secs_f64();
        let due = (elapsed / interval * count as f64) as u64;
        sent = sent.max(due.saturating_sub(count));
        while sent < due {
            let node = &fleet.nodes[(sent % count) as usize];
            sent += 1;
            if node.registered.load(Ordering::Relaxed) && !node.silent() {
                send_heartbeat(&fleet, node, NodeSelfStatus::Online).await;
            }
        }
    }
    // Stopping cleanly: every live node says so, as a daemon does on SIGTERM.
    for node in &fleet.nodes {
        if node.registered.load(Ordering::Relaxed) && !node.silent() {
            send_heartbeat(&fleet, node, NodeSelfStatus::Stopping).await;
        }
    }
    if let Err(error) = fleet.nats.flush().await {
        tracing::warn!(%error, "flushing NATS on shutdown failed");
    }
    Ok(())
}

async fn send_heartbeat(fleet: &Fleet, node: &SimNode, status: NodeSelfStatus) {
    let heartbeat = announce::heartbeat_message(&node.id, &mut node.state().ledger, status);
    fleet.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
    if let Err(error) = bus::publish(&fleet.nats, subjects::heartbeat(), &heartbeat).await {
        tracing::warn!(node = %node.id, %error, "sending a simulated heartbeat failed");
    }
}

//! The simulated fleet, for scale benchmarks of the control plane only: N nodes in one process,
//! each with its own node id, registration, heartbeats and ledger on the real NATS, whose
//! containers are in-memory records that take a configurable time to start. It answers
//! `containers.create`, `containers.remove` and `node.ping` with the daemon's payloads and
//! admission rule; executions and files are not served (a requester gets "no responders" or a
//! timeout). Never used in behaviour tests in place of Docker, and built only with the
//! `simulation` feature (off by default), so a production binary does not carry it.
//!
//! Built for 10,000 nodes on two cores: one wildcard subscription per verb dispatches on the
//! node-id token, one timer task sends every node's heartbeats with their phases spread over the
//! interval, and registrations go out a bounded number at a time.
//!
//! A node told to go silent (on `sandbox.simulation.silence`) models a hung daemon: its
//! connection and subscriptions stay, but it sends no heartbeat and answers nothing (pings
//! included, so a probe times out instead of finding "no responders"), and the schedulers mark it
//! offline after three missed intervals.

mod commands;
mod fleet;
mod heartbeats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use async_nats::Subscriber;
use chrono::Utc;
use futures::StreamExt as _;
use messages::node::{CreateContainer, DiscoverNodes, PingNode, RemoveContainer};
use messages::simulation::{NodesSilenced, SilenceNodes};
use messages::{NodeCommand, NodeId, Reply, subjects};
use service_kit::bus;
use service_kit::tasks::Tasks;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::fleet::{Counters, Fleet, NodeState, SimNode, next_message, reply};
use crate::announce;
use crate::config::Config;
use crate::docker::HostResources;
use crate::ledger::{Capacity, Ledger};
use crate::running::Running;

/// What `runtime_type` says of a simulated node.
const RUNTIME_TYPE: &str = "simulated";
/// CPU and memory each simulated node offers when the flags do not say.
const DEFAULT_CPU_CORES: f64 = 8.0;
const DEFAULT_MEMORY_MB: u64 = 16_384;

/// Starts the fleet and returns once every node has registered.
pub(crate) async fn start(config: Config, cancel: CancellationToken) -> anyhow::Result<Running> {
    let count = config.simulate_nodes.context("simulate_nodes is not set")?;
    let offered = HostResources {
        cpu_cores: config.cpu_cores.unwrap_or(DEFAULT_CPU_CORES),
        memory_mb: config.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
        runtimes: Vec::new(),
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
        commands::serve_creates(Arc::clone(&fleet), creates, stop.clone()),
    );
    tasks.spawn(
        "simulated-removes",
        commands::serve_removes(Arc::clone(&fleet), removes, stop.clone()),
    );
    tasks.spawn(
        "simulated-pings",
        commands::serve_pings(Arc::clone(&fleet), pings, stop.clone()),
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
        heartbeats::heartbeats(Arc::clone(&fleet), stop.clone()),
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

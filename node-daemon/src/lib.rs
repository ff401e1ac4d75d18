//! The node daemon: one per host. It registers the node with the control plane, heartbeats, makes
//! and removes session containers on the local Docker engine when a scheduler asks, reports the
//! containers that exit, and runs code and moves files through each container's executor agent.

mod agent;
mod announce;
mod commands;
mod config;
mod containers;
mod docker;
pub mod egress;
mod events;
mod executions;
mod files;
mod host;
mod ledger;
mod node;
mod pool;
mod running;
mod runtimes;
mod sandbox;
mod serve;
#[cfg(feature = "simulation")]
mod simulation;
mod volumes;
mod warm;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use messages::SessionId;
use messages::execution::RunExecution;
use messages::files::{AbortUpload, DeleteFile, ListFiles, ReadFileChunk, WriteFileChunk};
use messages::node::{CreateContainer, RemoveContainer};
use messages::subjects;
use service_kit::Subscription;
use service_kit::tasks::Tasks;
use tokio_util::sync::CancellationToken;

pub use crate::config::{Config, ConfigError};
use crate::docker::{ContainerFacts, DockerEngine, HostResources};
use crate::egress::{EgressFirewall, FirewallConfig};
use crate::ledger::{Capacity, Ledger};
use crate::node::{Node, Settings};
pub use crate::running::Running;
use crate::runtimes::EngineRuntimes;
use crate::serve::Commands;
use crate::volumes::Volumes;

/// Starts the daemon and returns once the node is ready: Docker reached, the network in place,
/// command subscriptions made and the registration published.
pub async fn start(config: Config, cancel: CancellationToken) -> anyhow::Result<Running> {
    // 1. Check the configuration before anything is contacted.
    config.validate().context("invalid configuration")?;
    #[cfg(feature = "simulation")]
    if config.simulate_nodes.is_some() {
        // A benchmark's stand-in for a fleet: no Docker at all.
        return simulation::start(config, cancel).await;
    }
    let node_id = config.node_id.clone();

    // 2. Reach the Docker engine.
    let docker = DockerEngine::connect(&config.docker_socket).await?;

    // 3. What the node offers: the engine's CPU and memory unless configured, and its
    //    runtimes (gVisor's, if the engine has them).
    let host = docker.host_resources().await?;
    let runtimes = EngineRuntimes::found(
        &config.gvisor_runtime,
        &config.gvisor_networked_runtime,
        &host.runtimes,
    );
    let offered = HostResources {
        cpu_cores: config.cpu_cores.unwrap_or(host.cpu_cores),
        memory_mb: config.memory_mb.unwrap_or(host.memory_mb),
        runtimes: host.runtimes,
    };

    // 4. The bridge network for sessions that ask for one, and its egress rules. A node that
    //    cannot install them runs on, but takes no networked session and says why.
    if docker.ensure_network(&config.network).await? {
        tracing::info!(network = config.network, "created the sandbox network");
    }
    let egress = install_egress(&docker, &config)
        .await
        .map_err(|error| format!("{error:#}"));
    if let Err(reason) = &egress {
        tracing::error!(reason, "egress rules not installed: no networked sessions");
    }

    // 5. Where the sandboxes' disks go.
    let volumes = Volumes::new(&config.state_dir, config.node_id.as_str());
    volumes
        .prepare()
        .await
        .context("preparing the sandbox volumes (loop-mounted ext4 images)")?;

    // 6. The images this node can run (nothing is ever pulled).
    let cached_images = docker.image_tags().await?;

    // 7. The containers this node already runs, so allocations survive a daemon restart. Events
    //    are followed from just before this read, so an exit in between is not lost.
    //    They are reported with the registration, so the schedulers adopt the running sessions'
    //    containers and have the others removed: a restart never ends a running session.
    let events_since = SystemTime::now();
    let listed_at = chrono::Utc::now();
    let mut ledger = Ledger::new(Capacity::new(
        config.max_containers,
        offered.cpu_cores,
        offered.memory_mb,
    ));
    //    Warm-pool containers a previous run left unclaimed are removed; the pools refill.
    let containers =
        pool::discard_unclaimed(&docker, docker.managed_containers(&node_id).await?).await;
    for container in &containers {
        if let Some(session_id) = running_session(container) {
            ledger.mark_running(&session_id, &container.id, container.demand);
        }
    }
    //    Disks and egress rules of containers that are gone are released.
    let keys = |running_only: bool| -> HashSet<String> {
        containers
            .iter()
            .filter(|container| container.running || !running_only)
            .filter_map(|container| container.volume_key.clone())
            .collect()
    };
    let swept = volumes.retain(&keys(false)).await?;
    if let Ok(firewall) = &egress {
        firewall.retain(&keys(true)).await?;
    }
    let inventory = announce::inventory(&containers, listed_at);
    tracing::info!(
        node_id = %node_id,
        cpu_cores = offered.cpu_cores,
        memory_mb = offered.memory_mb,
        running = ledger.usage().containers,
        volumes_swept = swept,
        runtimes = ?runtimes.offered(),
        "Docker engine ready"
    );

    // 8. Connect to NATS, checking it takes messages as large as a run's result.
    let nats =
        service_kit::bus::connect(&config.nats_url, &format!("node-daemon {node_id}")).await?;
    check_max_payload(&nats, config.output_limit)?;
    let registration = announce::registration(
        &config,
        offered,
        cached_images,
        runtimes.offered(),
        egress.as_ref().err().cloned(),
    );
    let settings = Settings {
        sandbox_network: config.network,
        heartbeat_interval: config.heartbeat_interval,
        output_limit: config.output_limit,
        memory_reserve_mb: config.memory_reserve_mb,
        disk_reserve_mb: config.disk_reserve_mb,
        volumes,
        runtimes,
        egress,
    };
    let node = Arc::new(Node::new(nats, docker, settings, registration, ledger));
    //    The running networked sandboxes get their rules back (a fresh install has none).
    for container in containers.iter().filter(|container| container.running) {
        if let Err(error) = containers::reopen_egress(&node, container).await {
            tracing::warn!(%error, container_id = container.id, "egress rules not restored");
        }
    }

    // 9. Subscribe to this node's commands (one line each), to discovery and to template
    //    changes, all before the node is announced.
    let mut commands = Commands::new(Arc::clone(&node));
    commands.add::<CreateContainer>().await?;
    commands.add::<RemoveContainer>().await?;
    commands.add::<RunExecution>().await?;
    commands.add::<WriteFileChunk>().await?;
    commands.add::<AbortUpload>().await?;
    commands.add::<ReadFileChunk>().await?;
    commands.add::<ListFiles>().await?;
    commands.add::<DeleteFile>().await?;
    commands.add_ping().await?;
    let discover = Subscription::subscribe(&node.nats, subjects::nodes_discover()).await?;
    let template_updates =
        Subscription::subscribe(&node.nats, subjects::templates_updated()).await?;

    // 10. Serve commands and discovery, and follow Docker's events. The tasks stop with `cancel`,
    //    or all together when one fails.
    let mut tasks = Tasks::new(cancel.child_token());
    let stop = tasks.cancel_token().clone();
    tasks.spawn("commands", commands.serve(stop.clone()));
    tasks.spawn(
        "discover",
        announce::serve_discover(Arc::clone(&node), discover, stop.clone()),
    );
    tasks.spawn(
        "image-events",
        announce::watch_images(Arc::clone(&node), stop.clone()),
    );
    tasks.spawn(
        "docker-events",
        events::watch_containers(Arc::clone(&node), events_since, stop.clone()),
    );
    tasks.spawn(
        "egress-upkeep",
        keep_egress(Arc::clone(&node), stop.clone()),
    );

    // 11. Announce the node, then keep it alive with heartbeats.
    let cached_images = node.registration.cached_images.clone();
    if let Err(error) = announce::publish_registration(&node, cached_images, Some(inventory)).await
    {
        stop.cancel();
        return Err(error).context("publishing the node registration");
    }
    if let Err(error) = service_kit::bus::sync_with_server(&node.nats).await {
        stop.cancel();
        return Err(error);
    }
    tasks.spawn(
        "warm-pools",
        pool::maintain(Arc::clone(&node), template_updates, stop.clone()),
    );
    tasks.spawn("heartbeat", announce::heartbeat(Arc::clone(&node), stop));
    tracing::info!(node_id = %node_id, "node registered");

    Ok(Running::new(node_id, tasks, node.background.clone()))
}

/// Installs the egress rules of the sandbox network's bridge. Their chains are named after the
/// network, so daemons of different networks on one host (tests) keep apart.
async fn install_egress(docker: &DockerEngine, config: &Config) -> anyhow::Result<EgressFirewall> {
    let (bridge_interface, subnet) = docker.bridge_of(&config.network).await?;
    let subnet = subnet
        .parse()
        .with_context(|| format!("the subnet {subnet:?} of {}", config.network))?;
    let firewall = EgressFirewall::install(FirewallConfig {
        bridge_interface,
        subnet,
        chain_prefix: egress::chain_prefix(&config.network),
        nameservers: (!config.egress_nameservers.is_empty())
            .then(|| config.egress_nameservers.clone()),
        owner: config.node_id.to_string(),
    })
    .await?;
    Ok(firewall)
}

/// Re-resolves the egress rules' domains and puts the hooks back if something removed them,
/// every [`egress::REFRESH_INTERVAL`], until cancelled.
async fn keep_egress(node: Arc<Node>, cancel: CancellationToken) -> anyhow::Result<()> {
    let Ok(firewall) = node.egress.clone() else {
        return Ok(());
    };
    let mut ticks = tokio::time::interval(egress::REFRESH_INTERVAL);
    ticks.tick().await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        if let Err(error) = firewall.check_hooks().await {
            tracing::error!(%error, "egress hooks could not be checked or put back");
        }
        if let Err(error) = firewall.refresh_domains().await {
            tracing::warn!(%error, "egress domains not refreshed");
        }
    }
}

/// A run's result carries both output streams, each up to the output limit, in one message: the
/// NATS server must accept messages that large.
fn check_max_payload(nats: &async_nats::Client, output_limit: u64) -> anyhow::Result<()> {
    let max_payload = u64::try_from(nats.server_info().max_payload).unwrap_or(u64::MAX);
    let needed = executions::max_result_bytes(output_limit);
    if needed > max_payload {
        anyhow::bail!(
            "the NATS server accepts messages of at most {max_payload} bytes, but an execution \
             result may take {needed} (twice the output limit of {output_limit} bytes, plus room \
             for the other fields): raise max_payload in the nats-server configuration (say, \
             `max_payload: 8MB`) or lower --output-limit (NODE_DAEMON_OUTPUT_LIMIT_BYTES)"
        );
    }
    Ok(())
}

/// The session a running container of this node serves: a stopped one holds no resources.
fn running_session(container: &ContainerFacts) -> Option<SessionId> {
    container
        .running
        .then(|| container.session_id.clone())
        .flatten()
}

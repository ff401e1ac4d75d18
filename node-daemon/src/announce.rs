//! How the node makes itself known: its registration (at start and when a scheduler asks through
//! discovery) and its periodic heartbeat.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt as _;
use messages::node::{
    ContainerInventory, DiscoverNodes, Heartbeat, HostFigures, NodeRegistration, NodeSelfStatus,
    RegistrationAccepted, ReportedContainer,
};
use messages::template::Runtime;
use messages::{NodeId, subjects};
use service_kit::Subscription;
use service_kit::bus::{self, BusError};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::docker::{ContainerFacts, HostResources};
use crate::host;
use crate::ledger::Ledger;
use crate::node::Node;

/// What goes in `runtime_type` for a node backed by a real Docker engine.
const RUNTIME_TYPE: &str = "docker";
/// How long the last heartbeat may take to leave on shutdown.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for a scheduler to accept or refuse the registration. None may be running:
/// schedulers ask for the nodes when they start.
const REGISTRATION_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The registration this node announces, from its configuration and what the host offers:
/// its runtimes, and why it takes no networked sessions if it cannot hold them.
pub(crate) fn registration(
    config: &Config,
    offered: HostResources,
    cached_images: Vec<String>,
    runtimes: Vec<Runtime>,
    network_refusal: Option<String>,
) -> NodeRegistration {
    NodeRegistration {
        runtimes,
        network_refusal,
        ..registration_as(
            config,
            config.node_id.clone(),
            RUNTIME_TYPE,
            format!("unix://{}", config.docker_socket),
            offered,
            cached_images,
        )
    }
}

/// The registration of `node_id` with this configuration's labels, interval and address: the
/// daemon's own, or one simulated node's.
pub(crate) fn registration_as(
    config: &Config,
    node_id: NodeId,
    runtime_type: &str,
    api_endpoint: String,
    offered: HostResources,
    cached_images: Vec<String>,
) -> NodeRegistration {
    let ip_address = config
        .advertise_ip
        .unwrap_or_else(config::default_advertise_ip);
    NodeRegistration {
        node_id,
        hostname: config::host_name(),
        runtime_type: runtime_type.to_owned(),
        ip_address: ip_address.to_string(),
        api_endpoint,
        total_cpu_cores: offered.cpu_cores,
        total_memory_mb: offered.memory_mb,
        max_containers: config.max_containers,
        cached_images,
        labels: config.labels.clone(),
        daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
        heartbeat_interval_ms: u64::try_from(config.heartbeat_interval.as_millis())
            .unwrap_or(u64::MAX),
        started_at: Utc::now(),
        inventory: None,
        runtimes: vec![Runtime::Runc],
        network_refusal: None,
    }
}

/// The containers listed (at `listed_at`, taken before the listing) as a scheduler reconciles
/// them. Unclaimed warm-pool containers belong to no session: they are the node's own business,
/// and left out (a scheduler would remove them as orphans).
pub(crate) fn inventory(
    containers: &[ContainerFacts],
    listed_at: chrono::DateTime<Utc>,
) -> ContainerInventory {
    ContainerInventory {
        listed_at,
        containers: containers
            .iter()
            .filter(|facts| !facts.is_unclaimed_warm())
            .map(|facts| ReportedContainer {
                container_id: facts.id.clone(),
                session_id: facts.session_id.clone(),
                running: facts.running,
                exit_code: facts.exit_code,
                oom_killed: facts.oom_killed,
            })
            .collect(),
    }
}

/// Announces the node on `runtime.nodes.register` with the given image list and containers,
/// as a request: a scheduler answers whether the node may join. A refusal (an undeclared node
/// in static mode) is logged with its reason; the schedulers ask again for nodes they hear
/// heartbeats from, so the node joins once declared. Like every message, it carries a trace
/// context: the span gives it one.
#[tracing::instrument(name = "node.register", skip_all)]
pub(crate) async fn publish_registration(
    node: &Node,
    cached_images: Vec<String>,
    inventory: Option<ContainerInventory>,
) -> Result<(), BusError> {
    let registration = NodeRegistration {
        cached_images,
        inventory,
        ..node.registration.clone()
    };
    request_registration(&node.nats, &registration).await
}

/// Sends `registration` as a request and logs the answer; only a failure to send is an error.
pub(crate) async fn request_registration(
    nats: &async_nats::Client,
    registration: &NodeRegistration,
) -> Result<(), BusError> {
    let subject = subjects::nodes_register().to_owned();
    let answer: Result<RegistrationAccepted, BusError> =
        bus::request(nats, subject, registration, REGISTRATION_ANSWER_TIMEOUT).await;
    match answer {
        Ok(accepted) => tracing::info!(
            declared = accepted.declared,
            cpu_cores = accepted.total_cpu_cores,
            memory_mb = accepted.total_memory_mb,
            max_containers = accepted.max_containers,
            "registration accepted"
        ),
        Err(BusError::Schema { reason, .. }) => tracing::error!(
            reason = %reason.message,
            "a scheduler of a newer schema answered the registration: upgrade this node daemon"
        ),
        Err(BusError::Remote(refusal)) => tracing::error!(
            code = %refusal.code,
            reason = %refusal.message,
            "registration refused: this node takes no sessions until a scheduler accepts it"
        ),
        Err(BusError::NoResponders { .. } | BusError::Timeout { .. }) => tracing::info!(
            "no scheduler answered the registration; schedulers ask for the nodes when they start"
        ),
        Err(error) => return Err(error),
    }
    Ok(())
}

/// The containers this node holds now; `None` (logged) when Docker cannot list them.
pub(crate) async fn current_inventory(node: &Node) -> Option<ContainerInventory> {
    let listed_at = Utc::now();
    match node.docker.managed_containers(&node.id).await {
        Ok(containers) => Some(inventory(&containers, listed_at)),
        Err(error) => {
            tracing::warn!(%error, "listing this node's containers failed; announcing without them");
            None
        }
    }
}

/// Answers `runtime.nodes.discover` for all nodes or this one by announcing the node again, with
/// the images it holds now and, unless only the images were asked for, its containers (which the
/// schedulers reconcile).
pub(crate) async fn serve_discover(
    node: Arc<Node>,
    requests: Subscription<DiscoverNodes>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    requests
        .for_each(cancel, |request| {
            let node = Arc::clone(&node);
            async move {
                if request.node_id.is_some_and(|asked| asked != node.id) {
                    return;
                }
                let cached_images = match node.docker.image_tags().await {
                    Ok(images) => images,
                    Err(error) => {
                        tracing::warn!(%error, "re-reading images failed; announcing the start-up list");
                        node.registration.cached_images.clone()
                    }
                };
                let inventory = if request.images_only {
                    None
                } else {
                    current_inventory(&node).await
                };
                if let Err(error) = publish_registration(&node, cached_images, inventory).await {
                    tracing::warn!(%error, "announcing the node on discovery failed");
                }
            }
        })
        .await
}

/// Announces the node again whenever its images change (one built or loaded after the daemon
/// started), so the schedulers place sessions of a new image here at once instead of refusing
/// them until the next discovery. A broken event stream is logged and followed again.
pub(crate) async fn watch_images(node: Arc<Node>, cancel: CancellationToken) -> anyhow::Result<()> {
    loop {
        let mut events = node.docker.image_events();
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                event = events.next() => event,
            };
            match event {
                Some(Ok(_)) => match node.docker.image_tags().await {
                    Ok(images) => {
                        if let Err(error) = publish_registration(&node, images, None).await {
                            tracing::warn!(%error, "announcing the node's new images failed");
                        }
                    }
                    Err(error) => tracing::warn!(%error, "re-reading images failed"),
                },
                Some(Err(error)) => {
                    tracing::warn!(%error, "the Docker image event stream failed; following it again");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(IMAGE_EVENTS_RETRY) => {}
        }
    }
}

/// How long to wait before following image events again after the stream broke.
const IMAGE_EVENTS_RETRY: Duration = Duration::from_secs(1);

/// Heartbeats every interval until cancelled, then says once that the node is stopping and
/// flushes. A heartbeat that cannot be sent is logged; heartbeats never stop the daemon.
pub(crate) async fn heartbeat(node: Arc<Node>, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(node.heartbeat_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        send_heartbeat(&node, NodeSelfStatus::Online).await;
    }
    send_heartbeat(&node, NodeSelfStatus::Stopping).await;
    match tokio::time::timeout(FINAL_FLUSH_TIMEOUT, node.nats.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "flushing NATS on shutdown failed"),
        Err(_) => tracing::warn!("flushing NATS on shutdown timed out"),
    }
    Ok(())
}

#[tracing::instrument(name = "node.heartbeat", skip(node), fields(sequence))]
async fn send_heartbeat(node: &Node, status: NodeSelfStatus) {
    // Read before the ledger's lock is taken: reading the host's figures is a file read each.
    // Unknown free memory is left out rather than sent as 0, which placement would read as full.
    let free = host::memory_available_mb().map(|memory_mb| HostFree {
        memory_mb,
        disk_mb: host::disk_available_mb(node.volumes.root()).unwrap_or(0),
    });
    let heartbeat = heartbeat_message(&node.id, &mut node.ledger(), status, free);
    let sequence = heartbeat.sequence;
    tracing::Span::current().record("sequence", sequence);
    if let Err(error) = bus::publish(&node.nats, subjects::heartbeat(), &heartbeat).await {
        tracing::warn!(%error, sequence, "sending a heartbeat failed");
    }
}

/// The host's real free memory and disk, in MiB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostFree {
    pub memory_mb: u64,
    pub disk_mb: u64,
}

/// The next heartbeat of `node_id`, numbered and filled from its ledger and, when known, what
/// its host has free.
pub(crate) fn heartbeat_message(
    node_id: &NodeId,
    ledger: &mut Ledger,
    status: NodeSelfStatus,
    free: Option<HostFree>,
) -> Heartbeat {
    // Stamped before the figures are read, so they are at least as new as the timestamp says.
    let timestamp = Utc::now();
    let (sequence, usage) = ledger.next_heartbeat();
    let host = free.map(|free| HostFigures {
        limit_cpu_cores: usage.limit_cpu_cores(),
        limit_memory_mb: usage.limit_memory_mb,
        memory_available_mb: free.memory_mb,
        disk_available_mb: free.disk_mb,
    });
    Heartbeat {
        node_id: node_id.clone(),
        timestamp,
        sequence,
        running_containers: usage.containers,
        allocated_cpu_cores: usage.cpu_cores(),
        allocated_memory_mb: usage.memory_mb,
        status,
        warm_containers: usage.warm,
        host,
    }
}

//! What nodes announce. Every replica keeps its node view from registrations and heartbeats,
//! and judges the nodes' health from it; one replica (queue group) records each announcement and
//! container event in the database. The view's task never writes to the database, so a slow
//! write can never hold heartbeats back and make healthy nodes look silent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::{Message, Subscriber};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use messages::api::NodeHealth;
use messages::node::{
    ContainerExited, ContainerReady, DiscoverNodes, Heartbeat, NodeRegistration, NodeUpdated,
    PingNode, RegistrationAccepted,
};
use messages::session::SessionStatus;
use messages::{ErrorBody, ErrorCode, NodeId, Reply, decode, subjects};
use serde::de::DeserializeOwned;
use service_kit::bus::{self, BusError};
use tokio_util::sync::CancellationToken;

use crate::config::RegistrationMode;
use crate::fleet::HeartbeatOutcome;
use crate::scheduler::Scheduler;
use crate::store::{self, NodeRecord, Transition};

/// How often node health is re-judged, so a silent node is marked offline promptly.
const HEALTH_SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How long a probe of a suspect node waits for its daemon.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the latest heartbeat of each node is written to `runtime_nodes`. The views are
/// current at once; the table is for operators' SQL, and one transaction a second costs the
/// database the same whatever the size of the fleet.
const HEARTBEAT_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// What every replica hears: the source of its node view.
#[derive(Debug)]
pub struct ViewSubscriptions {
    registrations: Subscriber,
    heartbeats: Subscriber,
    updates: Subscriber,
}

/// What one replica of the queue group hears: each event is recorded once.
#[derive(Debug)]
pub struct RecorderSubscriptions {
    pub registrations: Subscriber,
    pub heartbeats: Subscriber,
    pub containers: ContainerEventSubscriptions,
}

/// The seed's container signals, recorded by one replica each.
#[derive(Debug)]
pub struct ContainerEventSubscriptions {
    ready: Subscriber,
    exited: Subscriber,
}

/// Subscribes before the replica reports ready, so no announcement after start is missed.
pub async fn subscribe(
    nats: &async_nats::Client,
) -> anyhow::Result<(ViewSubscriptions, RecorderSubscriptions)> {
    let group = || subjects::scheduler_queue_group().to_owned();
    let view = ViewSubscriptions {
        registrations: nats.subscribe(subjects::nodes_register()).await?,
        heartbeats: nats.subscribe(subjects::heartbeat()).await?,
        updates: nats.subscribe(subjects::nodes_updated()).await?,
    };
    let recorder = RecorderSubscriptions {
        registrations: nats
            .queue_subscribe(subjects::nodes_register(), group())
            .await?,
        heartbeats: nats.queue_subscribe(subjects::heartbeat(), group()).await?,
        containers: ContainerEventSubscriptions {
            ready: nats
                .queue_subscribe(subjects::containers_ready(), group())
                .await?,
            exited: nats
                .queue_subscribe(subjects::containers_exited(), group())
                .await?,
        },
    };
    Ok((view, recorder))
}

/// Decodes a payload, logging and dropping what does not decode: one bad message from one node
/// must not stop the replica.
fn decode_or_log<T: DeserializeOwned>(message: &Message) -> Option<T> {
    match decode(&message.payload) {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::warn!(subject = %message.subject, %error, "dropping undecodable message");
            None
        }
    }
}

/// Keeps this replica's node view from registrations, heartbeats and operators' changes.
pub async fn run_view(
    scheduler: Arc<Scheduler>,
    subscriptions: ViewSubscriptions,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let ViewSubscriptions {
        registrations: mut view_registrations,
        heartbeats: mut view_heartbeats,
        updates: mut view_updates,
    } = subscriptions;
    let mut asked_to_announce: HashMap<NodeId, Instant> = HashMap::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            message = view_registrations.next() => {
                let Some(message) = message else { bail!("registration subscription ended") };
                if let Some(registration) = decode_or_log::<NodeRegistration>(&message) {
                    asked_to_announce.remove(&registration.node_id);
                    view_registration(&scheduler, registration).await;
                }
            }
            message = view_updates.next() => {
                let Some(message) = message else { bail!("node update subscription ended") };
                let Some(update) = decode_or_log::<NodeUpdated>(&message) else { continue };
                match scheduler.store.get_node(&update.node_id).await {
                    Ok(Some(record)) => scheduler.fleet().apply_record(record, Instant::now()),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(node = %update.node_id, %error, "could not read an updated node"),
                }
            }
            message = view_heartbeats.next() => {
                let Some(message) = message else { bail!("heartbeat subscription ended") };
                let Some(heartbeat) = decode_or_log::<Heartbeat>(&message) else { continue };
                let outcome = scheduler.fleet().heartbeat(&heartbeat, Instant::now());
                if outcome == HeartbeatOutcome::UnknownNode {
                    ask_to_announce(&scheduler, &mut asked_to_announce, heartbeat.node_id).await;
                }
            }
        }
    }
}

/// Re-judges every node's health, four times a second, and acts on what changed.
pub async fn judge_health(
    scheduler: Arc<Scheduler>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut sweep = tokio::time::interval(HEALTH_SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Health not yet written (the write failed): tried again with the next sweep's changes.
    let mut unrecorded = BTreeMap::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = sweep.tick() => record_health_changes(&scheduler, &mut unrecorded).await,
        }
    }
}

/// Asks a node heard of only through heartbeats to register again, at most once per 5 s.
async fn ask_to_announce(
    scheduler: &Scheduler,
    asked: &mut HashMap<NodeId, Instant>,
    node_id: NodeId,
) {
    let now = Instant::now();
    if asked
        .get(&node_id)
        .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(5))
    {
        return;
    }
    asked.insert(node_id.clone(), now);
    ask_for_inventory(scheduler, &node_id).await;
}

/// Asks a node to announce itself again (with the containers it holds).
async fn ask_for_inventory(scheduler: &Scheduler, node_id: &NodeId) {
    let request = DiscoverNodes {
        node_id: Some(node_id.clone()),
    };
    if let Err(error) = bus::publish(&scheduler.nats, subjects::nodes_discover(), &request).await {
        tracing::warn!(node = %node_id, %error, "could not ask a returning node for its containers");
    }
}

/// Whether `record` (what the database holds of a node) lets it join: in static mode only
/// declared nodes do. The refusal says why and what to do.
fn admission(
    scheduler: &Scheduler,
    node_id: &NodeId,
    record: Option<&NodeRecord>,
) -> Result<(), ErrorBody> {
    let declared = record.is_some_and(|record| record.declared);
    if scheduler.config.registration_mode == RegistrationMode::Static && !declared {
        return Err(ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "node {node_id} is not declared and the control plane runs in static registration \
                 mode: declare it with POST /api/v1/nodes (or the scheduler's nodes file) first"
            ),
        ));
    }
    Ok(())
}

/// The node view takes a registration if the node may join, with its declared capacity. In
/// dynamic mode what the view holds of a node it knows decides, so a fleet registering at once
/// costs no database reads but for new nodes; in static mode the database, where declarations
/// live, always decides (a declaration changed by SQL, or news of it lost, must not let a node
/// in).
async fn view_registration(scheduler: &Scheduler, registration: NodeRegistration) {
    let node_id = registration.node_id.clone();
    let known = match scheduler.config.registration_mode {
        RegistrationMode::Dynamic => scheduler.fleet().record(&node_id, Instant::now()),
        RegistrationMode::Static => None,
    };
    let record = match known {
        Some(record) => Some(record),
        None => match scheduler.store.get_node(&node_id).await {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(node = %node_id, %error, "could not read the node's record; ignoring its registration");
                return;
            }
        },
    };
    if admission(scheduler, &node_id, record.as_ref()).is_err() {
        tracing::debug!(node = %node_id, "ignoring an undeclared node");
        return;
    }
    tracing::info!(node = %node_id, hostname = %registration.hostname, "node registered");
    scheduler
        .fleet()
        .register(registration, record.as_ref(), Instant::now());
}

/// Asks a suspect node's daemon whether it is there. "No responders" means no process holds
/// its subscriptions (killed, crashed): it is offline now. A timeout or an answer proves
/// nothing more than the missed heartbeats; the usual three-interval rule then decides.
fn probe(scheduler: &Arc<Scheduler>, node_id: NodeId) {
    let scheduler = Arc::clone(scheduler);
    tokio::spawn(async move {
        match bus::node_request(&scheduler.nats, &node_id, &PingNode {}, PROBE_TIMEOUT).await {
            Err(BusError::NoResponders { .. }) => {
                tracing::warn!(node = %node_id, "nobody answers for the suspect node: offline");
                scheduler.fleet().unreachable(&node_id, Instant::now());
            }
            Err(error) => tracing::debug!(node = %node_id, %error, "probe of a suspect node"),
            Ok(_) => tracing::debug!(node = %node_id, "the suspect node's daemon answers"),
        }
    });
}

/// Acts on the nodes whose health changed and writes their health (with any left `unrecorded`
/// by a failed write before, in `node_id` order); then marks the sessions of nodes lost.
async fn record_health_changes(
    scheduler: &Arc<Scheduler>,
    unrecorded: &mut BTreeMap<NodeId, &'static str>,
) {
    let changes = scheduler.fleet().health_changes(Instant::now());
    for change in changes {
        let (node_id, health) = (change.node_id, change.health);
        if change.back_after_loss {
            ask_for_inventory(scheduler, &node_id).await;
        }
        match health {
            NodeHealth::Offline => tracing::warn!(node = %node_id, "node is offline"),
            NodeHealth::Suspect => {
                tracing::warn!(node = %node_id, "node missed two heartbeats");
                probe(scheduler, node_id.clone());
            }
            _ => tracing::info!(node = %node_id, ?health, "node health changed"),
        }
        unrecorded.insert(node_id, health.as_str());
    }
    if !unrecorded.is_empty() {
        let statuses: Vec<(NodeId, &'static str)> = unrecorded
            .iter()
            .map(|(node_id, status)| (node_id.clone(), *status))
            .collect();
        match scheduler.store.set_node_statuses(&statuses).await {
            Ok(()) => unrecorded.clear(),
            Err(error) => {
                tracing::warn!(nodes = statuses.len(), %error, "could not record node health; will retry");
            }
        }
    }
    let lost = scheduler
        .fleet()
        .lost_nodes(Instant::now(), scheduler.config.node_lost_grace);
    for node_id in lost {
        match scheduler.mark_sessions_lost(&node_id).await {
            Ok(()) => scheduler.fleet().sessions_marked_lost(&node_id),
            Err(error) => {
                tracing::warn!(node = %node_id, %error, "could not mark the sessions of a lost node")
            }
        }
    }
}

/// Records each registration (one replica of the queue group each) and answers it.
pub async fn record_registrations(
    scheduler: Arc<Scheduler>,
    mut registrations: Subscriber,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let message = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            message = registrations.next() => message,
        };
        let Some(message) = message else {
            bail!("registration subscription ended")
        };
        if let Some(registration) = decode_or_log::<NodeRegistration>(&message) {
            let reply = record_registration(&scheduler, registration).await;
            if let Err(error) = bus::respond(&scheduler.nats, &message, &reply).await {
                tracing::warn!(%error, "could not answer a registration");
            }
        }
    }
}

/// Writes the heartbeats this replica receives from the queue group to `runtime_nodes`: the
/// latest one of each node, once per [`HEARTBEAT_FLUSH_EVERY`], in one transaction.
pub async fn record_heartbeats(
    scheduler: Arc<Scheduler>,
    mut heartbeats: Subscriber,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut latest: BTreeMap<NodeId, (Heartbeat, DateTime<Utc>)> = BTreeMap::new();
    let mut flush = tokio::time::interval(HEARTBEAT_FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                flush_heartbeats(&scheduler, &mut latest).await;
                return Ok(());
            }
            message = heartbeats.next() => {
                let Some(message) = message else { bail!("heartbeat subscription ended") };
                if let Some(heartbeat) = decode_or_log::<Heartbeat>(&message) {
                    latest.insert(heartbeat.node_id.clone(), (heartbeat, store::now()));
                }
            }
            _ = flush.tick() => flush_heartbeats(&scheduler, &mut latest).await,
        }
    }
}

/// Writes and forgets the pending heartbeats; on failure they are dropped (logged): newer ones
/// follow within an interval.
async fn flush_heartbeats(
    scheduler: &Scheduler,
    latest: &mut BTreeMap<NodeId, (Heartbeat, DateTime<Utc>)>,
) {
    if latest.is_empty() {
        return;
    }
    // In `node_id` order, as the store asks.
    let batch: Vec<(Heartbeat, DateTime<Utc>)> = std::mem::take(latest).into_values().collect();
    if let Err(error) = scheduler.store.record_heartbeats(&batch).await {
        tracing::warn!(nodes = batch.len(), %error, "could not record heartbeats");
    }
}

/// Records the seed's container signals (one replica of the queue group each).
pub async fn record_container_events(
    scheduler: Arc<Scheduler>,
    subscriptions: ContainerEventSubscriptions,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let ContainerEventSubscriptions {
        mut ready,
        mut exited,
    } = subscriptions;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            Some(message) = ready.next() => {
                if let Some(event) = decode_or_log::<ContainerReady>(&message) {
                    container_ready(&scheduler, event).await;
                }
            }
            Some(message) = exited.next() => {
                if let Some(event) = decode_or_log::<ContainerExited>(&message) {
                    container_exited(&scheduler, event).await;
                }
            }
            else => bail!("a container event subscription ended"),
        }
    }
}

/// Records a registration if the node may join, reconciles the containers it reported, and
/// answers whether it joined.
async fn record_registration(
    scheduler: &Scheduler,
    registration: NodeRegistration,
) -> Reply<RegistrationAccepted> {
    let node_id = registration.node_id.clone();
    let record = match scheduler.store.get_node(&node_id).await {
        Ok(record) => record,
        Err(error) => {
            tracing::warn!(node = %node_id, %error, "could not read the node's record");
            return Reply::Error(ErrorBody::new(
                ErrorCode::Internal,
                "the scheduler's database failed; registration will be retried",
            ));
        }
    };
    if let Err(refusal) = admission(scheduler, &node_id, record.as_ref()) {
        tracing::warn!(node = %node_id, hostname = %registration.hostname, reason = %refusal.message, "refused a node registration");
        return Reply::Error(refusal);
    }
    if let Err(error) = scheduler
        .store
        .upsert_node(&registration, store::now())
        .await
    {
        tracing::warn!(node = %node_id, %error, "could not record registration");
        return Reply::Error(ErrorBody::new(
            ErrorCode::Internal,
            "the scheduler's database failed; registration will be retried",
        ));
    }
    let declared = record.filter(|record| record.declared);
    let capacity = declared
        .as_ref()
        .map_or(&registration, |record| &record.registration);
    let accepted = RegistrationAccepted {
        node_id: node_id.clone(),
        declared: declared.is_some(),
        total_cpu_cores: capacity.total_cpu_cores,
        total_memory_mb: capacity.total_memory_mb,
        max_containers: capacity.max_containers,
    };
    if let Some(inventory) = registration.inventory {
        crate::reconcile::reconcile(scheduler, &node_id, inventory).await;
    }
    Reply::Ok(accepted)
}

/// The seed's container-ready signal: the session runs, even if the create reply was lost. A
/// signal from a node the session is not on is a container left by an abandoned attempt (a node
/// that answered too late): it is removed.
async fn container_ready(scheduler: &Scheduler, event: ContainerReady) {
    let Some(session) = session_of(scheduler, &event.session_id).await else {
        return;
    };
    if session.runtime_node.as_ref() != Some(&event.node_id) {
        tracing::warn!(session_id = %session.id, node = %event.node_id, "removing a container the session does not use");
        scheduler.remove_in_background(event.node_id, event.session_id);
        return;
    }
    let transition = Transition::running(event.node_id.clone(), event.container_id.clone());
    let from = [SessionStatus::Pending, SessionStatus::Creating];
    match scheduler
        .store
        .transition(&event.session_id, &from, &transition)
        .await
    {
        Ok(Some((session, true))) => scheduler.announce(&session).await,
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(session_id = %event.session_id, %error, "could not record container ready");
        }
    }
}

/// A sandbox stopped by itself (or was killed): its session fails with the reason, and the dead
/// container is removed. Exits of containers the session does not use (on another node, or
/// replaced) change nothing.
pub(crate) async fn container_exited(scheduler: &Scheduler, event: ContainerExited) {
    let Some(session) = session_of(scheduler, &event.session_id).await else {
        return;
    };
    let its_container = session.runtime_node.as_ref() == Some(&event.node_id)
        && session
            .container_id
            .as_ref()
            .is_none_or(|id| *id == event.container_id);
    if !its_container {
        return;
    }
    let code = event
        .exit_code
        .map_or_else(|| "unknown".to_owned(), |code| code.to_string());
    let reason = format!(
        "container exited ({}, exit code {code})",
        event.reason.as_str()
    );
    let transition = Transition::failed(ErrorCode::RuntimeError, reason);
    let from = [SessionStatus::Creating, SessionStatus::Running];
    scheduler
        .end_session(&event.session_id, &from, transition)
        .await;
}

pub(crate) async fn session_of(
    scheduler: &Scheduler,
    id: &messages::SessionId,
) -> Option<messages::session::Session> {
    match scheduler.store.get_session(id).await {
        Ok(session) => session,
        Err(error) => {
            tracing::warn!(session_id = %id, %error, "could not read session");
            None
        }
    }
}

/// Asks every node to announce itself, so a replica that just started knows the fleet at once.
pub async fn discover_all(nats: &async_nats::Client) -> anyhow::Result<()> {
    bus::publish(nats, subjects::nodes_discover(), &DiscoverNodes::default())
        .await
        .context("asking nodes to announce themselves")
}

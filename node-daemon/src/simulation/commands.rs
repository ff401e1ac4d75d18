//! The simulated nodes' `containers.create`, `containers.remove` and `node.ping`: one wildcard
//! subscription per verb, dispatched on the node-id token, with the daemon's payloads and its
//! admission rule (the shared ledger).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::Subscriber;
use chrono::Utc;
use messages::node::{
    ContainerCreated, ContainerReady, ContainerRemoved, CreateContainer, NodePong, PingNode,
    RemoveContainer,
};
use messages::{ErrorBody, ErrorCode, NodeCommand, Reply, SessionId, subjects};
use service_kit::bus;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::fleet::{Container, Fleet, NodeState, SimNode, next_message, reply};
use crate::ledger::Demand;

/// Each create runs in a task of its own, as its start takes the configured delay.
pub(super) async fn serve_creates(
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
    if let Err(refusal) = state.ledger.admit(session_id, demand, None) {
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
pub(super) async fn serve_removes(
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

pub(super) async fn serve_pings(
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

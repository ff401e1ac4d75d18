//! The simulated fleet's state: every node's ledger and in-memory containers, its registration,
//! and the fleet's counters, shared by the command servers and the heartbeat task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::{Message, Subscriber};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use messages::node::NodeRegistration;
use messages::simulation::FleetStats;
use messages::{NodeId, Reply, SessionId, subjects};
use service_kit::bus;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::announce;
use crate::ledger::{Capacity, Ledger};

/// Registrations in flight at once: paced by how fast the schedulers answer them.
const REGISTRATIONS_IN_FLIGHT: usize = 64;

/// A simulated container: still starting, or running with its id.
#[derive(Debug, Clone)]
pub(super) enum Container {
    Starting,
    Running(String),
}

/// One simulated node's allocations and containers, under one lock.
#[derive(Debug)]
pub(super) struct NodeState {
    pub(super) ledger: Ledger,
    pub(super) containers: HashMap<SessionId, Container>,
    pub(super) peak_containers: u32,
    pub(super) over_capacity: bool,
}

/// One simulated node.
#[derive(Debug)]
pub(super) struct SimNode {
    pub(super) id: NodeId,
    pub(super) started_at: DateTime<Utc>,
    pub(super) registered: AtomicBool,
    pub(super) silent: AtomicBool,
    pub(super) state: Mutex<NodeState>,
}

impl SimNode {
    /// Held only for bookkeeping, never across an await.
    pub(super) fn state(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn silent(&self) -> bool {
        self.silent.load(Ordering::Relaxed)
    }
}

/// What the fleet did, for the benchmark's stats request.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) created: AtomicU64,
    pub(super) existed: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) removed: AtomicU64,
    pub(super) heartbeats: AtomicU64,
}

/// Every simulated node, and what they share.
#[derive(Debug)]
pub(super) struct Fleet {
    pub(super) nats: async_nats::Client,
    /// Every node's registration but for its id and start time.
    pub(super) template: NodeRegistration,
    pub(super) capacity: Capacity,
    pub(super) interval: Duration,
    pub(super) start_delay: Duration,
    /// In heartbeat-phase order.
    pub(super) nodes: Vec<Arc<SimNode>>,
    pub(super) by_id: HashMap<String, Arc<SimNode>>,
    /// A re-registration of the whole fleet is under way (a scheduler started).
    pub(super) announcing_all: AtomicBool,
    pub(super) counters: Counters,
    /// Re-registrations on discovery, waited for at shutdown.
    pub(super) background: TaskTracker,
}

impl Fleet {
    /// The live node `message` is addressed to as a `verb` command.
    pub(super) fn node(&self, message: &Message, verb: &str) -> Option<&Arc<SimNode>> {
        let node = self
            .by_id
            .get(subjects::node_of_command(&message.subject, verb)?)?;
        (!node.silent()).then_some(node)
    }

    /// Announces `node`, as a daemon does at start.
    pub(super) async fn register(&self, node: &SimNode) -> anyhow::Result<()> {
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
    pub(super) async fn register_all(self: &Arc<Self>) -> anyhow::Result<()> {
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

    /// The counters and the nodes' figures, summed.
    pub(super) fn stats(&self) -> FleetStats {
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

/// The next message on `subscriber`; `None` once cancelled.
pub(super) async fn next_message(
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

/// Answers a command or control request; a failure is logged.
pub(super) async fn reply<T: serde::Serialize>(fleet: &Fleet, message: &Message, reply: &Reply<T>) {
    if let Err(error) = bus::respond(&fleet.nats, message, reply).await {
        tracing::warn!(%error, "answering a simulated node's command failed");
    }
}

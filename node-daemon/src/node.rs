//! The state every task of the daemon shares: who this node is, its connections, and its ledger.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use messages::NodeId;
use messages::node::NodeRegistration;

use crate::docker::DockerEngine;
use crate::ledger::Ledger;

#[derive(Debug)]
pub(crate) struct Node {
    pub id: NodeId,
    pub nats: async_nats::Client,
    pub docker: DockerEngine,
    /// The bridge network for sessions that ask for `sandbox_network`.
    pub sandbox_network: String,
    pub heartbeat_interval: Duration,
    /// What this node announced at start; re-announced with a fresh image list on discovery.
    pub registration: NodeRegistration,
    ledger: Mutex<Ledger>,
}

impl Node {
    pub fn new(
        nats: async_nats::Client,
        docker: DockerEngine,
        sandbox_network: String,
        heartbeat_interval: Duration,
        registration: NodeRegistration,
        ledger: Ledger,
    ) -> Self {
        Self {
            id: registration.node_id.clone(),
            nats,
            docker,
            sandbox_network,
            heartbeat_interval,
            registration,
            ledger: Mutex::new(ledger),
        }
    }

    /// The allocation ledger. Held only for bookkeeping, never across an await.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // The ledger's methods do not panic half-way, so a poisoned lock still holds a
        // consistent ledger.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

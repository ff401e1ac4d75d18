//! The state every task of the daemon shares: who this node is, its connections, and its ledger.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use messages::node::NodeRegistration;
use messages::{NodeId, SessionId};
use tokio::sync::OwnedMutexGuard;

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
    session_locks: Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>,
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
            session_locks: Mutex::new(HashMap::new()),
        }
    }

    /// Serialises the commands of one session: a remove that arrives while the session's
    /// create is still running waits for it, and so finds and removes what the create made.
    pub async fn lock_session(&self, session_id: &SessionId) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .session_locks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Forget locks nobody holds or waits for, so the map stays as small as the work.
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            Arc::clone(locks.entry(session_id.clone()).or_default())
        };
        lock.lock_owned().await
    }

    /// The allocation ledger. Held only for bookkeeping, never across an await.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // The ledger's methods do not panic half-way, so a poisoned lock still holds a
        // consistent ledger.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

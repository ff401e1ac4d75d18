//! The state every task of the daemon shares: who this node is, its connections, its ledger, its
//! agent channels, warm pools and background work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use messages::node::NodeRegistration;
use messages::{NodeId, SessionId};
use tokio::sync::OwnedMutexGuard;
use tokio_util::task::TaskTracker;

use crate::agent::Agents;
use crate::docker::DockerEngine;
use crate::egress::EgressFirewall;
use crate::host;
use crate::ledger::{HostMemory, Ledger};
use crate::runtimes::EngineRuntimes;
use crate::volumes::Volumes;
use crate::warm::WarmPools;

/// The configured values a [`Node`] keeps, and the parts start-up prepared for it.
#[derive(Debug)]
pub(crate) struct Settings {
    pub sandbox_network: String,
    pub heartbeat_interval: Duration,
    pub output_limit: u64,
    pub memory_reserve_mb: u64,
    pub disk_reserve_mb: u64,
    pub volumes: Volumes,
    pub runtimes: EngineRuntimes,
    /// The egress rules of `sandbox_network`, or why they could not be installed (then no
    /// networked session is taken).
    pub egress: Result<EgressFirewall, String>,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub id: NodeId,
    pub nats: async_nats::Client,
    /// Publishes execution events to the EXECUTIONS stream.
    pub jetstream: async_nats::jetstream::Context,
    pub docker: DockerEngine,
    /// The bridge network for sessions that ask for `sandbox_network`.
    pub sandbox_network: String,
    pub heartbeat_interval: Duration,
    /// What this node announced at start; re-announced with a fresh image list on discovery.
    pub registration: NodeRegistration,
    /// The most output of one stream of a run that is kept and published, in bytes.
    pub output_limit: u64,
    /// The channels to the executor agents of this node's containers.
    pub agents: Agents,
    /// Containers kept warm for templates that ask for them.
    pub pools: WarmPools,
    /// Work no request waits for (removals, run followers), waited for at shutdown.
    pub background: TaskTracker,
    /// The sandboxes' disks.
    pub volumes: Volumes,
    /// The engine runtimes behind the runtimes this node offers.
    pub runtimes: EngineRuntimes,
    /// The egress rules of networked sandboxes, or why there are none.
    pub egress: Result<EgressFirewall, String>,
    /// Host memory admission keeps free, in MiB.
    memory_reserve_mb: u64,
    /// Disk admission keeps free beside a session's `disk_mb`, in MiB.
    pub disk_reserve_mb: u64,
    ledger: Mutex<Ledger>,
    session_locks: Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Node {
    pub fn new(
        nats: async_nats::Client,
        docker: DockerEngine,
        settings: Settings,
        registration: NodeRegistration,
        ledger: Ledger,
    ) -> Self {
        Self {
            id: registration.node_id.clone(),
            jetstream: async_nats::jetstream::new(nats.clone()),
            nats,
            docker,
            sandbox_network: settings.sandbox_network,
            heartbeat_interval: settings.heartbeat_interval,
            registration,
            output_limit: settings.output_limit,
            agents: Agents::default(),
            pools: WarmPools::default(),
            background: TaskTracker::new(),
            volumes: settings.volumes,
            runtimes: settings.runtimes,
            egress: settings.egress,
            memory_reserve_mb: settings.memory_reserve_mb,
            disk_reserve_mb: settings.disk_reserve_mb,
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

    /// The host's free memory now, with what admission keeps free; `None` where the kernel
    /// does not say.
    pub fn host_memory(&self) -> Option<HostMemory> {
        host::memory_available_mb().map(|available_mb| HostMemory {
            available_mb,
            reserve_mb: self.memory_reserve_mb,
        })
    }

    /// The allocation ledger. Held only for bookkeeping, never across an await.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // The ledger's methods do not panic half-way, so a poisoned lock still holds a
        // consistent ledger.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

//! What this node has handed out, per session, and the admission rule that keeps it within its
//! capacity. Pure bookkeeping: the caller holds it under one lock, so check-and-reserve is atomic.
//!
//! Admission counts what sandboxes are guaranteed (their requests), not their limits, so mostly
//! idle sandboxes can share a host; and it checks the host's real free memory, which the caller
//! reads, so a host running short refuses with a reason before its OOM killer picks victims.

use std::collections::HashMap;

use messages::SessionId;
use messages::node::NodeUsage;
use messages::template::Resources;

/// CPU is counted in thousandths of a core so that sums and comparisons are exact.
const MILLICORES_PER_CORE: f64 = 1000.0;

/// What this node offers to sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub max_containers: u32,
    pub cpu_millicores: u64,
    pub memory_mb: u64,
}

impl Capacity {
    pub fn new(max_containers: u32, cpu_cores: f64, memory_mb: u64) -> Self {
        Self {
            max_containers,
            cpu_millicores: millicores(cpu_cores),
            memory_mb,
        }
    }
}

/// What one sandbox takes from the node: its guarantee, which admission counts, and its
/// limits, which are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    pub cpu_millicores: u64,
    pub memory_mb: u64,
    pub limit_cpu_millicores: u64,
    pub limit_memory_mb: u64,
}

impl Demand {
    pub fn of(resources: &Resources) -> Self {
        let guarantee = resources.guarantee();
        Self {
            cpu_millicores: millicores(guarantee.cpu_cores),
            memory_mb: guarantee.memory_mb,
            limit_cpu_millicores: millicores(resources.cpu_cores),
            limit_memory_mb: resources.memory_mb,
        }
    }
}

/// The host's real free memory at admission, and what must stay free beside the sandboxes
/// (for the daemon, the engine, the kernel's caches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    pub available_mb: u64,
    pub reserve_mb: u64,
}

impl HostMemory {
    /// Whether `asked_mb` more fits beside what is promised to sandboxes still starting
    /// (`pending_mb`, which the free figure does not show yet) and the reserve.
    fn fits(&self, pending_mb: u64, asked_mb: u64) -> bool {
        pending_mb
            .saturating_add(asked_mb)
            .saturating_add(self.reserve_mb)
            <= self.available_mb
    }
}

/// Whole cores to millicores; negative or not-a-number counts as nothing.
pub fn millicores(cores: f64) -> u64 {
    // `as` saturates: NaN and negatives become 0, huge values u64::MAX.
    (cores * MILLICORES_PER_CORE).round() as u64
}

/// What is in use: sessions whose container runs or is being made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub containers: u32,
    pub cpu_millicores: u64,
    pub memory_mb: u64,
    /// Of `containers`, those waiting unclaimed in warm pools.
    pub warm: u32,
    /// The sums of their limits.
    pub limit_cpu_millicores: u64,
    pub limit_memory_mb: u64,
    /// The memory guaranteed to sessions admitted but not yet running, which the host's free
    /// memory does not show yet.
    pub pending_memory_mb: u64,
}

impl Usage {
    pub fn cpu_cores(&self) -> f64 {
        cores(self.cpu_millicores)
    }

    pub fn limit_cpu_cores(&self) -> f64 {
        cores(self.limit_cpu_millicores)
    }
}

/// Why a session was not admitted; the message names the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("node is at its container limit: {running} of max_containers {max} in use")]
    Containers { running: u32, max: u32 },
    #[error(
        "not enough CPU: {} of {} cores allocated, {} requested",
        cores(*allocated),
        cores(*total),
        cores(*requested)
    )]
    Cpu {
        allocated: u64,
        requested: u64,
        total: u64,
    },
    #[error("not enough memory: {allocated} of {total} MiB allocated, {requested} MiB requested")]
    Memory {
        allocated: u64,
        requested: u64,
        total: u64,
    },
    #[error(
        "the host is short of memory: {available} MiB free, {pending} MiB promised to sandboxes \
         starting, {requested} MiB requested, {reserve} MiB kept free for the host"
    )]
    HostMemory {
        available: u64,
        pending: u64,
        requested: u64,
        reserve: u64,
    },
}

fn cores(millicores: u64) -> f64 {
    millicores as f64 / MILLICORES_PER_CORE
}

/// The outcome of an admission that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// This call reserved the resources; whoever asked must mark the container running or
    /// release the reservation.
    Reserved,
    /// The session already holds its resources (its container runs or another request is making
    /// it); nothing was added.
    AlreadyAllocated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Admitted; its container is being made or started.
    Reserved,
    Running,
    /// Its container stopped but still exists; it holds nothing.
    Exited,
}

#[derive(Debug, Clone)]
struct Allocation {
    container_id: Option<String>,
    demand: Demand,
    state: State,
    /// A warm-pool container no session has claimed yet.
    warm: bool,
}

impl Allocation {
    fn holds_resources(&self) -> bool {
        self.state != State::Exited
    }

    fn is_container(&self, container_id: &str) -> bool {
        self.container_id.as_deref() == Some(container_id)
    }
}

/// Allocations by session; a session has at most one container, so it is the key.
#[derive(Debug)]
pub struct Ledger {
    capacity: Capacity,
    allocations: HashMap<SessionId, Allocation>,
    /// Heartbeats numbered so far. Kept here, under the ledger's lock, so a heartbeat's figures
    /// and a command's usage snapshot are each taken atomically with their number.
    heartbeats_sent: u64,
}

impl Ledger {
    pub fn new(capacity: Capacity) -> Self {
        Self {
            capacity,
            allocations: HashMap::new(),
            heartbeats_sent: 0,
        }
    }

    /// Admits `session_id` if its demand fits next to what is already allocated and in the
    /// host's free memory (`host`, when known), and reserves it.
    pub fn admit(
        &mut self,
        session_id: &SessionId,
        demand: Demand,
        host: Option<HostMemory>,
    ) -> Result<Admission, Refusal> {
        let existing = self.allocations.get(session_id);
        if existing.is_some_and(Allocation::holds_resources) {
            return Ok(Admission::AlreadyAllocated);
        }
        let usage = self.usage();
        let capacity = self.capacity;
        if let Some(host) = host
            && !host.fits(usage.pending_memory_mb, demand.memory_mb)
        {
            return Err(Refusal::HostMemory {
                available: host.available_mb,
                pending: usage.pending_memory_mb,
                requested: demand.memory_mb,
                reserve: host.reserve_mb,
            });
        }
        if usage.containers >= capacity.max_containers {
            return Err(Refusal::Containers {
                running: usage.containers,
                max: capacity.max_containers,
            });
        }
        if usage.cpu_millicores.saturating_add(demand.cpu_millicores) > capacity.cpu_millicores {
            return Err(Refusal::Cpu {
                allocated: usage.cpu_millicores,
                requested: demand.cpu_millicores,
                total: capacity.cpu_millicores,
            });
        }
        if usage.memory_mb.saturating_add(demand.memory_mb) > capacity.memory_mb {
            return Err(Refusal::Memory {
                allocated: usage.memory_mb,
                requested: demand.memory_mb,
                total: capacity.memory_mb,
            });
        }
        let container_id = existing.and_then(|allocation| allocation.container_id.clone());
        self.allocations.insert(
            session_id.clone(),
            Allocation {
                container_id,
                demand,
                state: State::Reserved,
                warm: false,
            },
        );
        Ok(Admission::Reserved)
    }

    /// Whether the session has anything here: a container (running or exited) or a reservation.
    pub fn knows(&self, session_id: &SessionId) -> bool {
        self.allocations.contains_key(session_id)
    }

    /// Whether `count` more containers of `demand` each would fit next to what is allocated
    /// and in the host's free memory.
    pub fn has_room_for(&self, demand: Demand, count: u32, host: Option<HostMemory>) -> bool {
        let usage = self.usage();
        let capacity = self.capacity;
        let count64 = u64::from(count);
        let host_fits = host.is_none_or(|host| {
            host.fits(
                usage.pending_memory_mb,
                demand.memory_mb.saturating_mul(count64),
            )
        });
        host_fits
            && usage.containers.saturating_add(count) <= capacity.max_containers
            && usage
                .cpu_millicores
                .saturating_add(demand.cpu_millicores.saturating_mul(count64))
                <= capacity.cpu_millicores
            && usage
                .memory_mb
                .saturating_add(demand.memory_mb.saturating_mul(count64))
                <= capacity.memory_mb
    }

    /// Gives back a reservation whose container did not come to run. An existing container that
    /// failed to restart stays known as exited.
    pub fn release(&mut self, session_id: &SessionId) {
        let Some(allocation) = self.allocations.get_mut(session_id) else {
            return;
        };
        if allocation.state != State::Reserved {
            return;
        }
        if allocation.container_id.is_some() {
            allocation.state = State::Exited;
        } else {
            self.allocations.remove(session_id);
        }
    }

    /// Records that the session's container runs, whether this node just started it or found it
    /// running (at start-up, or on a repeated create).
    pub fn mark_running(&mut self, session_id: &SessionId, container_id: &str, demand: Demand) {
        self.insert_running(session_id, container_id, demand, false);
    }

    /// Records a running warm-pool container, held under its pool id until a session claims it.
    pub fn mark_warm(&mut self, pool_id: &SessionId, container_id: &str, demand: Demand) {
        self.insert_running(pool_id, container_id, demand, true);
    }

    fn insert_running(&mut self, key: &SessionId, container_id: &str, demand: Demand, warm: bool) {
        self.allocations.insert(
            key.clone(),
            Allocation {
                container_id: Some(container_id.to_owned()),
                demand,
                state: State::Running,
                warm,
            },
        );
    }

    /// Hands a running warm container to `session_id`: its resources move with it, so a claim
    /// needs no admission. `false` (and no change) when the container is not warm and running,
    /// or the session already holds something.
    pub fn claim_warm(&mut self, pool_id: &SessionId, session_id: &SessionId) -> bool {
        let claimable = self
            .allocations
            .get(pool_id)
            .is_some_and(|allocation| allocation.warm && allocation.state == State::Running);
        if !claimable || self.allocations.contains_key(session_id) {
            return false;
        }
        let Some(mut allocation) = self.allocations.remove(pool_id) else {
            return false;
        };
        allocation.warm = false;
        self.allocations.insert(session_id.clone(), allocation);
        true
    }

    /// The session's running container stopped; its resources are free again.
    pub fn mark_exited(&mut self, session_id: &SessionId, container_id: &str) {
        if let Some(allocation) = self.allocations.get_mut(session_id)
            && allocation.state == State::Running
            && allocation.is_container(container_id)
        {
            allocation.state = State::Exited;
        }
    }

    /// The session's container is gone. A reservation in progress (a newer create for the same
    /// session) is left alone.
    pub fn forget(&mut self, session_id: &SessionId, container_id: &str) {
        if self.allocations.get(session_id).is_some_and(|allocation| {
            allocation.state != State::Reserved && allocation.is_container(container_id)
        }) {
            self.allocations.remove(session_id);
        }
    }

    /// Numbers the next heartbeat (from 1) and returns the figures it reports.
    pub fn next_heartbeat(&mut self) -> (u64, Usage) {
        self.heartbeats_sent += 1;
        (self.heartbeats_sent, self.usage())
    }

    /// The allocations now, as of the last heartbeat numbered, for a command's reply.
    pub fn snapshot(&self) -> NodeUsage {
        let usage = self.usage();
        NodeUsage {
            after_heartbeat: self.heartbeats_sent,
            running_containers: usage.containers,
            allocated_cpu_cores: usage.cpu_cores(),
            allocated_memory_mb: usage.memory_mb,
        }
    }

    /// Summed afresh each time, so no rounding or bookkeeping error can accumulate.
    pub fn usage(&self) -> Usage {
        self.allocations
            .values()
            .filter(|allocation| allocation.holds_resources())
            .fold(Usage::default(), |usage, allocation| {
                let demand = &allocation.demand;
                let pending = if allocation.state == State::Reserved {
                    demand.memory_mb
                } else {
                    0
                };
                Usage {
                    containers: usage.containers.saturating_add(1),
                    cpu_millicores: usage.cpu_millicores.saturating_add(demand.cpu_millicores),
                    memory_mb: usage.memory_mb.saturating_add(demand.memory_mb),
                    warm: usage.warm.saturating_add(u32::from(allocation.warm)),
                    limit_cpu_millicores: usage
                        .limit_cpu_millicores
                        .saturating_add(demand.limit_cpu_millicores),
                    limit_memory_mb: usage.limit_memory_mb.saturating_add(demand.limit_memory_mb),
                    pending_memory_mb: usage.pending_memory_mb.saturating_add(pending),
                }
            })
    }
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;

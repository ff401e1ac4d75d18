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
            && host.available_mb
                < usage
                    .pending_memory_mb
                    .saturating_add(demand.memory_mb)
                    .saturating_add(host.reserve_mb)
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
            usage
                .pending_memory_mb
                .saturating_add(demand.memory_mb.saturating_mul(count64))
                .saturating_add(host.reserve_mb)
                <= host.available_mb
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
mod tests {
    use super::*;

    fn session(id: &str) -> SessionId {
        SessionId::parse(id).expect("valid session id")
    }

    /// A demand whose guarantee is its limit.
    fn demand(cpu_cores: f64, memory_mb: u64) -> Demand {
        Demand::of(&Resources {
            cpu_cores,
            memory_mb,
            pids_limit: 64,
            cpu_request_cores: Some(cpu_cores),
            memory_request_mb: Some(memory_mb),
            ..Resources::default()
        })
    }

    fn ledger(max_containers: u32, cpu_cores: f64, memory_mb: u64) -> Ledger {
        Ledger::new(Capacity::new(max_containers, cpu_cores, memory_mb))
    }

    #[test]
    fn warm_containers_count_against_capacity_and_move_to_the_session_that_claims_them() {
        let mut ledger = ledger(2, 8.0, 8192);
        let pool = session("pool-1");
        assert_eq!(
            ledger.admit(&pool, demand(1.0, 512), None),
            Ok(Admission::Reserved)
        );
        ledger.mark_warm(&pool, "c-warm", demand(1.0, 512));
        assert_eq!(
            ledger.usage(),
            Usage {
                containers: 1,
                cpu_millicores: 1000,
                memory_mb: 512,
                warm: 1,
                limit_cpu_millicores: 1000,
                limit_memory_mb: 512,
                pending_memory_mb: 0,
            }
        );
        assert!(ledger.claim_warm(&pool, &session("s")));
        assert_eq!(ledger.usage().warm, 0);
        assert_eq!(ledger.usage().containers, 1);
        // Claimed once: neither the pool id nor another session can take it again.
        assert!(!ledger.claim_warm(&pool, &session("t")));
        // The session holds it like a container it started: a repeat create adds nothing.
        assert_eq!(
            ledger.admit(&session("s"), demand(1.0, 512), None),
            Ok(Admission::AlreadyAllocated)
        );
        ledger.forget(&session("s"), "c-warm");
        assert_eq!(ledger.usage(), Usage::default());
    }

    #[test]
    fn admits_until_the_container_limit() {
        let mut ledger = ledger(2, 8.0, 8192);
        assert_eq!(
            ledger.admit(&session("a"), demand(1.0, 256), None),
            Ok(Admission::Reserved)
        );
        assert_eq!(
            ledger.admit(&session("b"), demand(1.0, 256), None),
            Ok(Admission::Reserved)
        );
        let refusal = ledger
            .admit(&session("c"), demand(1.0, 256), None)
            .expect_err("third container is over the limit");
        assert_eq!(refusal, Refusal::Containers { running: 2, max: 2 });
        assert!(refusal.to_string().contains("max_containers 2"));
    }

    #[test]
    fn refuses_cpu_and_memory_beyond_the_total() {
        let mut ledger = ledger(10, 2.0, 1024);
        ledger
            .admit(&session("a"), demand(1.5, 512), None)
            .expect("fits");
        let cpu = ledger
            .admit(&session("b"), demand(1.0, 256), None)
            .expect_err("cpu is short");
        assert!(matches!(cpu, Refusal::Cpu { .. }));
        assert!(cpu.to_string().contains("1.5 of 2 cores"), "{cpu}");
        let memory = ledger
            .admit(&session("b"), demand(0.5, 768), None)
            .expect_err("memory is short");
        assert!(matches!(memory, Refusal::Memory { .. }));
        assert!(memory.to_string().contains("MiB"), "{memory}");
        assert_eq!(
            ledger.admit(&session("b"), demand(0.5, 512), None),
            Ok(Admission::Reserved),
            "exactly the rest fits"
        );
    }

    #[test]
    fn fractional_cores_add_up_exactly() {
        let mut ledger = ledger(10, 0.3, 1024);
        for id in ["a", "b", "c"] {
            assert_eq!(
                ledger.admit(&session(id), demand(0.1, 1), None),
                Ok(Admission::Reserved)
            );
        }
        assert_eq!(ledger.usage().cpu_millicores, 300);
    }

    #[test]
    fn a_session_is_counted_once() {
        let mut ledger = ledger(1, 1.0, 256);
        ledger
            .admit(&session("a"), demand(1.0, 256), None)
            .expect("fits");
        assert_eq!(
            ledger.admit(&session("a"), demand(1.0, 256), None),
            Ok(Admission::AlreadyAllocated)
        );
        ledger.mark_running(&session("a"), "c1", demand(1.0, 256));
        assert_eq!(
            ledger.admit(&session("a"), demand(1.0, 256), None),
            Ok(Admission::AlreadyAllocated)
        );
        assert_eq!(ledger.usage().containers, 1);
    }

    #[test]
    fn released_reservations_and_exited_containers_free_their_share() {
        let mut ledger = ledger(1, 1.0, 256);
        ledger
            .admit(&session("a"), demand(1.0, 256), None)
            .expect("fits");
        ledger.release(&session("a"));
        assert_eq!(ledger.usage(), Usage::default());

        ledger
            .admit(&session("b"), demand(1.0, 256), None)
            .expect("fits after release");
        ledger.mark_running(&session("b"), "c2", demand(1.0, 256));
        ledger.mark_exited(&session("b"), "other-container");
        assert_eq!(ledger.usage().containers, 1, "a stale id changes nothing");
        ledger.mark_exited(&session("b"), "c2");
        assert_eq!(ledger.usage(), Usage::default());

        // Restarting the exited container needs admission again, and a failed restart leaves it
        // exited rather than forgotten.
        assert_eq!(
            ledger.admit(&session("b"), demand(1.0, 256), None),
            Ok(Admission::Reserved)
        );
        ledger.release(&session("b"));
        assert_eq!(ledger.usage(), Usage::default());
        ledger.forget(&session("b"), "c2");
        assert!(ledger.allocations.is_empty());
    }

    #[test]
    fn guarantees_not_limits_are_counted() {
        // python-basic's limits (1 core, 512 MiB) on a 2-core host: by limits two would fit,
        // by the default guarantees (1/64 core, 64 MiB) a hundred do.
        let mut ledger = ledger(500, 2.0, 22 * 1024);
        let basic = Demand::of(&Resources::default());
        for index in 0..100 {
            ledger
                .admit(&session(&format!("s{index}")), basic, None)
                .expect("fits by its guarantee");
        }
        let usage = ledger.usage();
        assert_eq!(usage.memory_mb, 100 * 64);
        assert_eq!(usage.limit_memory_mb, 100 * 512);
        assert_eq!(usage.limit_cpu_millicores, 100 * 1000);
        assert_eq!(usage.pending_memory_mb, 100 * 64, "none runs yet");
    }

    #[test]
    fn a_host_short_of_memory_refuses_with_the_figures() {
        let mut ledger = ledger(10, 8.0, 8192);
        let host = HostMemory {
            available_mb: 1500,
            reserve_mb: 1024,
        };
        ledger
            .admit(&session("a"), demand(0.1, 256), Some(host))
            .expect("fits: 1500 - 256 >= 1024");
        let refusal = ledger
            .admit(&session("b"), demand(0.1, 256), Some(host))
            .expect_err("the first one's memory is promised already");
        assert!(matches!(refusal, Refusal::HostMemory { pending: 256, .. }));
        assert!(refusal.to_string().contains("short of memory"), "{refusal}");
        assert!(!ledger.has_room_for(demand(0.1, 256), 1, Some(host)));
        ledger.mark_running(&session("a"), "c1", demand(0.1, 256));
        assert!(ledger.has_room_for(demand(0.1, 256), 1, Some(host)));
    }

    #[test]
    fn forgetting_leaves_a_newer_reservation_alone() {
        let mut ledger = ledger(5, 4.0, 4096);
        ledger.mark_running(&session("a"), "old", demand(1.0, 256));
        ledger.mark_exited(&session("a"), "old");
        ledger
            .admit(&session("a"), demand(1.0, 256), None)
            .expect("fits");
        ledger.forget(&session("a"), "old");
        assert_eq!(ledger.usage().containers, 1);
    }
}

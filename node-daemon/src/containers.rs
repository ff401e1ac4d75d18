//! The container layer: the only way a sandbox container is made (admitted by the ledger,
//! created, started and confirmed running), found again (after a name conflict, on a repeated
//! create) and handed to the agent layer (a session's running container and its agent channel).
//! Commands and warm pools build on it; it knows nothing of either.

use std::sync::Arc;
use std::time::Duration;

use messages::egress::EgressRules;
use messages::template::{ContainerSpec, NetworkMode};
use messages::{ErrorBody, ErrorCode, SessionId};

use crate::agent::AgentChannel;
use crate::docker::{ContainerFacts, SandboxContainer};
use crate::egress::EgressFirewall;
use crate::host;
use crate::ledger::{Admission, Demand};
use crate::node::Node;

/// The largest memory limit a container may have: its byte count must fit Docker's i64.
const MAX_MEMORY_MB: u64 = (i64::MAX as u64) >> 20;
/// How long a create that lost the race for a container name waits for the winner's container.
const CONFLICT_WAIT: Duration = Duration::from_secs(10);
const CONFLICT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The shared input rules (`messages::limits`), and what Docker's API needs beyond them.
pub(crate) fn check_spec(spec: &ContainerSpec) -> Result<(), ErrorBody> {
    spec.check().map_err(ErrorBody::invalid)?;
    let memory_mb = spec.resources.memory_mb;
    if memory_mb > MAX_MEMORY_MB {
        return Err(ErrorBody::invalid(format!(
            "memory_mb must be at most {MAX_MEMORY_MB} for Docker, not {memory_mb}"
        )));
    }
    Ok(())
}

/// Admits, creates and starts the container of `spec` for `session_id` (a pool id when
/// `warm_pool` names the template it is kept warm for), on its own disk and, if networked,
/// behind its egress rules; once it runs, the ledger holds it for its session, or as warm.
/// `Ok(None)`: another create took the container's name first.
pub(crate) async fn make(
    node: &Node,
    session_id: &SessionId,
    spec: &ContainerSpec,
    warm_pool: Option<&str>,
) -> Result<Option<String>, ErrorBody> {
    let engine_runtime = node
        .runtimes
        .engine_runtime(spec.runtime, spec.network, &node.id)?;
    let egress = egress_for(node, spec)?;
    check_disk(node, spec.resources.disk_mb)?;
    let demand = Demand::of(&spec.resources);
    let reservation = Reservation::admit(node, session_id, demand)?;
    // The key of the disk and the rules: the name made under, which a claim later changes.
    let key = session_id.container_name();
    let volume = node
        .volumes
        .create(&key, spec.resources.disk_mb)
        .await
        .map_err(|error| ErrorBody::new(ErrorCode::RuntimeError, error.to_string()))?;
    let sandbox = SandboxContainer {
        session_id,
        node_id: &node.id,
        spec,
        sandbox_network: &node.sandbox_network,
        warm_pool,
        volume: &volume,
        engine_runtime,
    };
    // No separate look for the image first: the create itself says when it is missing.
    let container_id = match node.docker.create_sandbox(&sandbox).await {
        Ok(container_id) => container_id,
        // The disk is the other create's.
        Err(error) if error.is_conflict() => return Ok(None),
        Err(error) => {
            release_volume(node, &key).await;
            if error.is_no_such_image() {
                return Err(ErrorBody::new(
                    ErrorCode::NotFound,
                    format!(
                        "image {} is not on node {} (images are never pulled)",
                        spec.image, node.id
                    ),
                ));
            }
            return Err(error.into());
        }
    };
    let started = match start_and_confirm(node, &container_id).await {
        Ok(running) => match egress {
            Some((firewall, rules)) => open_egress(node, firewall, &key, &running, &rules).await,
            None => Ok(()),
        },
        Err(error) => Err(error),
    };
    if let Err(error) = started {
        // A container that cannot run is removed, so that a retry starts afresh.
        if let Err(cleanup) = node.docker.remove(&container_id).await {
            tracing::warn!(error = %cleanup, "removing a container that failed to start");
        }
        release_volume(node, &key).await;
        return Err(error);
    }
    reservation.settle(&container_id, demand, warm_pool.is_some());
    Ok(Some(container_id))
}

/// Refuses a session whose disk could not be written in full without eating into the disk kept
/// free (sparse images promise more than the host has; this keeps the host's own floor).
fn check_disk(node: &Node, disk_mb: u64) -> Result<(), ErrorBody> {
    let Some(free) = host::disk_available_mb(node.volumes.root()) else {
        return Ok(());
    };
    let needed = disk_mb.saturating_add(node.disk_reserve_mb);
    if free < needed {
        return Err(ErrorBody::new(
            ErrorCode::Capacity,
            format!(
                "node {}: the host's disk is short: {free} MiB free where sandbox disks are, \
                 {disk_mb} MiB asked, {} MiB kept free for the host",
                node.id, node.disk_reserve_mb
            ),
        ));
    }
    Ok(())
}

/// For a networked spec: the firewall that must hold it, and its parsed rules. A node whose
/// rules could not be installed takes no networked session (it fails closed) and says why.
fn egress_for<'a>(
    node: &'a Node,
    spec: &ContainerSpec,
) -> Result<Option<(&'a EgressFirewall, EgressRules)>, ErrorBody> {
    if spec.network != NetworkMode::SandboxNetwork {
        return Ok(None);
    }
    let rules = spec.egress.rules().map_err(ErrorBody::invalid)?;
    Ok(Some((firewall(node)?, rules)))
}

/// The node's firewall, or why it has none (then it takes no networked session).
fn firewall(node: &Node) -> Result<&EgressFirewall, ErrorBody> {
    node.egress.as_ref().map_err(|reason| {
        ErrorBody::new(
            ErrorCode::Capacity,
            format!("node {} takes no networked sessions: {reason}", node.id),
        )
    })
}

/// Installs the rules of the `running` container for its address.
async fn open_egress(
    node: &Node,
    firewall: &EgressFirewall,
    key: &str,
    running: &ContainerFacts,
    rules: &EgressRules,
) -> Result<(), ErrorBody> {
    let address = running.ip_address.ok_or_else(|| {
        ErrorBody::new(
            ErrorCode::RuntimeError,
            format!(
                "container {} has no address on {}",
                running.id, node.sandbox_network
            ),
        )
    })?;
    firewall
        .open(key, address, rules)
        .await
        .map_err(|error| ErrorBody::new(ErrorCode::RuntimeError, error.to_string()))
}

/// Installs again the rules of a running networked container found on the engine (after a
/// daemon restart, or a stopped container started again).
pub(crate) async fn reopen_egress(
    node: &Node,
    container: &ContainerFacts,
) -> Result<(), ErrorBody> {
    let (Some(egress), Some(key)) = (&container.egress, &container.volume_key) else {
        return Ok(());
    };
    let rules = egress.rules().map_err(ErrorBody::invalid)?;
    open_egress(node, firewall(node)?, key, container, &rules).await
}

/// Lets go of a disk whose container never came to be (or is gone); a failure is logged, and
/// the next start's sweep finds it.
pub(crate) async fn release_volume(node: &Node, key: &str) {
    if let Err(error) = node.volumes.release(key).await {
        tracing::warn!(%error, key, "releasing a sandbox volume failed");
    }
}

/// Docker reserves a name before the container holding it can be inspected, so after a name
/// conflict the other request's container is waited for briefly.
pub(crate) async fn inspect_after_conflict(
    node: &Node,
    name: &str,
) -> Result<ContainerFacts, ErrorBody> {
    let deadline = tokio::time::Instant::now() + CONFLICT_WAIT;
    loop {
        if let Some(existing) = node.docker.inspect(name).await? {
            return Ok(existing);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ErrorBody::new(
                ErrorCode::RuntimeError,
                format!(
                    "the name {name} is taken but no such container appeared within {CONFLICT_WAIT:?}"
                ),
            ));
        }
        tokio::time::sleep(CONFLICT_POLL_INTERVAL).await;
    }
}

/// The session's existing container, running: started (after admission) if it was not, and
/// held in the ledger either way. Returns its id.
pub(crate) async fn run_existing(
    node: &Node,
    session_id: &SessionId,
    existing: ContainerFacts,
) -> Result<String, ErrorBody> {
    check_owned(node, &existing)?;
    if existing.running {
        node.ledger()
            .mark_running(session_id, &existing.id, existing.demand);
    } else {
        let reservation = Reservation::admit(node, session_id, existing.demand)?;
        let restarted = start_and_confirm(node, &existing.id).await?;
        reopen_egress(node, &restarted).await?;
        reservation.settle(&existing.id, existing.demand, false);
    }
    Ok(existing.id)
}

/// Starts the container and checks that it stays up; returns it as it runs (with its address).
async fn start_and_confirm(node: &Node, container_id: &str) -> Result<ContainerFacts, ErrorBody> {
    node.docker.start(container_id).await?;
    let facts = node.docker.inspect(container_id).await?;
    match facts {
        Some(facts) if facts.running => Ok(facts),
        Some(facts) => Err(ErrorBody::new(
            ErrorCode::RuntimeError,
            format!(
                "container {container_id} stopped right after starting (exit code {})",
                facts
                    .exit_code
                    .map_or_else(|| "unknown".to_owned(), |code| code.to_string())
            ),
        )),
        None => Err(ErrorBody::new(
            ErrorCode::RuntimeError,
            format!("container {container_id} was removed right after starting"),
        )),
    }
}

/// A container of this name made by someone else is not this node's to use or remove.
pub(crate) fn check_owned(node: &Node, container: &ContainerFacts) -> Result<(), ErrorBody> {
    if container.node_id.as_deref() == Some(node.id.as_str()) {
        Ok(())
    } else {
        Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "container {} exists but does not belong to node {}",
                container.id, node.id
            ),
        ))
    }
}

/// The agent of the session's container, checked to be this node's, running, and made from an
/// image with the executor agent.
pub(crate) async fn for_session(
    node: &Node,
    session_id: &SessionId,
) -> Result<Arc<AgentChannel>, ErrorBody> {
    // Ordered with the session's create and remove; released once the agent is found.
    let _one_at_a_time = node.lock_session(session_id).await;
    let Some(container) = node.docker.inspect(&session_id.container_name()).await? else {
        return Err(ErrorBody::new(
            ErrorCode::NotFound,
            format!("session {session_id} has no container on node {}", node.id),
        ));
    };
    check_owned(node, &container)?;
    if !container.running {
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!("the container of session {session_id} is not running"),
        ));
    }
    if !container.has_executor_agent {
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "the session's image {} has no executor agent",
                container.image
            ),
        ));
    }
    Ok(node
        .agents
        .channel(&node.docker, session_id, &container.id)
        .await?)
}

/// Resources this request reserved in the ledger; given back when dropped unless settled, so a
/// create that fails (or is abandoned) leaves nothing allocated.
struct Reservation<'a> {
    node: &'a Node,
    session_id: &'a SessionId,
    /// Whether this request made the reservation (and so must give it back).
    owned: bool,
}

impl<'a> Reservation<'a> {
    fn admit(node: &'a Node, session_id: &'a SessionId, demand: Demand) -> Result<Self, ErrorBody> {
        // Read before the ledger's lock is taken.
        let host = node.host_memory();
        let admission = node
            .ledger()
            .admit(session_id, demand, host)
            .map_err(|refusal| {
                ErrorBody::new(ErrorCode::Capacity, format!("node {}: {refusal}", node.id))
            })?;
        Ok(Self {
            node,
            session_id,
            owned: admission == Admission::Reserved,
        })
    }

    /// The container runs: the reservation becomes its allocation (warm, for a pool's).
    fn settle(mut self, container_id: &str, demand: Demand, warm: bool) {
        let mut ledger = self.node.ledger();
        if warm {
            ledger.mark_warm(self.session_id, container_id, demand);
        } else {
            ledger.mark_running(self.session_id, container_id, demand);
        }
        self.owned = false;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.owned {
            self.node.ledger().release(self.session_id);
        }
    }
}

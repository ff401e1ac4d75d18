//! `containers.create` and `containers.remove`: a session's container made (or claimed warm),
//! answered again on a repeat, and removed. The other verbs are in `executions.rs` and
//! `files.rs`.

use std::time::Duration;

use chrono::Utc;
use messages::node::{
    ContainerCreated, ContainerReady, ContainerRemoved, CreateContainer, RemoveContainer,
};
use messages::{ErrorBody, ErrorCode, SessionId, subjects};
use service_kit::bus;

use crate::docker::{ContainerFacts, DockerError, SandboxContainer};
use crate::ledger::{Admission, Demand};
use crate::node::Node;
use crate::pool;
use crate::serve::Command;

/// The largest memory limit a request may name: its byte count must fit Docker's i64.
const MAX_MEMORY_MB: u64 = (i64::MAX as u64) >> 20;

/// How long a create that lost the race for a container name waits for the winner's container.
const CONFLICT_WAIT: Duration = Duration::from_secs(10);
const CONFLICT_POLL_INTERVAL: Duration = Duration::from_millis(50);

impl Command for CreateContainer {
    fn span(&self) -> tracing::Span {
        tracing::info_span!("node.create_container", session_id = %self.session_id)
    }

    fn session_id(&self) -> &SessionId {
        &self.session_id
    }

    async fn run(self, node: &Node) -> Result<ContainerCreated, ErrorBody> {
        create_container(node, self).await
    }
}

impl Command for RemoveContainer {
    fn span(&self) -> tracing::Span {
        tracing::info_span!("node.remove_container", session_id = %self.session_id)
    }

    fn session_id(&self) -> &SessionId {
        &self.session_id
    }

    async fn run(self, node: &Node) -> Result<ContainerRemoved, ErrorBody> {
        remove_container(node, self).await
    }
}

/// Makes the session's container, or answers with the one it already has.
async fn create_container(
    node: &Node,
    command: CreateContainer,
) -> Result<ContainerCreated, ErrorBody> {
    check_request(&command)?;
    let session_id = &command.session_id;
    // A session this node holds nothing for takes a warm container at once, with one engine
    // call (the rename): the ledger knows every container of this node, so there is no earlier
    // create to answer for, and a pooled container of this exact spec proves the image is here.
    if !node.ledger().knows(session_id)
        && let Some(container_id) = pool::claim(node, session_id, &command.spec).await
    {
        tracing::info!(container_id, "claimed a warm container");
        return Ok(announce_ready(node, command, container_id).await);
    }
    let name = session_id.container_name();
    if let Some(existing) = node.docker.inspect(&name).await? {
        return run_existing(node, session_id, existing).await;
    }
    let image = &command.spec.image;
    if !node.docker.has_image(image).await? {
        return Err(ErrorBody::new(
            ErrorCode::NotFound,
            format!(
                "image {image} is not on node {} (images are never pulled)",
                node.id
            ),
        ));
    }
    let sandbox = SandboxContainer {
        session_id,
        node_id: &node.id,
        spec: &command.spec,
        sandbox_network: &node.sandbox_network,
        warm_pool: None,
    };
    let made = match make_container(node, &sandbox).await {
        // Warm containers are spare room: give one up rather than refuse the session.
        Err(error) if error.code == ErrorCode::Capacity && pool::evict_one(node).await => {
            make_container(node, &sandbox).await
        }
        made => made,
    };
    let Some(container_id) = made? else {
        // A concurrent create for this session took the name first: answer with its container.
        let existing = inspect_after_conflict(node, &name).await?;
        return run_existing(node, session_id, existing).await;
    };
    tracing::info!(container_id, "container running");
    Ok(announce_ready(node, command, container_id).await)
}

/// Admits, creates and starts the container `sandbox` describes; once it runs, the ledger holds
/// it for its session (or, for a warm-pool container, as warm). `Ok(None)`: another create took
/// the container's name first.
pub(crate) async fn make_container(
    node: &Node,
    sandbox: &SandboxContainer<'_>,
) -> Result<Option<String>, ErrorBody> {
    let demand = Demand::of(&sandbox.spec.resources);
    let reservation = Reservation::admit(node, sandbox.session_id, demand)?;
    let container_id = match node.docker.create_sandbox(sandbox).await {
        Ok(container_id) => container_id,
        Err(error) if error.is_conflict() => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    if let Err(error) = start_and_confirm(node, &container_id).await {
        // A container that cannot run is removed, so that a retry starts afresh.
        if let Err(cleanup) = node.docker.remove(&container_id).await {
            tracing::warn!(error = %cleanup, "removing a container that failed to start");
        }
        return Err(error);
    }
    reservation.settle(&container_id, demand, sandbox.warm_pool.is_some());
    Ok(Some(container_id))
}

/// Tells the control plane the session's container runs, and answers the create.
async fn announce_ready(
    node: &Node,
    command: CreateContainer,
    container_id: String,
) -> ContainerCreated {
    let ready = ContainerReady {
        container_id: container_id.clone(),
        session_id: command.session_id.clone(),
        node_id: node.id.clone(),
        executor_url: None,
        ready_at: Utc::now(),
    };
    if let Err(error) = bus::publish(&node.nats, subjects::containers_ready(), &ready).await {
        tracing::warn!(%error, "announcing the ready container failed");
    }
    ContainerCreated {
        session_id: command.session_id,
        node_id: node.id.clone(),
        container_id,
        existed: false,
        executor_url: None,
        usage: Some(node.ledger().snapshot()),
    }
}

/// Docker reserves a name before the container holding it can be inspected, so after a name
/// conflict the other request's container is waited for briefly.
async fn inspect_after_conflict(node: &Node, name: &str) -> Result<ContainerFacts, ErrorBody> {
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

/// Answers a repeated create with the container the session already has, started if it was not.
async fn run_existing(
    node: &Node,
    session_id: &SessionId,
    existing: ContainerFacts,
) -> Result<ContainerCreated, ErrorBody> {
    check_owned(node, &existing)?;
    if existing.running {
        node.ledger()
            .mark_running(session_id, &existing.id, existing.demand);
    } else {
        let reservation = Reservation::admit(node, session_id, existing.demand)?;
        start_and_confirm(node, &existing.id).await?;
        reservation.settle(&existing.id, existing.demand, false);
    }
    Ok(ContainerCreated {
        session_id: session_id.clone(),
        node_id: node.id.clone(),
        container_id: existing.id,
        existed: true,
        executor_url: None,
        usage: Some(node.ledger().snapshot()),
    })
}

/// Starts the container and checks that it stays up.
async fn start_and_confirm(node: &Node, container_id: &str) -> Result<(), ErrorBody> {
    node.docker.start(container_id).await?;
    let facts = node.docker.inspect(container_id).await?;
    match facts {
        Some(facts) if facts.running => Ok(()),
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

/// Removes the session's container; one that is not there is a success with `removed: false`.
async fn remove_container(
    node: &Node,
    command: RemoveContainer,
) -> Result<ContainerRemoved, ErrorBody> {
    let session_id = command.session_id;
    let name = session_id.container_name();
    let removed = match node.docker.inspect(&name).await? {
        None => false,
        Some(existing) => {
            check_owned(node, &existing)?;
            let removed = node.docker.remove(&existing.id).await?;
            node.ledger().forget(&session_id, &existing.id);
            node.agents.forget(&session_id, &existing.id);
            removed
        }
    };
    Ok(ContainerRemoved {
        session_id,
        removed,
        usage: Some(node.ledger().snapshot()),
    })
}

/// The shared input rules, and what Docker's API needs beyond them.
fn check_request(command: &CreateContainer) -> Result<(), ErrorBody> {
    let spec = &command.spec;
    spec.check().map_err(ErrorBody::invalid)?;
    let memory_mb = spec.resources.memory_mb;
    if memory_mb > MAX_MEMORY_MB {
        return Err(ErrorBody::invalid(format!(
            "memory_mb must be at most {MAX_MEMORY_MB} for Docker, not {memory_mb}"
        )));
    }
    Ok(())
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

/// Docker failures reach the requester with Docker's own message.
impl From<DockerError> for ErrorBody {
    fn from(error: DockerError) -> Self {
        ErrorBody::new(ErrorCode::RuntimeError, error.to_string())
    }
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
        let admission = node.ledger().admit(session_id, demand).map_err(|refusal| {
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

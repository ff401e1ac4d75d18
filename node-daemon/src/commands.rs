//! `containers.create` and `containers.remove`: a session's container claimed warm or made (by
//! the container layer), answered again on a repeat, and removed. The other verbs are in
//! `executions.rs` and `files.rs`.

use chrono::Utc;
use messages::node::{
    ContainerCreated, ContainerReady, ContainerRemoved, CreateContainer, RemoveContainer,
};
use messages::{ErrorBody, ErrorCode, SessionId, subjects};
use service_kit::bus;

use crate::containers;
use crate::node::Node;
use crate::pool;
use crate::serve::Command;

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
    containers::check_spec(&command.spec)?;
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
        let container_id = containers::run_existing(node, session_id, existing).await?;
        return Ok(created(node, command, container_id, true));
    }
    let made = match containers::make(node, session_id, &command.spec, None).await {
        // Warm containers are spare room: give one up rather than refuse the session.
        Err(error) if error.code == ErrorCode::Capacity && pool::evict_one(node).await => {
            containers::make(node, session_id, &command.spec, None).await
        }
        made => made,
    };
    let Some(container_id) = made? else {
        // A concurrent create for this session took the name first: answer with its container.
        let existing = containers::inspect_after_conflict(node, &name).await?;
        let container_id = containers::run_existing(node, session_id, existing).await?;
        return Ok(created(node, command, container_id, true));
    };
    tracing::info!(container_id, "container running");
    Ok(announce_ready(node, command, container_id).await)
}

/// Tells the control plane the session's new container runs, and answers the create.
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
    created(node, command, container_id, false)
}

/// The answer to a create; `existed` when the session's container was there already.
fn created(
    node: &Node,
    command: CreateContainer,
    container_id: String,
    existed: bool,
) -> ContainerCreated {
    ContainerCreated {
        session_id: command.session_id,
        node_id: node.id.clone(),
        container_id,
        existed,
        executor_url: None,
        usage: Some(node.ledger().snapshot()),
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
            containers::check_owned(node, &existing)?;
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

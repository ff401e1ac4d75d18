//! Follows Docker's events for this node's containers: an exit is announced on
//! `runtime.containers.exited`, frees its share in the ledger and closes its egress rules (its
//! address may go to another sandbox); a removal drops it, its agent channel and its disk.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bollard::models::EventMessage;
use chrono::Utc;
use futures::StreamExt as _;
use messages::node::{ContainerExited, ExitReason};
use messages::{SessionId, labels, subjects};
use service_kit::bus;
use tokio_util::sync::CancellationToken;

use crate::containers;
use crate::node::Node;
use crate::pool;

/// How long to wait before following the events again after the stream broke.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);
const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// Where the event stream is: events are asked for again from the last one seen, so none is
/// missed while re-subscribing, and the replayed last ones are skipped.
#[derive(Debug)]
struct Position {
    last_nanos: i64,
}

impl Position {
    fn since(&self) -> String {
        format!(
            "{}.{:09}",
            self.last_nanos.div_euclid(NANOS_PER_SECOND),
            self.last_nanos.rem_euclid(NANOS_PER_SECOND)
        )
    }

    /// Whether `event` is new, moving past it if so.
    fn advance(&mut self, event: &EventMessage) -> bool {
        let Some(nanos) = event.time_nano else {
            return true;
        };
        if nanos <= self.last_nanos {
            return false;
        }
        self.last_nanos = nanos;
        true
    }
}

/// Follows the events from `since` (taken before the ledger was read from Docker, so an exit in
/// between is not lost) until cancelled. A broken stream is logged and followed again; it never
/// stops the daemon.
pub(crate) async fn watch_containers(
    node: Arc<Node>,
    since: SystemTime,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let start_nanos = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX)
        });
    let mut position = Position {
        last_nanos: start_nanos,
    };
    // Docker reports `oom` before the `die` of the same container.
    let mut oom_killed = HashSet::new();
    loop {
        let mut events = node
            .docker
            .container_events(&node.id, Some(&position.since()));
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                event = events.next() => event,
            };
            match event {
                Some(Ok(event)) => {
                    if position.advance(&event) {
                        handle(&node, &event, &mut oom_killed).await;
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "the Docker event stream failed; following it again");
                    break;
                }
                None => {
                    tracing::warn!("the Docker event stream ended; following it again");
                    break;
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
        }
    }
}

async fn handle(node: &Node, event: &EventMessage, oom_killed: &mut HashSet<String>) {
    let Some(actor) = &event.actor else { return };
    let Some(container_id) = actor.id.as_deref() else {
        return;
    };
    let attributes = actor.attributes.as_ref();
    let attribute = |name: &str| attributes.and_then(|attributes| attributes.get(name));
    let label_session =
        attribute(labels::SESSION_ID).and_then(|id| SessionId::parse(id.as_str()).ok());
    // A claimed warm container carries its pool id as label and its session in its name.
    let session_id = attribute("name")
        .and_then(|name| SessionId::from_container_name(name))
        .or_else(|| label_session.clone());
    let unclaimed_warm = attribute(labels::WARM_POOL).is_some()
        && session_id.is_some()
        && session_id == label_session;
    match event.action.as_deref() {
        Some("oom") => {
            oom_killed.insert(container_id.to_owned());
        }
        Some("die") => {
            if let (Some(key), Ok(firewall)) = (attribute(labels::VOLUME), &node.egress)
                && let Err(error) = firewall.close(key).await
            {
                tracing::warn!(%error, container_id, "closing a sandbox's egress rules failed");
            }
            let exit_code = attribute("exitCode").and_then(|code| code.parse().ok());
            let saw_oom = oom_killed.remove(container_id);
            let Some(session_id) = session_id else {
                tracing::warn!(
                    container_id,
                    "a container of this node died without a session label"
                );
                return;
            };
            node.ledger().mark_exited(&session_id, container_id);
            if unclaimed_warm {
                // No session to tell; the pool replaces it.
                tracing::info!(container_id, exit_code, "a warm-pool container exited");
                pool::container_died(node, container_id).await;
                return;
            }
            let oom = saw_oom || was_oom_killed(node, container_id).await;
            let exited = ContainerExited {
                container_id: container_id.to_owned(),
                session_id,
                node_id: node.id.clone(),
                exit_code,
                reason: ExitReason::classify(exit_code, oom),
                exited_at: Utc::now(),
            };
            tracing::info!(
                container_id,
                session_id = %exited.session_id,
                exit_code,
                reason = exited.reason.as_str(),
                "container exited"
            );
            if let Err(error) =
                bus::publish(&node.nats, subjects::containers_exited(), &exited).await
            {
                tracing::warn!(%error, "announcing the container exit failed");
            }
        }
        Some("destroy") => {
            oom_killed.remove(container_id);
            if let Some(key) = attribute(labels::VOLUME) {
                containers::release_volume(node, key).await;
            }
            if let Some(session_id) = session_id {
                node.ledger().forget(&session_id, container_id);
                node.agents.forget(&session_id, container_id);
            }
        }
        _ => {}
    }
}

/// Whether the kernel's OOM killer ended the container, as far as Docker still knows it.
async fn was_oom_killed(node: &Node, container_id: &str) -> bool {
    match node.docker.inspect(container_id).await {
        Ok(facts) => facts.is_some_and(|facts| facts.oom_killed),
        Err(error) => {
            tracing::warn!(%error, "inspecting an exited container failed");
            false
        }
    }
}

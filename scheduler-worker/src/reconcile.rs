//! Reconciles the containers a node reports (at daemon start, and when it comes back) with the
//! sessions recorded: a running session's container is adopted, a dead one fails its session,
//! and a container no live session owns is removed. A daemon restart never ends a running
//! session whose container still runs.

use std::collections::HashSet;

use messages::NodeId;
use messages::node::{ContainerExited, ContainerInventory, ExitReason, ReportedContainer};
use messages::session::{Session, SessionStatus};

use crate::lifecycle::Change;
use crate::scheduler::Scheduler;

impl Scheduler {
    pub(crate) async fn reconcile(&self, node: &NodeId, inventory: ContainerInventory) {
        let mut reported = HashSet::new();
        for container in &inventory.containers {
            if let Some(session_id) = &container.session_id {
                reported.insert(session_id.clone());
            }
            self.reconcile_container(node, &inventory, container).await;
        }
        // Running sessions the node has no container for: it vanished while the daemon was
        // away. Only sessions running since before the listing: a later one's container was
        // made after it.
        let sessions = match self.store.live_sessions_on(node).await {
            Ok(sessions) => sessions,
            Err(error) => {
                tracing::warn!(%node, %error, "could not read the node's sessions to reconcile");
                return;
            }
        };
        for session in sessions {
            if running_before(&session, &inventory) && !reported.contains(&session.id) {
                let vanished = Change::ContainerVanished { node: node.clone() };
                self.apply_or_log(&session.id, vanished).await;
            }
        }
    }

    async fn reconcile_container(
        &self,
        node: &NodeId,
        inventory: &ContainerInventory,
        container: &ReportedContainer,
    ) {
        let Some(session_id) = &container.session_id else {
            tracing::warn!(%node, container_id = %container.container_id, "a container without a session label; left alone");
            return;
        };
        let session = self.session_of(session_id).await;
        let owned = session.as_ref().is_some_and(|session| {
            !session.status.is_final() && session.runtime_node.as_ref() == Some(node)
        });
        let Some(session) = session.filter(|_| owned) else {
            tracing::info!(%node, %session_id, container_id = %container.container_id, "removing a container no live session owns");
            self.remove_in_background(node.clone(), session_id.clone());
            return;
        };
        if container.running {
            if self.placement_may_be_waiting(&session) {
                // Its placement is still waiting for the node's answer: it records the outcome.
                return;
            }
            if session.status != SessionStatus::Running {
                // Made, but the replica that asked for it never recorded it: adopt it now.
                let running = Change::Running {
                    node: node.clone(),
                    container_id: container.container_id.clone(),
                };
                self.apply_or_log(session_id, running).await;
            }
            tracing::info!(%node, %session_id, "adopted a running session's container");
            return;
        }
        // A stopped container of a running session died while the daemon could not see it.
        // One of a session still being created may simply not be started yet: left to its
        // placement.
        if running_before(&session, inventory) {
            let exited = ContainerExited {
                container_id: container.container_id.clone(),
                session_id: session_id.clone(),
                node_id: node.clone(),
                exit_code: container.exit_code,
                reason: ExitReason::classify(container.exit_code, container.oom_killed),
                exited_at: inventory.listed_at,
            };
            self.container_exited(exited).await;
        }
    }
}

/// Whether the session was running since before the node listed its containers.
fn running_before(session: &Session, inventory: &ContainerInventory) -> bool {
    session.status == SessionStatus::Running
        && session
            .started_at
            .is_some_and(|started| started < inventory.listed_at)
}

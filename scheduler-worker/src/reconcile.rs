//! Reconciles the containers a node reports (at daemon start, and when it comes back) with the
//! sessions recorded: a running session's container is adopted, a dead one fails its session,
//! and a container no live session owns is removed. A daemon restart never ends a running
//! session whose container still runs.

use std::collections::HashSet;

use messages::node::{ContainerExited, ContainerInventory, ExitReason, ReportedContainer};
use messages::session::SessionStatus;
use messages::{ErrorCode, NodeId};

use crate::events::{container_exited, session_of};
use crate::scheduler::Scheduler;
use crate::store::Transition;

pub(crate) async fn reconcile(scheduler: &Scheduler, node: &NodeId, inventory: ContainerInventory) {
    let mut reported = HashSet::new();
    for container in &inventory.containers {
        if let Some(session_id) = &container.session_id {
            reported.insert(session_id.clone());
        }
        reconcile_container(scheduler, node, &inventory, container).await;
    }
    // Running sessions the node has no container for: it vanished while the daemon was away.
    // Only sessions running since before the listing: a later one's container was made after.
    let sessions = match scheduler.store.live_sessions_on(node).await {
        Ok(sessions) => sessions,
        Err(error) => {
            tracing::warn!(%node, %error, "could not read the node's sessions to reconcile");
            return;
        }
    };
    for session in sessions {
        let listed_after_start = session
            .started_at
            .is_some_and(|started| started < inventory.listed_at);
        if session.status == SessionStatus::Running
            && listed_after_start
            && !reported.contains(&session.id)
        {
            let reason = format!("its container is gone from node {node}");
            let failed = Transition::failed(ErrorCode::RuntimeError, reason);
            scheduler
                .end_session(&session.id, &[SessionStatus::Running], failed)
                .await;
        }
    }
}

async fn reconcile_container(
    scheduler: &Scheduler,
    node: &NodeId,
    inventory: &ContainerInventory,
    container: &ReportedContainer,
) {
    let Some(session_id) = &container.session_id else {
        tracing::warn!(%node, container_id = %container.container_id, "a container without a session label; left alone");
        return;
    };
    let session = session_of(scheduler, session_id).await;
    let owned = session.as_ref().is_some_and(|session| {
        !session.status.is_final() && session.runtime_node.as_ref() == Some(node)
    });
    let Some(session) = session.filter(|_| owned) else {
        tracing::info!(%node, %session_id, container_id = %container.container_id, "removing a container no live session owns");
        scheduler.remove_in_background(node.clone(), session_id.clone());
        return;
    };
    if container.running {
        if session.status != SessionStatus::Running {
            // Made, but the replica that asked for it never recorded it: adopt it now.
            let running = Transition::running(node.clone(), container.container_id.clone());
            let from = [SessionStatus::Pending, SessionStatus::Creating];
            match scheduler
                .store
                .transition(session_id, &from, &running)
                .await
            {
                Ok(Some((session, true))) => scheduler.announce(&session).await,
                Ok(_) => {}
                Err(error) => tracing::warn!(%session_id, %error, "could not adopt a container"),
            }
        }
        tracing::info!(%node, %session_id, "adopted a running session's container");
        return;
    }
    // A stopped container of a running session died while the daemon could not see it. One
    // of a session still being created may simply not be started yet: left to its placement.
    let running_before_listing = session.status == SessionStatus::Running
        && session
            .started_at
            .is_some_and(|started| started < inventory.listed_at);
    if running_before_listing {
        let exited = ContainerExited {
            container_id: container.container_id.clone(),
            session_id: session_id.clone(),
            node_id: node.clone(),
            exit_code: container.exit_code,
            reason: ExitReason::classify(container.exit_code, container.oom_killed),
            exited_at: inventory.listed_at,
        };
        container_exited(scheduler, exited).await;
    }
}

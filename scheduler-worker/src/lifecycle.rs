//! The session lifecycle, in one room: every change a session can undergo is a [`Change`] that
//! knows the statuses it may start from and what it writes; [`Scheduler::apply`] is the one way
//! a change is made. It writes the change guarded by the current status (so racing replicas
//! cannot undo each other), announces the session only when something changed, and removes the
//! container when the change ends a session that still has one.
//!
//! ```text
//!   pending ──CreatingOn──▶ creating ──Running──▶ running ──ContainerExited/Vanished──▶ failed
//!      │  ╲                    │                    │ ╲──NodeLost──▶ lost
//!      │   ╲──StartFailed/StuckBeforeRunning──▶ failed  ╲──Expired──▶ terminated
//!      └──────── Deleted (from any status but terminated) ──────────▶ terminated
//! ```
//!
//! "running" is written by the placement that asked the node, from the node's answer. The
//! node's `runtime.containers.ready` signal (the seed's) and the reconciliation of a restarted
//! daemon write it only for a session no placement is waiting on
//! ([`Scheduler::placement_may_be_waiting`]): the replica that asked died.

use std::time::Duration;

use messages::node::{ContainerExited, ContainerReady};
use messages::session::{Session, SessionStatus};
use messages::{ErrorBody, ErrorCode, NodeId, SessionId};

use crate::scheduler::Scheduler;
use crate::store::{self, Applied, StoreError, Transition};

use SessionStatus::{Creating, Failed, Lost, Pending, Running, Terminated};

/// A change a session can undergo.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// A placement chose `node` and is asking it for the container.
    CreatingOn(NodeId),
    /// The node made the container and it runs.
    Running { node: NodeId, container_id: String },
    /// No node could start it.
    StartFailed(ErrorBody),
    /// It was still not running `deadline` after it was accepted.
    StuckBeforeRunning {
        status: SessionStatus,
        deadline: Duration,
        node: Option<NodeId>,
    },
    /// Its container stopped by itself, or was killed.
    ContainerExited(ContainerExited),
    /// It ran since before its restarted node listed its containers, and its container was not
    /// among them.
    ContainerVanished { node: NodeId },
    /// Its node stayed offline past the grace period.
    NodeLost { node: NodeId, grace: Duration },
    /// Its timeout ran out.
    Expired { timeout_seconds: u64 },
    /// A client deleted it.
    Deleted,
}

impl Change {
    /// The statuses this change may move a session out of; in any other it changes nothing.
    pub(crate) fn from(&self) -> &'static [SessionStatus] {
        match self {
            Change::CreatingOn(_)
            | Change::Running { .. }
            | Change::StartFailed(_)
            | Change::StuckBeforeRunning { .. } => &[Pending, Creating],
            Change::ContainerExited(_) => &[Creating, Running],
            Change::ContainerVanished { .. } | Change::NodeLost { .. } => &[Running],
            Change::Expired { .. } => &[Pending, Creating, Running],
            Change::Deleted => &[Pending, Creating, Running, Failed, Lost],
        }
    }

    /// What the change writes.
    fn transition(&self) -> Transition {
        match self {
            Change::CreatingOn(node) => Transition {
                runtime_node: Some(node.clone()),
                ..Transition::to(Creating)
            },
            Change::Running { node, container_id } => Transition {
                runtime_node: Some(node.clone()),
                container_id: Some(container_id.clone()),
                ..Transition::to(Running)
            },
            Change::StartFailed(error) => ended(Failed, error.code, error.message.clone()),
            Change::StuckBeforeRunning {
                status,
                deadline,
                node,
            } => {
                let on = node
                    .as_ref()
                    .map_or_else(String::new, |node| format!(" (on node {node})"));
                let reason = format!(
                    "the session was still {status} {deadline:?} after it was accepted{on}"
                );
                ended(Failed, ErrorCode::Timeout, reason)
            }
            Change::ContainerExited(event) => {
                let code = event
                    .exit_code
                    .map_or_else(|| "unknown".to_owned(), |code| code.to_string());
                let reason = format!(
                    "container exited ({}, exit code {code})",
                    event.reason.as_str()
                );
                ended(Failed, ErrorCode::RuntimeError, reason)
            }
            Change::ContainerVanished { node } => ended(
                Failed,
                ErrorCode::RuntimeError,
                format!("its container is gone from node {node}"),
            ),
            Change::NodeLost { node, grace } => ended(
                Lost,
                ErrorCode::NodeLost,
                format!("node_lost: node {node} has been offline for more than {grace:?}"),
            ),
            Change::Expired { timeout_seconds } => ended(
                Terminated,
                ErrorCode::Timeout,
                format!("the session's timeout of {timeout_seconds} s ran out"),
            ),
            Change::Deleted => Transition::to(Terminated),
        }
    }

    /// Whether, having ended the session, the change has its container removed. A failed start
    /// made none (a node that timed out is asked by the placement); a lost node cannot be asked
    /// (its containers are reconciled when it returns); a delete removes it itself, waiting for
    /// the node's answer.
    fn removes_container(&self) -> bool {
        matches!(
            self,
            Change::StuckBeforeRunning { .. }
                | Change::ContainerExited(_)
                | Change::ContainerVanished { .. }
                | Change::Expired { .. }
        )
    }
}

fn ended(status: SessionStatus, code: ErrorCode, reason: String) -> Transition {
    Transition {
        failure_code: Some(code),
        failure_reason: Some(reason),
        ..Transition::to(status)
    }
}

impl Scheduler {
    /// Makes `change` to the session, if its current status allows it. Only the replica whose
    /// write counted announces the session and cleans up after it.
    pub(crate) async fn apply(
        &self,
        session_id: &SessionId,
        change: Change,
    ) -> Result<Applied, StoreError> {
        let applied = self
            .store
            .transition(session_id, change.from(), &change.transition())
            .await?;
        if let Applied::Changed(session) = &applied {
            if session.status.is_final() {
                tracing::info!(
                    %session_id,
                    status = %session.status,
                    reason = ?session.failure_reason,
                    "session ended"
                );
            }
            self.announce(session).await;
            if change.removes_container()
                && let Some(node) = &session.runtime_node
            {
                self.remove_in_background(node.clone(), session_id.clone());
            }
        }
        Ok(applied)
    }

    /// [`Scheduler::apply`] for the sweeps and event followers, which log a failure and go on
    /// (the next sweep or event tries again).
    pub(crate) async fn apply_or_log(&self, session_id: &SessionId, change: Change) {
        if let Err(error) = self.apply(session_id, change).await {
            tracing::warn!(%session_id, %error, "could not record a session change");
        }
    }

    /// The seed's container-ready signals, read against their sessions together (one query for
    /// all: in a burst nearly every signal is of a session its placement records, and a read
    /// each would cost the placements the CPU). A signal from a node the session is not on is a
    /// container left by an abandoned attempt (a node that answered too late): it is removed.
    /// Otherwise it records "running" only for a session no placement waits on.
    pub(crate) async fn containers_ready(&self, events: Vec<ContainerReady>) {
        let ids: Vec<SessionId> = events
            .iter()
            .map(|event| event.session_id.clone())
            .collect();
        let sessions = match self.store.get_sessions(&ids).await {
            Ok(sessions) => sessions,
            Err(error) => {
                tracing::warn!(signals = events.len(), %error, "could not read the sessions of ready containers");
                return;
            }
        };
        for event in events {
            if let Some(session) = sessions.get(&event.session_id) {
                self.container_ready(event, session).await;
            }
        }
    }

    async fn container_ready(&self, event: ContainerReady, session: &Session) {
        if session.runtime_node.as_ref() != Some(&event.node_id) {
            tracing::warn!(session_id = %session.id, node = %event.node_id, "removing a container the session does not use");
            self.remove_in_background(event.node_id, event.session_id);
            return;
        }
        // Running already (the placement recorded it), or ended: nothing to write.
        if session.status != Creating || self.placement_may_be_waiting(session) {
            return;
        }
        let running = Change::Running {
            node: event.node_id,
            container_id: event.container_id,
        };
        self.apply_or_log(&event.session_id, running).await;
    }

    /// Whether a placement may still be waiting for a node's answer about `session`, creating
    /// since its last change: for up to twice the node timeout, so a placement that timed out
    /// (and asked the node to remove what it made) has long moved on, and clocks that differ a
    /// little between replicas do not matter. Past that, the replica that asked is gone.
    pub(crate) fn placement_may_be_waiting(&self, session: &Session) -> bool {
        let creating_for = (store::now() - session.updated_at)
            .to_std()
            .unwrap_or_default();
        session.status == Creating && creating_for < 2 * self.config.node_timeout
    }

    /// A sandbox stopped by itself (or was killed): its session fails with the reason, and the
    /// dead container is removed. Exits of containers the session does not use (on another
    /// node, or replaced) change nothing.
    pub(crate) async fn container_exited(&self, event: ContainerExited) {
        let Some(session) = self.session_of(&event.session_id).await else {
            return;
        };
        let its_container = session.runtime_node.as_ref() == Some(&event.node_id)
            && session
                .container_id
                .as_ref()
                .is_none_or(|id| *id == event.container_id);
        if its_container {
            let session_id = event.session_id.clone();
            self.apply_or_log(&session_id, Change::ContainerExited(event))
                .await;
        }
    }

    /// The session, or `None` (logged) when it cannot be read.
    pub(crate) async fn session_of(&self, id: &SessionId) -> Option<Session> {
        match self.store.get_session(id).await {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(session_id = %id, %error, "could not read session");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messages::node::ExitReason;

    fn node() -> NodeId {
        NodeId::parse("n1").expect("valid")
    }

    #[test]
    fn every_change_starts_only_from_a_live_status_but_delete() {
        let exited = ContainerExited {
            container_id: "c".into(),
            session_id: SessionId::parse("s").expect("valid"),
            node_id: node(),
            exit_code: Some(137),
            reason: ExitReason::Killed,
            exited_at: chrono::Utc::now(),
        };
        let changes = [
            Change::CreatingOn(node()),
            Change::Running {
                node: node(),
                container_id: "c".into(),
            },
            Change::StartFailed(ErrorBody::new(ErrorCode::Capacity, "full")),
            Change::StuckBeforeRunning {
                status: Pending,
                deadline: Duration::from_secs(1),
                node: None,
            },
            Change::ContainerExited(exited),
            Change::ContainerVanished { node: node() },
            Change::NodeLost {
                node: node(),
                grace: Duration::from_secs(60),
            },
            Change::Expired {
                timeout_seconds: 300,
            },
        ];
        for change in &changes {
            assert!(
                change.from().iter().all(|status| !status.is_final()),
                "{change:?} starts from a final status"
            );
            assert_eq!(
                change.transition().status.is_final(),
                !matches!(change, Change::CreatingOn(_) | Change::Running { .. }),
                "{change:?}"
            );
        }
        assert!(!Change::Deleted.from().contains(&Terminated));
        assert_eq!(Change::Deleted.transition().status, Terminated);
    }

    #[test]
    fn running_records_the_node_and_container() {
        let transition = Change::Running {
            node: node(),
            container_id: "c1".into(),
        }
        .transition();
        assert_eq!(transition.status, Running);
        assert_eq!(transition.runtime_node, Some(node()));
        assert_eq!(transition.container_id.as_deref(), Some("c1"));
        let lost = Change::NodeLost {
            node: node(),
            grace: Duration::from_secs(60),
        }
        .transition();
        assert_eq!(lost.failure_code, Some(ErrorCode::NodeLost));
        assert!(
            lost.failure_reason
                .is_some_and(|reason| reason.starts_with("node_lost"))
        );
    }
}

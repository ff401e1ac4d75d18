//! How sessions end without being asked to: past their timeout (terminated, container removed),
//! stuck before running past the start deadline (failed), or on a node that stayed offline past
//! the grace period (lost). Every replica sweeps; transitions guarded by the current status end
//! each session once, and only the replica whose transition counted announces and cleans up.

use std::sync::Arc;

use messages::session::{Session, SessionStatus};
use messages::{ErrorCode, NodeId, SessionId};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::scheduler::Scheduler;
use crate::store::{self, LIVE, StoreError, Transition};

/// Sweeps every `lifetime_sweep` until cancelled. Failures are logged; the next sweep retries.
pub async fn run(scheduler: Arc<Scheduler>, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(scheduler.config.lifetime_sweep);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = ticker.tick() => sweep(&scheduler).await,
        }
    }
}

async fn sweep(scheduler: &Scheduler) {
    let now = store::now();
    match scheduler.store.expired_sessions(now).await {
        Ok(expired) => {
            for session in expired {
                let reason = format!(
                    "the session's timeout of {} s ran out",
                    session.timeout_seconds
                );
                let ended =
                    Transition::ended(SessionStatus::Terminated, ErrorCode::Timeout, reason);
                scheduler.end_session(&session.id, &LIVE, ended).await;
            }
        }
        Err(error) => tracing::warn!(%error, "could not look for expired sessions"),
    }
    let deadline = scheduler.config.start_deadline;
    let started_by = now - chrono::TimeDelta::from_std(deadline).unwrap_or(chrono::TimeDelta::MAX);
    match scheduler.store.sessions_not_started_since(started_by).await {
        Ok(stuck) => {
            for session in stuck {
                let reason = format!(
                    "the session was still {} {deadline:?} after it was accepted{}",
                    session.status,
                    session
                        .runtime_node
                        .as_ref()
                        .map_or_else(String::new, |node| format!(" (on node {node})"))
                );
                let failed = Transition::failed(ErrorCode::Timeout, reason);
                let from = [SessionStatus::Pending, SessionStatus::Creating];
                scheduler.end_session(&session.id, &from, failed).await;
            }
        }
        Err(error) => tracing::warn!(%error, "could not look for sessions stuck before running"),
    }
}

impl Scheduler {
    /// Ends a session that is in one of `from`; the replica whose transition counted announces
    /// it and removes its container (unless the node is lost: it cannot be asked, and its
    /// containers are reconciled when it returns).
    pub(crate) async fn end_session(
        &self,
        session_id: &SessionId,
        from: &[SessionStatus],
        transition: Transition,
    ) -> Option<Session> {
        match self.store.transition(session_id, from, &transition).await {
            Ok(Some((session, true))) => {
                tracing::warn!(
                    %session_id,
                    status = %session.status,
                    reason = ?session.failure_reason,
                    "session ended"
                );
                self.announce(&session).await;
                if let Some(node) = &session.runtime_node
                    && session.status != SessionStatus::Lost
                {
                    self.remove_in_background(node.clone(), session_id.clone());
                }
                Some(session)
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%session_id, %error, "could not end a session");
                None
            }
        }
    }

    /// The node stayed offline past the grace period: its running sessions are lost. Sessions
    /// still being placed there are not: their placement finds the node silent and tries
    /// another.
    pub(crate) async fn mark_sessions_lost(&self, node: &NodeId) -> Result<(), StoreError> {
        let grace = self.config.node_lost_grace;
        for session in self.store.live_sessions_on(node).await? {
            if session.status != SessionStatus::Running {
                continue;
            }
            let reason = format!("node_lost: node {node} has been offline for more than {grace:?}");
            let lost = Transition::ended(SessionStatus::Lost, ErrorCode::NodeLost, reason);
            self.end_session(&session.id, &[SessionStatus::Running], lost)
                .await;
        }
        Ok(())
    }
}

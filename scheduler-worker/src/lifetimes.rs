//! How sessions end without being asked to: past their timeout (terminated, container removed),
//! stuck before running past the start deadline (failed), or on a node that stayed offline past
//! the grace period (lost). Every replica sweeps; the changes are the lifecycle's, guarded by the
//! current status, so each session is ended once and only the replica whose change counted
//! announces and cleans up.

use std::sync::Arc;

use messages::NodeId;
use messages::session::SessionStatus;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::Change;
use crate::scheduler::Scheduler;
use crate::store::{self, StoreError};

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
                let expired = Change::Expired {
                    timeout_seconds: session.timeout_seconds,
                };
                scheduler.apply_or_log(&session.id, expired).await;
            }
        }
        Err(error) => tracing::warn!(%error, "could not look for expired sessions"),
    }
    let deadline = scheduler.config.start_deadline;
    let started_by = now - chrono::TimeDelta::from_std(deadline).unwrap_or(chrono::TimeDelta::MAX);
    match scheduler.store.sessions_not_started_since(started_by).await {
        Ok(stuck) => {
            for session in stuck {
                let stuck = Change::StuckBeforeRunning {
                    status: session.status,
                    deadline,
                    node: session.runtime_node.clone(),
                };
                scheduler.apply_or_log(&session.id, stuck).await;
            }
        }
        Err(error) => tracing::warn!(%error, "could not look for sessions stuck before running"),
    }
}

impl Scheduler {
    /// The node stayed offline past the grace period: its running sessions are lost. Sessions
    /// still being placed there are not: their placement finds the node silent and tries
    /// another.
    pub(crate) async fn mark_sessions_lost(&self, node: &NodeId) -> Result<(), StoreError> {
        let grace = self.config.node_lost_grace;
        for session in self.store.live_sessions_on(node).await? {
            if session.status == SessionStatus::Running {
                let lost = Change::NodeLost {
                    node: node.clone(),
                    grace,
                };
                self.apply_or_log(&session.id, lost).await;
            }
        }
        Ok(())
    }
}

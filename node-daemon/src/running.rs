//! The handle of a started daemon (or simulated fleet): its named tasks and the background work
//! they started (removals, run followers), both drained within one shutdown deadline.

use std::time::Duration;

use messages::NodeId;
use service_kit::tasks::Tasks;
use tokio_util::task::TaskTracker;

/// How long the daemon's tasks and its background work get, in all, to finish once it is told
/// to stop.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// A started node daemon.
#[derive(Debug)]
pub struct Running {
    node_id: NodeId,
    tasks: Tasks,
    background: TaskTracker,
}

impl Running {
    pub(crate) fn new(node_id: NodeId, tasks: Tasks, background: TaskTracker) -> Self {
        Self {
            node_id,
            tasks,
            background,
        }
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// Waits until the daemon is cancelled (or one of its tasks failed), then for its tasks to
    /// finish and after them for the background work they started (a run still going may report
    /// its result), for at most ten seconds in all. Background work still going then is left.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Self {
            tasks, background, ..
        } = self;
        tasks.cancel_token().cancelled().await;
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE;
        let stopped = tasks.join(SHUTDOWN_DEADLINE).await;
        // The tasks are done, so nothing adds work any more.
        background.close();
        if tokio::time::timeout_at(deadline, background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                unfinished = background.len(),
                "background work did not finish by the shutdown deadline"
            );
        }
        stopped
    }
}

//! Code executions' results: each run's first result is recorded from the EXECUTIONS stream (a
//! work queue the replicas share) or the seed's HTTP callback, and runs whose result never came
//! are failed. Starting a run is an API request (`api/executions.rs`).

use std::sync::Arc;
use std::time::Duration;

use messages::execution::{Execution, ExecutionResult};
use messages::subjects;
use service_kit::bus;
use service_kit::{WorkQueue, streams};
use tokio_util::sync::CancellationToken;

use crate::scheduler::Scheduler;
use crate::store::{self, StoreError};

/// How long past its timeout a run may stay without a result before it is failed. The node's
/// own watchdog reports at timeout + 10 s, so this only fires when the node is gone.
pub(crate) const RESULT_GRACE: Duration = Duration::from_secs(60);
/// The most runs one sweep fails; the next sweep takes the rest.
const SWEEP_BATCH: u32 = 500;
/// How often each replica looks for runs whose result never came.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Results recorded at once by one replica.
const RESULTS_IN_FLIGHT: usize = 16;

/// The durable consumer every replica shares for recording results; created if missing, with
/// the stream.
pub async fn results_queue(scheduler: &Scheduler) -> anyhow::Result<WorkQueue<ExecutionResult>> {
    let jetstream = async_nats::jetstream::new(scheduler.nats.clone());
    let stream = streams::ensure_executions_stream(&jetstream).await?;
    WorkQueue::open(
        &stream,
        subjects::execution_results_consumer(),
        Some(subjects::execution_results_all()),
        scheduler.config.ack_wait,
    )
    .await
}

/// Records results until cancelled.
pub async fn record_results(
    scheduler: Arc<Scheduler>,
    queue: WorkQueue<ExecutionResult>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let span = |result: &ExecutionResult| tracing::info_span!("scheduler.record_execution_result", execution_id = %result.execution_id);
    queue
        .serve(cancel, RESULTS_IN_FLIGHT, span, move |result| {
            let scheduler = Arc::clone(&scheduler);
            async move { scheduler.record_result(&result).await.map(drop) }
        })
        .await
}

/// Fails, every [`SWEEP_INTERVAL`], the runs whose result is overdue.
pub async fn sweep_overdue(
    scheduler: Arc<Scheduler>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        if let Err(error) = scheduler.fail_overdue_runs().await {
            tracing::warn!(%error, "could not sweep overdue executions");
        }
    }
}

impl Scheduler {
    /// Records `result` unless the run has one, and tells waiting gateways when it did. Returns
    /// the execution as recorded, or `None` when there is no such execution.
    pub(crate) async fn record_result(
        &self,
        result: &ExecutionResult,
    ) -> Result<Option<Execution>, StoreError> {
        let Some((execution, changed)) = self.store.record_execution_result(result).await? else {
            tracing::warn!(execution_id = %result.execution_id, "a result for an unknown execution");
            return Ok(None);
        };
        if changed {
            tracing::info!(execution_id = %execution.id, status = %execution.status, "execution result recorded");
            let subject = subjects::execution_status(&execution.id);
            if let Err(error) = bus::publish(&self.nats, subject, &execution).await {
                tracing::warn!(execution_id = %execution.id, %error, "could not announce an execution result");
            }
        }
        Ok(Some(execution))
    }

    async fn fail_overdue_runs(&self) -> Result<(), StoreError> {
        for execution in self
            .store
            .overdue_executions(store::now(), SWEEP_BATCH)
            .await?
        {
            let node = execution
                .runtime_node
                .as_ref()
                .map_or_else(|| "its node".to_owned(), |node| format!("node '{node}'"));
            let result = ExecutionResult::error(
                execution.id.clone(),
                format!("no result came from {node}; the run's outcome is unknown"),
            );
            self.record_result(&result).await?;
        }
        Ok(())
    }
}

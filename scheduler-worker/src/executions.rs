//! Code executions: recording a run and starting it on the session's node, recording each run's
//! first result from the EXECUTIONS stream (or the seed's HTTP callback), and failing runs whose
//! result never came.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt as _;
use messages::api::{
    ExecutionPage, GetExecution, ListExecutions, RecordExecutionResult, StartExecution,
};
use messages::execution::{
    Execution, ExecutionResult, ExecutionStatus, MAX_TIMEOUT_SECS, RunExecution,
};
use messages::session::SessionStatus;
use messages::{ErrorBody, ErrorCode, decode, subjects};
use service_kit::bus;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::scheduler::Scheduler;
use crate::store::{self, StoreError};

/// How long past its timeout a run may stay without a result before it is failed. The node's
/// own watchdog reports at timeout + 10 s, so this only fires when the node is gone.
const RESULT_GRACE: Duration = Duration::from_secs(60);
/// The most runs one sweep fails; the next sweep takes the rest.
const SWEEP_BATCH: u32 = 500;
/// How often each replica looks for runs whose result never came.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The durable consumer every replica shares for recording results; created if missing, with
/// the stream.
pub async fn results_consumer(scheduler: &Scheduler) -> anyhow::Result<PullConsumer> {
    let jetstream = jetstream::new(scheduler.nats.clone());
    let stream = bus::ensure_executions_stream(&jetstream).await?;
    bus::shared_consumer(
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
    consumer: PullConsumer,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut deliveries = consumer
        .messages()
        .await
        .context("pulling from the execution results consumer")?;
    loop {
        let delivery = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            delivery = deliveries.next() => delivery,
        };
        match delivery {
            Some(Ok(message)) => {
                let span = tracing::info_span!("scheduler.record_execution_result");
                bus::adopt_remote_parent(&span, message.headers.as_ref());
                record_delivery(&scheduler, &message).instrument(span).await;
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "pulling execution results failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            None => bail!("the execution results consumer stream ended"),
        }
    }
}

async fn record_delivery(scheduler: &Scheduler, message: &jetstream::Message) {
    let kind = match decode::<ExecutionResult>(&message.payload) {
        Ok(result) => match scheduler.record_result(&result).await {
            Ok(_) => AckKind::Ack,
            Err(error) => {
                tracing::error!(%error, execution_id = %result.execution_id, "could not record a result; will retry");
                AckKind::Nak(Some(Duration::from_secs(1)))
            }
        },
        Err(error) => {
            // Retrying cannot make it decode.
            tracing::warn!(%error, "dropping an undecodable execution result");
            AckKind::Term
        }
    };
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(%error, "acknowledging an execution result failed");
    }
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

fn internal(error: StoreError) -> ErrorBody {
    tracing::error!(%error, "database error while handling an execution");
    ErrorBody::new(
        ErrorCode::Internal,
        "the scheduler's database failed; see its log",
    )
}

fn execution_not_found(id: &impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, format!("execution '{id}' not found"))
}

/// Two results say the same when everything the run produced is equal (timestamps aside).
fn same_outcome(recorded: &Execution, result: &ExecutionResult) -> bool {
    recorded.status == result.status
        && recorded.exit_code == result.exit_code
        && recorded.stdout == result.stdout
        && recorded.stderr == result.stderr
        && recorded.error == result.error
        && recorded.return_value == result.return_value
}

impl Scheduler {
    pub(crate) async fn api_start_execution(
        &self,
        request: StartExecution,
    ) -> Result<Execution, ErrorBody> {
        if !(1..=MAX_TIMEOUT_SECS).contains(&request.timeout_secs) {
            return Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!("timeout must be between 1 and {MAX_TIMEOUT_SECS} seconds"),
            ));
        }
        // A retried request finds the run it already started.
        if let Some(existing) = self
            .store
            .get_execution(&request.execution_id)
            .await
            .map_err(internal)?
        {
            return Ok(existing);
        }
        let session = self
            .store
            .get_session(&request.session_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                ErrorBody::new(
                    ErrorCode::NotFound,
                    format!("session '{}' not found", request.session_id),
                )
            })?;
        let node = match (&session.status, &session.runtime_node) {
            (SessionStatus::Running, Some(node)) => node.clone(),
            (status, _) => {
                return Err(ErrorBody::new(
                    ErrorCode::Conflict,
                    format!(
                        "session '{}' is {status}; code runs only in a running session",
                        session.id
                    ),
                ));
            }
        };
        let execution = Execution {
            id: request.execution_id.clone(),
            session_id: request.session_id.clone(),
            language: request.language,
            code: request.code.clone(),
            status: ExecutionStatus::Running,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            error: None,
            state_lost: false,
            return_value: None,
            fresh: request.fresh,
            timeout_secs: request.timeout_secs,
            runtime_node: Some(node.clone()),
            duration_ms: None,
            created_at: store::now(),
            started_at: None,
            completed_at: None,
            metrics: None,
        };
        let result_due_at = execution.created_at
            + chrono::Duration::seconds(i64::from(execution.timeout_secs))
            + chrono::Duration::from_std(RESULT_GRACE).unwrap_or_default();
        self.store
            .insert_execution(&execution, result_due_at)
            .await
            .map_err(internal)?;
        let command = RunExecution {
            execution_id: request.execution_id,
            session_id: request.session_id,
            language: request.language,
            code: request.code,
            stdin: request.stdin,
            env: request.env,
            timeout_secs: request.timeout_secs,
            fresh: request.fresh,
        };
        match bus::node_request(&self.nats, &node, &command, self.config.run_start_timeout).await {
            Ok(_) => Ok(execution),
            Err(error) => {
                tracing::warn!(execution_id = %execution.id, %node, %error, "the node did not start the run");
                let result = ExecutionResult::error(
                    execution.id.clone(),
                    format!("node '{node}' did not start the run: {error}"),
                );
                self.record_result(&result)
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| execution_not_found(&execution.id))
            }
        }
    }

    pub(crate) async fn api_get_execution(
        &self,
        request: GetExecution,
    ) -> Result<Execution, ErrorBody> {
        self.store
            .get_execution(&request.execution_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| execution_not_found(&request.execution_id))
    }

    pub(crate) async fn api_list_executions(
        &self,
        request: ListExecutions,
    ) -> Result<ExecutionPage, ErrorBody> {
        if self
            .store
            .get_session(&request.session_id)
            .await
            .map_err(internal)?
            .is_none()
        {
            return Err(ErrorBody::new(
                ErrorCode::NotFound,
                format!("session '{}' not found", request.session_id),
            ));
        }
        let (executions, total) = self
            .store
            .list_executions(&request.session_id, request.limit, request.offset)
            .await
            .map_err(internal)?;
        Ok(ExecutionPage {
            executions,
            total,
            limit: request.limit,
            offset: request.offset,
        })
    }

    /// The seed's callback: the same result again is answered with the record; a different one
    /// for a run that has a result is a conflict.
    pub(crate) async fn api_record_execution(
        &self,
        request: RecordExecutionResult,
    ) -> Result<Execution, ErrorBody> {
        let result = request.result;
        match self.record_result(&result).await.map_err(internal)? {
            None => Err(execution_not_found(&result.execution_id)),
            Some(recorded) if same_outcome(&recorded, &result) => Ok(recorded),
            Some(recorded) => Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!(
                    "execution '{}' already has a different result ({})",
                    recorded.id, recorded.status
                ),
            )),
        }
    }

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

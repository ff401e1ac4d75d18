//! Starting a run (recorded, then sent to the session's node), reading and listing runs, and a
//! result reported over the seed's HTTP callback.

use std::sync::Arc;

use messages::api::PageInfo;
use messages::api::executions::{
    ExecutionPage, GetExecution, ListExecutions, RecordExecutionResult, StartExecution,
};
use messages::execution::{Execution, ExecutionResult};
use messages::session::SessionStatus;
use messages::{ErrorBody, ErrorCode};
use service_kit::bus;

use super::internal;
use crate::executions::RESULT_GRACE;
use crate::scheduler::Scheduler;
use crate::store;

fn not_found(id: &impl std::fmt::Display) -> ErrorBody {
    ErrorBody::not_found("execution", id)
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

pub(super) async fn start(
    scheduler: Arc<Scheduler>,
    request: StartExecution,
) -> Result<Execution, ErrorBody> {
    let run = request.run;
    run.check().map_err(ErrorBody::invalid)?;
    // A retried request finds the run it already started.
    if let Some(existing) = scheduler
        .store
        .get_execution(&run.execution_id)
        .await
        .map_err(internal)?
    {
        return Ok(existing);
    }
    let session = scheduler
        .store
        .get_session(&run.session_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ErrorBody::not_found("session", &run.session_id))?;
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
    let execution = Execution::running(&run, node.clone(), store::now());
    let result_due_at = execution.created_at
        + chrono::Duration::seconds(i64::from(execution.timeout_secs))
        + chrono::Duration::from_std(RESULT_GRACE).unwrap_or_default();
    scheduler
        .store
        .insert_execution(&execution, result_due_at)
        .await
        .map_err(internal)?;
    let timeout = scheduler.config.run_start_timeout;
    match bus::node_request(&scheduler.nats, &node, &run, timeout).await {
        Ok(_) => Ok(execution),
        Err(error) => {
            tracing::warn!(execution_id = %execution.id, %node, %error, "the node did not start the run");
            let result = ExecutionResult::error(
                execution.id.clone(),
                format!("node '{node}' did not start the run: {error}"),
            );
            scheduler
                .record_result(&result)
                .await
                .map_err(internal)?
                .ok_or_else(|| not_found(&execution.id))
        }
    }
}

pub(super) async fn get(
    scheduler: Arc<Scheduler>,
    request: GetExecution,
) -> Result<Execution, ErrorBody> {
    scheduler
        .store
        .get_execution(&request.execution_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(&request.execution_id))
}

pub(super) async fn list(
    scheduler: Arc<Scheduler>,
    request: ListExecutions,
) -> Result<ExecutionPage, ErrorBody> {
    if scheduler
        .store
        .get_session(&request.session_id)
        .await
        .map_err(internal)?
        .is_none()
    {
        return Err(ErrorBody::not_found("session", &request.session_id));
    }
    let (executions, total) = scheduler
        .store
        .list_executions(&request.session_id, request.page)
        .await
        .map_err(internal)?;
    Ok(ExecutionPage {
        executions,
        page: PageInfo {
            total,
            page: request.page,
        },
    })
}

/// The seed's callback: the same result again is answered with the record; a different one
/// for a run that has a result is a conflict.
pub(super) async fn record(
    scheduler: Arc<Scheduler>,
    request: RecordExecutionResult,
) -> Result<Execution, ErrorBody> {
    let result = request.result;
    match scheduler.record_result(&result).await.map_err(internal)? {
        None => Err(not_found(&result.execution_id)),
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

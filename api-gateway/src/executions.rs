//! Code executions: run code in a session (and wait for the result, or not), read and list runs,
//! and take a result from the seed's HTTP callback. Streaming a run's output is
//! `execution_stream.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::Subscriber;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::StreamExt as _;
use messages::api::executions::{
    ExecutionPage, GetExecution, ListExecutions, RecordExecutionResult, StartExecution,
};
use messages::execution::{Execution, ExecutionResult, ExecutionStatus, Language, RunExecution};
use messages::limits::DEFAULT_EXECUTION_TIMEOUT_SECS;
use messages::{ExecutionId, SessionId, subjects};
use serde::Deserialize;
use service_kit::bus;
use tracing::field::Empty;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::input;
use crate::state::AppState;

/// How long past a run's own timeout a waiting request or stream keeps waiting for its result:
/// the node reports a stuck run at timeout + 10 s, the schedulers fail a lost one at + 60 s.
const RESULT_SLACK: Duration = Duration::from_secs(75);

/// The body of `POST /api/v1/sessions/{id}/executions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunBody {
    code: String,
    #[serde(default = "python")]
    language: Language,
    /// Seconds, 1 to 3600.
    #[serde(default = "default_timeout")]
    timeout: u32,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    stdin: String,
    /// Run Python in a new process instead of the session's long-lived interpreter.
    #[serde(default)]
    fresh: bool,
}

fn python() -> Language {
    Language::Python
}

fn default_timeout() -> u32 {
    DEFAULT_EXECUTION_TIMEOUT_SECS
}

impl RunBody {
    /// The run as the node is asked for it, checked by the contract's rules (422 when not).
    fn into_run(
        self,
        execution_id: ExecutionId,
        session_id: SessionId,
    ) -> Result<RunExecution, ApiError> {
        let run = RunExecution {
            execution_id,
            session_id,
            language: self.language,
            code: self.code,
            stdin: self.stdin,
            env: self.env,
            timeout_secs: self.timeout,
            fresh: self.fresh,
        };
        run.check()
            .map_err(|message| ApiError::invalid(StatusCode::UNPROCESSABLE_ENTITY, message))?;
        Ok(run)
    }
}

/// The query of `POST /api/v1/sessions/{id}/executions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunQuery {
    /// Answer once the run ends instead of as soon as it started.
    #[serde(default = "wait_by_default")]
    wait: bool,
}

fn wait_by_default() -> bool {
    true
}

/// `POST /api/v1/sessions/{id}/executions`.
#[tracing::instrument(
    name = "gateway.run_code",
    skip_all,
    fields(session_id = %id, execution_id = Empty)
)]
pub(crate) async fn run(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<RunQuery>,
    ApiJson(body): ApiJson<RunBody>,
) -> Result<Response, ApiError> {
    let session_id = SessionId::parse(&id).map_err(|_| ApiError::not_found("session", &id))?;
    let execution_id = new_execution_id()?;
    let timeout = body.timeout;
    let run = body.into_run(execution_id.clone(), session_id)?;
    tracing::Span::current().record("execution_id", execution_id.as_str());

    // Subscribed before the run starts, so its result cannot slip past.
    let results = subscribe_status(&state, &execution_id).await?;
    let request = StartExecution { run };
    let started = ApiError::found(
        "session",
        &id,
        bus::api_request(&state.nats, &request, state.request_timeout).await,
    )?;
    if started.status.is_final() || !query.wait {
        let status = if started.status.is_final() {
            StatusCode::CREATED
        } else {
            StatusCode::ACCEPTED
        };
        return Ok(execution_response(status, started));
    }
    let deadline = tokio::time::Instant::now() + run_wait(timeout);
    let finished = wait_for_result(&state, &execution_id, results, deadline).await?;
    if finished.status.is_final() {
        Ok(execution_response(StatusCode::CREATED, finished))
    } else {
        Err(ApiError::from_code(
            messages::ErrorCode::Timeout,
            format!(
                "execution {execution_id} has no result yet; poll GET /api/v1/executions/{execution_id}"
            ),
        ))
    }
}

fn new_execution_id() -> Result<ExecutionId, ApiError> {
    ExecutionId::parse(uuid::Uuid::now_v7().to_string())
        .map_err(|error| ApiError::internal(format!("making an execution id: {error}")))
}

/// The longest a client waits on a run with this timeout.
pub(crate) fn run_wait(timeout_secs: u32) -> Duration {
    Duration::from_secs(u64::from(timeout_secs)) + RESULT_SLACK
}

pub(crate) async fn subscribe_status(
    state: &AppState,
    execution_id: &ExecutionId,
) -> Result<Subscriber, ApiError> {
    let subject = subjects::execution_status(execution_id);
    state
        .nats
        .subscribe(subject.clone())
        .await
        .map_err(|error| ApiError::bus_failure(subject, &error))
}

/// The run's recorded result once it is announced; at the deadline or on shutdown, the run as
/// the schedulers have it (an announcement may have been missed).
pub(crate) async fn wait_for_result(
    state: &AppState,
    execution_id: &ExecutionId,
    mut results: Subscriber,
    deadline: tokio::time::Instant,
) -> Result<Execution, ApiError> {
    let settled = tokio::select! {
        settled = next_final(&mut results) => settled,
        () = tokio::time::sleep_until(deadline) => None,
        () = state.cancel.cancelled() => None,
    };
    match settled {
        Some(execution) => Ok(execution),
        None => fetch(state, execution_id).await,
    }
}

/// The next final state announced, or `None` if the subscription ends first.
pub(crate) async fn next_final(results: &mut Subscriber) -> Option<Execution> {
    while let Some(message) = results.next().await {
        match bus::decode_message::<Execution>(&message) {
            Ok(execution) if execution.status.is_final() => return Some(execution),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "undecodable execution status; ignored"),
        }
    }
    None
}

pub(crate) async fn fetch(
    state: &AppState,
    execution_id: &ExecutionId,
) -> Result<Execution, ApiError> {
    let request = GetExecution {
        execution_id: execution_id.clone(),
    };
    ApiError::found(
        "execution",
        execution_id.as_str(),
        bus::api_request(&state.nats, &request, state.request_timeout).await,
    )
}

fn execution_response(status: StatusCode, execution: Execution) -> Response {
    let location = format!("/api/v1/executions/{}", execution.id);
    (status, [(header::LOCATION, location)], Json(execution)).into_response()
}

pub(crate) fn parse_execution_id(id: &str) -> Result<ExecutionId, ApiError> {
    ExecutionId::parse(id).map_err(|_| ApiError::not_found("execution", id))
}

/// `GET /api/v1/executions/{id}`.
#[tracing::instrument(name = "gateway.get_execution", skip_all, fields(execution_id = %id))]
pub(crate) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Execution>, ApiError> {
    Ok(Json(fetch(&state, &parse_execution_id(&id)?).await?))
}

/// The query of `GET /api/v1/sessions/{id}/executions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `GET /api/v1/sessions/{id}/executions`: newest first.
#[tracing::instrument(name = "gateway.list_executions", skip_all, fields(session_id = %id))]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ExecutionPage>, ApiError> {
    let session_id = SessionId::parse(&id).map_err(|_| ApiError::not_found("session", &id))?;
    let request = ListExecutions {
        session_id,
        page: input::page(query.limit, query.offset)?,
    };
    Ok(Json(ApiError::found(
        "session",
        &id,
        bus::api_request(&state.nats, &request, state.request_timeout).await,
    )?))
}

/// The body the seed's executors post to `/internal/executions/{id}/result`.
#[derive(Debug, Deserialize)]
pub(crate) struct CallbackResult {
    status: String,
    #[serde(default)]
    stdout: String,
    #[serde(default)]
    stderr: String,
    exit_code: Option<i32>,
    /// Seconds.
    execution_time: Option<f64>,
    return_value: Option<serde_json::Value>,
    metrics: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
}

impl CallbackResult {
    fn into_result(self, execution_id: ExecutionId) -> Result<ExecutionResult, ApiError> {
        let invalid =
            |message: String| ApiError::invalid(StatusCode::UNPROCESSABLE_ENTITY, message);
        let status = match self.status.as_str() {
            // The seed's executors say "success".
            "success" => ExecutionStatus::Completed,
            other => other
                .parse::<ExecutionStatus>()
                .ok()
                .filter(|status| status.is_final())
                .ok_or_else(|| {
                    invalid(format!(
                        "status must be completed, success, failed, timeout or error, not {other:?}"
                    ))
                })?,
        };
        let duration_ms = match self.execution_time {
            None => None,
            Some(seconds) if seconds.is_finite() && seconds >= 0.0 => {
                // Bounded above by the check, so the cast cannot wrap.
                Some((seconds.min(1.0e9) * 1000.0).round() as u64)
            }
            Some(seconds) => {
                return Err(invalid(format!(
                    "execution_time must be a non-negative number of seconds, not {seconds}"
                )));
            }
        };
        if let Some(metrics) = &self.metrics
            && !metrics.is_object()
        {
            return Err(invalid("metrics must be a JSON object".to_owned()));
        }
        let return_value = self.return_value.map(|value| match value {
            serde_json::Value::String(text) => text,
            other => other.to_string(),
        });
        Ok(ExecutionResult {
            execution_id,
            status,
            exit_code: self.exit_code,
            stdout: self.stdout,
            stderr: self.stderr,
            truncated: false,
            error: self.error,
            state_lost: false,
            return_value,
            duration_ms,
            started_at: None,
            completed_at: Utc::now(),
            metrics: self.metrics,
        })
    }
}

/// `POST /internal/executions/{id}/result`: records the first result of a run; the same result
/// again is a 200 with the record, a different one a 409.
#[tracing::instrument(name = "gateway.execution_callback", skip_all, fields(execution_id = %id))]
pub(crate) async fn record_callback(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CallbackResult>,
) -> Result<Json<Execution>, ApiError> {
    let execution_id = parse_execution_id(&id)?;
    let request = RecordExecutionResult {
        result: body.into_result(execution_id)?,
    };
    Ok(Json(ApiError::found(
        "execution",
        &id,
        bus::api_request(&state.nats, &request, state.request_timeout).await,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_bodies_outside_the_bounds_are_refused() {
        let body = |timeout: u32, code: &str| RunBody {
            code: code.to_owned(),
            language: Language::Python,
            timeout,
            env: BTreeMap::new(),
            stdin: String::new(),
            fresh: false,
        };
        let check = |body: RunBody| {
            body.into_run(
                ExecutionId::parse("e1").expect("valid"),
                SessionId::parse("s1").expect("valid"),
            )
        };
        assert!(check(body(30, "print(1)")).is_ok());
        // Within the HTTP body limit as raw text, but past it once escaped.
        let huge = "\u{1}".repeat(messages::limits::MAX_RUN_JSON_BYTES / 4);
        for bad in [
            body(0, "x"),
            body(messages::limits::MAX_EXECUTION_TIMEOUT_SECS + 1, "x"),
            body(5, "a\0b"),
            body(5, &huge),
        ] {
            let error = check(bad).expect_err("out of bounds");
            assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
        }
    }

    #[test]
    fn callback_results_map_the_seed_fields() {
        let id = ExecutionId::parse("e1").expect("valid");
        let body: CallbackResult = serde_json::from_value(serde_json::json!({
            "status": "success", "stdout": "42\n", "stderr": "", "exit_code": 0,
            "execution_time": 0.25, "return_value": 42, "metrics": {"cpu": 1}
        }))
        .expect("seed body");
        let result = body.into_result(id.clone()).expect("valid");
        assert_eq!(result.status, ExecutionStatus::Completed);
        assert_eq!(result.duration_ms, Some(250));
        assert_eq!(result.return_value.as_deref(), Some("42"));

        for bad in [
            serde_json::json!({"status": "running"}),
            serde_json::json!({"status": "done"}),
            serde_json::json!({"status": "failed", "execution_time": -1.0}),
            serde_json::json!({"status": "failed", "metrics": [1]}),
        ] {
            let body: CallbackResult = serde_json::from_value(bad).expect("shape");
            assert!(body.into_result(id.clone()).is_err());
        }
    }
}

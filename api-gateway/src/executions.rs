//! Code executions: run code in a session (and wait for the result, or not), read and list runs,
//! stream a run's output as Server-Sent Events, and take a result from the seed's HTTP callback.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use async_nats::Subscriber;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::{Stream, StreamExt as _};
use messages::api::{
    ExecutionPage, GetExecution, ListExecutions, RecordExecutionResult, StartExecution,
};
use messages::execution::{
    DEFAULT_TIMEOUT_SECS, Execution, ExecutionOutput, ExecutionResult, ExecutionStatus, Language,
    MAX_TIMEOUT_SECS, OutputStream,
};
use messages::{ExecutionId, SessionId, subjects};
use serde::Deserialize;
use service_kit::bus;
use tokio::sync::mpsc;
use tracing::field::Empty;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::input;

/// How long past a run's own timeout a waiting request or stream keeps waiting for its result:
/// the node reports a stuck run at timeout + 10 s, the schedulers fail a lost one at + 60 s.
const RESULT_SLACK: Duration = Duration::from_secs(75);
/// The most code, stdin and env one run takes, measured as the JSON the executor agent receives
/// (escapes included): the agent's request line holds 1 MiB, and the rest of the request needs
/// some of it.
const MAX_RUN_JSON_BYTES: usize = 960 * 1024;
/// How long a stream keeps relaying output after the run's result was recorded.
const RECORDED_DRAIN: Duration = Duration::from_secs(1);
/// How many events a stream buffers for a slow client before it waits for it.
const STREAM_BUFFER: usize = 64;

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
    DEFAULT_TIMEOUT_SECS
}

impl RunBody {
    fn validate(&self) -> Result<(), ApiError> {
        if !(1..=MAX_TIMEOUT_SECS).contains(&self.timeout) {
            return Err(ApiError::invalid(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "timeout must be between 1 and {MAX_TIMEOUT_SECS} seconds, not {}",
                    self.timeout
                ),
            ));
        }
        let as_json = serde_json::to_vec(&(&self.code, &self.stdin, &self.env))
            .map_or(usize::MAX, |json| json.len());
        if as_json > MAX_RUN_JSON_BYTES {
            return Err(ApiError::invalid(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "code, stdin and env take {as_json} bytes as JSON; the most is \
                     {MAX_RUN_JSON_BYTES}: upload larger inputs as files"
                ),
            ));
        }
        if self.code.contains('\0') {
            return Err(ApiError::invalid(
                StatusCode::UNPROCESSABLE_ENTITY,
                "code must not contain NUL bytes",
            ));
        }
        input::check_env(&self.env)
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
    body.validate()?;
    let execution_id = new_execution_id()?;
    tracing::Span::current().record("execution_id", execution_id.as_str());

    // Subscribed before the run starts, so its result cannot slip past.
    let results = subscribe_status(&state, &execution_id).await?;
    let request = StartExecution {
        execution_id: execution_id.clone(),
        session_id,
        language: body.language,
        code: body.code,
        stdin: body.stdin,
        env: body.env,
        timeout_secs: body.timeout,
        fresh: body.fresh,
    };
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
    let deadline = tokio::time::Instant::now() + run_wait(body.timeout);
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
fn run_wait(timeout_secs: u32) -> Duration {
    Duration::from_secs(u64::from(timeout_secs)) + RESULT_SLACK
}

async fn subscribe_status(
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
async fn wait_for_result(
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
async fn next_final(results: &mut Subscriber) -> Option<Execution> {
    while let Some(message) = results.next().await {
        match messages::decode::<Execution>(&message.payload) {
            Ok(execution) if execution.status.is_final() => return Some(execution),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "undecodable execution status; ignored"),
        }
    }
    None
}

async fn fetch(state: &AppState, execution_id: &ExecutionId) -> Result<Execution, ApiError> {
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

fn parse_execution_id(id: &str) -> Result<ExecutionId, ApiError> {
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
        limit: input::page_limit(query.limit)?,
        offset: query.offset.unwrap_or(0),
    };
    Ok(Json(ApiError::found(
        "session",
        &id,
        bus::api_request(&state.nats, &request, state.request_timeout).await,
    )?))
}

/// `GET /api/v1/executions/{id}/stream`: `stdout` and `stderr` events as the program writes,
/// from its first byte whenever the client connects, then one `result` event with the recorded
/// execution. A run that has ended is replayed from its record.
#[tracing::instrument(name = "gateway.stream_execution", skip_all, fields(execution_id = %id))]
pub(crate) async fn stream(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let execution_id = parse_execution_id(&id)?;
    // Subscribed before reading the record, so the recorded result cannot slip past.
    let results = subscribe_status(&state, &execution_id).await?;
    let execution = fetch(&state, &execution_id).await?;
    let (events, receiver) = mpsc::channel(STREAM_BUFFER);
    if execution.status.is_final() {
        tokio::spawn(replay_record(execution, events));
    } else {
        let events_consumer = output_consumer(&state, &execution_id).await?;
        tokio::spawn(relay_live(
            state,
            execution,
            events_consumer,
            results,
            events,
        ));
    }
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok(event), receiver))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// An ordered replay of the run's events from the EXECUTIONS stream, from the first one.
async fn output_consumer(
    state: &AppState,
    execution_id: &ExecutionId,
) -> Result<Ordered, ApiError> {
    let stream_name = subjects::executions_stream();
    let stream = state
        .jetstream
        .get_stream(stream_name)
        .await
        .map_err(|error| ApiError::bus_failure(stream_name, &error))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subjects::execution_events(execution_id),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|error| ApiError::bus_failure(stream_name, &error))?;
    consumer
        .messages()
        .await
        .map_err(|error| ApiError::bus_failure(stream_name, &error))
}

async fn replay_record(execution: Execution, events: mpsc::Sender<Event>) {
    for (stream, text) in [
        (OutputStream::Stdout, &execution.stdout),
        (OutputStream::Stderr, &execution.stderr),
    ] {
        if !text.is_empty() && events.send(output_event(stream, text)).await.is_err() {
            return;
        }
    }
    let _ = events.send(result_event(&execution)).await;
}

/// Forwards output as it is published until the node's result shows up, then the recorded
/// result. Ends early when the client goes away.
async fn relay_live(
    state: AppState,
    execution: Execution,
    mut events_consumer: Ordered,
    mut results: Subscriber,
    events: mpsc::Sender<Event>,
) {
    let deadline = tokio::time::Instant::now() + run_wait(execution.timeout_secs);
    let mut end = deadline;
    // A result recorded without the node's (the callback's, or the overdue sweep's) ends the
    // stream too, after a moment for output still on its way.
    let mut recorded = None;
    let mut text = [Utf8Tail::default(), Utf8Tail::default()];
    let mut next_seq = 0;
    loop {
        let message = tokio::select! {
            message = events_consumer.next() => message,
            announced = next_final(&mut results), if recorded.is_none() => {
                recorded = announced;
                end = end.min(tokio::time::Instant::now() + RECORDED_DRAIN);
                continue;
            }
            () = tokio::time::sleep_until(end) => break,
            () = state.cancel.cancelled() => break,
            () = events.closed() => return,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                tracing::warn!(%error, "reading execution events failed; ending the live part");
                break;
            }
            None => break,
        };
        if message.subject.ends_with(".result") {
            break;
        }
        let output = match messages::decode::<ExecutionOutput>(&message.payload) {
            Ok(output) => output,
            Err(error) => {
                tracing::warn!(%error, "undecodable execution output; skipped");
                continue;
            }
        };
        // The ordered consumer already delivers in order; a repeat would be a node's retry.
        if output.seq < next_seq {
            continue;
        }
        next_seq = output.seq + 1;
        let tail = &mut text[usize::from(output.stream == OutputStream::Stderr)];
        let chunk = tail.push(&output.data);
        if !chunk.is_empty()
            && events
                .send(output_event(output.stream, &chunk))
                .await
                .is_err()
        {
            return;
        }
    }
    for (stream, tail) in [OutputStream::Stdout, OutputStream::Stderr]
        .into_iter()
        .zip(&mut text)
    {
        let rest = tail.finish();
        if !rest.is_empty() && events.send(output_event(stream, &rest)).await.is_err() {
            return;
        }
    }
    let final_state = match recorded {
        Some(execution) => execution,
        // The node's result is out; the recorded one follows within moments.
        None => {
            let short_deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            wait_for_result(&state, &execution.id, results, deadline.min(short_deadline))
                .await
                .unwrap_or(execution)
        }
    };
    let _ = events.send(result_event(&final_state)).await;
}

fn output_event(stream: OutputStream, text: &str) -> Event {
    Event::default()
        .event(stream.as_str())
        .json_data(serde_json::json!({ "data": text }))
        .unwrap_or_else(|_| Event::default().event(stream.as_str()).data(text))
}

fn result_event(execution: &Execution) -> Event {
    Event::default()
        .event("result")
        .json_data(execution)
        .unwrap_or_else(|error| Event::default().event("error").data(error.to_string()))
}

/// Turns a stream's bytes into text without breaking a character that straddles two chunks: an
/// incomplete UTF-8 sequence at the end of a chunk waits for the next one.
#[derive(Debug, Default)]
struct Utf8Tail {
    pending: Vec<u8>,
}

impl Utf8Tail {
    fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let complete = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // `error_len() == None`: the input ended inside a character; keep that part.
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(complete);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }

    /// What is left at the end: an incomplete character, as a replacement character.
    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
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
    fn a_character_split_across_chunks_is_kept_whole() {
        let mut tail = Utf8Tail::default();
        let text = "é€!".as_bytes();
        assert_eq!(tail.push(&text[..1]), "");
        assert_eq!(tail.push(&text[1..3]), "é");
        assert_eq!(tail.push(&text[3..]), "€!");
        assert_eq!(tail.push(&[0xff, b'a']), "\u{fffd}a");
    }

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
        assert!(body(30, "print(1)").validate().is_ok());
        // Within the HTTP body limit as raw text, but past it once escaped.
        let huge = "\u{1}".repeat(MAX_RUN_JSON_BYTES / 4);
        for bad in [
            body(0, "x"),
            body(MAX_TIMEOUT_SECS + 1, "x"),
            body(5, "a\0b"),
            body(5, &huge),
        ] {
            let error = bad.validate().expect_err("out of bounds");
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

//! `executions.run`: starts a run in the session's executor agent, then follows it in the
//! background, publishing its output and finally its one result on the EXECUTIONS stream. The
//! daemon enforces the output cap and the deadline itself: the agent is not trusted to.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use chrono::{DateTime, Utc};
use messages::execution::{
    ExecutionOutput, ExecutionResult, ExecutionStarted, ExecutionStatus, OutputStream, RunExecution,
};
use messages::headers::MSG_ID;
use messages::{ErrorBody, ExecutionId, SessionId, subjects};
use service_kit::bus;
use tracing::Instrument as _;

use crate::agent::{
    AgentChannel, AgentError, AgentResult, Registration, RunEvent, RunEvents, truncate,
};
use crate::containers;
use crate::node::Node;
use crate::serve::Command;

/// Room in a result message for everything but the two output streams: the return value, the
/// error, the other fields and the headers.
const RESULT_OVERHEAD_BYTES: u64 = 128 * 1024;
/// The longest return value passed on (the agent's kernel caps it at 65,536 characters).
const MAX_RETURN_VALUE_BYTES: usize = 64 * 1024;
const MAX_ERROR_BYTES: usize = 4 * 1024;
/// How long past its timeout a run may go before the daemon stops waiting for the agent.
const WATCHDOG_GRACE: Duration = Duration::from_secs(10);
/// Output messages published but not yet acknowledged by JetStream, at most.
const ACKS_IN_FLIGHT: usize = 16;
/// Publishing the result is what unblocks the user, so it is tried again a few times.
const RESULT_ATTEMPTS: u32 = 5;
const RESULT_FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);

/// The largest result message a run can make with `output_limit` bytes per stream; the NATS
/// server must accept messages this large.
pub(crate) fn max_result_bytes(output_limit: u64) -> u64 {
    output_limit
        .saturating_mul(2)
        .saturating_add(RESULT_OVERHEAD_BYTES)
}

impl Command for RunExecution {
    fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "node.run_execution",
            session_id = %self.session_id,
            execution_id = %self.execution_id,
            language = self.language.as_str()
        )
    }

    fn session_id(&self) -> &SessionId {
        &self.session_id
    }

    /// The session's lock is held only while the agent is found (a remove must not wait for a
    /// run, nor for a run's start when the agent is slow to take it).
    const LOCKS_WHOLE_COMMAND: bool = false;

    async fn run(self, node: &Node) -> Result<ExecutionStarted, ErrorBody> {
        start(node, self).await
    }
}

async fn start(node: &Node, command: RunExecution) -> Result<ExecutionStarted, ErrorBody> {
    command.check().map_err(ErrorBody::invalid)?;
    let agent = containers::for_session(node, &command.session_id).await?;
    let events = match agent.register_run(&command.execution_id)? {
        // A repeated request (say, redelivered): the run it asked for is going already.
        Registration::AlreadyRunning { started_at } => {
            return Ok(ExecutionStarted {
                execution_id: command.execution_id,
                started_at,
            });
        }
        Registration::New(events) => events,
    };
    let timeout = Duration::from_secs(u64::from(command.timeout_secs));
    let exec = serde_json::json!({
        "op": "exec",
        "id": command.execution_id.as_str(),
        "language": command.language.as_str(),
        "code": command.code,
        "stdin": command.stdin,
        "env": command.env,
        "timeout_ms": timeout.as_millis(),
        "fresh": command.fresh,
        "output_limit": node.output_limit,
    });
    // Dropping `events` on failure unregisters the run.
    agent.send(&exec).await?;
    let started_at = events.started_at;
    let run = Run {
        jetstream: node.jetstream.clone(),
        agent,
        execution_id: command.execution_id.clone(),
        output_limit: usize::try_from(node.output_limit).unwrap_or(usize::MAX),
        started_at,
        deadline: tokio::time::Instant::now() + timeout + WATCHDOG_GRACE,
    };
    // Followed past this answer; at shutdown the daemon lets it report for a while.
    node.background
        .spawn(run.follow(events).instrument(tracing::Span::current()));
    Ok(ExecutionStarted {
        execution_id: command.execution_id,
        started_at,
    })
}

/// A started run, followed until its result is published.
struct Run {
    jetstream: jetstream::Context,
    /// Kept for `cancel`, and so the channel outlives the run.
    agent: Arc<AgentChannel>,
    execution_id: ExecutionId,
    output_limit: usize,
    started_at: DateTime<Utc>,
    deadline: tokio::time::Instant,
}

/// How following a run ended.
enum Ending {
    Reported(AgentResult),
    /// No result from the agent; the message says why.
    Lost(String),
}

/// One stream's output kept for the result: at most the output limit.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Captured {
    /// Keeps what fits under `limit` and returns it; the rest is dropped.
    fn keep<'a>(&mut self, data: &'a [u8], limit: usize) -> &'a [u8] {
        let room = limit.saturating_sub(self.bytes.len());
        let kept = &data[..data.len().min(room)];
        if kept.len() < data.len() {
            self.truncated = true;
        }
        self.bytes.extend_from_slice(kept);
        kept
    }

    /// The output as text for the result, and whether any was dropped. Invalid UTF-8 becomes
    /// U+FFFD, three bytes for as little as one, so the text is cut to the limit again: the
    /// result must stay as small as the NATS server was checked to take.
    fn into_text(self, limit: usize) -> (String, bool) {
        let text = String::from_utf8_lossy(&self.bytes).into_owned();
        let cut = text.len() > limit;
        (truncate(text, limit), self.truncated || cut)
    }
}

impl Run {
    async fn follow(self, mut events: RunEvents) {
        let mut stdout = Captured::default();
        let mut stderr = Captured::default();
        let mut output = OutputPublisher::new(self.jetstream.clone(), &self.execution_id);
        let ending = loop {
            match tokio::time::timeout_at(self.deadline, events.events.recv()).await {
                Ok(Some(RunEvent::Output { stream, data })) => {
                    let captured = match stream {
                        OutputStream::Stdout => &mut stdout,
                        OutputStream::Stderr => &mut stderr,
                    };
                    let kept = captured.keep(&data, self.output_limit);
                    if !kept.is_empty() {
                        output.publish(stream, kept.to_vec()).await;
                    }
                }
                Ok(Some(RunEvent::Finished(result))) => break Ending::Reported(result),
                Ok(None) => break Ending::Lost(AgentError::Stopped.to_string()),
                Err(_) => {
                    tracing::warn!("the executor did not report in time; cancelling the run");
                    let cancel = serde_json::json!({
                        "op": "cancel",
                        "id": self.execution_id.as_str(),
                    });
                    if let Err(error) = self.agent.send(&cancel).await {
                        tracing::warn!(%error, "cancelling the run failed");
                    }
                    break Ending::Lost("the executor did not report in time".to_owned());
                }
            }
        };
        // From here on the agent's frames for this run are ignored.
        drop(events);
        output.finish().await;
        let result = self.result(ending, stdout, stderr);
        tracing::info!(
            status = result.status.as_str(),
            exit_code = result.exit_code,
            truncated = result.truncated,
            "run finished"
        );
        publish_result(&self.jetstream, &result).await;
    }

    fn result(&self, ending: Ending, stdout: Captured, stderr: Captured) -> ExecutionResult {
        let completed_at = Utc::now();
        let elapsed_ms = u64::try_from((completed_at - self.started_at).num_milliseconds()).ok();
        let (stdout, stdout_truncated) = stdout.into_text(self.output_limit);
        let (stderr, stderr_truncated) = stderr.into_text(self.output_limit);
        let mut result = ExecutionResult {
            execution_id: self.execution_id.clone(),
            status: ExecutionStatus::Error,
            exit_code: None,
            stdout,
            stderr,
            truncated: stdout_truncated || stderr_truncated,
            error: None,
            state_lost: false,
            return_value: None,
            duration_ms: elapsed_ms,
            started_at: Some(self.started_at),
            completed_at,
            metrics: None,
        };
        match ending {
            Ending::Lost(error) => result.error = Some(error),
            Ending::Reported(reported) => judge(&mut result, reported),
        }
        result
    }
}

/// Fills `result` from what the agent reported, checking it on the way.
fn judge(result: &mut ExecutionResult, reported: AgentResult) {
    let status = reported.status.parse::<ExecutionStatus>().ok();
    result.status = status
        .filter(|status| status.is_final())
        .unwrap_or(ExecutionStatus::Error);
    result.exit_code = reported.exit_code.and_then(|code| i32::try_from(code).ok());
    result.error = reported.error.map(|error| truncate(error, MAX_ERROR_BYTES));
    if status.is_none_or(|status| !status.is_final()) {
        result.error = Some(truncate(
            format!(
                "the executor reported the unknown status {:?}",
                reported.status
            ),
            MAX_ERROR_BYTES,
        ));
    }
    if result.status == ExecutionStatus::Error && result.error.is_none() {
        result.error = Some("the executor could not run the code and did not say why".to_owned());
    }
    if reported.oom_killed {
        result.status = ExecutionStatus::Failed;
        let said = result.error.take().unwrap_or_default();
        result.error = Some(if said.starts_with("out of memory") {
            said
        } else if said.is_empty() {
            "out of memory: the run went over the session's memory limit and was killed".to_owned()
        } else {
            format!("out of memory: {said}")
        });
    } else if let (None, Some(signal), ExecutionStatus::Failed) =
        (&result.error, reported.signal, result.status)
    {
        result.error = Some(format!("killed by signal {signal}"));
    }
    result.state_lost = reported.state_lost;
    result.return_value = reported
        .return_value
        .map(|value| truncate(value, MAX_RETURN_VALUE_BYTES));
    result.truncated |= reported.truncated_stdout || reported.truncated_stderr;
    if reported.duration_ms.is_some() {
        result.duration_ms = reported.duration_ms;
    }
}

/// Publishes a run's output chunks in order, with a bounded number awaiting JetStream's ack.
struct OutputPublisher {
    jetstream: jetstream::Context,
    execution_id: ExecutionId,
    subject: String,
    seq: u64,
    acks: VecDeque<PublishAckFuture>,
}

impl OutputPublisher {
    fn new(jetstream: jetstream::Context, execution_id: &ExecutionId) -> Self {
        Self {
            jetstream,
            execution_id: execution_id.clone(),
            subject: subjects::execution_output(execution_id),
            seq: 0,
            acks: VecDeque::with_capacity(ACKS_IN_FLIGHT),
        }
    }

    /// Output is best effort (the result carries it too): a chunk that cannot be published is
    /// logged and left out, and its `seq` stays unused so readers can tell.
    async fn publish(&mut self, stream: OutputStream, data: Vec<u8>) {
        let chunk = ExecutionOutput {
            execution_id: self.execution_id.clone(),
            seq: self.seq,
            stream,
            data,
        };
        self.seq += 1;
        let payload = match messages::encode(&chunk) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(%error, "encoding an output chunk failed");
                return;
            }
        };
        match self
            .jetstream
            .publish_with_headers(
                self.subject.clone(),
                bus::outgoing_headers(),
                payload.into(),
            )
            .await
        {
            Ok(ack) => self.acks.push_back(ack),
            Err(error) => tracing::warn!(%error, "publishing an output chunk failed"),
        }
        if self.acks.len() >= ACKS_IN_FLIGHT
            && let Some(ack) = self.acks.pop_front()
        {
            check_ack(ack).await;
        }
    }

    /// Waits for the outstanding acks, so the result is published after every chunk is stored.
    async fn finish(mut self) {
        while let Some(ack) = self.acks.pop_front() {
            check_ack(ack).await;
        }
    }
}

async fn check_ack(ack: PublishAckFuture) {
    if let Err(error) = ack.await {
        tracing::warn!(%error, "an output chunk was not stored");
    }
}

/// Publishes the result, trying again a few times; JetStream drops repeats by the message id.
async fn publish_result(jetstream: &jetstream::Context, result: &ExecutionResult) {
    let payload = match messages::encode(result) {
        Ok(payload) => bytes::Bytes::from(payload),
        Err(error) => {
            tracing::error!(%error, "encoding the result failed");
            return;
        }
    };
    let subject = subjects::execution_result(&result.execution_id);
    let mut headers = bus::outgoing_headers();
    headers.insert(MSG_ID, format!("{}-result", result.execution_id).as_str());
    let mut delay = RESULT_FIRST_RETRY_DELAY;
    for attempt in 1..=RESULT_ATTEMPTS {
        let stored = match jetstream
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await
        {
            Ok(ack) => ack.await.map(drop).map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match stored {
            Ok(()) => return,
            Err(error) if attempt < RESULT_ATTEMPTS => {
                tracing::warn!(%error, attempt, "publishing the result failed; trying again");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(error) => {
                tracing::error!(%error, attempt, "publishing the result failed; giving up");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(status: &str) -> AgentResult {
        serde_json::from_value(serde_json::json!({ "status": status })).expect("a result")
    }

    fn blank() -> ExecutionResult {
        ExecutionResult::error(
            ExecutionId::parse("e1").expect("valid"),
            "placeholder".to_owned(),
        )
    }

    #[test]
    fn output_is_kept_up_to_the_limit() {
        let mut captured = Captured::default();
        assert_eq!(captured.keep(b"abcd", 6), b"abcd");
        assert_eq!(captured.keep(b"efgh", 6), b"ef");
        assert_eq!(captured.keep(b"ij", 6), b"");
        assert_eq!(captured.bytes, b"abcdef");
        assert!(captured.truncated);
        assert_eq!(captured.into_text(6), ("abcdef".to_owned(), true));

        let mut binary = Captured::default();
        binary.keep(&[0xff; 4], 6);
        let (text, truncated) = binary.into_text(6);
        assert_eq!(text, "\u{fffd}\u{fffd}");
        assert!(truncated, "two of the replacements did not fit");
    }

    #[test]
    fn agent_results_are_judged() {
        let mut result = blank();
        judge(&mut result, reported("completed"));
        assert_eq!(result.status, ExecutionStatus::Completed);
        assert_eq!(result.error, None);

        let mut result = blank();
        judge(&mut result, reported("running"));
        assert_eq!(result.status, ExecutionStatus::Error);
        assert!(
            result
                .error
                .is_some_and(|error| error.contains("unknown status"))
        );

        let mut result = blank();
        let mut oom = reported("failed");
        oom.oom_killed = true;
        oom.exit_code = Some(137);
        judge(&mut result, oom);
        assert_eq!(result.status, ExecutionStatus::Failed);
        assert_eq!(result.exit_code, Some(137));
        assert!(
            result
                .error
                .is_some_and(|error| error.starts_with("out of memory"))
        );

        let mut result = blank();
        let mut huge = reported("completed");
        huge.return_value = Some("x".repeat(MAX_RETURN_VALUE_BYTES * 2));
        huge.exit_code = Some(i64::MAX);
        judge(&mut result, huge);
        assert_eq!(
            result.return_value.map(|value| value.len()),
            Some(MAX_RETURN_VALUE_BYTES)
        );
        assert_eq!(result.exit_code, None);
    }
}

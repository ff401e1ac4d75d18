//! The channel to a session's executor agent (ops/images/agent/PROTOCOL.md): requests go to the
//! container's stdin as JSON lines and the agent's frames come back on its stdout, both through
//! one `docker attach` per container, made on first use and again when it broke.
//!
//! Everything the agent says is untrusted (it shares the sandbox with the user's code): lines are
//! capped, every frame is checked, and frames for runs or requests nobody waits for are dropped.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bollard::container::LogOutput;
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt as _};
use messages::execution::OutputStream;
use messages::{ErrorBody, ErrorCode, ExecutionId, SessionId};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use crate::commands::check_owned;
use crate::docker::DockerError;
use crate::node::Node;

/// The longest line either side writes, newline included (PROTOCOL.md, Framing).
pub(crate) const MAX_LINE_BYTES: usize = 1 << 20;
/// How long a request waits for the agent's reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long attaching, or writing one line to the agent's stdin, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames a run's follower may lag behind; beyond that the reader waits for it, which holds
/// the agent's stdout back instead of buffering it here.
const RUN_EVENT_BUFFER: usize = 16;
/// The most of one chunk of the agent's own log (its stderr) that is logged here.
const AGENT_LOG_BYTES: usize = 2048;
/// The most of an agent's error message passed on.
const MAX_MESSAGE_BYTES: usize = 1024;

/// Why talking to an agent failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    #[error("the session's container stopped")]
    Stopped,
    #[error("the executor agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Attach(#[from] DockerError),
    #[error("writing to the executor agent failed: {0}")]
    Write(String),
    #[error(
        "the request is {0} bytes encoded, more than the executor agent's line limit of {MAX_LINE_BYTES}"
    )]
    TooLong(usize),
    #[error("{kind}: {message}")]
    Refused { kind: Refusal, message: String },
    #[error("the executor agent sent a malformed reply: {0}")]
    BadReply(String),
}

/// The error codes of an agent's `reply` with `ok: false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Refusal {
    Invalid,
    NotFound,
    PathEscape,
    IsDirectory,
    NotDirectory,
    TooLarge,
    Io,
    #[serde(other)]
    Other,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Invalid => "invalid request",
            Refusal::NotFound => "not found",
            Refusal::PathEscape => "path escape",
            Refusal::IsDirectory => "is a directory",
            Refusal::NotDirectory => "not a directory",
            Refusal::TooLarge => "too large",
            Refusal::Io => "I/O error",
            Refusal::Other => "refused",
        })
    }
}

impl From<AgentError> for ErrorBody {
    fn from(error: AgentError) -> Self {
        let code = match &error {
            AgentError::Stopped => ErrorCode::Conflict,
            AgentError::Timeout(_) => ErrorCode::Timeout,
            AgentError::TooLong(_) => ErrorCode::InvalidRequest,
            AgentError::Refused { kind, .. } => match kind {
                Refusal::NotFound => ErrorCode::NotFound,
                Refusal::Invalid
                | Refusal::PathEscape
                | Refusal::IsDirectory
                | Refusal::NotDirectory
                | Refusal::TooLarge => ErrorCode::InvalidRequest,
                Refusal::Io | Refusal::Other => ErrorCode::RuntimeError,
            },
            AgentError::Attach(_) | AgentError::Write(_) | AgentError::BadReply(_) => {
                ErrorCode::RuntimeError
            }
        };
        ErrorBody::new(code, error.to_string())
    }
}

/// What the agent says about one run, in order: output, then exactly one result.
#[derive(Debug)]
pub(crate) enum RunEvent {
    Output { stream: OutputStream, data: Vec<u8> },
    Finished(AgentResult),
}

/// An agent's `result` frame, fields as the agent sent them (still to be judged).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AgentResult {
    pub status: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub signal: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub state_lost: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub return_value: Option<String>,
    #[serde(default)]
    pub truncated_stdout: bool,
    #[serde(default)]
    pub truncated_stderr: bool,
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

type ReplyOutcome = Result<Map<String, Value>, AgentError>;

/// Who waits for what the agent says. Once closed nothing new is let in, and every waiter has
/// been told (its sender dropped), so no one waits on a dead channel.
#[derive(Debug, Default)]
struct Routes {
    state: Mutex<RouteState>,
}

#[derive(Debug, Default)]
struct RouteState {
    closed: bool,
    runs: HashMap<ExecutionId, RunRoute>,
    requests: HashMap<u64, oneshot::Sender<ReplyOutcome>>,
}

#[derive(Debug)]
struct RunRoute {
    events: mpsc::Sender<RunEvent>,
    started_at: DateTime<Utc>,
}

impl Routes {
    fn lock(&self) -> MutexGuard<'_, RouteState> {
        // Held only for map operations, which do not panic half-way.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        // Dropping the senders ends every run's event stream and every request's wait.
        state.runs.clear();
        for (_, waiter) in state.requests.drain() {
            let _ = waiter.send(Err(AgentError::Stopped));
        }
    }

    fn run_sender(&self, id: &ExecutionId) -> Option<mpsc::Sender<RunEvent>> {
        self.lock().runs.get(id).map(|route| route.events.clone())
    }

    fn finish_request(&self, req: u64, outcome: ReplyOutcome) {
        match self.lock().requests.remove(&req) {
            Some(waiter) => {
                let _ = waiter.send(outcome);
            }
            None => tracing::debug!(req, "dropping a reply nobody waits for"),
        }
    }
}

/// A run's events, until dropped; dropping it stops the routing, so later frames are ignored.
#[derive(Debug)]
pub(crate) struct RunEvents {
    pub events: mpsc::Receiver<RunEvent>,
    pub started_at: DateTime<Utc>,
    id: ExecutionId,
    routes: Arc<Routes>,
}

impl Drop for RunEvents {
    fn drop(&mut self) {
        self.routes.lock().runs.remove(&self.id);
    }
}

/// Registering a run found one with this id already going (a repeated request).
#[derive(Debug)]
pub(crate) enum Registration {
    New(RunEvents),
    AlreadyRunning { started_at: DateTime<Utc> },
}

/// Forgets a request's waiter when the request is given up (timeout, failed write).
struct PendingRequest<'a> {
    req: u64,
    routes: &'a Routes,
}

impl Drop for PendingRequest<'_> {
    fn drop(&mut self) {
        self.routes.lock().requests.remove(&self.req);
    }
}

type Stdin = Pin<Box<dyn AsyncWrite + Send>>;

/// One attachment to one container's agent.
pub(crate) struct AgentChannel {
    container_id: String,
    /// One writer at a time, so lines never interleave.
    stdin: tokio::sync::Mutex<Stdin>,
    routes: Arc<Routes>,
    reader: tokio::task::JoinHandle<()>,
    /// Request ids, unique across every channel of this daemon so that a reply read by a second
    /// attachment to the same container cannot be mistaken for one of its own.
    next_req: Arc<AtomicU64>,
}

impl std::fmt::Debug for AgentChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentChannel")
            .field("container_id", &self.container_id)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for AgentChannel {
    fn drop(&mut self) {
        self.reader.abort();
        self.routes.close();
    }
}

impl AgentChannel {
    fn is_closed(&self) -> bool {
        self.routes.lock().closed
    }

    /// Ends the channel: every run and request waiting on it gets an error now.
    fn close(&self) {
        self.reader.abort();
        self.routes.close();
    }

    /// Routes the frames of run `id` to the returned receiver until it is dropped.
    pub fn register_run(&self, id: &ExecutionId) -> Result<Registration, AgentError> {
        let mut state = self.routes.lock();
        if state.closed {
            return Err(AgentError::Stopped);
        }
        match state.runs.entry(id.clone()) {
            Entry::Occupied(existing) => Ok(Registration::AlreadyRunning {
                started_at: existing.get().started_at,
            }),
            Entry::Vacant(slot) => {
                let (sender, receiver) = mpsc::channel(RUN_EVENT_BUFFER);
                let started_at = Utc::now();
                slot.insert(RunRoute {
                    events: sender,
                    started_at,
                });
                Ok(Registration::New(RunEvents {
                    events: receiver,
                    started_at,
                    id: id.clone(),
                    routes: Arc::clone(&self.routes),
                }))
            }
        }
    }

    /// Writes one request line. A failed or stuck write leaves a partial line behind, so the
    /// channel is closed and the next use attaches afresh.
    pub async fn send(&self, message: &Value) -> Result<(), AgentError> {
        let mut line = serde_json::to_vec(message)
            .map_err(|error| AgentError::Write(format!("encoding the request: {error}")))?;
        line.push(b'\n');
        if line.len() > MAX_LINE_BYTES {
            return Err(AgentError::TooLong(line.len()));
        }
        self.write_line(&line).await
    }

    /// Writes `line` (newline included) to the agent's stdin.
    async fn write_line(&self, line: &[u8]) -> Result<(), AgentError> {
        let mut stdin = self.stdin.lock().await;
        let written = tokio::time::timeout(IO_TIMEOUT, async {
            stdin.write_all(line).await?;
            stdin.flush().await
        })
        .await;
        let error = match written {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no progress within {IO_TIMEOUT:?}"),
        };
        tracing::warn!(container_id = self.container_id, %error, "writing to the agent failed");
        self.close();
        Err(AgentError::Write(error))
    }

    /// Sends `op` with `fields` and waits (bounded) for the agent's reply; an `ok: false` reply
    /// is [`AgentError::Refused`]. Returns the reply's other fields.
    pub async fn request(
        &self,
        op: &str,
        mut fields: Map<String, Value>,
    ) -> Result<Map<String, Value>, AgentError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        {
            let mut state = self.routes.lock();
            if state.closed {
                return Err(AgentError::Stopped);
            }
            state.requests.insert(req, sender);
        }
        let _pending = PendingRequest {
            req,
            routes: &self.routes,
        };
        fields.insert("op".to_owned(), Value::from(op));
        fields.insert("req".to_owned(), Value::from(req));
        self.send(&Value::Object(fields)).await?;
        match tokio::time::timeout(REQUEST_TIMEOUT, receiver).await {
            Err(_) => Err(AgentError::Timeout(REQUEST_TIMEOUT)),
            Ok(Err(_)) => Err(AgentError::Stopped),
            Ok(Ok(outcome)) => outcome,
        }
    }
}

/// The agent channels of this node's containers, one per session.
#[derive(Debug, Default)]
pub(crate) struct Agents {
    channels: Mutex<HashMap<SessionId, Arc<AgentChannel>>>,
    next_req: Arc<AtomicU64>,
}

impl Agents {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<AgentChannel>>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes and forgets the session's channel if it is attached to `container_id` (a newer
    /// container of the session keeps its own).
    pub fn forget(&self, session_id: &SessionId, container_id: &str) {
        let removed = {
            let mut channels = self.lock();
            match channels.get(session_id) {
                Some(channel) if channel.container_id == container_id => {
                    channels.remove(session_id)
                }
                _ => None,
            }
        };
        if let Some(channel) = removed {
            channel.close();
        }
    }

    /// The channel to the session's agent, attached now unless a live one exists. Callers hold
    /// the session's command lock, so two attachments for one session are not made at once
    /// (their writes to the one stdin could interleave).
    async fn channel(
        &self,
        node: &Node,
        session_id: &SessionId,
        container_id: &str,
    ) -> Result<Arc<AgentChannel>, AgentError> {
        if let Some(channel) = self.lock().get(session_id)
            && channel.container_id == container_id
            && !channel.is_closed()
        {
            return Ok(Arc::clone(channel));
        }
        let attached = tokio::time::timeout(IO_TIMEOUT, node.docker.attach(container_id))
            .await
            .map_err(|_| AgentError::Timeout(IO_TIMEOUT))??;
        let routes = Arc::new(Routes::default());
        let span = tracing::debug_span!("agent.read", container_id);
        let reader =
            tokio::spawn(read_frames(attached.output, Arc::clone(&routes)).instrument(span));
        let channel = Arc::new(AgentChannel {
            container_id: container_id.to_owned(),
            stdin: tokio::sync::Mutex::new(attached.input),
            routes,
            reader,
            next_req: Arc::clone(&self.next_req),
        });
        // An earlier attachment may have left a partial line in the agent's stdin; an empty
        // line ends it there (the agent logs it as bad input), so the next request is whole.
        channel.write_line(b"\n").await?;
        // A replaced channel is closed by its last user dropping it.
        self.lock().insert(session_id.clone(), Arc::clone(&channel));
        Ok(channel)
    }
}

/// The agent of the session's container, checked to be this node's, running, and made from an
/// image with the executor agent.
pub(crate) async fn for_session(
    node: &Node,
    session_id: &SessionId,
) -> Result<Arc<AgentChannel>, ErrorBody> {
    // Ordered with the session's create and remove; released once the agent is found.
    let _one_at_a_time = node.lock_session(session_id).await;
    let Some(container) = node.docker.inspect(&session_id.container_name()).await? else {
        return Err(ErrorBody::new(
            ErrorCode::NotFound,
            format!("session {session_id} has no container on node {}", node.id),
        ));
    };
    check_owned(node, &container)?;
    if !container.running {
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!("the container of session {session_id} is not running"),
        ));
    }
    if !container.has_executor_agent {
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "the session's image {} has no executor agent",
                container.image
            ),
        ));
    }
    Ok(node.agents.channel(node, session_id, &container.id).await?)
}

/// Reads the attachment until it ends, routing the agent's frames; then closes the routes.
async fn read_frames(
    mut output: Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    routes: Arc<Routes>,
) {
    let mut lines = LineSplitter::new(MAX_LINE_BYTES);
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdOut { message }) => {
                lines.push(&message);
                while let Some(line) = lines.next_line() {
                    route(&routes, &line).await;
                }
            }
            Ok(LogOutput::StdErr { message }) => {
                let shown = &message[..message.len().min(AGENT_LOG_BYTES)];
                tracing::debug!(
                    log = %String::from_utf8_lossy(shown).trim_end(),
                    "executor agent"
                );
            }
            Ok(LogOutput::StdIn { .. } | LogOutput::Console { .. }) => {}
            Err(error) => {
                tracing::warn!(%error, "the attachment to the executor agent failed");
                break;
            }
        }
    }
    tracing::debug!("the attachment to the executor agent ended");
    routes.close();
}

/// One frame the agent sent.
#[derive(Debug)]
enum Frame {
    Hello,
    Out {
        id: ExecutionId,
        stream: OutputStream,
        data: Vec<u8>,
    },
    Result {
        id: ExecutionId,
        result: AgentResult,
    },
    Reply {
        req: u64,
        outcome: ReplyOutcome,
    },
}

#[derive(Deserialize)]
struct OutFrame {
    id: ExecutionId,
    stream: OutputStream,
    data: String,
}

#[derive(Deserialize)]
struct ResultFrame {
    id: ExecutionId,
    #[serde(flatten)]
    result: AgentResult,
}

#[derive(Deserialize)]
struct RefusalBody {
    code: Refusal,
    #[serde(default)]
    message: String,
}

fn parse_frame(line: &[u8]) -> Result<Frame, String> {
    let Value::Object(mut fields) =
        serde_json::from_slice::<Value>(line).map_err(|error| error.to_string())?
    else {
        return Err("not a JSON object".to_owned());
    };
    let kind = fields.remove("t");
    let invalid = |error: serde_json::Error| error.to_string();
    match kind.as_ref().and_then(Value::as_str) {
        Some("hello") => Ok(Frame::Hello),
        Some("out") => {
            let out: OutFrame = serde_json::from_value(Value::Object(fields)).map_err(invalid)?;
            let data = BASE64
                .decode(out.data)
                .map_err(|error| format!("output data is not base64: {error}"))?;
            Ok(Frame::Out {
                id: out.id,
                stream: out.stream,
                data,
            })
        }
        Some("result") => {
            let frame: ResultFrame =
                serde_json::from_value(Value::Object(fields)).map_err(invalid)?;
            Ok(Frame::Result {
                id: frame.id,
                result: frame.result,
            })
        }
        Some("reply") => {
            let req = fields
                .remove("req")
                .and_then(|req| req.as_u64())
                .ok_or("a reply without a numeric req")?;
            let ok = fields.remove("ok").and_then(|ok| ok.as_bool());
            let outcome = match ok {
                Some(true) => Ok(fields),
                Some(false) => {
                    let body: RefusalBody = fields
                        .remove("error")
                        .map(serde_json::from_value)
                        .transpose()
                        .map_err(invalid)?
                        .ok_or("a refusal without an error")?;
                    Err(AgentError::Refused {
                        kind: body.code,
                        message: truncate(body.message, MAX_MESSAGE_BYTES),
                    })
                }
                None => Err(AgentError::BadReply("a reply without ok".to_owned())),
            };
            Ok(Frame::Reply { req, outcome })
        }
        _ => Err("not a known frame type".to_owned()),
    }
}

async fn route(routes: &Routes, line: &[u8]) {
    let frame = match parse_frame(line) {
        Ok(frame) => frame,
        // Debug, not warn: code in the sandbox may write such lines at will.
        Err(error) => {
            tracing::debug!(%error, bytes = line.len(), "ignoring a bad line from the executor agent");
            return;
        }
    };
    let (id, event) = match frame {
        Frame::Hello => {
            tracing::debug!("the executor agent said hello");
            return;
        }
        Frame::Reply { req, outcome } => {
            routes.finish_request(req, outcome);
            return;
        }
        Frame::Out { id, stream, data } => (id, RunEvent::Output { stream, data }),
        Frame::Result { id, result } => (id, RunEvent::Finished(result)),
    };
    match routes.run_sender(&id) {
        // Waits while the run's follower is behind: that holds the agent back rather than
        // buffering its output here. A follower that is gone makes the send fail at once.
        Some(sender) => {
            let _ = sender.send(event).await;
        }
        None => tracing::debug!(execution_id = %id, "dropping a frame of a run nobody follows"),
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Splits a byte stream into lines of at most `max` bytes (newline included), dropping longer
/// ones as they come, so it never holds much more than `max` bytes.
#[derive(Debug)]
struct LineSplitter {
    buffer: BytesMut,
    max: usize,
    /// How much of `buffer` is known to hold no newline.
    scanned: usize,
    /// Inside an over-long line: everything up to the next newline is dropped.
    discarding: bool,
}

impl LineSplitter {
    fn new(max: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            max,
            scanned: 0,
            discarding: false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next complete line, without its newline.
    fn next_line(&mut self) -> Option<BytesMut> {
        loop {
            let newline = self.buffer[self.scanned..]
                .iter()
                .position(|&byte| byte == b'\n')
                .map(|position| self.scanned + position);
            let Some(newline) = newline else {
                if self.buffer.len() >= self.max {
                    if !self.discarding {
                        tracing::warn!(
                            max = self.max,
                            "dropping an over-long line from the executor agent"
                        );
                    }
                    self.discarding = true;
                    self.buffer.clear();
                }
                self.scanned = self.buffer.len();
                return None;
            };
            let mut line = self.buffer.split_to(newline + 1);
            self.scanned = 0;
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            if line.len() > self.max {
                tracing::warn!(
                    max = self.max,
                    "dropping an over-long line from the executor agent"
                );
                continue;
            }
            line.truncate(newline);
            return Some(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(splitter: &mut LineSplitter) -> Vec<String> {
        std::iter::from_fn(|| splitter.next_line())
            .map(|line| String::from_utf8_lossy(&line).into_owned())
            .collect()
    }

    #[test]
    fn lines_are_split_across_chunks_and_long_ones_dropped() {
        let mut splitter = LineSplitter::new(8);
        splitter.push(b"ab");
        assert!(lines(&mut splitter).is_empty());
        splitter.push(b"c\nd\n\n1234567");
        assert_eq!(lines(&mut splitter), ["abc", "d", ""]);
        // "1234567\n" is exactly 8 bytes: kept.
        splitter.push(b"\n");
        assert_eq!(lines(&mut splitter), ["1234567"]);
        // Nine bytes with the newline, arriving at once: dropped.
        splitter.push(b"12345678\nok\n");
        assert_eq!(lines(&mut splitter), ["ok"]);
        // Long without a newline yet: the buffer is cleared, the rest skipped up to the newline.
        splitter.push(b"0123456789abcdef");
        assert!(lines(&mut splitter).is_empty());
        assert!(splitter.buffer.is_empty());
        splitter.push(b"more\nnext\n");
        assert_eq!(lines(&mut splitter), ["next"]);
    }

    #[test]
    fn frames_are_checked() {
        let id = "e1";
        let out = format!(r#"{{"t":"out","id":"{id}","stream":"stdout","data":"NDIK"}}"#);
        match parse_frame(out.as_bytes()) {
            Ok(Frame::Out { id, stream, data }) => {
                assert_eq!(id.as_str(), "e1");
                assert_eq!(stream, OutputStream::Stdout);
                assert_eq!(data, b"42\n");
            }
            other => panic!("{other:?}"),
        }
        let refusal =
            br#"{"t":"reply","req":7,"ok":false,"error":{"code":"path_escape","message":"no"}}"#;
        match parse_frame(refusal) {
            Ok(Frame::Reply {
                req: 7,
                outcome:
                    Err(AgentError::Refused {
                        kind: Refusal::PathEscape,
                        ..
                    }),
            }) => {}
            other => panic!("{other:?}"),
        }
        for bad in [
            &br#"[1]"#[..],
            br#"{"t":"out","id":"a.b","stream":"stdout","data":""}"#,
            br#"{"t":"out","id":"e","stream":"stdin","data":""}"#,
            br#"{"t":"out","id":"e","stream":"stdout","data":"%%%"}"#,
            br#"{"t":"result","id":"e"}"#,
            br#"{"t":"reply","req":"x","ok":true}"#,
            br#"{"t":"nope"}"#,
            b"not json",
        ] {
            assert!(
                parse_frame(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo".to_owned(), 2), "h");
        assert_eq!(truncate("abc".to_owned(), 5), "abc");
    }
}

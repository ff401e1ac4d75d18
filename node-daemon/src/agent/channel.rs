//! One `docker attach` to one container's agent: requests are written to its stdin as JSON lines
//! by one writer at a time, and one reader task routes the frames on its stdout to the run or
//! request that waits for them. Frames nobody waits for are dropped.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bollard::container::LogOutput;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt as _};
use messages::ExecutionId;
use messages::execution::OutputStream;
use serde_json::{Map, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use super::error::AgentError;
use super::frames::{AgentResult, Frame, LineSplitter, MAX_LINE_BYTES, parse_frame};
use crate::docker::DockerEngine;

/// How long a request waits for the agent's reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long attaching, or writing one line to the agent's stdin, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames a run's follower may lag behind; beyond that the reader waits for it, which holds
/// the agent's stdout back instead of buffering it here.
const RUN_EVENT_BUFFER: usize = 16;
/// The most of one chunk of the agent's own log (its stderr) that is logged here.
const AGENT_LOG_BYTES: usize = 2048;

/// What the agent says about one run, in order: output, then exactly one result.
#[derive(Debug)]
pub(crate) enum RunEvent {
    Output { stream: OutputStream, data: Vec<u8> },
    Finished(AgentResult),
}

type RequestOutcome = Result<Map<String, Value>, AgentError>;

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
    requests: HashMap<u64, oneshot::Sender<RequestOutcome>>,
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

    fn finish_request(&self, req: u64, outcome: RequestOutcome) {
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
    /// Attaches to the agent of running container `container_id` and starts reading its frames.
    /// `next_req` numbers the requests of every channel of this daemon.
    pub(super) async fn attach(
        docker: &DockerEngine,
        container_id: &str,
        next_req: Arc<AtomicU64>,
    ) -> Result<Arc<Self>, AgentError> {
        let attached = tokio::time::timeout(IO_TIMEOUT, docker.attach(container_id))
            .await
            .map_err(|_| AgentError::Timeout(IO_TIMEOUT))??;
        let routes = Arc::new(Routes::default());
        let span = tracing::debug_span!("agent.read", container_id);
        let reader =
            tokio::spawn(read_frames(attached.output, Arc::clone(&routes)).instrument(span));
        let channel = Arc::new(Self {
            container_id: container_id.to_owned(),
            stdin: tokio::sync::Mutex::new(attached.input),
            routes,
            reader,
            next_req,
        });
        // An earlier attachment may have left a partial line in the agent's stdin; an empty
        // line ends it there (the agent logs it as bad input), so the next request is whole.
        channel.write_line(b"\n").await?;
        Ok(channel)
    }

    pub(super) fn container_id(&self) -> &str {
        &self.container_id
    }

    pub(super) fn is_closed(&self) -> bool {
        self.routes.lock().closed
    }

    /// Ends the channel: every run and request waiting on it gets an error now.
    pub(super) fn close(&self) {
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
            routes.finish_request(req, outcome.map_err(AgentError::from));
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

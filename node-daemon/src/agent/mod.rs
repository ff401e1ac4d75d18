//! The channel to each session's executor agent (ops/images/agent/PROTOCOL.md): requests go to
//! the container's stdin as JSON lines and the agent's frames come back on its stdout, both
//! through one `docker attach` per container, made on first use and again when it broke.
//!
//! A leaf layer: it needs only the Docker engine, never the node or its commands. Inside it,
//! `frames` (pure parsing) is below `error`, which is below `channel`, which is below this.

mod channel;
mod error;
mod frames;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use messages::SessionId;

pub(crate) use self::channel::{AgentChannel, Registration, RunEvent, RunEvents};
pub(crate) use self::error::AgentError;
pub(crate) use self::frames::{AgentResult, truncate};
use crate::docker::DockerEngine;

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
                Some(channel) if channel.container_id() == container_id => {
                    channels.remove(session_id)
                }
                _ => None,
            }
        };
        if let Some(channel) = removed {
            channel.close();
        }
    }

    /// The channel to the agent of the session's container `container_id` (checked by the
    /// caller to be running), attached now unless a live one exists. Callers hold the session's
    /// command lock, so two attachments for one session are not made at once (their writes to
    /// the one stdin could interleave).
    pub async fn channel(
        &self,
        docker: &DockerEngine,
        session_id: &SessionId,
        container_id: &str,
    ) -> Result<Arc<AgentChannel>, AgentError> {
        if let Some(channel) = self.lock().get(session_id)
            && channel.container_id() == container_id
            && !channel.is_closed()
        {
            return Ok(Arc::clone(channel));
        }
        let channel =
            AgentChannel::attach(docker, container_id, Arc::clone(&self.next_req)).await?;
        // A replaced channel is closed by its last user dropping it.
        self.lock().insert(session_id.clone(), Arc::clone(&channel));
        Ok(channel)
    }
}

//! How the node answers its commands on `runtime.cmd.<node_id>.<verb>`: the [`Command`] trait
//! every verb implements, and [`Commands`], which puts them all (and `node.ping`) on one
//! [`Responder`]. Each request runs in a task of its own inside the command's span, so a slow
//! create holds up nothing else and the span is the direct child of the requester's.

use std::future::Future;
use std::sync::Arc;

use messages::node::{NodePong, PingNode};
use messages::{ErrorBody, NodeCommand, NodeId, SessionId, subjects};
use service_kit::Responder;
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// A command this node answers.
pub(crate) trait Command: NodeCommand<Response: Send + Sync> + Send + 'static {
    /// The span the handling runs in, made a child of the requester's trace.
    fn span(&self) -> tracing::Span;

    /// The session the command is about; one session's commands run one at a time.
    fn session_id(&self) -> &SessionId;

    /// Whether the session's lock is held for the whole command. Commands that talk to the
    /// session's agent hold it only while finding the agent (`containers::for_session`), so an
    /// agent slow to answer does not hold up a remove.
    const LOCKS_WHOLE_COMMAND: bool = true;

    fn run(self, node: &Node) -> impl Future<Output = Result<Self::Response, ErrorBody>> + Send;
}

/// Every command subject of this node, on one responder.
#[derive(Debug)]
pub(crate) struct Commands {
    node_id: NodeId,
    responder: Responder<Node>,
}

impl Commands {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node_id: node.id.clone(),
            responder: Responder::new(node.nats.clone(), node),
        }
    }

    /// Subscribes to `runtime.cmd.<node_id>.<C::VERB>` now and answers it with [`Command::run`].
    pub async fn add<C: Command>(&mut self) -> anyhow::Result<()> {
        let subject = subjects::node_command(&self.node_id, C::VERB);
        self.responder.route(subject, C::span, run::<C>).await
    }

    /// `node.ping`: a scheduler that missed this node's heartbeats asks whether the daemon is
    /// still there.
    pub async fn add_ping(&mut self) -> anyhow::Result<()> {
        let subject = subjects::node_command(&self.node_id, PingNode::VERB);
        self.responder
            .route(
                subject,
                |_: &PingNode| tracing::debug_span!("node.ping"),
                |node: Arc<Node>, PingNode {}| async move {
                    Ok(NodePong {
                        node_id: node.id.clone(),
                        started_at: node.registration.started_at,
                    })
                },
            )
            .await
    }

    /// Answers until `cancel` fires, then lets the commands in progress finish.
    pub async fn serve(self, cancel: CancellationToken) -> anyhow::Result<()> {
        self.responder.serve(cancel).await
    }
}

/// Runs one command, holding the session's lock as the command asks.
async fn run<C: Command>(node: Arc<Node>, command: C) -> Result<C::Response, ErrorBody> {
    let _one_at_a_time = if C::LOCKS_WHOLE_COMMAND {
        Some(node.lock_session(command.session_id()).await)
    } else {
        None
    };
    command.run(&node).await
}

//! Asking nodes to announce themselves again (`runtime.nodes.discover`): the whole fleet when a
//! replica starts, one node for its containers when it returns or is heard of only through
//! heartbeats, and — throttled, images only — the fleet when a placement found an image on no
//! node (it may have been built since the nodes last said).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use messages::node::DiscoverNodes;
use messages::{NodeId, subjects};
use service_kit::bus;

use crate::scheduler::Scheduler;

/// The fewest seconds between two asks for the fleet's images from one replica: one bad
/// template retried by a client must not keep every node announcing.
const IMAGES_ASK_EVERY: Duration = Duration::from_secs(10);

/// Asks every node to announce itself with its containers, so a replica that just started
/// knows the fleet at once and reconciles what it remembers.
pub async fn discover_all(nats: &async_nats::Client) -> anyhow::Result<()> {
    bus::publish(nats, subjects::nodes_discover(), &DiscoverNodes::default())
        .await
        .context("asking nodes to announce themselves")
}

impl Scheduler {
    /// Asks one node to announce itself again, with the containers it holds.
    pub(crate) async fn ask_for_inventory(&self, node_id: &NodeId) {
        let request = DiscoverNodes {
            node_id: Some(node_id.clone()),
            images_only: false,
        };
        if let Err(error) = bus::publish(&self.nats, subjects::nodes_discover(), &request).await {
            tracing::warn!(node = %node_id, %error, "could not ask a node for its containers");
        }
    }

    /// Asks every node for its images (not its containers), at most once per
    /// [`IMAGES_ASK_EVERY`].
    pub(crate) async fn ask_for_images(&self) {
        let now = Instant::now();
        {
            let mut last = self.images_asked_at();
            if last.is_some_and(|at| now.duration_since(at) < IMAGES_ASK_EVERY) {
                return;
            }
            *last = Some(now);
        }
        let request = DiscoverNodes {
            node_id: None,
            images_only: true,
        };
        if let Err(error) = bus::publish(&self.nats, subjects::nodes_discover(), &request).await {
            tracing::warn!(%error, "could not ask the nodes for their images");
        }
    }
}

//! The node view's reads, and the operators' declarations (static registration) and drain.

use std::sync::Arc;
use std::time::Instant;

use messages::api::nodes::{DeclareNode, GetNode, ListNodes, SetNodeDrain};
use messages::node::{DiscoverNodes, NodeInfo, NodeUpdated};
use messages::{ErrorBody, NodeId, subjects};
use service_kit::bus;

use super::internal;
use crate::scheduler::Scheduler;
use crate::store;

fn not_found(id: &NodeId) -> ErrorBody {
    ErrorBody::not_found("node", id)
}

pub(super) async fn get(
    scheduler: Arc<Scheduler>,
    request: GetNode,
) -> Result<NodeInfo, ErrorBody> {
    scheduler
        .fleet()
        .info(&request.node_id, Instant::now())
        .ok_or_else(|| not_found(&request.node_id))
}

pub(super) async fn list(
    scheduler: Arc<Scheduler>,
    _request: ListNodes,
) -> Result<Vec<NodeInfo>, ErrorBody> {
    Ok(scheduler.fleet().infos(Instant::now()))
}

pub(super) async fn declare(
    scheduler: Arc<Scheduler>,
    request: DeclareNode,
) -> Result<NodeInfo, ErrorBody> {
    let declaration = request.declaration;
    declaration.check().map_err(ErrorBody::invalid)?;
    scheduler
        .store
        .declare_node(&declaration, store::now())
        .await
        .map_err(internal)?;
    let node_info = changed(&scheduler, &declaration.node_id).await?;
    // A daemon refused before it was declared joins now, not at its next retry.
    let discover = DiscoverNodes {
        node_id: Some(declaration.node_id.clone()),
        images_only: false,
    };
    if let Err(error) = bus::publish(&scheduler.nats, subjects::nodes_discover(), &discover).await {
        tracing::warn!(node = %declaration.node_id, %error, "could not ask a declared node to register");
    }
    tracing::info!(node = %declaration.node_id, "node declared");
    Ok(node_info)
}

pub(super) async fn set_drain(
    scheduler: Arc<Scheduler>,
    request: SetNodeDrain,
) -> Result<NodeInfo, ErrorBody> {
    let found = scheduler
        .store
        .set_node_drained(&request.node_id, request.drained)
        .await
        .map_err(internal)?;
    if !found {
        return Err(not_found(&request.node_id));
    }
    tracing::info!(node = %request.node_id, drained = request.drained, "node drain changed");
    changed(&scheduler, &request.node_id).await
}

/// Applies the node's record to this replica's view at once, tells the other replicas, and
/// answers the node as the view now shows it.
async fn changed(scheduler: &Scheduler, node_id: &NodeId) -> Result<NodeInfo, ErrorBody> {
    let record = scheduler
        .store
        .get_node(node_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(node_id))?;
    scheduler.fleet().apply_record(record, Instant::now());
    let update = NodeUpdated {
        node_id: node_id.clone(),
    };
    if let Err(error) = bus::publish(&scheduler.nats, subjects::nodes_updated(), &update).await {
        tracing::warn!(node = %node_id, %error, "could not tell the other replicas of a node change");
    }
    scheduler
        .fleet()
        .info(node_id, Instant::now())
        .ok_or_else(|| not_found(node_id))
}

//! `/api/v1/nodes`: the scheduler replicas' view of the runtime nodes.

use axum::Json;
use axum::extract::State;
use messages::NodeId;
use messages::api::{GetNode, ListNodes, NodeInfo};
use serde::Serialize;
use service_kit::bus;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::ApiPath;

/// The body of `GET /api/v1/nodes`.
#[derive(Debug, Serialize)]
pub(crate) struct NodeList {
    nodes: Vec<NodeInfo>,
}

/// `GET /api/v1/nodes`.
#[tracing::instrument(name = "gateway.list_nodes", skip_all)]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<NodeList>, ApiError> {
    let nodes = bus::api_request(&state.nats, &ListNodes {}, state.request_timeout).await?;
    Ok(Json(NodeList { nodes }))
}

/// `GET /api/v1/nodes/{id}`.
#[tracing::instrument(name = "gateway.get_node", skip_all, fields(node_id = %id))]
pub(crate) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    // An id that is not a valid node id names no node.
    let node_id = NodeId::parse(id.as_str()).map_err(|_| ApiError::not_found("node", &id))?;
    let answer = bus::api_request(&state.nats, &GetNode { node_id }, state.request_timeout).await;
    Ok(Json(ApiError::found("node", &id, answer)?))
}

//! `/api/v1/nodes`: the scheduler replicas' view of the runtime nodes, and the operators'
//! declarations (static registration) and drain.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use messages::NodeId;
use messages::api::nodes::{DeclareNode, GetNode, ListNodes, NodeDeclaration, SetNodeDrain};
use messages::node::NodeInfo;
use serde::Serialize;
use service_kit::bus;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;

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

/// An id that is not a valid node id names no node.
fn node_id(id: &str) -> Result<NodeId, ApiError> {
    NodeId::parse(id).map_err(|_| ApiError::not_found("node", id))
}

/// `GET /api/v1/nodes/{id}`.
#[tracing::instrument(name = "gateway.get_node", skip_all, fields(node_id = %id))]
pub(crate) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    let node_id = node_id(&id)?;
    let answer = bus::api_request(&state.nats, &GetNode { node_id }, state.request_timeout).await;
    Ok(Json(ApiError::found("node", &id, answer)?))
}

/// `POST /api/v1/nodes`: declares a node with the seed's fields (201). In static registration
/// mode only declared nodes join; in either mode the declared capacity is what sessions are
/// placed against.
#[tracing::instrument(name = "gateway.declare_node", skip_all)]
pub(crate) async fn declare(
    State(state): State<AppState>,
    ApiJson(declaration): ApiJson<NodeDeclaration>,
) -> Result<Response, ApiError> {
    let request = DeclareNode { declaration };
    let node = bus::api_request(&state.nats, &request, state.request_timeout).await?;
    let location = format!("/api/v1/nodes/{}", node.node_id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(node),
    )
        .into_response())
}

/// `POST /api/v1/nodes/{id}/drain`: no new sessions; the running ones run on.
#[tracing::instrument(name = "gateway.drain_node", skip_all, fields(node_id = %id))]
pub(crate) async fn drain(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    set_drain(&state, &id, true).await
}

/// `POST /api/v1/nodes/{id}/undrain`.
#[tracing::instrument(name = "gateway.undrain_node", skip_all, fields(node_id = %id))]
pub(crate) async fn undrain(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    set_drain(&state, &id, false).await
}

async fn set_drain(state: &AppState, id: &str, drained: bool) -> Result<Json<NodeInfo>, ApiError> {
    let request = SetNodeDrain {
        node_id: node_id(id)?,
        drained,
    };
    let answer = bus::api_request(&state.nats, &request, state.request_timeout).await;
    Ok(Json(ApiError::found("node", id, answer)?))
}

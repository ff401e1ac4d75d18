//! The seed's internal endpoints, on a listener of their own (keep it off the public network),
//! for agents that speak only HTTP. Each is a bridge onto the same handlers as the NATS
//! subjects: the body is checked, turned into the same typed message, and sent on the same
//! subject a node daemon uses. Every request needs `Authorization: Bearer <token>`.
//!
//! Adding an endpoint: write its handler and add one `.route(...)` in [`router`]; the token
//! check and the JSON errors apply to every route.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use messages::api::nodes::NodeDeclaration;
use messages::api::sessions::GetSession;
use messages::node::{
    ContainerExited, ContainerReady, ExitReason, Heartbeat, NodeRegistration, NodeSelfStatus,
    RegistrationAccepted,
};
use messages::template::Runtime;
use messages::{NodeId, SessionId, subjects};
use serde::{Deserialize, Serialize};
use service_kit::bus;

use crate::error::ApiError;
use crate::executions;
use crate::extract::ApiJson;
use crate::state::AppState;

/// What `daemon_version` says of a node registered over HTTP.
const HTTP_AGENT_VERSION: &str = "http-bridge";
/// The seed's heartbeat period, assumed when a registration does not say.
const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 5000;

/// The internal routes, all behind the bearer token.
pub(crate) fn router(state: AppState, token: String, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/internal/runtime/nodes/register", post(register))
        .route("/internal/runtime/heartbeat", post(heartbeat))
        .route("/internal/runtime/containers/ready", post(container_ready))
        .route(
            "/internal/runtime/containers/exited",
            post(container_exited),
        )
        .route(
            "/internal/executions/{id}/result",
            post(executions::record_callback),
        )
        .fallback(crate::router::unknown_route)
        .method_not_allowed_fallback(crate::router::wrong_method)
        .layer(middleware::from_fn_with_state(
            Arc::<str>::from(token),
            require_token,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(crate::router::log_request))
        .with_state(state)
}

/// Refuses requests without the bearer token (401), before anything else is looked at.
async fn require_token(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if presented.is_some_and(|presented| same_secret(presented.trim(), &token)) {
        return next.run(request).await;
    }
    let mut response = ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        message: "the internal endpoints need 'Authorization: Bearer <token>' with the configured \
                  token"
            .to_owned(),
        session_id: None,
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Compares without stopping at the first difference, so timing does not tell how much of a
/// guess was right.
fn same_secret(presented: &str, token: &str) -> bool {
    presented.len() == token.len()
        && presented
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::invalid(StatusCode::UNPROCESSABLE_ENTITY, message)
}

fn parse_node_id(id: &str) -> Result<NodeId, ApiError> {
    NodeId::parse(id).map_err(|error| unprocessable(format!("node_id: {error}")))
}

fn parse_session_id(id: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(id).map_err(|error| unprocessable(format!("session_id: {error}")))
}

/// What an accepted event answers.
#[derive(Debug, Serialize)]
struct Accepted {
    status: &'static str,
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, Json(Accepted { status: "accepted" })).into_response()
}

async fn publish<T: Serialize>(
    state: &AppState,
    subject: &'static str,
    payload: &T,
) -> Result<(), ApiError> {
    bus::publish(&state.nats, subject, payload).await?;
    Ok(())
}

fn docker() -> String {
    "docker".to_owned()
}

fn default_interval() -> u64 {
    DEFAULT_HEARTBEAT_INTERVAL_MS
}

/// The seed's registration body; the fields after `max_containers` are optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    node_id: String,
    hostname: String,
    #[serde(default = "docker")]
    runtime_type: String,
    #[serde(default)]
    ip_address: String,
    #[serde(default)]
    api_endpoint: String,
    total_cpu_cores: f64,
    total_memory_mb: u64,
    max_containers: u32,
    #[serde(default)]
    cached_images: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default = "default_interval")]
    heartbeat_interval_ms: u64,
}

/// `POST /internal/runtime/nodes/register`: the same request a node daemon sends on
/// `runtime.nodes.register`; 200 with what the schedulers accepted, 403 when refused (an
/// undeclared node in static mode).
async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<Json<RegistrationAccepted>, ApiError> {
    let node_id = parse_node_id(&body.node_id)?;
    let as_declared = NodeDeclaration {
        node_id: node_id.clone(),
        hostname: body.hostname.clone(),
        runtime_type: body.runtime_type.clone(),
        ip_address: body.ip_address.clone(),
        api_endpoint: body.api_endpoint.clone(),
        total_cpu_cores: body.total_cpu_cores,
        total_memory_mb: body.total_memory_mb,
        max_containers: body.max_containers,
        labels: body.labels.clone(),
    };
    as_declared.check().map_err(unprocessable)?;
    if !(100..=3_600_000).contains(&body.heartbeat_interval_ms) {
        return Err(unprocessable(
            "heartbeat_interval_ms must be between 100 and 3600000",
        ));
    }
    let registration = NodeRegistration {
        node_id,
        hostname: body.hostname,
        runtime_type: body.runtime_type,
        ip_address: body.ip_address,
        api_endpoint: body.api_endpoint,
        total_cpu_cores: body.total_cpu_cores,
        total_memory_mb: body.total_memory_mb,
        max_containers: body.max_containers,
        cached_images: body.cached_images,
        labels: body.labels,
        daemon_version: HTTP_AGENT_VERSION.to_owned(),
        heartbeat_interval_ms: body.heartbeat_interval_ms,
        started_at: Utc::now(),
        inventory: None,
        runtimes: vec![Runtime::Runc],
        network_refusal: None,
    };
    let subject = subjects::nodes_register().to_owned();
    let answer = bus::request(&state.nats, subject, &registration, state.request_timeout).await?;
    Ok(Json(answer))
}

/// The seed's heartbeat body, with the figures a node daemon sends as optional extras.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatBody {
    node_id: String,
    /// The seed sends it; a node's heartbeat is about the node, so it is accepted and unused.
    #[serde(default, rename = "container_id")]
    _container_id: Option<String>,
    #[serde(default)]
    timestamp: Option<DateTime<Utc>>,
    #[serde(default)]
    running_containers: u32,
    #[serde(default)]
    allocated_cpu_cores: f64,
    #[serde(default)]
    allocated_memory_mb: u64,
}

/// `POST /internal/runtime/heartbeat`: keeps the node online, as `runtime.heartbeat` does.
async fn heartbeat(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<HeartbeatBody>,
) -> Result<Response, ApiError> {
    let node_id = parse_node_id(&body.node_id)?;
    if !(body.allocated_cpu_cores.is_finite() && body.allocated_cpu_cores >= 0.0) {
        return Err(unprocessable("allocated_cpu_cores must be 0 or more"));
    }
    let timestamp = body.timestamp.unwrap_or_else(Utc::now);
    let heartbeat = Heartbeat {
        node_id,
        timestamp,
        // Stateless replicas number an agent's heartbeats by their time, which only grows.
        sequence: u64::try_from(timestamp.timestamp_millis()).unwrap_or_default(),
        running_containers: body.running_containers,
        allocated_cpu_cores: body.allocated_cpu_cores,
        allocated_memory_mb: body.allocated_memory_mb,
        status: NodeSelfStatus::Online,
        warm_containers: 0,
        host: None,
    };
    publish(&state, subjects::heartbeat(), &heartbeat).await?;
    Ok(accepted())
}

/// The node a container event is about: the body's, or else the node the session is on.
async fn node_of(
    state: &AppState,
    node_id: Option<&str>,
    session_id: &SessionId,
) -> Result<NodeId, ApiError> {
    if let Some(node_id) = node_id {
        return parse_node_id(node_id);
    }
    let request = GetSession {
        session_id: session_id.clone(),
    };
    let session = ApiError::found(
        "session",
        session_id.as_str(),
        bus::api_request(&state.nats, &request, state.request_timeout).await,
    )?;
    session.runtime_node.ok_or_else(|| {
        ApiError::from_code(
            messages::ErrorCode::Conflict,
            format!("session {session_id} is on no node yet; send node_id"),
        )
    })
}

/// The seed's container-ready body (`node_id` optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadyBody {
    container_id: String,
    session_id: String,
    #[serde(default)]
    executor_url: Option<String>,
    #[serde(default)]
    node_id: Option<String>,
}

/// `POST /internal/runtime/containers/ready`: as `runtime.containers.ready`.
async fn container_ready(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ReadyBody>,
) -> Result<Response, ApiError> {
    let session_id = parse_session_id(&body.session_id)?;
    if body.container_id.trim().is_empty() {
        return Err(unprocessable("container_id must not be empty"));
    }
    let node_id = node_of(&state, body.node_id.as_deref(), &session_id).await?;
    let ready = ContainerReady {
        container_id: body.container_id,
        session_id,
        node_id,
        executor_url: body.executor_url,
        ready_at: Utc::now(),
    };
    publish(&state, subjects::containers_ready(), &ready).await?;
    Ok(accepted())
}

/// The container-exited body (`node_id`, `reason` and `exited_at` optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExitedBody {
    container_id: String,
    session_id: String,
    #[serde(default)]
    node_id: Option<String>,
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    reason: Option<ExitReason>,
    #[serde(default)]
    exited_at: Option<DateTime<Utc>>,
}

/// `POST /internal/runtime/containers/exited`: as `runtime.containers.exited`.
async fn container_exited(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ExitedBody>,
) -> Result<Response, ApiError> {
    let session_id = parse_session_id(&body.session_id)?;
    if body.container_id.trim().is_empty() {
        return Err(unprocessable("container_id must not be empty"));
    }
    let node_id = node_of(&state, body.node_id.as_deref(), &session_id).await?;
    let exited = ContainerExited {
        container_id: body.container_id,
        session_id,
        node_id,
        exit_code: body.exit_code,
        reason: body
            .reason
            .unwrap_or_else(|| ExitReason::classify(body.exit_code, false)),
        exited_at: body.exited_at.unwrap_or_else(Utc::now),
    };
    publish(&state, subjects::containers_exited(), &exited).await?;
    Ok(accepted())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("0123456789abcdef", "0123456789abcdef"));
        assert!(!same_secret("0123456789abcdeX", "0123456789abcdef"));
        assert!(!same_secret("0123", "0123456789abcdef"));
    }
}

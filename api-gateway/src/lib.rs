//! The public HTTP API of the sandbox control plane. Stateless: every request becomes a NATS
//! request to the scheduler replicas or a JetStream publish, so any number of replicas can run.

pub mod config;
pub mod error;
mod execution_stream;
mod executions;
mod extract;
mod files;
mod input;
mod internal;
mod nodes;
mod sessions;
mod templates;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use service_kit::tasks::Tasks;
use service_kit::{bus, streams};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use crate::config::Config;
use crate::error::{ApiError, ErrorLogged};

/// Time left after the last in-flight NATS request for the server to wind down on shutdown.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// What every handler shares; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    nats: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    create_wait: Duration,
    request_timeout: Duration,
    max_file_bytes: u64,
    /// Templates as creates last read them (a second's copy).
    templates: Arc<templates::RecentTemplates>,
    /// Shutdown ends waiting creates early, so they answer before the server stops.
    cancel: CancellationToken,
}

/// A started gateway: bound, connected to NATS, serving until its cancel token fires.
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    internal_addr: Option<SocketAddr>,
    tasks: Tasks,
    shutdown_deadline: Duration,
}

impl Running {
    /// The address the API listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the internal endpoints' listener; `None` when no token is configured.
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.internal_addr
    }

    /// Waits for cancellation, then for in-flight requests to finish, up to a deadline.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.tasks.join(self.shutdown_deadline).await
    }
}

/// Validates `config`, connects to NATS, makes sure the SESSIONS and EXECUTIONS streams exist, binds the
/// listener and starts serving; returns once requests can be taken.
pub async fn start(config: Config, cancel: CancellationToken) -> anyhow::Result<Running> {
    config.validate().context("invalid configuration")?;
    let internal_token = config.internal_token().context("invalid configuration")?;
    let nats = bus::connect(&config.nats_url, "api-gateway").await?;
    let mut jetstream = async_nats::jetstream::new(nats.clone());
    // Bounds the wait for a publish ack like any other request to the control plane.
    jetstream.set_timeout(config.request_timeout);
    streams::ensure_sessions_stream(&jetstream).await?;
    streams::ensure_executions_stream(&jetstream).await?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the HTTP listener to {}", config.listen))?;
    let local_addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    let internal_listener = match &internal_token {
        Some(_) => Some(
            tokio::net::TcpListener::bind(config.internal_listen)
                .await
                .with_context(|| {
                    format!(
                        "binding the internal listener to {}",
                        config.internal_listen
                    )
                })?,
        ),
        None => None,
    };
    let internal_addr = internal_listener
        .as_ref()
        .map(tokio::net::TcpListener::local_addr)
        .transpose()
        .context("reading the internal listener's address")?;

    let state = AppState {
        nats,
        jetstream,
        create_wait: config.create_wait,
        request_timeout: config.request_timeout,
        max_file_bytes: config.max_file_bytes,
        templates: Arc::default(),
        cancel: cancel.clone(),
    };
    let app = router(state.clone(), config.max_body_bytes);
    let mut tasks = Tasks::new(cancel.clone());
    match (internal_listener, internal_token) {
        (Some(listener), Some(token)) => {
            let internal = internal::router(state, token, config.max_body_bytes);
            let stop = cancel.clone();
            tasks.spawn("internal-http", async move {
                axum::serve(listener, internal)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .context("serving the internal endpoints")
            });
            tracing::info!(internal_addr = ?internal_addr, "internal endpoints listening");
        }
        _ => tracing::info!(
            "no internal token configured (API_GATEWAY_INTERNAL_TOKEN or _FILE): the internal \
             endpoints are off"
        ),
    }
    tasks.spawn("http", async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
            .context("serving HTTP")
    });
    tracing::info!(%local_addr, "api-gateway listening");
    Ok(Running {
        local_addr,
        internal_addr,
        tasks,
        // A request in flight at shutdown ends within one request timeout (waits end at once).
        shutdown_deadline: config.request_timeout + SHUTDOWN_SLACK,
    })
}

fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/api/v1/sessions",
            get(sessions::list).post(sessions::create),
        )
        .route(
            "/api/v1/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route(
            "/api/v1/sessions/{id}/executions",
            get(executions::list).post(executions::run),
        )
        .route("/api/v1/executions/{id}", get(executions::get))
        .route(
            "/api/v1/executions/{id}/stream",
            get(execution_stream::stream),
        )
        .route("/api/v1/sessions/{id}/files", get(files::list))
        .route(
            "/api/v1/sessions/{id}/files/{*path}",
            get(files::download)
                .put(files::upload)
                .delete(files::delete),
        )
        .route("/api/v1/sessions/{id}/timeout", post(sessions::set_timeout))
        .route(
            "/api/v1/templates",
            get(templates::list).post(templates::create),
        )
        .route(
            "/api/v1/templates/{id}",
            get(templates::get)
                .put(templates::update)
                .delete(templates::delete),
        )
        .route("/api/v1/nodes", get(nodes::list).post(nodes::declare))
        .route("/api/v1/nodes/{id}", get(nodes::get))
        .route("/api/v1/nodes/{id}/drain", post(nodes::drain))
        .route("/api/v1/nodes/{id}/undrain", post(nodes::undrain))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// `GET /healthz`: up while the NATS connection is.
async fn healthz(State(state): State<AppState>) -> Response {
    let nats = match state.nats.connection_state() {
        async_nats::connection::State::Connected => {
            return Json(serde_json::json!({"status": "ok", "nats": "connected"})).into_response();
        }
        async_nats::connection::State::Pending => "connecting",
        async_nats::connection::State::Disconnected => "disconnected",
    };
    let body = serde_json::json!({
        "status": "unavailable",
        "nats": nats,
        "error": {"code": "unavailable", "message": format!("NATS is {nats}")},
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

pub(crate) async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::rejected(
        StatusCode::NOT_FOUND,
        format!("no route for {}", uri.path()),
    )
}

pub(crate) async fn wrong_method(request: Request) -> ApiError {
    ApiError::rejected(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Logs every request with its outcome (and an error's code), in a span that continues the
/// client's trace if the request carries one (`traceparent`). The span names the route as
/// declared (`/api/v1/sessions/{id}`), so spans group by route; the raw path is a field.
pub(crate) async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |route| route.as_str().to_owned());
    let span = tracing::info_span!("http.request", %method, %route, %path);
    bus::adopt_http_parent(&span, request.headers());
    let started = Instant::now();
    let response = next.run(request).instrument(span).await;
    let error = response.extensions().get::<ErrorLogged>();
    tracing::info!(
        %method,
        %route,
        %path,
        status = response.status().as_u16(),
        error = error.map(|logged| logged.code),
        latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "request"
    );
    response
}

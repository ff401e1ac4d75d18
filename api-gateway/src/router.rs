//! The routes of the public API, in one table, and what every request goes through: the
//! request log (in a span continuing the client's trace), the JSON answers for unknown routes
//! and wrong methods, the body limit.

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use service_kit::bus;
use tracing::Instrument as _;

use crate::error::{ApiError, ErrorLogged};
use crate::state::AppState;
use crate::{execution_stream, executions, files, nodes, sessions, templates};

pub(crate) fn router(state: AppState, max_body_bytes: usize) -> Router {
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

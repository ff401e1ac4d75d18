//! `/api/v1/sessions`: create (publish to JetStream, then wait for the scheduler's status
//! announcements), list, read and delete (requests to the scheduler replicas).

use std::collections::BTreeMap;

use async_nats::Subscriber;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::StreamExt as _;
use messages::api::sessions::{
    DeleteSession, GetSession, ListSessions, SessionPage, SetSessionTimeout,
};
use messages::headers::MSG_ID;
use messages::session::{CreateSession, Session, SessionStatus, at_storage_precision};
use messages::{ApiRequest, ErrorCode, SessionId, limits, subjects};
use serde::Deserialize;
use service_kit::bus::{self, BusError};
use tracing::field::Empty;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::input::{self, unprocessable};
use crate::state::AppState;

/// The body of `POST /api/v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSessionBody {
    template_id: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Seconds the session may live (default: the template's timeout).
    #[serde(default)]
    timeout: Option<u64>,
}

impl CreateSessionBody {
    fn validate(&self) -> Result<(), ApiError> {
        limits::check_template_id(&self.template_id).map_err(unprocessable)?;
        input::check_env(&self.env)?;
        if let Some(timeout) = self.timeout {
            limits::check_session_timeout(timeout).map_err(unprocessable)?;
        }
        Ok(())
    }
}

/// The query of `POST /api/v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateQuery {
    /// Answer once the session runs (or failed) instead of as soon as it is accepted.
    #[serde(default = "wait_by_default")]
    wait: bool,
}

fn wait_by_default() -> bool {
    true
}

/// `POST /api/v1/sessions`.
#[tracing::instrument(
    name = "gateway.create_session",
    skip_all,
    fields(template_id = Empty, session_id = Empty)
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<CreateQuery>,
    ApiJson(body): ApiJson<CreateSessionBody>,
) -> Result<Response, ApiError> {
    body.validate()?;
    let span = tracing::Span::current();
    span.record("template_id", body.template_id.as_str());

    let template = state.templates.get(&state, &body.template_id).await?;
    // The request's environment over the template's must still be one a container can have.
    template
        .container_spec_with(&body.env)
        .check()
        .map_err(unprocessable)?;

    let session_id = SessionId::parse(uuid::Uuid::now_v7().to_string())
        .map_err(|error| ApiError::internal(format!("making a session id: {error}")))?;
    span.record("session_id", session_id.as_str());

    // Subscribed before publishing, so no announcement can slip past between the two.
    let status_updates = if query.wait {
        let subject = subjects::session_status(&session_id);
        let subscriber = state
            .nats
            .subscribe(subject.clone())
            .await
            .map_err(|error| ApiError::bus_failure(subject, &error))?;
        Some(subscriber)
    } else {
        None
    };

    // At the database's precision: the session's `created_at`, so this answer and every read
    // of the session agree.
    let requested_at = at_storage_precision(Utc::now());
    // What the early answer shows: the session as the scheduler will record it.
    let accepted = Session::pending(
        session_id.clone(),
        &body.template_id,
        &template.container_spec_with(&body.env),
        body.timeout.unwrap_or(template.definition.timeout_seconds),
        requested_at,
    );
    publish_create(
        &state,
        &CreateSession {
            session_id: session_id.clone(),
            template_id: body.template_id,
            env: body.env,
            requested_at,
            timeout_seconds: body.timeout,
        },
    )
    .await
    .map_err(|error| error.for_session(&session_id))?;
    tracing::info!(session_id = %session_id, "session accepted");

    match status_updates {
        None => Ok(session_response(StatusCode::ACCEPTED, accepted)),
        Some(updates) => {
            let session = wait_until_settled(&state, &session_id, updates).await?;
            answer_settled(session)
        }
    }
}

/// Stores the request in the SESSIONS stream; the ack means it is durable and will be placed
/// even if no scheduler runs right now.
async fn publish_create(state: &AppState, request: &CreateSession) -> Result<(), ApiError> {
    let subject = subjects::sessions_create();
    let payload = messages::encode(request).map_err(BusError::from)?;
    let mut headers = bus::outgoing_headers();
    // JetStream drops a second copy with the same id, so a retried publish makes one session.
    headers.insert(MSG_ID, request.session_id.as_str());
    let ack = state
        .jetstream
        .publish_with_headers(subject, headers, payload.into())
        .await
        .map_err(|error| ApiError::bus_failure(subject, &error))?;
    ack.await
        .map_err(|error| ApiError::bus_failure(subject, &error))?;
    Ok(())
}

/// Reads the session's announcements until it is settled, the create wait runs out or the
/// gateway shuts down; then, if unsettled, reads it once more (an announcement may be missed).
async fn wait_until_settled(
    state: &AppState,
    session_id: &SessionId,
    mut updates: Subscriber,
) -> Result<Session, ApiError> {
    let deadline = tokio::time::Instant::now() + state.create_wait;
    let settled = tokio::select! {
        settled = next_settled(&mut updates) => settled,
        () = tokio::time::sleep_until(deadline) => None,
        () = state.cancel.cancelled() => None,
    };
    if let Some(session) = settled {
        return Ok(session);
    }
    let request = GetSession {
        session_id: session_id.clone(),
    };
    match bus::api_request(&state.nats, &request, state.request_timeout).await {
        Ok(session) => Ok(session),
        Err(error) => {
            tracing::debug!(error = %error, "last look at an unsettled session failed");
            Err(still_placing(session_id))
        }
    }
}

/// The first settled state announced, or `None` if the subscription ends first.
async fn next_settled(updates: &mut Subscriber) -> Option<Session> {
    while let Some(message) = updates.next().await {
        match bus::decode_message::<Session>(&message) {
            Ok(session) if session.status.is_settled() => return Some(session),
            Ok(session) => tracing::debug!(status = %session.status, "session progressed"),
            Err(error) => tracing::warn!(error = %error, "undecodable session status; ignored"),
        }
    }
    None
}

/// The answer to a waiting create, from the session's latest known state.
fn answer_settled(session: Session) -> Result<Response, ApiError> {
    match session.status {
        SessionStatus::Running if session.container_id.is_some() => {
            Ok(session_response(StatusCode::CREATED, session))
        }
        // Never report success without a container: that was the seed's bug.
        SessionStatus::Running => Err(ApiError::from_code(
            ErrorCode::RuntimeError,
            "the session was reported running without a container id",
        )
        .for_session(&session.id)),
        SessionStatus::Failed => Err(ApiError::from_code(
            session.failure_code.unwrap_or(ErrorCode::Internal),
            session
                .failure_reason
                .unwrap_or_else(|| "the session failed to start".to_owned()),
        )
        .for_session(&session.id)),
        SessionStatus::Lost => Err(ApiError::from_code(
            ErrorCode::NodeLost,
            session
                .failure_reason
                .unwrap_or_else(|| "the session's node was lost".to_owned()),
        )
        .for_session(&session.id)),
        SessionStatus::Terminated => Err(ApiError::from_code(
            ErrorCode::Conflict,
            "the session was terminated before it started running",
        )
        .for_session(&session.id)),
        SessionStatus::Pending | SessionStatus::Creating => Err(still_placing(&session.id)),
    }
}

fn still_placing(session_id: &SessionId) -> ApiError {
    ApiError::from_code(
        ErrorCode::Timeout,
        format!(
            "session {session_id} is still being placed; poll GET /api/v1/sessions/{session_id}"
        ),
    )
    .for_session(session_id)
}

fn session_response(status: StatusCode, session: Session) -> Response {
    let location = format!("/api/v1/sessions/{}", session.id);
    (status, [(header::LOCATION, location)], Json(session)).into_response()
}

/// The query of `GET /api/v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    status: Option<SessionStatus>,
    template_id: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `GET /api/v1/sessions`.
#[tracing::instrument(name = "gateway.list_sessions", skip_all)]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<SessionPage>, ApiError> {
    let request = ListSessions {
        status: query.status,
        template_id: query.template_id,
        page: input::page(query.limit, query.offset)?,
    };
    Ok(Json(
        bus::api_request(&state.nats, &request, state.request_timeout).await?,
    ))
}

/// `GET /api/v1/sessions/{id}`.
#[tracing::instrument(name = "gateway.get_session", skip_all, fields(session_id = %id))]
pub(crate) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Session>, ApiError> {
    ask_about_session(&state, &id, |session_id| GetSession { session_id }).await
}

/// `DELETE /api/v1/sessions/{id}`: ends the session and answers it as terminated.
#[tracing::instrument(name = "gateway.delete_session", skip_all, fields(session_id = %id))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Session>, ApiError> {
    ask_about_session(&state, &id, |session_id| DeleteSession { session_id }).await
}

/// The body of `POST /api/v1/sessions/{id}/timeout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutBody {
    /// Seconds from now until the session ends.
    timeout: u64,
}

/// `POST /api/v1/sessions/{id}/timeout`: keep-alive; the session now ends `timeout` seconds
/// from now.
#[tracing::instrument(name = "gateway.set_session_timeout", skip_all, fields(session_id = %id))]
pub(crate) async fn set_timeout(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<TimeoutBody>,
) -> Result<Json<Session>, ApiError> {
    ask_about_session(&state, &id, |session_id| SetSessionTimeout {
        session_id,
        timeout_seconds: body.timeout,
    })
    .await
}

/// Sends a request about one session to the schedulers. An id that is not a valid session id
/// names no session: 404 without asking.
async fn ask_about_session<R: ApiRequest<Response = Session>>(
    state: &AppState,
    id: &str,
    request: impl FnOnce(SessionId) -> R,
) -> Result<Json<Session>, ApiError> {
    let session_id = SessionId::parse(id).map_err(|_| ApiError::not_found("session", id))?;
    let answer = bus::api_request(&state.nats, &request(session_id), state.request_timeout).await;
    Ok(Json(ApiError::found("session", id, answer)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use messages::limits::{MAX_ENV_ENTRIES, MAX_ENV_VALUE_BYTES, MAX_TEMPLATE_ID_BYTES};

    fn body(template_id: &str, env: &[(&str, &str)]) -> CreateSessionBody {
        CreateSessionBody {
            template_id: template_id.to_owned(),
            env: env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            timeout: None,
        }
    }

    #[test]
    fn accepts_ordinary_requests() {
        assert!(body("python-basic", &[]).validate().is_ok());
        assert!(
            body("python-basic", &[("_X1", "v"), ("PATH", "")])
                .validate()
                .is_ok()
        );
        assert!(
            body(&"t".repeat(MAX_TEMPLATE_ID_BYTES), &[])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn refuses_bad_input_with_422() {
        let long_value = "v".repeat(MAX_ENV_VALUE_BYTES + 1);
        let too_many: Vec<(String, String)> = (0..=MAX_ENV_ENTRIES)
            .map(|index| (format!("V{index}"), String::new()))
            .collect();
        let too_many: Vec<(&str, &str)> = too_many
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let too_long_id = "t".repeat(MAX_TEMPLATE_ID_BYTES + 1);
        let cases = [
            body("", &[]),
            body(&too_long_id, &[]),
            body("t", &[("1X", "v")]),
            body("t", &[("A-B", "v")]),
            body("t", &[("", "v")]),
            body("t", &[("A", &long_value)]),
            body("t", &[("A", "a\0b")]),
            body("t", &too_many),
            CreateSessionBody {
                timeout: Some(0),
                ..body("t", &[])
            },
        ];
        for case in cases {
            let error = case.validate().expect_err("invalid input");
            assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(error.code, "invalid_request");
        }
    }

    #[test]
    fn a_running_session_without_a_container_is_not_success() {
        let running_without_container = Session {
            id: SessionId::parse("s1").expect("valid id"),
            template_id: "t".to_owned(),
            status: SessionStatus::Running,
            runtime_node: None,
            container_id: None,
            image: "img".to_owned(),
            resources: messages::template::Resources {
                cpu_cores: 1.0,
                memory_mb: 256,
                pids_limit: 64,
                ..Default::default()
            },
            network: messages::template::NetworkMode::None,
            runtime: Default::default(),
            failure_code: None,
            failure_reason: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            started_at: None,
            ended_at: None,
            timeout_seconds: 300,
            expires_at: None,
        };
        let error = answer_settled(running_without_container).expect_err("no container id");
        assert_eq!(error.status, StatusCode::BAD_GATEWAY);
        assert!(error.session_id.is_some());
    }
}

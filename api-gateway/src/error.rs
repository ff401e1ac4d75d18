//! Every error the API answers, as `{"error": {"code", "message"}}` with a fitting HTTP status,
//! and the one mapping from the wire's [`ErrorCode`] and [`BusError`] to that status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use messages::{ErrorBody, ErrorCode, SessionId};
use serde::Serialize;
use service_kit::bus::BusError;

/// The HTTP status for an error the control plane reported with `code`.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NoHealthyNodes
        | ErrorCode::Capacity
        | ErrorCode::NodeUnavailable
        | ErrorCode::NodeLost
        | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::RuntimeError => StatusCode::BAD_GATEWAY,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::InvalidRequest => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal | ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answer. `code` is an [`ErrorCode`] string, or one of the HTTP-level codes below for
/// rejections that never reach the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Set when the error concerns a session that was already accepted, so it can be polled.
    pub session_id: Option<SessionId>,
}

impl ApiError {
    /// An error the control plane reported, with the status its code maps to.
    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: status_for(code),
            code: code.as_str(),
            message: message.into(),
            session_id: None,
        }
    }

    /// Bad input: malformed or out of range, answered with `status` (400 or 422).
    pub fn invalid(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code: ErrorCode::InvalidRequest.as_str(),
            message: message.into(),
            session_id: None,
        }
    }

    pub fn not_found(kind: &str, id: &str) -> Self {
        ErrorBody::not_found(kind, &id).into()
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::from_code(ErrorCode::Internal, message)
    }

    /// A request refused by the HTTP layer (body, content type, route, method) before any
    /// handler ran.
    pub fn rejected(status: StatusCode, message: impl Into<String>) -> Self {
        let code = match status {
            StatusCode::NOT_FOUND => ErrorCode::NotFound.as_str(),
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            status if status.is_client_error() => ErrorCode::InvalidRequest.as_str(),
            _ => ErrorCode::Internal.as_str(),
        };
        Self {
            status,
            code,
            message: message.into(),
            session_id: None,
        }
    }

    /// A NATS or JetStream operation that did not get through, mapped like any other bus error.
    pub fn bus_failure(subject: impl Into<String>, error: &dyn std::fmt::Display) -> Self {
        BusError::Publish {
            subject: subject.into(),
            reason: error.to_string(),
        }
        .into()
    }

    /// The answer of a request for one resource, with the gateway's own not-found message.
    pub fn found<T>(kind: &str, id: &str, answer: Result<T, BusError>) -> Result<T, Self> {
        answer.map_err(|error| match error {
            BusError::Remote(body) if body.code == ErrorCode::NotFound => Self::not_found(kind, id),
            other => other.into(),
        })
    }

    pub fn for_session(mut self, session_id: &SessionId) -> Self {
        self.session_id = Some(session_id.clone());
        self
    }
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> Self {
        Self::from_code(body.code, body.message)
    }
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> Self {
        match error {
            BusError::Remote(body) => body.into(),
            BusError::NoResponders { .. } => {
                tracing::warn!(error = %error, "no scheduler is running");
                Self::from_code(
                    ErrorCode::Unavailable,
                    "no scheduler is answering; try again shortly",
                )
            }
            // A scheduler took the request but is slow: it may still finish it.
            BusError::Timeout { after, .. } => {
                tracing::warn!(error = %error, "a scheduler did not answer in time");
                Self::from_code(
                    ErrorCode::Timeout,
                    format!(
                        "no answer from the scheduler within {after:?}; the request may still complete"
                    ),
                )
            }
            BusError::Publish { .. } | BusError::Request { .. } => {
                tracing::warn!(error = %error, "NATS request failed");
                Self::from_code(
                    ErrorCode::Unavailable,
                    "the message bus is not reachable; try again shortly",
                )
            }
            BusError::Schema { reason, .. } => {
                // A scheduler of a newer schema answered: a version skew an upgrade mends.
                tracing::error!(error = %reason, "an answer of a newer schema from a scheduler");
                Self {
                    status: StatusCode::BAD_GATEWAY,
                    code: ErrorCode::Internal.as_str(),
                    message: format!(
                        "a scheduler sent an answer this gateway cannot read: {}",
                        reason.message
                    ),
                    session_id: None,
                }
            }
            BusError::Codec(codec) => {
                // A scheduler answered with something this build cannot read: a version skew.
                tracing::error!(error = %codec, "undecodable answer from a scheduler");
                Self {
                    status: StatusCode::BAD_GATEWAY,
                    code: ErrorCode::Internal.as_str(),
                    message: "a scheduler sent an answer this gateway cannot read".to_owned(),
                    session_id: None,
                }
            }
        }
    }
}

/// The code of an error answer, left in the response for the request log.
#[derive(Debug, Clone, Copy)]
pub struct ErrorLogged {
    pub code: &'static str,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a SessionId>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let envelope = ErrorEnvelope {
            error: ErrorFields {
                code: self.code,
                message: &self.message,
                session_id: self.session_id.as_ref(),
            },
        };
        let mut response = (self.status, axum::Json(envelope)).into_response();
        response
            .extensions_mut()
            .insert(ErrorLogged { code: self.code });
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_documented_statuses() {
        let expected = [
            (ErrorCode::NoHealthyNodes, 503),
            (ErrorCode::Capacity, 503),
            (ErrorCode::NodeUnavailable, 503),
            (ErrorCode::Unavailable, 503),
            (ErrorCode::NodeLost, 503),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::RuntimeError, 502),
            (ErrorCode::NotFound, 404),
            (ErrorCode::InvalidRequest, 422),
            (ErrorCode::Conflict, 409),
            (ErrorCode::Timeout, 504),
            (ErrorCode::Internal, 500),
            (ErrorCode::Unknown, 500),
        ];
        for (code, status) in expected {
            assert_eq!(status_for(code).as_u16(), status, "{code}");
        }
    }

    #[test]
    fn silent_schedulers_are_unavailable() {
        let error = ApiError::from(BusError::NoResponders {
            subject: "sandbox.api.sessions.get".to_owned(),
        });
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.code, "unavailable");
    }
}

//! Why talking to an executor agent failed, and the error code the requester gets for it.

use std::time::Duration;

use messages::{ErrorBody, ErrorCode};

use super::frames::{MAX_LINE_BYTES, Refusal, ReplyFault};
use crate::docker::DockerError;

/// Why talking to an agent failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    #[error("the session's container stopped")]
    Stopped,
    #[error("the executor agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Attach(#[from] DockerError),
    #[error("writing to the executor agent failed: {0}")]
    Write(String),
    #[error(
        "the request is {0} bytes encoded, more than the executor agent's line limit of {MAX_LINE_BYTES}"
    )]
    TooLong(usize),
    #[error("{kind}: {message}")]
    Refused { kind: Refusal, message: String },
    #[error("the executor agent sent a malformed reply: {0}")]
    BadReply(String),
}

impl From<ReplyFault> for AgentError {
    fn from(fault: ReplyFault) -> Self {
        match fault {
            ReplyFault::Refused { kind, message } => AgentError::Refused { kind, message },
            ReplyFault::Malformed(message) => AgentError::BadReply(message),
        }
    }
}

impl From<AgentError> for ErrorBody {
    fn from(error: AgentError) -> Self {
        let code = match &error {
            AgentError::Stopped => ErrorCode::Conflict,
            AgentError::Timeout(_) => ErrorCode::Timeout,
            AgentError::TooLong(_) => ErrorCode::InvalidRequest,
            AgentError::Refused { kind, .. } => match kind {
                Refusal::NotFound => ErrorCode::NotFound,
                Refusal::Invalid
                | Refusal::PathEscape
                | Refusal::IsDirectory
                | Refusal::NotDirectory
                | Refusal::TooLarge => ErrorCode::InvalidRequest,
                Refusal::Io | Refusal::Other => ErrorCode::RuntimeError,
            },
            AgentError::Attach(_) | AgentError::Write(_) | AgentError::BadReply(_) => {
                ErrorCode::RuntimeError
            }
        };
        ErrorBody::new(code, error.to_string())
    }
}

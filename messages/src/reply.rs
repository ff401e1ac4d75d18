//! The bottom of the contract: the answer to every request (`Reply`) and the stable error codes
//! it carries. Everything else in the crate is built on top of this.

use serde::{Deserialize, Serialize};

wire_enum! {
    /// What went wrong, as a stable machine-readable code. The gateway maps it to an HTTP status.
    pub enum ErrorCode ("error code") {
        /// The input is malformed or out of range.
        InvalidRequest = "invalid_request",
        NotFound = "not_found",
        /// The request conflicts with the current state (say, a session that is not running).
        Conflict = "conflict",
        /// No healthy node can take the session.
        NoHealthyNodes = "no_healthy_nodes",
        /// The chosen node is full; another may not be.
        Capacity = "capacity",
        /// A node did not answer or refused a command.
        NodeUnavailable = "node_unavailable",
        /// The container engine failed.
        RuntimeError = "runtime_error",
        /// A bounded wait ran out.
        Timeout = "timeout",
        /// A part of the control plane is not reachable.
        Unavailable = "unavailable",
        Internal = "internal",
        /// The session's node went offline and did not come back within the grace period.
        NodeLost = "node_lost",
        /// The caller may not do this (say, an undeclared node joining in static registration mode).
        Forbidden = "forbidden",
        /// A code from a newer peer that this build does not know.
        #[serde(other)]
        Unknown = "unknown",
    }
}

impl ErrorCode {
    /// Parses what [`ErrorCode::as_str`] wrote (say, from a database column); a code this build
    /// does not know is [`ErrorCode::Unknown`].
    pub fn parse(value: &str) -> Self {
        value.parse().unwrap_or(ErrorCode::Unknown)
    }
}

/// An error as it travels, and as the HTTP API shows it under `"error"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Bad input: the message says what is wrong and how to mend it.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// `kind 'id' not found`, the one wording of a missing resource.
    pub fn not_found(kind: &str, id: &dyn std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{kind} '{id}' not found"))
    }
}

/// The answer to every request on a request-reply subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    Ok(T),
    Error(ErrorBody),
}

impl<T> From<Result<T, ErrorBody>> for Reply<T> {
    fn from(result: Result<T, ErrorBody>) -> Self {
        match result {
            Ok(value) => Reply::Ok(value),
            Err(error) => Reply::Error(error),
        }
    }
}

impl<T> From<Reply<T>> for Result<T, ErrorBody> {
    fn from(reply: Reply<T>) -> Self {
        match reply {
            Reply::Ok(value) => Ok(value),
            Reply::Error(error) => Err(error),
        }
    }
}

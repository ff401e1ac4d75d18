//! The wire contract of the sandbox control plane: subject names, payload types, header names and
//! the MessagePack encoding every service speaks.
//!
//! Rules this crate keeps so that parts of different versions can talk:
//! - subjects come only from the builder functions in [`subjects`]; no other crate writes one;
//! - payloads are MessagePack maps with field names ([`codec::encode`]), so a field can be added
//!   without breaking an older reader, which ignores fields it does not know;
//! - a field added later is `#[serde(default)]`, so a newer reader accepts an older payload;
//! - every message carries [`headers::SCHEMA_VERSION`] and the W3C trace context.
//!
//! It holds no NATS client and does no I/O.

pub mod api;
pub mod codec;
pub mod control;
pub mod execution;
pub mod files;
pub mod headers;
pub mod ids;
pub mod labels;
pub mod node;
pub mod session;
pub mod simulation;
pub mod subjects;

pub use api::{ErrorBody, ErrorCode, Reply};
pub use codec::{CodecError, decode, encode};
pub use ids::{ExecutionId, InvalidId, NodeId, SessionId};

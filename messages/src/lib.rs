//! The wire contract of the sandbox control plane: subject names, payload types, header names and
//! the MessagePack encoding every service speaks.
//!
//! Rules this crate keeps so that parts of different versions can talk:
//! - subjects come only from this crate: the fixed ones from [`subjects`], request subjects
//!   from the request types' declarations ([`request`]); no other crate writes one;
//! - payloads are MessagePack maps with field names ([`codec::encode`]), so a field can be added
//!   without breaking an older reader, which ignores fields it does not know;
//! - a field added later is `#[serde(default)]`, so a newer reader accepts an older payload;
//! - every message carries [`headers::SCHEMA_VERSION`] and the W3C trace context; a reader
//!   refuses a payload of a newer major version.
//!
//! Layers, bottom up: [`reply`] (the answer envelope and error codes); [`ids`], [`limits`] (the
//! input rules every service applies); [`template`], [`session`], [`execution`], [`files`],
//! [`node`] (the domain payloads); [`api`] (the gateway's requests). It holds no NATS client and
//! does no I/O.

#[macro_use]
pub mod wire_enum;
#[macro_use]
pub mod request;

pub mod api;
pub mod codec;
pub mod egress;
pub mod execution;
pub mod files;
pub mod headers;
pub mod ids;
pub mod labels;
pub mod limits;
pub mod node;
pub mod reply;
pub mod session;
pub mod simulation;
pub mod subjects;
pub mod template;

pub use codec::{CodecError, decode, encode};
pub use ids::{ExecutionId, InvalidId, NodeId, SessionId};
pub use reply::{ErrorBody, ErrorCode, Reply};
pub use request::{ApiRequest, NodeCommand, Request};
pub use wire_enum::UnknownValue;

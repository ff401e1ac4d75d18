//! Header names every message carries.

/// The schema version of the payload. Within one version fields are only ever added, and
/// readers ignore what they do not know; a new version marks a change they could not ignore.
pub const SCHEMA_VERSION_HEADER: &str = "Sandbox-Schema-Version";

/// This build's schema version. Raise it only for a change an older reader cannot ignore.
pub const SCHEMA_VERSION: u32 = 1;

/// W3C trace-context headers, carried so one trace spans gateway, scheduler and node daemon.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// JetStream's de-duplication header; session creates carry the session id in it.
pub const MSG_ID: &str = "Nats-Msg-Id";

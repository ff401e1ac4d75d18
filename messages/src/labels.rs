//! The Docker labels a node daemon puts on what it makes; operators and tests filter on them
//! (`docker ps --filter label=io.sandbox.managed-by=sandbox-node-daemon`).

pub const SESSION_ID: &str = "io.sandbox.session-id";
pub const NODE_ID: &str = "io.sandbox.node-id";
pub const MANAGED_BY: &str = "io.sandbox.managed-by";
/// On a warm-pool container: the template it was made for. Docker labels cannot change, so a
/// claimed container keeps it; its name says which session it serves.
pub const WARM_POOL: &str = "io.sandbox.warm-pool";
/// The value of [`MANAGED_BY`].
pub const MANAGER: &str = "sandbox-node-daemon";
/// On a sandbox container: the key of its disk volume and egress rules (the name it was made
/// under, which a claimed warm container no longer has), so both are released with it.
pub const VOLUME: &str = "io.sandbox.volume";
/// On a networked sandbox container: its egress rules as JSON, so a restarted daemon installs
/// them again.
pub const EGRESS: &str = "io.sandbox.egress";

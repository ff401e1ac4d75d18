//! Every NATS subject, stream and queue-group name of the system. No other crate spells one.
//!
//! The `runtime.*` and `sessions.create` names are fixed by DESIGN.md: users, scripts and other
//! tools depend on them. Per-node subjects carry the node id as a token of their own.

use crate::ids::{ExecutionId, NodeId, SessionId};

/// A node announces itself (at start, and again when a scheduler asks through [`nodes_discover`]).
pub fn nodes_register() -> &'static str {
    "runtime.nodes.register"
}

/// Schedulers ask nodes to announce themselves again (all, or the one named in the payload).
pub fn nodes_discover() -> &'static str {
    "runtime.nodes.discover"
}

/// Every node's periodic heartbeat.
pub fn heartbeat() -> &'static str {
    "runtime.heartbeat"
}

/// A sandbox container is running and can take work.
pub fn containers_ready() -> &'static str {
    "runtime.containers.ready"
}

/// A sandbox container stopped, seen in Docker's event stream.
pub fn containers_exited() -> &'static str {
    "runtime.containers.exited"
}

/// An operator changed a node's record (declaration, drain); every scheduler replica re-reads it.
pub fn nodes_updated() -> &'static str {
    "sandbox.nodes.updated"
}

/// A template was created, changed or deleted ([`crate::control::TemplateUpdated`]).
pub fn templates_updated() -> &'static str {
    "sandbox.templates.updated"
}

/// The commands a node daemon answers, one verb each, on `runtime.cmd.<node_id>.<verb>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeVerb {
    ContainersCreate,
    ContainersRemove,
    ExecutionsRun,
    FilesWrite,
    FilesAbort,
    FilesRead,
    FilesList,
    FilesDelete,
    /// Is the daemon there? Asked of a node that missed heartbeats: "no responders" means its
    /// process is gone.
    Ping,
}

impl NodeVerb {
    pub const ALL: [NodeVerb; 9] = [
        NodeVerb::ContainersCreate,
        NodeVerb::ContainersRemove,
        NodeVerb::ExecutionsRun,
        NodeVerb::FilesWrite,
        NodeVerb::FilesAbort,
        NodeVerb::FilesRead,
        NodeVerb::FilesList,
        NodeVerb::FilesDelete,
        NodeVerb::Ping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeVerb::ContainersCreate => "containers.create",
            NodeVerb::ContainersRemove => "containers.remove",
            NodeVerb::ExecutionsRun => "executions.run",
            NodeVerb::FilesWrite => "files.write",
            NodeVerb::FilesAbort => "files.abort",
            NodeVerb::FilesRead => "files.read",
            NodeVerb::FilesList => "files.list",
            NodeVerb::FilesDelete => "files.delete",
            NodeVerb::Ping => "node.ping",
        }
    }
}

/// `runtime.cmd.<node_id>.<verb>`: a request to one node.
pub fn node_command(node_id: &NodeId, verb: NodeVerb) -> String {
    format!("runtime.cmd.{node_id}.{}", verb.as_str())
}

/// `runtime.cmd.*.<verb>`: the verb addressed to any node, for the simulated fleet, which serves
/// thousands of node ids with one subscription per verb.
pub fn node_command_any(verb: NodeVerb) -> String {
    format!("runtime.cmd.*.{}", verb.as_str())
}

/// The node id a `runtime.cmd.<node_id>.<verb>` subject is addressed to, if it is one.
pub fn node_of_command(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix("runtime.cmd.")?;
    let (node, verb) = rest.split_once('.')?;
    NodeVerb::ALL
        .iter()
        .any(|known| known.as_str() == verb)
        .then_some(node)
}

/// The benchmark tells a simulated fleet to make some of its nodes go silent.
pub fn simulation_silence() -> &'static str {
    "sandbox.simulation.silence"
}

/// The benchmark asks a simulated fleet for its counters (admissions, refusals, peak use).
pub fn simulation_stats() -> &'static str {
    "sandbox.simulation.stats"
}

/// The JetStream stream that holds session-create requests until a scheduler has recorded them.
pub fn sessions_stream() -> &'static str {
    "SESSIONS"
}

/// Where the gateway publishes a session-create request (captured by [`sessions_stream`]).
pub fn sessions_create() -> &'static str {
    "sessions.create"
}

/// The durable consumer every scheduler replica shares, so each request goes to one of them.
pub fn sessions_consumer() -> &'static str {
    "scheduler"
}

/// Where a session's recorded state changes are announced; a gateway waiting on a create
/// subscribes here before it publishes the request.
pub fn session_status(session_id: &SessionId) -> String {
    format!("sessions.status.{session_id}")
}

/// Every session's announcements, for a benchmark timing many creates with one subscription.
pub fn session_status_all() -> &'static str {
    "sessions.status.*"
}

/// The JetStream stream that keeps every execution's output and result for a while, so a client
/// that starts streaming late still sees the output from its first byte.
pub fn executions_stream() -> &'static str {
    "EXECUTIONS"
}

/// Everything [`executions_stream`] captures.
pub fn execution_events_all() -> &'static str {
    "executions.events.>"
}

/// Both event subjects of one execution, as one filter.
pub fn execution_events(execution_id: &ExecutionId) -> String {
    format!("executions.events.{execution_id}.*")
}

/// A chunk of an execution's output, published by the node running it.
pub fn execution_output(execution_id: &ExecutionId) -> String {
    format!("executions.events.{execution_id}.output")
}

/// How an execution ended, published once by the node after its last output chunk.
pub fn execution_result(execution_id: &ExecutionId) -> String {
    format!("executions.events.{execution_id}.result")
}

/// Every execution's result: the filter of the consumer that records them.
pub fn execution_results_all() -> &'static str {
    "executions.events.*.result"
}

/// The durable consumer every scheduler replica shares to record results.
pub fn execution_results_consumer() -> &'static str {
    "execution-recorder"
}

/// Where the scheduler announces an execution's recorded result; a gateway waiting on a run
/// subscribes here before it starts the run.
pub fn execution_status(execution_id: &ExecutionId) -> String {
    format!("executions.status.{execution_id}")
}

/// Queue group of the scheduler replicas for work any one of them may take.
pub fn scheduler_queue_group() -> &'static str {
    "scheduler"
}

/// The reads and commands the gateway sends to whichever scheduler replica answers first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiOp {
    SessionsGet,
    SessionsList,
    SessionsDelete,
    TemplatesGet,
    TemplatesList,
    NodesGet,
    NodesList,
    ExecutionsStart,
    ExecutionsGet,
    ExecutionsList,
    ExecutionsRecord,
    SessionsSetTimeout,
    TemplatesCreate,
    TemplatesUpdate,
    TemplatesDelete,
    NodesDeclare,
    NodesDrain,
}

impl ApiOp {
    pub const ALL: [ApiOp; 17] = [
        ApiOp::SessionsGet,
        ApiOp::SessionsList,
        ApiOp::SessionsDelete,
        ApiOp::TemplatesGet,
        ApiOp::TemplatesList,
        ApiOp::NodesGet,
        ApiOp::NodesList,
        ApiOp::ExecutionsStart,
        ApiOp::ExecutionsGet,
        ApiOp::ExecutionsList,
        ApiOp::ExecutionsRecord,
        ApiOp::SessionsSetTimeout,
        ApiOp::TemplatesCreate,
        ApiOp::TemplatesUpdate,
        ApiOp::TemplatesDelete,
        ApiOp::NodesDeclare,
        ApiOp::NodesDrain,
    ];
}

/// `sandbox.api.<resource>.<action>`.
pub fn api(op: ApiOp) -> &'static str {
    match op {
        ApiOp::SessionsGet => "sandbox.api.sessions.get",
        ApiOp::SessionsList => "sandbox.api.sessions.list",
        ApiOp::SessionsDelete => "sandbox.api.sessions.delete",
        ApiOp::TemplatesGet => "sandbox.api.templates.get",
        ApiOp::TemplatesList => "sandbox.api.templates.list",
        ApiOp::NodesGet => "sandbox.api.nodes.get",
        ApiOp::NodesList => "sandbox.api.nodes.list",
        ApiOp::ExecutionsStart => "sandbox.api.executions.start",
        ApiOp::ExecutionsGet => "sandbox.api.executions.get",
        ApiOp::ExecutionsList => "sandbox.api.executions.list",
        ApiOp::ExecutionsRecord => "sandbox.api.executions.record",
        ApiOp::SessionsSetTimeout => "sandbox.api.sessions.timeout",
        ApiOp::TemplatesCreate => "sandbox.api.templates.create",
        ApiOp::TemplatesUpdate => "sandbox.api.templates.update",
        ApiOp::TemplatesDelete => "sandbox.api.templates.delete",
        ApiOp::NodesDeclare => "sandbox.api.nodes.declare",
        ApiOp::NodesDrain => "sandbox.api.nodes.drain",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_names_are_as_designed() {
        assert_eq!(nodes_register(), "runtime.nodes.register");
        assert_eq!(heartbeat(), "runtime.heartbeat");
        assert_eq!(containers_ready(), "runtime.containers.ready");
        assert_eq!(containers_exited(), "runtime.containers.exited");
        assert_eq!(sessions_create(), "sessions.create");
        let node = NodeId::parse("docker-local").expect("valid");
        assert_eq!(
            node_command(&node, NodeVerb::ContainersCreate),
            "runtime.cmd.docker-local.containers.create"
        );
        assert_eq!(
            node_command(&node, NodeVerb::ContainersRemove),
            "runtime.cmd.docker-local.containers.remove"
        );
    }

    #[test]
    fn any_node_wildcards_match_the_per_node_subjects() {
        let node = NodeId::parse("sim-00042").expect("valid");
        for verb in NodeVerb::ALL {
            let wildcard = node_command_any(verb);
            let exact = node_command(&node, verb);
            assert_eq!(wildcard.replace('*', node.as_str()), exact);
            assert_eq!(node_of_command(&exact), Some("sim-00042"));
        }
        assert_eq!(
            node_command_any(NodeVerb::ContainersCreate),
            "runtime.cmd.*.containers.create"
        );
        assert_eq!(node_of_command("runtime.cmd.a.no.such.verb"), None);
        assert_eq!(node_of_command("runtime.heartbeat"), None);
    }

    #[test]
    fn api_subjects_are_distinct_and_outside_the_fixed_namespaces() {
        let mut seen = std::collections::HashSet::new();
        for op in ApiOp::ALL {
            let subject = api(op);
            assert!(seen.insert(subject), "{subject} used twice");
            assert!(subject.starts_with("sandbox.api."));
        }
    }
}

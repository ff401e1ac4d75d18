//! Every NATS subject, stream and queue-group name of the system. No other crate spells one.
//!
//! The `runtime.*` and `sessions.create` names are fixed by docs/DESIGN.md: users, scripts and
//! other tools depend on them. Per-node subjects carry the node id as a token of their own.
//! The request subjects are declared with their request types: `sandbox.api.*` by
//! [`crate::api_request!`], the node verbs of `runtime.cmd.<node_id>.<verb>` by
//! [`crate::node_command!`].

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

/// A template was created, changed or deleted ([`crate::api::templates::TemplateUpdated`]).
pub fn templates_updated() -> &'static str {
    "sandbox.templates.updated"
}

/// An API key was revoked or changed; every gateway replica drops what it remembered of it.
pub fn api_keys_updated() -> &'static str {
    "sandbox.api_keys.updated"
}

/// `runtime.cmd.<node_id>.<verb>`: a request to one node; `verb` is a
/// [`crate::NodeCommand::VERB`].
pub fn node_command(node_id: &NodeId, verb: &str) -> String {
    format!("runtime.cmd.{node_id}.{verb}")
}

/// `runtime.cmd.*.<verb>`: the verb addressed to any node, for the simulated fleet, which serves
/// thousands of node ids with one subscription per verb.
pub fn node_command_any(verb: &str) -> String {
    format!("runtime.cmd.*.{verb}")
}

/// The node id a `runtime.cmd.<node_id>.<verb>` subject is addressed to, if it is one.
pub fn node_of_command<'a>(subject: &'a str, verb: &str) -> Option<&'a str> {
    let rest = subject.strip_prefix("runtime.cmd.")?;
    let (node, rest) = rest.split_once('.')?;
    (rest == verb).then_some(node)
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
            node_command(&node, "containers.create"),
            "runtime.cmd.docker-local.containers.create"
        );
    }

    #[test]
    fn any_node_wildcards_match_the_per_node_subjects() {
        use crate::NodeCommand;
        let node = NodeId::parse("sim-00042").expect("valid");
        for verb in [
            crate::node::CreateContainer::VERB,
            crate::node::RemoveContainer::VERB,
            crate::node::PingNode::VERB,
            crate::execution::RunExecution::VERB,
            crate::files::ReadFileChunk::VERB,
        ] {
            let wildcard = node_command_any(verb);
            let exact = node_command(&node, verb);
            assert_eq!(wildcard.replace('*', node.as_str()), exact);
            assert_eq!(node_of_command(&exact, verb), Some("sim-00042"));
        }
        assert_eq!(
            node_command_any(crate::node::CreateContainer::VERB),
            "runtime.cmd.*.containers.create"
        );
        assert_eq!(
            node_of_command("runtime.cmd.a.no.such.verb", "node.ping"),
            None
        );
        assert_eq!(node_of_command("runtime.heartbeat", "node.ping"), None);
    }
}

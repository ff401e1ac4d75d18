//! Which container runtimes this node offers, and the engine's runtime a sandbox runs under.
//!
//! gVisor comes as two engine runtimes (ops/install-deps.sh registers both): one with
//! `--network=none` for network-less sandboxes, and one with `--network=host` for sandboxes on
//! `sandbox_network`. gVisor's own network stack (`--network=sandbox`) will not start in this
//! kind of host's root network namespace; with `host` the sandbox uses the network namespace
//! Docker made for it through the host kernel's stack, so its system calls still meet gVisor's
//! kernel while its packets pass the node's egress rules like any other sandbox's.

use messages::template::{NetworkMode, Runtime};
use messages::{ErrorBody, NodeId};

/// The engine's names of gVisor's runtimes, as configured, and whether the engine has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineRuntimes {
    /// For sandboxes without a network; `None` when the engine has no such runtime.
    pub gvisor: Option<String>,
    /// For sandboxes on `sandbox_network`.
    pub gvisor_networked: Option<String>,
}

impl EngineRuntimes {
    /// Keeps the configured names the engine has (`engine` lists its runtimes).
    pub fn found(gvisor: &str, gvisor_networked: &str, engine: &[String]) -> Self {
        let has = |name: &str| {
            engine
                .iter()
                .any(|known| known == name)
                .then(|| name.to_owned())
        };
        Self {
            gvisor: has(gvisor),
            gvisor_networked: has(gvisor_networked),
        }
    }

    /// What this node announces it offers.
    pub fn offered(&self) -> Vec<Runtime> {
        let mut offered = vec![Runtime::Runc];
        if self.gvisor.is_some() {
            offered.push(Runtime::Gvisor);
        }
        offered
    }

    /// The engine runtime for `runtime` on `network`: `None` is the engine's default (runc).
    pub fn engine_runtime(
        &self,
        runtime: Runtime,
        network: NetworkMode,
        node_id: &NodeId,
    ) -> Result<Option<&str>, ErrorBody> {
        let missing = |what: &str| {
            ErrorBody::invalid(format!(
                "node {node_id} has no gVisor runtime {what}: run ops/install-deps.sh on it, \
                 which registers gVisor's runsc with the Docker engine"
            ))
        };
        match (runtime, network) {
            (Runtime::Runc, _) => Ok(None),
            (Runtime::Gvisor, NetworkMode::None) => self
                .gvisor
                .as_deref()
                .map(Some)
                .ok_or_else(|| missing("for sandboxes without a network")),
            (Runtime::Gvisor, NetworkMode::SandboxNetwork) => self
                .gvisor_networked
                .as_deref()
                .map(Some)
                .ok_or_else(|| missing("for networked sandboxes")),
            (Runtime::Unknown, _) => Err(ErrorBody::invalid("runtime must be runc or gvisor")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_runtimes_the_engine_has_are_offered() {
        let node = NodeId::parse("n").expect("valid");
        let engine = vec!["runc".to_owned(), "sandbox-gvisor".to_owned()];
        let runtimes = EngineRuntimes::found("sandbox-gvisor", "sandbox-gvisor-net", &engine);
        assert_eq!(runtimes.offered(), vec![Runtime::Runc, Runtime::Gvisor]);
        assert_eq!(
            runtimes.engine_runtime(Runtime::Gvisor, NetworkMode::None, &node),
            Ok(Some("sandbox-gvisor"))
        );
        let networked = runtimes
            .engine_runtime(Runtime::Gvisor, NetworkMode::SandboxNetwork, &node)
            .expect_err("no networked gVisor runtime");
        assert!(
            networked.message.contains("networked"),
            "{}",
            networked.message
        );
        assert_eq!(
            runtimes.engine_runtime(Runtime::Runc, NetworkMode::None, &node),
            Ok(None)
        );
        let none = EngineRuntimes::found("sandbox-gvisor", "sandbox-gvisor-net", &engine[..1]);
        assert_eq!(none.offered(), vec![Runtime::Runc]);
    }
}

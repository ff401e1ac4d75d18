//! The shape of a sandbox container: the create body the node daemon sends the engine (limits
//! and guarantees, the lockdown, the disk's mounts, the labels), and the facts read back from a
//! container it finds.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, HostConfigLogConfig, Mount,
    MountBindOptions, MountType, ResourcesUlimits,
};
use messages::egress::Egress;
use messages::template::{ContainerSpec, NetworkMode};
use messages::{NodeId, SessionId, labels};

use crate::ledger::{Demand, millicores};
use crate::volumes::VolumePaths;

pub(crate) const BYTES_PER_MIB: i64 = 1024 * 1024;
const NANO_CPUS_PER_MILLICORE: i64 = 1_000_000;
/// The image label saying which version of the executor agent protocol its command speaks
/// (ops/images/agent/PROTOCOL.md). Docker copies image labels into the container's.
const EXECUTOR_PROTOCOL_LABEL: &str = "io.sandbox.executor-protocol";
const EXECUTOR_PROTOCOL_VERSION: &str = "1";
/// Everything the agent writes to stdout also reaches the container's log; without a bound
/// every run's output would pile up on the host's disk.
const LOG_MAX_SIZE: &str = "1m";
const LOG_MAX_FILES: &str = "2";
/// CPU weight per core, as the kernel's `cpu.shares` counts it (what Kubernetes sets for a
/// request): under contention each sandbox gets CPU in proportion to its guarantee.
const CPU_SHARES_PER_CORE: f64 = 1024.0;
/// The kernel's smallest `cpu.shares`.
const MIN_CPU_SHARES: i64 = 2;
/// `/dev/shm`, counted against the sandbox's memory.
const SHM_BYTES: i64 = 64 * 1024 * 1024;
/// Open files per process, and no core dumps (they would fill the sandbox's disk).
const NOFILE_LIMIT: i64 = 4096;
/// Sandboxes go before the host's own processes when memory runs out; the agent raises its
/// user code higher still, so that goes first.
const SANDBOX_OOM_SCORE_ADJ: i64 = 500;

/// The facts about one container this daemon acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerFacts {
    pub id: String,
    /// The image it was made from, as named at creation.
    pub image: String,
    /// Its image's command is the executor agent, speaking the protocol this daemon knows.
    pub has_executor_agent: bool,
    /// The session it serves, from its name (a claimed warm container is renamed to its
    /// session's name; labels cannot change), else from its session label. `None` for a
    /// container not made by a node daemon.
    pub session_id: Option<SessionId>,
    /// For a warm-pool container: the template it was made for, and the pool id it was made
    /// under. It is unclaimed while `session_id` is still that pool id.
    pub warm_pool: Option<(String, SessionId)>,
    /// From the container's node label.
    pub node_id: Option<String>,
    pub running: bool,
    pub oom_killed: bool,
    pub exit_code: Option<i64>,
    /// Its guarantee and limits, read back from the engine.
    pub demand: Demand,
    /// The key of its volume and egress rules ([`labels::VOLUME`]).
    pub volume_key: Option<String>,
    /// Its address on the sandbox network, while it runs there.
    pub ip_address: Option<std::net::Ipv4Addr>,
    /// A networked sandbox's egress rules ([`labels::EGRESS`]); `None` for one without a
    /// network.
    pub egress: Option<Egress>,
}

impl ContainerFacts {
    pub(crate) fn from_inspect(inspect: ContainerInspectResponse) -> Self {
        let labels = inspect
            .config
            .as_ref()
            .and_then(|config| config.labels.clone())
            .unwrap_or_default();
        let state = inspect.state.unwrap_or_default();
        let host_config = inspect.host_config.unwrap_or_default();
        let nano_cpus = host_config.nano_cpus.unwrap_or_default().max(0);
        let memory_bytes = host_config.memory.unwrap_or_default().max(0);
        let limit_cpu_millicores = (nano_cpus / NANO_CPUS_PER_MILLICORE).unsigned_abs();
        let limit_memory_mb = (memory_bytes / BYTES_PER_MIB).unsigned_abs();
        // Containers made before guarantees existed have neither: their limits are counted.
        let cpu_millicores = match host_config.cpu_shares.unwrap_or_default() {
            shares if shares > 0 => millicores(shares as f64 / CPU_SHARES_PER_CORE),
            _ => limit_cpu_millicores,
        };
        let memory_mb = match host_config.memory_reservation.unwrap_or_default() {
            bytes if bytes > 0 => (bytes / BYTES_PER_MIB).unsigned_abs(),
            _ => limit_memory_mb,
        };
        let ip_address = inspect
            .network_settings
            .as_ref()
            .and_then(|settings| settings.networks.as_ref())
            .into_iter()
            .flat_map(|networks| networks.values())
            .filter_map(|endpoint| endpoint.ip_address.as_deref())
            .find_map(|ip| ip.parse().ok());
        let image = inspect
            .config
            .as_ref()
            .and_then(|config| config.image.clone())
            .unwrap_or_default();
        Self {
            id: inspect.id.unwrap_or_default(),
            image,
            has_executor_agent: labels
                .get(EXECUTOR_PROTOCOL_LABEL)
                .is_some_and(|version| version == EXECUTOR_PROTOCOL_VERSION),
            session_id: inspect
                .name
                .as_deref()
                .and_then(SessionId::from_container_name)
                .or_else(|| label_session(&labels)),
            warm_pool: labels
                .get(labels::WARM_POOL)
                .cloned()
                .zip(label_session(&labels)),
            node_id: labels.get(labels::NODE_ID).cloned(),
            running: state.running.unwrap_or(false),
            oom_killed: state.oom_killed.unwrap_or(false),
            exit_code: state.exit_code,
            demand: Demand {
                cpu_millicores,
                memory_mb,
                limit_cpu_millicores,
                limit_memory_mb,
            },
            volume_key: labels.get(labels::VOLUME).cloned(),
            // Unreadable rules are the strictest: everything denied.
            egress: labels.get(labels::EGRESS).map(|json| {
                serde_json::from_str(json).unwrap_or_else(|_| Egress {
                    allow: Vec::new(),
                    deny: vec!["0.0.0.0/0".to_owned()],
                })
            }),
            ip_address: ip_address.filter(|_| state.running.unwrap_or(false)),
        }
    }
}

fn label_session(labels: &HashMap<String, String>) -> Option<SessionId> {
    labels
        .get(labels::SESSION_ID)
        .and_then(|id| SessionId::parse(id.as_str()).ok())
}

impl ContainerFacts {
    /// A warm-pool container no session has claimed.
    pub fn is_unclaimed_warm(&self) -> bool {
        self.warm_pool
            .as_ref()
            .is_some_and(|(_, pool_id)| self.session_id.as_ref() == Some(pool_id))
    }
}

/// A sandbox container to make: one per session, locked down.
#[derive(Debug, Clone, Copy)]
pub struct SandboxContainer<'a> {
    pub session_id: &'a SessionId,
    pub node_id: &'a NodeId,
    pub spec: &'a ContainerSpec,
    /// The bridge network used for [`NetworkMode::SandboxNetwork`].
    pub sandbox_network: &'a str,
    /// Made for this template's warm pool (then `session_id` is the pool id).
    pub warm_pool: Option<&'a str>,
    /// Its disk, bound as `/workspace`, `/tmp` and `/var/tmp`.
    pub volume: &'a VolumePaths,
    /// The engine's name of the runtime `spec.runtime` asks for (`None`: the engine's default).
    pub engine_runtime: Option<&'a str>,
}

impl SandboxContainer<'_> {
    pub(crate) fn body(&self) -> ContainerCreateBody {
        let name = self.session_id.container_name();
        let resources = &self.spec.resources;
        let guarantee = resources.guarantee();
        let cpu_shares =
            ((guarantee.cpu_cores * CPU_SHARES_PER_CORE).round() as i64).max(MIN_CPU_SHARES);
        let memory_reservation = i64::try_from(guarantee.memory_mb)
            .unwrap_or(i64::MAX)
            .saturating_mul(BYTES_PER_MIB);
        let bind = |source: &std::path::Path, target: &str| Mount {
            target: Some(target.to_owned()),
            source: Some(source.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            bind_options: Some(MountBindOptions {
                create_mountpoint: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let networked = self.spec.network == NetworkMode::SandboxNetwork;
        let egress_label = networked
            .then(|| serde_json::to_string(&self.spec.egress).unwrap_or_else(|_| "{}".to_owned()));
        let memory_bytes = i64::try_from(resources.memory_mb)
            .unwrap_or(i64::MAX)
            .saturating_mul(BYTES_PER_MIB);
        let network_mode = match self.spec.network {
            NetworkMode::None => "none".to_owned(),
            NetworkMode::SandboxNetwork => self.sandbox_network.to_owned(),
        };
        ContainerCreateBody {
            hostname: Some(name.clone()),
            image: Some(self.spec.image.clone()),
            // The executor agent reads its requests from stdin. It stays open between
            // attachments, so the daemon can attach again at any time (say, after a restart).
            open_stdin: Some(true),
            attach_stdin: Some(true),
            stdin_once: Some(false),
            env: Some(
                self.spec
                    .env
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect(),
            ),
            labels: Some(
                [
                    (labels::SESSION_ID, self.session_id.as_str()),
                    (labels::NODE_ID, self.node_id.as_str()),
                    (labels::MANAGED_BY, labels::MANAGER),
                    (labels::VOLUME, name.as_str()),
                ]
                .into_iter()
                .chain(self.warm_pool.map(|template| (labels::WARM_POOL, template)))
                .chain(egress_label.as_deref().map(|rules| (labels::EGRESS, rules)))
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect(),
            ),
            host_config: Some(HostConfig {
                // `as` saturates; the request was checked to be a small positive number.
                nano_cpus: Some((resources.cpu_cores * 1e9).round() as i64),
                memory: Some(memory_bytes),
                // Equal to memory: no swap on top of the limit.
                memory_swap: Some(memory_bytes),
                pids_limit: Some(i64::from(resources.pids_limit)),
                cpu_shares: Some(cpu_shares),
                memory_reservation: Some(memory_reservation),
                oom_score_adj: Some(SANDBOX_OOM_SCORE_ADJ),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                // No docker-init: the executor agent is PID 1 and reaps orphans itself. A PID 1
                // that user code may write to (its stdout is the agent channel) must be the
                // agent, which makes itself undumpable; and signals sent to PID 1 from inside
                // without a handler are dropped, so user code cannot stop it.
                init: Some(false),
                privileged: Some(false),
                // Only the sandbox's disk is writable.
                readonly_rootfs: Some(true),
                mounts: Some(vec![
                    bind(&self.volume.workspace, "/workspace"),
                    bind(&self.volume.tmp, "/tmp"),
                    bind(&self.volume.tmp, "/var/tmp"),
                ]),
                shm_size: Some(SHM_BYTES),
                ulimits: Some(vec![
                    ResourcesUlimits {
                        name: Some("nofile".to_owned()),
                        soft: Some(NOFILE_LIMIT),
                        hard: Some(NOFILE_LIMIT),
                    },
                    ResourcesUlimits {
                        name: Some("core".to_owned()),
                        soft: Some(0),
                        hard: Some(0),
                    },
                ]),
                // IPv6 off: the egress rules are written for IPv4.
                sysctls: networked.then(|| {
                    HashMap::from([("net.ipv6.conf.all.disable_ipv6".to_owned(), "1".to_owned())])
                }),
                runtime: self.engine_runtime.map(str::to_owned),
                network_mode: Some(network_mode),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".to_owned()),
                    config: Some(HashMap::from([
                        ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                        ("max-file".to_owned(), LOG_MAX_FILES.to_owned()),
                    ])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use messages::template::Resources;

    use super::*;

    #[test]
    fn sandbox_containers_are_locked_down() {
        let session_id = SessionId::parse("s1").expect("valid");
        let node_id = NodeId::parse("n1").expect("valid");
        let spec = ContainerSpec {
            image: "sandbox-executor:v1.0".to_owned(),
            resources: Resources {
                cpu_cores: 0.5,
                memory_mb: 256,
                pids_limit: 64,
                ..Resources::default()
            },
            network: NetworkMode::SandboxNetwork,
            env: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
            runtime: messages::template::Runtime::Gvisor,
            egress: Egress {
                allow: vec![],
                deny: vec!["198.18.0.0/15".to_owned()],
            },
        };
        let volume = VolumePaths {
            workspace: "/state/volumes/sandbox-s1/workspace".into(),
            tmp: "/state/volumes/sandbox-s1/tmp".into(),
        };
        let body = SandboxContainer {
            session_id: &session_id,
            node_id: &node_id,
            spec: &spec,
            sandbox_network: "net-x",
            warm_pool: None,
            volume: &volume,
            engine_runtime: Some("sandbox-gvisor-net"),
        }
        .body();
        let labels = body.labels.clone().expect("labels");
        assert_eq!(labels[labels::VOLUME], "sandbox-s1");
        let egress: Egress = serde_json::from_str(&labels[labels::EGRESS]).expect("egress label");
        assert_eq!(egress, spec.egress);
        assert_eq!(body.hostname.as_deref(), Some("sandbox-s1"));
        assert_eq!(body.env, Some(vec!["A=1".to_owned()]));
        assert_eq!(body.cmd, None, "the image's own command is kept");
        assert_eq!(body.open_stdin, Some(true));
        assert_eq!(body.stdin_once, Some(false));
        assert_eq!(body.tty, None, "stdout and stderr stay apart");
        let host = body.host_config.expect("host config");
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(256 * 1024 * 1024));
        assert_eq!(host.memory_swap, host.memory);
        assert_eq!(host.network_mode.as_deref(), Some("net-x"));
        assert_eq!(host.binds, None);
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.init, Some(false), "the agent is PID 1");
        assert_eq!(host.runtime.as_deref(), Some("sandbox-gvisor-net"));
        assert_eq!(host.shm_size, Some(64 * 1024 * 1024));
        assert_eq!(
            host.oom_score_adj,
            Some(500),
            "sandboxes go before the host's services"
        );
        // Guarantees: 1/64 of the limits by default, as cpu.shares and a soft memory limit.
        assert_eq!(host.cpu_shares, Some(8));
        assert_eq!(host.memory_reservation, Some(32 * 1024 * 1024));
        let mounts = host.mounts.expect("the volume is bound");
        let targets: Vec<&str> = mounts.iter().filter_map(|m| m.target.as_deref()).collect();
        assert_eq!(targets, ["/workspace", "/tmp", "/var/tmp"]);
        assert!(mounts.iter().all(|m| {
            m.source
                .as_deref()
                .is_some_and(|s| s.starts_with("/state/volumes/"))
        }));
        let ulimits = host.ulimits.expect("ulimits");
        assert!(
            ulimits
                .iter()
                .any(|u| u.name.as_deref() == Some("core") && u.hard == Some(0))
        );
        assert!(
            host.sysctls
                .is_some_and(|sysctls| sysctls["net.ipv6.conf.all.disable_ipv6"] == "1")
        );
        let log = host.log_config.expect("a log config");
        assert!(
            log.config
                .is_some_and(|config| config.contains_key("max-size"))
        );
    }
}

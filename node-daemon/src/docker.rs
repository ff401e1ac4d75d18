//! Every call this daemon makes to the local Docker engine (through bollard), and the shape of
//! the sandbox containers it makes.

use std::collections::HashMap;

use bollard::Docker;
use bollard::container::AttachContainerResults;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EventMessage, HostConfig, HostConfigLogConfig,
    Mount, MountBindOptions, MountType, NetworkCreateRequest, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
    RenameContainerOptionsBuilder,
};
use futures::{Stream, StreamExt as _};
use messages::egress::Egress;
use messages::template::{ContainerSpec, NetworkMode};
use messages::{ErrorBody, ErrorCode, NodeId, SessionId, labels};

use crate::ledger::{Demand, millicores};
use crate::volumes::VolumePaths;

/// Seconds bollard waits for the engine to answer a request (not for a stream to end).
const REQUEST_TIMEOUT_SECS: u64 = 120;
const BYTES_PER_MIB: i64 = 1024 * 1024;
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

/// A Docker call that failed: what was being done, and the engine's own message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{action}: {message}")]
pub struct DockerError {
    pub action: String,
    /// The engine's HTTP status, when it answered at all.
    pub status: Option<u16>,
    pub message: String,
}

impl DockerError {
    fn during(action: impl Into<String>) -> impl FnOnce(BollardError) -> Self {
        move |error| {
            let (status, message) = match error {
                BollardError::DockerResponseServerError {
                    status_code,
                    message,
                } => (Some(status_code), message),
                other => (None, other.to_string()),
            };
            Self {
                action: action.into(),
                status,
                message,
            }
        }
    }

    pub fn is_conflict(&self) -> bool {
        self.status == Some(409)
    }

    /// The engine has no image of the name a create asked for (it never pulls one). Other
    /// missing things (a network, say) are 404s too, so the engine's message decides.
    pub fn is_no_such_image(&self) -> bool {
        self.status == Some(404) && self.message.starts_with("No such image")
    }
}

/// Docker failures reach the requester with Docker's own message.
impl From<DockerError> for ErrorBody {
    fn from(error: DockerError) -> Self {
        ErrorBody::new(ErrorCode::RuntimeError, error.to_string())
    }
}

/// What the engine reports about the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostResources {
    pub cpu_cores: f64,
    pub memory_mb: u64,
    /// The engine's container runtimes by name (`runc`, and any configured, such as gVisor's).
    pub runtimes: Vec<String>,
}

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
    fn from_inspect(inspect: ContainerInspectResponse) -> Self {
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
    fn body(&self) -> ContainerCreateBody {
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

/// The local Docker engine.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
}

impl DockerEngine {
    /// Connects over the unix socket, agrees on an API version the engine speaks, and pings it.
    pub async fn connect(socket: &str) -> Result<Self, DockerError> {
        let action = || format!("connecting to Docker at {socket}");
        let docker =
            Docker::connect_with_unix(socket, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                .map_err(DockerError::during(action()))?
                .negotiate_version()
                .await
                .map_err(DockerError::during(action()))?;
        docker.ping().await.map_err(DockerError::during(action()))?;
        Ok(Self { docker })
    }

    pub async fn host_resources(&self) -> Result<HostResources, DockerError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(DockerError::during("reading docker info"))?;
        let mut runtimes: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        runtimes.sort();
        Ok(HostResources {
            cpu_cores: info.ncpu.unwrap_or_default().max(0) as f64,
            memory_mb: (info.mem_total.unwrap_or_default().max(0) / BYTES_PER_MIB).unsigned_abs(),
            runtimes,
        })
    }

    /// The Linux bridge interface and IPv4 subnet of the network `name`.
    pub async fn bridge_of(&self, name: &str) -> Result<(String, String), DockerError> {
        let action = || format!("inspecting network {name}");
        let network = self
            .docker
            .inspect_network(name, None)
            .await
            .map_err(DockerError::during(action()))?;
        let interface = network
            .options
            .as_ref()
            .and_then(|options| options.get("com.docker.network.bridge.name").cloned())
            .or_else(|| {
                network
                    .id
                    .as_deref()
                    .and_then(|id| id.get(..12))
                    .map(|id| format!("br-{id}"))
            });
        let subnet = network
            .ipam
            .and_then(|ipam| ipam.config)
            .into_iter()
            .flatten()
            .filter_map(|config| config.subnet)
            .find(|subnet| subnet.contains('.'));
        match (interface, subnet) {
            (Some(interface), Some(subnet)) => Ok((interface, subnet)),
            _ => Err(DockerError {
                action: action(),
                status: None,
                message: "it has no bridge interface or IPv4 subnet".to_owned(),
            }),
        }
    }

    /// Makes the bridge network `name` unless it exists. Returns whether it was made.
    pub async fn ensure_network(&self, name: &str) -> Result<bool, DockerError> {
        let existing = self
            .docker
            .inspect_network(name, None)
            .await
            .map_err(DockerError::during(format!("inspecting network {name}")));
        if found(existing)?.is_some() {
            return Ok(false);
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(HashMap::from([(
                labels::MANAGED_BY.to_owned(),
                labels::MANAGER.to_owned(),
            )])),
            // Sandboxes on it do not reach each other (the egress rules refuse it too).
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".to_owned(),
                "false".to_owned(),
            )])),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map_err(DockerError::during(format!("creating network {name}")))?;
        Ok(true)
    }

    /// The `repo:tag` names of the local images (untagged ones left out).
    pub async fn image_tags(&self) -> Result<Vec<String>, DockerError> {
        let images = self
            .docker
            .list_images(Some(ListImagesOptionsBuilder::default().build()))
            .await
            .map_err(DockerError::during("listing images"))?;
        let mut tags: Vec<String> = images
            .into_iter()
            .flat_map(|image| image.repo_tags)
            .filter(|tag| tag != "<none>:<none>")
            .collect();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// Every container labelled as this node's, running or not.
    pub async fn managed_containers(
        &self,
        node_id: &NodeId,
    ) -> Result<Vec<ContainerFacts>, DockerError> {
        let filters = HashMap::from([("label", vec![node_label(node_id)])]);
        let summaries = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(DockerError::during("listing this node's containers"))?;
        let mut containers = Vec::with_capacity(summaries.len());
        for id in summaries.into_iter().filter_map(|summary| summary.id) {
            // One removed since the listing is simply not there any more.
            if let Some(facts) = self.inspect(&id).await? {
                containers.push(facts);
            }
        }
        Ok(containers)
    }

    /// The container named or numbered `container`, if it exists.
    pub async fn inspect(&self, container: &str) -> Result<Option<ContainerFacts>, DockerError> {
        let inspected = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(DockerError::during(format!(
                "inspecting container {container}"
            )));
        Ok(found(inspected)?.map(ContainerFacts::from_inspect))
    }

    /// Makes (but does not start) the session's container; returns its id. A name already taken
    /// is a [`DockerError::is_conflict`] error, an image the engine does not have a
    /// [`DockerError::is_no_such_image`] one.
    pub async fn create_sandbox(
        &self,
        sandbox: &SandboxContainer<'_>,
    ) -> Result<String, DockerError> {
        let name = sandbox.session_id.container_name();
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                sandbox.body(),
            )
            .await
            .map_err(DockerError::during(format!("creating container {name}")))?;
        Ok(created.id)
    }

    /// Starts a container; one already running is fine.
    pub async fn start(&self, container: &str) -> Result<(), DockerError> {
        self.docker
            .start_container(container, None)
            .await
            .map_err(DockerError::during(format!(
                "starting container {container}"
            )))
    }

    /// Kills and deletes a container with its anonymous volumes. Returns whether it existed.
    pub async fn remove(&self, container: &str) -> Result<bool, DockerError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let removed = self
            .docker
            .remove_container(container, Some(options))
            .await
            .map_err(DockerError::during(format!(
                "removing container {container}"
            )));
        Ok(found(removed)?.is_some())
    }

    /// Gives a container a new name (a claimed warm container takes its session's name).
    pub async fn rename(&self, container: &str, name: &str) -> Result<(), DockerError> {
        self.docker
            .rename_container(
                container,
                RenameContainerOptionsBuilder::default().name(name).build(),
            )
            .await
            .map_err(DockerError::during(format!(
                "renaming container {container} to {name}"
            )))
    }

    /// Attaches to a running container's stdin, stdout and stderr, from now on (no old output).
    pub async fn attach(&self, container: &str) -> Result<AttachContainerResults, DockerError> {
        // Docker's detach keys (ctrl-p ctrl-q) never appear in what is written: JSON escapes
        // every control character.
        let options = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        self.docker
            .attach_container(container, Some(options))
            .await
            .map_err(DockerError::during(format!(
                "attaching to container {container}"
            )))
    }

    /// The `die`, `oom` and `destroy` events of this node's containers, from `since` (Docker's
    /// `<seconds>.<nanoseconds>` form) or from now.
    pub fn container_events(
        &self,
        node_id: &NodeId,
        since: Option<&str>,
    ) -> impl Stream<Item = Result<EventMessage, DockerError>> + use<> {
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("label", vec![node_label(node_id)]),
            (
                "event",
                vec!["die".to_owned(), "oom".to_owned(), "destroy".to_owned()],
            ),
        ]);
        let mut options = EventsOptionsBuilder::default().filters(&filters);
        if let Some(since) = since {
            options = options.since(since);
        }
        self.docker
            .events(Some(options.build()))
            .map(|event| event.map_err(DockerError::during("following container events")))
    }
}

impl DockerEngine {
    /// The engine's image events that change which images it holds (built, tagged, loaded,
    /// removed), from now on.
    pub fn image_events(&self) -> impl Stream<Item = Result<EventMessage, DockerError>> + use<> {
        let filters = HashMap::from([
            ("type", vec!["image".to_owned()]),
            (
                "event",
                ["tag", "untag", "delete", "load", "import", "pull"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ]);
        self.docker
            .events(Some(
                EventsOptionsBuilder::default().filters(&filters).build(),
            ))
            .map(|event| event.map_err(DockerError::during("following image events")))
    }
}

/// Turns the engine's "no such object" into `None`.
fn found<T>(result: Result<T, DockerError>) -> Result<Option<T>, DockerError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.status == Some(404) => Ok(None),
        Err(error) => Err(error),
    }
}

/// The label filter that selects this node's containers.
fn node_label(node_id: &NodeId) -> String {
    format!("{}={node_id}", labels::NODE_ID)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_missing_image_is_a_missing_image() {
        let error = |status, message: &str| DockerError {
            action: "creating container sandbox-s1".to_owned(),
            status: Some(status),
            message: message.to_owned(),
        };
        assert!(error(404, "No such image: sandbox-no-such-image:0").is_no_such_image());
        assert!(!error(404, "network sandbox_net not found").is_no_such_image());
        assert!(!error(500, "No such image: x").is_no_such_image());
        assert!(error(409, "Conflict. The container name is in use").is_conflict());
    }

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

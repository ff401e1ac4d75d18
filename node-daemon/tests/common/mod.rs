//! The harness the daemon's integration tests share: a daemon in-process with its own
//! nats-server, node id and network, and the Docker objects it made removed afterwards.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::Subscriber;
use bollard::Docker;
use futures::StreamExt as _;
use messages::node::{
    ContainerCreated, ContainerRemoved, CreateContainer, Heartbeat, RemoveContainer,
};
use messages::subjects;
use messages::template::{ContainerSpec, NetworkMode, Resources, Runtime};
use messages::{NodeId, SessionId, labels};
use node_daemon::{Config, Running};
use sandbox_ops::testkit::{self, NatsServer};
use serde::de::DeserializeOwned;
use service_kit::bus::{self, BusError};
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(15);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const MIB: i64 = 1024 * 1024;
/// Removes the test's containers and network when dropped, also when the test failed.
struct DockerCleanup {
    node_id: String,
    network: String,
    state_dir: std::path::PathBuf,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        testkit::remove_docker_objects_blocking(std::slice::from_ref(&self.node_id), &self.network);
        testkit::release_volumes_under(&self.state_dir);
    }
}

/// One daemon with its own nats-server, node id and network.
pub struct Harness {
    pub config: Config,
    pub image: &'static str,
    pub client: async_nats::Client,
    pub docker: Docker,
    cancel: CancellationToken,
    running: Option<Running>,
    _nats: NatsServer,
    // Last, so the containers go after everything else is dropped.
    _cleanup: DockerCleanup,
    // After the containers, whose volumes the cleanup unmounts.
    _state_dir: tempfile::TempDir,
}

impl Harness {
    /// Everything but the daemon, so a test can subscribe before it starts.
    pub async fn new(adjust: impl FnOnce(&mut Config)) -> Self {
        // The daemon's logs show with a failing test's output (RUST_LOG, default info).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
        let image = testkit::ensure_test_image().expect("the test image is built");
        let node_id = testkit::unique_name("nd");
        let network = testkit::unique_name("nd-net");
        let state_dir = tempfile::tempdir().expect("a state directory");
        let cleanup = DockerCleanup {
            node_id: node_id.clone(),
            network: network.clone(),
            state_dir: state_dir.path().to_owned(),
        };
        let nats = NatsServer::start().expect("nats-server starts");
        let mut config = Config {
            nats_url: nats.url(),
            node_id: NodeId::parse(node_id).expect("a valid node id"),
            docker_socket: "/var/run/docker.sock".to_owned(),
            heartbeat_interval: Duration::from_millis(200),
            network,
            max_containers: 10,
            memory_reserve_mb: 256,
            disk_reserve_mb: 1024,
            state_dir: state_dir.path().to_owned(),
            gvisor_runtime: "sandbox-gvisor".to_owned(),
            gvisor_networked_runtime: "sandbox-gvisor-net".to_owned(),
            egress_nameservers: Vec::new(),
            cpu_cores: None,
            memory_mb: None,
            advertise_ip: None,
            labels: BTreeMap::new(),
            output_limit: 1024 * 1024,
            simulate_nodes: None,
            simulated_start_delay: Duration::from_millis(20),
            node_id_prefix: "sim".to_owned(),
            simulated_images: Vec::new(),
        };
        adjust(&mut config);
        let client = async_nats::connect(nats.url())
            .await
            .expect("the test connects to NATS");
        let docker = Docker::connect_with_unix_defaults()
            .expect("docker socket")
            .negotiate_version()
            .await
            .expect("docker answers");
        Self {
            config,
            image,
            client,
            docker,
            cancel: CancellationToken::new(),
            running: None,
            _nats: nats,
            _cleanup: cleanup,
            _state_dir: state_dir,
        }
    }

    pub async fn started(adjust: impl FnOnce(&mut Config)) -> Self {
        let mut harness = Self::new(adjust).await;
        harness.start().await;
        harness
    }

    pub async fn start(&mut self) {
        self.cancel = CancellationToken::new();
        let running = node_daemon::start(self.config.clone(), self.cancel.clone())
            .await
            .expect("the daemon starts");
        assert_eq!(running.node_id(), &self.config.node_id);
        self.running = Some(running);
    }

    pub async fn stop(&mut self) {
        self.cancel.cancel();
        let running = self.running.take().expect("the daemon was started");
        running.wait().await.expect("the daemon stops cleanly");
    }

    pub fn node_id(&self) -> &NodeId {
        &self.config.node_id
    }

    pub async fn subscribe(&self, subject: impl Into<String>) -> Subscriber {
        let subscriber = self
            .client
            .subscribe(subject.into())
            .await
            .expect("subscribed");
        self.client.flush().await.expect("subscription registered");
        subscriber
    }

    pub fn spec(&self, network: NetworkMode) -> ContainerSpec {
        ContainerSpec {
            image: self.image.to_owned(),
            resources: Resources {
                cpu_cores: 0.5,
                memory_mb: 64,
                pids_limit: 64,
                disk_mb: 64,
                ..Resources::default()
            },
            network,
            env: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
            runtime: Runtime::Runc,
            egress: Default::default(),
        }
    }

    pub async fn create_with(
        &self,
        session_id: &SessionId,
        spec: ContainerSpec,
    ) -> Result<ContainerCreated, BusError> {
        let command = CreateContainer {
            session_id: session_id.clone(),
            spec,
        };
        bus::node_request(&self.client, self.node_id(), &command, REQUEST_TIMEOUT).await
    }

    pub async fn create(&self, session_id: &SessionId) -> ContainerCreated {
        self.create_with(session_id, self.spec(NetworkMode::None))
            .await
            .expect("the container is created")
    }

    pub async fn remove(&self, session_id: &SessionId) -> ContainerRemoved {
        let command = RemoveContainer {
            session_id: session_id.clone(),
        };
        bus::node_request(&self.client, self.node_id(), &command, REQUEST_TIMEOUT)
            .await
            .expect("the remove is answered")
    }

    pub async fn inspect(
        &self,
        session_id: &SessionId,
    ) -> bollard::models::ContainerInspectResponse {
        self.docker
            .inspect_container(&session_id.container_name(), None)
            .await
            .expect("the container exists")
    }

    pub async fn containers_of(&self, session_id: &SessionId) -> usize {
        testkit::containers_labelled(labels::SESSION_ID, session_id.as_str())
            .await
            .expect("containers listed")
            .len()
    }

    /// The next heartbeat of this node sent after now.
    pub async fn fresh_heartbeat(&self) -> Heartbeat {
        let mut heartbeats = self.subscribe(subjects::heartbeat()).await;
        let node_id = self.node_id().clone();
        // A beat stamped from now on reports figures read from now on.
        let since = chrono::Utc::now();
        next_matching(&mut heartbeats, "a heartbeat", |beat: &Heartbeat| {
            beat.node_id == node_id && beat.timestamp >= since
        })
        .await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub fn new_session() -> SessionId {
    SessionId::parse(uuid::Uuid::now_v7().to_string()).expect("a uuid is a valid session id")
}

/// The next message on `subscriber` that decodes to a `T` that `wanted` accepts.
pub async fn next_matching<T: DeserializeOwned>(
    subscriber: &mut Subscriber,
    what: &str,
    mut wanted: impl FnMut(&T) -> bool,
) -> T {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(message) = subscriber.next().await {
            let value: T = messages::decode(&message.payload).expect("the payload decodes");
            if wanted(&value) {
                return value;
            }
        }
        panic!("the subscription for {what} ended");
    });
    found
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
}

//! The control plane as processes, one harness for the system tests and the benchmark: NATS
//! (from [`crate::testkit`]), a database (a SQLite file or a private PostgreSQL cluster),
//! scheduler replicas, gateways and node daemons (real ones, or one simulated fleet) started from
//! the workspace's binaries on free ports, with their logs in one temp dir. Dropping the
//! [`Stack`] stops every process and removes the Docker objects of its nodes.
//!
//! It talks to the services through their flags, their logs and the HTTP API; it asks the
//! schedulers for their node view over NATS (`ListNodes`), so waiting for thousands of nodes
//! puts no gateway (and no JSON of every node) in the path of what is measured.

mod api;
mod binaries;
mod process;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use messages::api::nodes::ListNodes;
use messages::node::NodeHealth;
use service_kit::bus;
use tokio::sync::OnceCell;

pub use api::{Api, json_answer};
pub use binaries::{Binaries, SERVICE_BINARIES};
pub use process::{Process, STOP_GRACE, Signal, stop_all};

use crate::testkit::{self, NatsServer, Postgres};

/// How long a scheduler or gateway may take to come up.
pub const START_LIMIT: Duration = Duration::from_secs(30);
/// What a scheduler replica logs (at info) once it takes work.
pub const SCHEDULER_READY: &str = "scheduler worker ready";
/// The process name of the simulated fleet.
pub const FLEET: &str = "node-daemon-fleet";

/// Which database the schedulers share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DatabaseKind {
    /// A file in the stack's temp dir.
    #[default]
    Sqlite,
    /// A private cluster of its own ([`testkit::Postgres`]).
    Postgres,
}

#[derive(Debug)]
enum Database {
    Sqlite(PathBuf),
    Postgres(Postgres),
}

/// What one service process gets beyond what the stack gives each (NATS, database, listen
/// address, node id): flags, environment, and its `RUST_LOG` (`info` unless set).
#[derive(Debug, Clone)]
pub struct Spec {
    flags: Vec<String>,
    env: Vec<(String, String)>,
    log_level: String,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            flags: Vec::new(),
            env: Vec::new(),
            log_level: "info".to_owned(),
        }
    }
}

impl Spec {
    pub fn flags<S: Into<String>>(mut self, flags: impl IntoIterator<Item = S>) -> Self {
        self.flags.extend(flags.into_iter().map(Into::into));
        self
    }

    /// `name value`, say `.option("--max-in-flight", 256)`.
    pub fn option(self, name: &str, value: impl Display) -> Self {
        self.flags([name.to_owned(), value.to_string()])
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        level.clone_into(&mut self.log_level);
        self
    }

    fn environment(&self) -> Vec<(String, String)> {
        let mut env = vec![("RUST_LOG".to_owned(), self.log_level.clone())];
        env.extend(self.env.iter().cloned());
        env
    }
}

/// How [`Stack::add_scheduler`] tells that a new replica is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerReady {
    /// It logged [`SCHEDULER_READY`] (its log level must show `scheduler_worker` info).
    Logged,
    /// Some replica answers a request for the node view: for a log level that hides the ready
    /// line. With other replicas up, this says nothing of the new one.
    ApiAnswers,
}

#[derive(Debug)]
struct NodeProcess {
    node_id: String,
    process: Process,
}

/// NATS, a database and the service processes started on them. Field order is drop order: the
/// processes are stopped (in `Drop`) before NATS and the database go, the temp dir last.
#[derive(Debug)]
pub struct Stack {
    binaries: Binaries,
    api: Option<Api>,
    /// A NATS client of the stack's own, for the schedulers' node view.
    bus: OnceCell<async_nats::Client>,
    schedulers: Vec<Process>,
    gateways: Vec<Process>,
    nodes: Vec<NodeProcess>,
    fleet: Option<Process>,
    /// Every node id handed out, in-process nodes' included: their containers go at teardown.
    node_ids: Vec<String>,
    network: String,
    nats: NatsServer,
    database: Database,
    dir: tempfile::TempDir,
}

impl Stack {
    /// NATS and the database, no service yet.
    pub fn start(binaries: Binaries, database: DatabaseKind) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sandbox-stack-")
            .tempdir()
            .context("making the stack's temp dir")?;
        let nats = NatsServer::start()?;
        let database = match database {
            DatabaseKind::Sqlite => Database::Sqlite(dir.path().join("sandbox.db")),
            DatabaseKind::Postgres => Database::Postgres(Postgres::start()?),
        };
        Ok(Self {
            binaries,
            api: None,
            bus: OnceCell::new(),
            schedulers: Vec::new(),
            gateways: Vec::new(),
            nodes: Vec::new(),
            fleet: None,
            node_ids: Vec::new(),
            network: testkit::unique_name("sbx-net"),
            nats,
            database,
            dir,
        })
    }

    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    pub fn database_url(&self) -> String {
        match &self.database {
            Database::Sqlite(path) => format!("sqlite://{}", path.display()),
            Database::Postgres(cluster) => cluster.url(),
        }
    }

    /// The temp dir holding the logs (and the SQLite file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The sandbox network every node daemon of the stack is given.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The API the stack's own checks use: the first gateway's, unless set here (say, to a
    /// gateway running in the caller's process).
    pub fn use_api(&mut self, base: &str) {
        self.api = Some(Api::new(base));
    }

    pub fn api(&self) -> anyhow::Result<&Api> {
        self.api
            .as_ref()
            .context("the stack has no gateway to ask (add_gateway or use_api)")
    }

    /// A node id no other run uses, remembered so that teardown removes its containers. For
    /// node daemons the caller runs itself.
    pub fn new_node_id(&mut self, prefix: &str) -> String {
        let node_id = testkit::unique_name(prefix);
        self.node_ids.push(node_id.clone());
        node_id
    }

    /// Where the node daemon `node_id` keeps its sandboxes' disks: in the stack's temp dir, so
    /// daemons of tests running side by side never sweep each other's.
    pub fn node_state_dir(&self, node_id: &str) -> PathBuf {
        self.dir.path().join("nodes").join(node_id)
    }

    /// Every node id handed out, in order.
    pub fn node_ids(&self) -> &[String] {
        &self.node_ids
    }

    fn spawn(
        &self,
        name: &str,
        binary: &str,
        args: Vec<String>,
        spec: &Spec,
    ) -> anyhow::Result<Process> {
        let program = self.binaries.path(binary)?;
        let mut args = args;
        args.extend(spec.flags.iter().cloned());
        let log = self.dir.path().join(format!("{name}.log"));
        Process::spawn(name, &program, args, spec.environment(), log)
    }

    /// Starts a scheduler replica on the stack's NATS and database; returns its index in
    /// [`Stack::schedulers`] once it is ready.
    pub async fn add_scheduler(
        &mut self,
        spec: Spec,
        ready: SchedulerReady,
    ) -> anyhow::Result<usize> {
        let name = format!("scheduler-{}", self.schedulers.len() + 1);
        let args = vec![
            "--nats-url".to_owned(),
            self.nats_url(),
            "--database-url".to_owned(),
            self.database_url(),
        ];
        let mut process = self.spawn(&name, "scheduler-worker", args, &spec)?;
        match ready {
            SchedulerReady::Logged => {
                process
                    .wait_ready(START_LIMIT, async |process: &Process| {
                        process.log().contains(SCHEDULER_READY)
                    })
                    .await?;
            }
            SchedulerReady::ApiAnswers => {
                let bus = self.bus().await?.clone();
                process
                    .wait_ready(START_LIMIT, async |_: &Process| {
                        nodes_online(&bus).await.is_ok()
                    })
                    .await?;
            }
        }
        self.schedulers.push(process);
        Ok(self.schedulers.len() - 1)
    }

    pub fn schedulers(&self) -> &[Process] {
        &self.schedulers
    }

    pub fn scheduler(&mut self, index: usize) -> anyhow::Result<&mut Process> {
        self.schedulers
            .get_mut(index)
            .with_context(|| format!("the stack has no scheduler {index}"))
    }

    /// Starts a gateway on a free port; returns its base URL once `/healthz` answers. The first
    /// one becomes the stack's API unless one was set.
    pub async fn add_gateway(&mut self, spec: Spec) -> anyhow::Result<String> {
        let name = match self.gateways.len() {
            0 => "api-gateway".to_owned(),
            n => format!("api-gateway-{}", n + 1),
        };
        let port = testkit::free_port()?;
        let args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--nats-url".to_owned(),
            self.nats_url(),
            // Started only with a token; a free port either way, so gateways never collide.
            "--internal-listen".to_owned(),
            format!("127.0.0.1:{}", testkit::free_port()?),
        ];
        let mut process = self.spawn(&name, "api-gateway", args, &spec)?;
        let base = format!("http://127.0.0.1:{port}");
        let api = Api::new(&base);
        process
            .wait_ready(START_LIMIT, async |_: &Process| api.is_healthy().await)
            .await?;
        self.gateways.push(process);
        if self.api.is_none() {
            self.api = Some(api);
        }
        Ok(base)
    }

    /// Starts a node daemon process with a new node id on the stack's network; returns the id
    /// once the API shows the node online.
    pub async fn add_node(&mut self, spec: Spec, within: Duration) -> anyhow::Result<String> {
        let api = self.api()?.clone();
        let node_id = self.new_node_id("proc");
        let args = vec![
            "--nats-url".to_owned(),
            self.nats_url(),
            "--node-id".to_owned(),
            node_id.clone(),
            "--network".to_owned(),
            self.network.clone(),
            "--state-dir".to_owned(),
            self.node_state_dir(&node_id).to_string_lossy().into_owned(),
        ];
        let mut process = self.spawn(&node_id, "node-daemon", args, &spec)?;
        let online = process
            .wait_ready(within, async |_: &Process| {
                api.node_status(&node_id).await.as_deref() == Some("online")
            })
            .await;
        self.nodes.push(NodeProcess {
            node_id: node_id.clone(),
            process,
        });
        online?;
        Ok(node_id)
    }

    /// The node daemon process of `node_id`.
    pub fn node(&mut self, node_id: &str) -> anyhow::Result<&mut Process> {
        self.nodes
            .iter_mut()
            .find(|node| node.node_id == node_id)
            .map(|node| &mut node.process)
            .with_context(|| format!("node {node_id} is no process of this stack"))
    }

    /// Starts `node-daemon --simulate-nodes <count>` (no Docker) and waits until the API shows
    /// `count` nodes online.
    pub async fn add_simulated_fleet(
        &mut self,
        count: u32,
        spec: Spec,
        within: Duration,
    ) -> anyhow::Result<()> {
        if self.fleet.is_some() {
            bail!("the stack has a simulated fleet already");
        }
        let bus = self.bus().await?.clone();
        let args = vec![
            "--nats-url".to_owned(),
            self.nats_url(),
            "--simulate-nodes".to_owned(),
            count.to_string(),
        ];
        let mut process = self.spawn(FLEET, "node-daemon", args, &spec)?;
        let wanted = usize::try_from(count)?;
        // Each check lists every node: ask twice a second, not at the usual pace.
        let online = process
            .wait_ready_polling(within, Duration::from_millis(500), async |_: &Process| {
                nodes_online(&bus)
                    .await
                    .is_ok_and(|online| online >= wanted)
            })
            .await;
        self.fleet = Some(process);
        online
    }

    /// Waits until the schedulers' view shows at least `count` nodes online.
    pub async fn wait_online(&self, count: usize, within: Duration) -> anyhow::Result<()> {
        let bus = self.bus().await?;
        let started = std::time::Instant::now();
        loop {
            let online = nodes_online(bus).await.unwrap_or(0);
            if online >= count {
                return Ok(());
            }
            if started.elapsed() > within {
                bail!("only {online} of {count} nodes online after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The stack's own NATS client, connected on first use.
    pub async fn bus(&self) -> anyhow::Result<&async_nats::Client> {
        let url = self.nats.url();
        self.bus
            .get_or_try_init(|| async move { bus::connect(&url, "sandbox-stack").await })
            .await
    }

    /// The pid of every running process of the stack by name, `nats-server` included.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let processes = self
            .schedulers
            .iter()
            .chain(&self.gateways)
            .chain(self.nodes.iter().map(|node| &node.process))
            .chain(&self.fleet);
        let mut pids: Vec<(String, u32)> = processes
            .filter_map(|process| Some((process.name().to_owned(), process.pid()?)))
            .collect();
        pids.push(("nats-server".to_owned(), self.nats.pid()));
        pids
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let processes = self
            .gateways
            .iter_mut()
            .chain(&mut self.schedulers)
            .chain(self.nodes.iter_mut().map(|node| &mut node.process))
            .chain(&mut self.fleet);
        stop_all(processes);
        if !self.node_ids.is_empty() {
            testkit::remove_docker_objects_blocking(&self.node_ids, &self.network);
        }
        testkit::release_volumes_under(self.dir.path());
    }
}

/// How many nodes the schedulers' view shows online (a request any replica answers).
async fn nodes_online(bus: &async_nats::Client) -> anyhow::Result<usize> {
    let nodes = bus::api_request(bus, &ListNodes {}, Duration::from_secs(10)).await?;
    Ok(nodes
        .iter()
        .filter(|node| node.status == NodeHealth::Online)
        .count())
}

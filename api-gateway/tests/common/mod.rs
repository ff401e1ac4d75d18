//! The whole system in one test process: a real nats-server, the scheduler on a SQLite file,
//! node daemons on the real Docker engine, and the gateway on a free port. Everything it made
//! (containers, the network, the store) is removed when it is dropped.

#![allow(dead_code)] // Each test binary uses part of the harness.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Parser as _;
use sandbox_ops::testkit::{self, NatsServer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const EXECUTOR_IMAGE: &str = "sandbox-executor:v1.0";

/// Fails with the fix when the executor image was not built.
pub fn require_executor_image() {
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", EXECUTOR_IMAGE])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        present,
        "{EXECUTOR_IMAGE} is missing: build it with ops/images/build.sh (ops/test.sh does)"
    );
}

type ServiceHandle = JoinHandle<anyhow::Result<()>>;

/// How a [`System`] is started.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Extra scheduler flags (say, `--registration-mode static`).
    pub scheduler_flags: Vec<String>,
    /// Starts the gateway's internal listener with this bearer token.
    pub internal_token: Option<String>,
}

/// The `node-daemon` binary, built once per test process (a real process to kill -9).
pub fn node_daemon_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace holds the crate");
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "node-daemon",
                "--bin",
                "node-daemon",
            ])
            .current_dir(workspace)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building node-daemon failed");
        // Test binaries live in <target>/<profile>/deps; the daemon one level up.
        let test_binary = std::env::current_exe().expect("the test binary's path");
        let profile_dir = test_binary
            .parent()
            .and_then(Path::parent)
            .expect("<target>/<profile>");
        let binary = profile_dir.join("node-daemon");
        assert!(binary.exists(), "{} is missing", binary.display());
        binary
    })
}

/// A node daemon running as a child process, with its log in the system's temp dir.
pub struct NodeProcess {
    pub node_id: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log file");
        let child = Command::new(node_daemon_binary())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().expect("daemon log file"))
            .stderr(log)
            .spawn()
            .expect("node-daemon starts");
        self.child = Some(child);
    }

    /// SIGKILL: the daemon gets no chance to say it is stopping.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`) with kill(1).
    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the daemon runs");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A binary of this workspace (`scheduler-worker`, `api-gateway`), built once per test process,
/// so a service can run as a real process to kill with SIGKILL.
pub fn workspace_binary(package: &'static str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(&'static str, PathBuf)>> =
        std::sync::Mutex::new(Vec::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, binary)) = built.iter().find(|(name, _)| *name == package) {
        return binary.clone();
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the crate");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", package, "--bin", package])
        .current_dir(workspace)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {package} failed");
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>");
    let binary = profile_dir.join(package);
    assert!(binary.exists(), "{} is missing", binary.display());
    built.push((package, binary.clone()));
    binary
}

/// A scheduler replica or a gateway running as a child process, its log in the system's temp
/// dir. Killed (SIGKILL) when dropped.
pub struct ServiceProcess {
    pub name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl ServiceProcess {
    fn spawn(binary: &Path, name: String, args: &[String], log: PathBuf, rust_log: &str) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("service log file");
        let child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(file.try_clone().expect("service log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| panic!("{} starts: {error}", binary.display()));
        Self {
            name,
            log,
            child: Some(child),
        }
    }

    /// SIGKILL: no clean shutdown, no acknowledgement of the work it holds.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until `ready` says the service is up; fails the test, with the service's log, if
    /// it exits or takes more than 30 s.
    pub async fn wait_until_started(
        &mut self,
        mut ready: impl AsyncFnMut(&ServiceProcess) -> bool,
    ) {
        let started = Instant::now();
        while !ready(self).await {
            assert!(
                self.is_running(),
                "{} exited at start: {}",
                self.name,
                self.log()
            );
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} not ready within 30 s: {}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct System {
    pub nats: NatsServer,
    /// The gateway's internal listener, when started with a token.
    pub internal: Option<String>,
    processes: Vec<NodeProcess>,
    /// Scheduler replicas and gateways started as processes.
    pub service_processes: Vec<ServiceProcess>,
    /// The flags the in-process scheduler was started with; replicas get the same.
    scheduler_flags: Vec<String>,
    pub network: String,
    pub node_ids: Vec<String>,
    pub database: PathBuf,
    pub gateway: String,
    pub http: reqwest::Client,
    cancel: CancellationToken,
    nodes: Vec<(CancellationToken, ServiceHandle)>,
    services: Vec<ServiceHandle>,
    _dir: tempfile::TempDir,
}

impl System {
    /// NATS, one scheduler and the gateway; no node yet.
    pub async fn without_nodes() -> Self {
        Self::start(Options::default()).await
    }

    /// NATS, one scheduler and the gateway as `options` say; no node yet.
    pub async fn start(options: Options) -> Self {
        let nats = NatsServer::start().expect("nats-server starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let database = dir.path().join("sandbox.db");
        let cancel = CancellationToken::new();
        let mut services = Vec::new();

        let mut scheduler_args = vec![
            "scheduler-worker".to_owned(),
            "--nats-url".to_owned(),
            nats.url(),
            "--database-url".to_owned(),
            format!("sqlite://{}", database.display()),
            "--node-timeout".to_owned(),
            "20s".to_owned(),
        ];
        scheduler_args.extend(options.scheduler_flags.iter().cloned());
        let scheduler =
            scheduler_worker::Config::try_parse_from(scheduler_args).expect("scheduler config");
        let running = scheduler_worker::start(scheduler, cancel.clone())
            .await
            .expect("scheduler starts");
        services.push(tokio::spawn(running.wait()));

        let mut gateway_args = vec![
            "api-gateway".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--nats-url".to_owned(),
            nats.url(),
            "--create-wait".to_owned(),
            "30s".to_owned(),
            "--internal-listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        if let Some(token) = &options.internal_token {
            gateway_args.extend(["--internal-token".to_owned(), token.clone()]);
        }
        let gateway = api_gateway::Config::try_parse_from(gateway_args).expect("gateway config");
        let running = api_gateway::start(gateway, cancel.clone())
            .await
            .expect("gateway starts");
        let gateway = format!("http://{}", running.local_addr());
        let internal = running
            .internal_addr()
            .map(|address| format!("http://{address}"));
        services.push(tokio::spawn(running.wait()));

        Self {
            nats,
            internal,
            processes: Vec::new(),
            service_processes: Vec::new(),
            scheduler_flags: options.scheduler_flags.clone(),
            network: testkit::unique_name("sbx-net"),
            node_ids: Vec::new(),
            database,
            gateway,
            http: reqwest::Client::new(),
            cancel,
            nodes: Vec::new(),
            services,
            _dir: dir,
        }
    }

    /// The system with one node daemon, waiting until the scheduler sees it online.
    pub async fn with_node() -> Self {
        let mut system = Self::without_nodes().await;
        system.start_node().await;
        system
    }

    /// Starts another node daemon on this host, with its own node id.
    pub async fn start_node(&mut self) -> String {
        self.start_node_with(&[]).await
    }

    /// Starts another node daemon with extra flags (say, `--max-containers 1`).
    pub async fn start_node_with(&mut self, extra_flags: &[&str]) -> String {
        let node_id = self.start_node_unchecked(extra_flags).await;
        self.wait_until_online(&node_id).await;
        node_id
    }

    /// Starts a node daemon in this process without waiting for a scheduler to take it.
    pub async fn start_node_unchecked(&mut self, extra_flags: &[&str]) -> String {
        let node_id = testkit::unique_name("node");
        let nats_url = self.nats.url();
        let mut args = vec![
            "node-daemon",
            "--nats-url",
            &nats_url,
            "--node-id",
            &node_id,
            "--network",
            &self.network,
            "--heartbeat-interval",
            "500ms",
        ];
        args.extend_from_slice(extra_flags);
        let config = node_daemon::Config::try_parse_from(args).expect("node config");
        let cancel = self.cancel.child_token();
        let running = node_daemon::start(config, cancel.clone())
            .await
            .expect("node daemon starts");
        self.nodes.push((cancel, tokio::spawn(running.wait())));
        self.node_ids.push(node_id.clone());
        node_id
    }

    /// Starts a node daemon as a child process (the real binary) with `heartbeat` as its
    /// interval, and waits until it is online.
    pub async fn start_node_process(&mut self, heartbeat: &str) -> String {
        self.start_node_process_with(heartbeat, &[]).await
    }

    /// Starts a node daemon process with `heartbeat` as its interval and extra flags (say,
    /// `--max-containers 4`), and waits until it is online.
    pub async fn start_node_process_with(
        &mut self,
        heartbeat: &str,
        extra_flags: &[&str],
    ) -> String {
        let node_id = testkit::unique_name("proc");
        let mut args = vec![
            "--nats-url".to_owned(),
            self.nats.url(),
            "--node-id".to_owned(),
            node_id.clone(),
            "--network".to_owned(),
            self.network.clone(),
            "--heartbeat-interval".to_owned(),
            heartbeat.to_owned(),
        ];
        args.extend(extra_flags.iter().map(|flag| (*flag).to_owned()));
        let mut process = NodeProcess {
            log: self._dir.path().join(format!("{node_id}.log")),
            node_id: node_id.clone(),
            args,
            child: None,
        };
        process.spawn();
        self.processes.push(process);
        self.node_ids.push(node_id.clone());
        self.wait_until_online(&node_id).await;
        node_id
    }

    /// Starts another scheduler replica as a process (the real binary), on the same database
    /// and NATS, with the flags of the in-process one plus `extra_flags`; returns its index in
    /// `service_processes` once it logged that it is ready. `rust_log` is its `RUST_LOG`.
    pub async fn start_scheduler_process(&mut self, extra_flags: &[&str], rust_log: &str) -> usize {
        let name = testkit::unique_name("scheduler");
        let mut args = vec![
            "--nats-url".to_owned(),
            self.nats.url(),
            "--database-url".to_owned(),
            format!("sqlite://{}", self.database.display()),
            "--node-timeout".to_owned(),
            "20s".to_owned(),
        ];
        args.extend(self.scheduler_flags.iter().cloned());
        args.extend(extra_flags.iter().map(|flag| (*flag).to_owned()));
        let log = self._dir.path().join(format!("{name}.log"));
        let mut process = ServiceProcess::spawn(
            &workspace_binary("scheduler-worker"),
            name.clone(),
            &args,
            log,
            rust_log,
        );
        process
            .wait_until_started(async |process: &ServiceProcess| {
                process.log().contains("scheduler worker ready")
            })
            .await;
        self.service_processes.push(process);
        self.service_processes.len() - 1
    }

    /// Starts another gateway as a process on a free port; returns its base URL once
    /// `/healthz` answers 200.
    pub async fn start_gateway_process(&mut self) -> String {
        let name = testkit::unique_name("gateway");
        let port = testkit::free_port().expect("a free port");
        let args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--nats-url".to_owned(),
            self.nats.url(),
            "--create-wait".to_owned(),
            "30s".to_owned(),
        ];
        let log = self._dir.path().join(format!("{name}.log"));
        let mut process = ServiceProcess::spawn(
            &workspace_binary("api-gateway"),
            name.clone(),
            &args,
            log,
            "info",
        );
        let base = format!("http://127.0.0.1:{port}");
        let http = &self.http;
        let health = format!("{base}/healthz");
        process
            .wait_until_started(async |_: &ServiceProcess| {
                http.get(&health)
                    .send()
                    .await
                    .is_ok_and(|response| response.status() == 200)
            })
            .await;
        self.service_processes.push(process);
        base
    }

    fn process(&mut self, node_id: &str) -> &mut NodeProcess {
        self.processes
            .iter_mut()
            .find(|process| process.node_id == node_id)
            .expect("a node process of this system")
    }

    /// `kill -9` of a node daemon process.
    pub fn kill_node_process(&mut self, node_id: &str) {
        self.process(node_id).kill();
    }

    /// Freezes (`STOP`) or thaws (`CONT`) a node daemon process: a hung daemon, whose
    /// connections stay open.
    pub fn signal_node_process(&mut self, node_id: &str, signal: &str) {
        self.process(node_id).signal(signal);
    }

    /// Starts a killed node daemon process again, with the same flags.
    pub fn restart_node_process(&mut self, node_id: &str) {
        let process = self.process(node_id);
        process.kill();
        process.spawn();
    }

    pub fn node_process_log(&mut self, node_id: &str) -> String {
        self.process(node_id).log()
    }

    pub async fn wait_until_online(&self, node_id: &str) {
        self.wait_for_node(node_id, "online", Duration::from_secs(15))
            .await;
    }

    /// Polls the node until the API shows it with `status`; returns how long that took and
    /// every status seen on the way.
    pub async fn wait_for_node(
        &self,
        node_id: &str,
        wanted: &str,
        limit: Duration,
    ) -> (Duration, Vec<String>) {
        let started = Instant::now();
        let mut seen: Vec<String> = Vec::new();
        while started.elapsed() < limit {
            let (status, body) = self.get(&format!("/api/v1/nodes/{node_id}")).await;
            if status == 200
                && let Some(now) = body["status"].as_str()
            {
                if seen.last().map(String::as_str) != Some(now) {
                    seen.push(now.to_owned());
                }
                if now == wanted {
                    return (started.elapsed(), seen);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {node_id} was not {wanted} within {limit:?}; saw {seen:?}");
    }

    /// Polls the session until it has `wanted` status; returns it and how long that took.
    pub async fn wait_for_session(
        &self,
        id: &str,
        wanted: &str,
        limit: Duration,
    ) -> (serde_json::Value, Duration) {
        let started = Instant::now();
        let mut last = serde_json::Value::Null;
        while started.elapsed() < limit {
            let (status, session) = self.get(&format!("/api/v1/sessions/{id}")).await;
            if status == 200 && session["status"] == wanted {
                return (session, started.elapsed());
            }
            last = session;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("session {id} was not {wanted} within {limit:?}; last seen {last}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway)
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("GET answered");
        read(response).await
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE answered");
        read(response).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST answered");
        read(response).await
    }

    pub async fn put_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .http
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("PUT answered");
        read(response).await
    }

    /// A POST to the internal listener, with `token` as the bearer token if given.
    pub async fn post_internal(
        &self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let base = self
            .internal
            .as_deref()
            .expect("started with an internal token");
        let mut request = self.http.post(format!("{base}{path}")).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        read(request.send().await.expect("POST answered")).await
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST answered");
        read(response).await
    }

    /// Runs SQL against the scheduler's SQLite file, as an operator would.
    pub async fn sql_pool(&self) -> sqlx::SqlitePool {
        sqlx::SqlitePool::connect(&format!("sqlite://{}", self.database.display()))
            .await
            .expect("opens the database file")
    }
}

async fn read(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body read");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    (status, body)
}

impl Drop for System {
    fn drop(&mut self) {
        self.cancel.cancel();
        for service in &mut self.service_processes {
            service.kill();
        }
        for process in &mut self.processes {
            process.kill();
        }
        let node_ids = self.node_ids.clone();
        let network = self.network.clone();
        // Drop cannot await; clean up on a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async {
                // Let the daemons stop first, so they make nothing after the sweep.
                tokio::time::sleep(Duration::from_millis(300)).await;
                for node_id in &node_ids {
                    let _ = testkit::remove_docker_objects(node_id, &network).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// The Docker engine, for checking what the node daemon made.
pub fn docker() -> bollard::Docker {
    bollard::Docker::connect_with_local_defaults().expect("docker reachable")
}

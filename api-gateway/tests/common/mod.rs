//! The whole system in one test process: a real nats-server, the scheduler on a SQLite file,
//! node daemons on the real Docker engine, and the gateway on a free port. Everything it made
//! (containers, the network, the store) is removed when it is dropped.

#![allow(dead_code)] // Each test binary uses part of the harness.

use std::path::PathBuf;
use std::time::Duration;

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

pub struct System {
    pub nats: NatsServer,
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
        let nats = NatsServer::start().expect("nats-server starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let database = dir.path().join("sandbox.db");
        let cancel = CancellationToken::new();
        let mut services = Vec::new();

        let scheduler = scheduler_worker::Config::try_parse_from([
            "scheduler-worker",
            "--nats-url",
            &nats.url(),
            "--database-url",
            &format!("sqlite://{}", database.display()),
            "--node-timeout",
            "20s",
        ])
        .expect("scheduler config");
        let running = scheduler_worker::start(scheduler, cancel.clone())
            .await
            .expect("scheduler starts");
        services.push(tokio::spawn(running.wait()));

        let gateway = api_gateway::Config::try_parse_from([
            "api-gateway",
            "--listen",
            "127.0.0.1:0",
            "--nats-url",
            &nats.url(),
            "--create-wait",
            "30s",
        ])
        .expect("gateway config");
        let running = api_gateway::start(gateway, cancel.clone())
            .await
            .expect("gateway starts");
        let gateway = format!("http://{}", running.local_addr());
        services.push(tokio::spawn(running.wait()));

        Self {
            nats,
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
        self.wait_until_online(&node_id).await;
        node_id
    }

    async fn wait_until_online(&self, node_id: &str) {
        for _ in 0..100 {
            let (status, body) = self.get(&format!("/api/v1/nodes/{node_id}")).await;
            if status == 200 && body["status"] == "online" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {node_id} did not come online");
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

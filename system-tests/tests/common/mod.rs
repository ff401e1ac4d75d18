//! The whole system for one test, on `sandbox_ops::stack`: a real nats-server, the scheduler on
//! a SQLite file and the gateway on a free port (both in this process, see [`in_process`]), and
//! node daemons on the real Docker engine, in-process or as real processes. More scheduler
//! replicas and gateways run as processes of the workspace's binaries. Everything it made
//! (processes, containers, the network, the store) is removed when it is dropped.

#![allow(dead_code)] // Each test binary uses part of the harness.

pub mod in_process;

use std::time::{Duration, Instant};

use messages::session::CreateSession;
use sandbox_ops::stack::{
    Api, Binaries, DatabaseKind, Process, SchedulerReady, Spec, Stack, json_answer,
};
use sandbox_ops::testkit;
use serde_json::{Value, json};

use in_process::InProcess;

pub const EXECUTOR_IMAGE: &str = "sandbox-executor:v1.0";

/// A template whose containers sleep until removed (the busybox test image), so sessions run
/// until the test ends them whatever the executor image does.
pub const SLEEPER: &str = "sleeper";

/// How long a node daemon may take to show online.
const ONLINE_LIMIT: Duration = Duration::from_secs(15);

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

/// A create request for `template_id` as the gateway stores it, with no env and the
/// template's timeout.
pub fn create_request(
    session_id: &str,
    template_id: &str,
    requested_at: chrono::DateTime<chrono::Utc>,
) -> CreateSession {
    CreateSession {
        session_id: messages::SessionId::parse(session_id).expect("a valid session id"),
        template_id: template_id.to_owned(),
        env: Default::default(),
        requested_at,
        timeout_seconds: None,
    }
}

/// How a [`System`] is started.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Extra scheduler flags (say, `--registration-mode static`).
    pub scheduler_flags: Vec<String>,
    /// Starts the gateway's internal listener with this bearer token.
    pub internal_token: Option<String>,
}

pub struct System {
    /// The in-process gateway's base URL.
    pub gateway: String,
    /// The gateway's internal listener, when started with a token.
    pub internal: Option<String>,
    pub http: reqwest::Client,
    /// The scheduler flags every replica gets, in-process or not.
    scheduler_flags: Vec<String>,
    api: Api,
    in_process: InProcess,
    // Last: its drop stops the processes and removes the Docker objects.
    stack: Stack,
}

impl System {
    /// NATS, one scheduler and the gateway; no node yet.
    pub async fn without_nodes() -> Self {
        Self::start(Options::default()).await
    }

    /// NATS, one scheduler and the gateway as `options` say; no node yet.
    pub async fn start(options: Options) -> Self {
        let mut stack =
            Stack::start(Binaries::Cargo, DatabaseKind::Sqlite).expect("NATS and the database");
        let mut in_process = InProcess::new();
        let mut scheduler_flags = vec!["--node-timeout".to_owned(), "20s".to_owned()];
        scheduler_flags.extend(options.scheduler_flags);
        let mut flags = vec![
            "--nats-url".to_owned(),
            stack.nats_url(),
            "--database-url".to_owned(),
            stack.database_url(),
        ];
        flags.extend(scheduler_flags.iter().cloned());
        in_process.start_scheduler(&flags).await;

        let mut flags: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--nats-url",
            &stack.nats_url(),
            "--create-wait",
            "30s",
            "--internal-listen",
            "127.0.0.1:0",
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(token) = &options.internal_token {
            flags.extend(["--internal-token".to_owned(), token.clone()]);
        }
        let (gateway, internal) = in_process.start_gateway(&flags).await;
        stack.use_api(&gateway);
        Self {
            api: Api::new(&gateway),
            gateway,
            internal,
            http: reqwest::Client::new(),
            scheduler_flags,
            in_process,
            stack,
        }
    }

    /// The system with one node daemon, waiting until the scheduler sees it online.
    pub async fn with_node() -> Self {
        let mut system = Self::without_nodes().await;
        system.start_node().await;
        system
    }

    pub fn nats_url(&self) -> String {
        self.stack.nats_url()
    }

    /// The sandbox network every node daemon of the system is given.
    pub fn network(&self) -> &str {
        self.stack.network()
    }

    /// Every node daemon's id, in the order they were started.
    pub fn node_ids(&self) -> &[String] {
        self.stack.node_ids()
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
        let node_id = self.stack.new_node_id("node");
        let state_dir = self.stack.node_state_dir(&node_id);
        let mut flags: Vec<String> = [
            "--state-dir",
            &state_dir.to_string_lossy(),
            "--nats-url",
            &self.stack.nats_url(),
            "--node-id",
            &node_id,
            "--network",
            self.stack.network(),
            "--heartbeat-interval",
            "500ms",
        ]
        .map(str::to_owned)
        .to_vec();
        flags.extend(extra_flags.iter().map(|flag| (*flag).to_owned()));
        self.in_process.start_node(&flags).await;
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
        let spec = Spec::default()
            .option("--heartbeat-interval", heartbeat)
            .flags(extra_flags.iter().copied());
        self.stack
            .add_node(spec, ONLINE_LIMIT)
            .await
            .expect("the node daemon process is online")
    }

    /// Starts a node daemon process with extra environment variables (say, a `PATH` without
    /// iptables), and waits until it is online.
    pub async fn start_node_process_with_env(&mut self, env: &[(&str, &str)]) -> String {
        let spec = env.iter().fold(
            Spec::default().option("--heartbeat-interval", "500ms"),
            |spec, (key, value)| spec.env(key, *value),
        );
        self.stack
            .add_node(spec, ONLINE_LIMIT)
            .await
            .expect("the node daemon process is online")
    }

    /// The node daemon process of `node_id`: to kill, freeze, restart, or read its log.
    pub fn node_process(&mut self, node_id: &str) -> &mut Process {
        self.stack
            .node(node_id)
            .expect("a node process of this system")
    }

    /// Starts another scheduler replica as a process (the real binary), on the same database
    /// and NATS, with the flags of the in-process one plus `extra_flags`; returns its index for
    /// [`System::scheduler_process`] once it logged that it is ready. `rust_log` is its
    /// `RUST_LOG`.
    pub async fn start_scheduler_process(&mut self, extra_flags: &[&str], rust_log: &str) -> usize {
        let spec = Spec::default()
            .flags(self.scheduler_flags.iter().cloned())
            .flags(extra_flags.iter().copied())
            .log_level(rust_log);
        self.stack
            .add_scheduler(spec, SchedulerReady::Logged)
            .await
            .expect("the scheduler process is ready")
    }

    pub fn scheduler_process(&mut self, index: usize) -> &mut Process {
        self.stack
            .scheduler(index)
            .expect("a scheduler process of this system")
    }

    /// Starts another gateway as a process on a free port; returns its base URL once
    /// `/healthz` answers 200.
    pub async fn start_gateway_process(&mut self) -> String {
        self.stack
            .add_gateway(Spec::default().option("--create-wait", "30s"))
            .await
            .expect("the gateway process is up")
    }

    pub async fn wait_until_online(&self, node_id: &str) {
        self.wait_for_node(node_id, "online", ONLINE_LIMIT).await;
    }

    /// Polls the node until the API shows it with `status`; returns how long that took and
    /// every status seen on the way.
    pub async fn wait_for_node(
        &self,
        node_id: &str,
        wanted: &str,
        limit: Duration,
    ) -> (Duration, Vec<String>) {
        self.api
            .wait_for_node(node_id, wanted, limit)
            .await
            .unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// Polls the session until it has `wanted` status; returns it and how long that took.
    pub async fn wait_for_session(
        &self,
        id: &str,
        wanted: &str,
        limit: Duration,
    ) -> (Value, Duration) {
        let started = Instant::now();
        let mut last = Value::Null;
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

    /// Adds the [`SLEEPER`] template with `cpu` cores and `memory_mb` (16 processes).
    pub async fn add_sleeper_template(&self, cpu: f64, memory_mb: u64) {
        let image = testkit::ensure_test_image().expect("the test image is built");
        let template =
            json!({"id": SLEEPER, "image": image, "cpu": cpu, "memory": memory_mb, "pids": 16});
        let (status, body) = self.post_json("/api/v1/templates", &template).await;
        assert_eq!(status, 201, "{body}");
    }

    /// Creates a session as `body` asks and expects it running (201).
    pub async fn create_session(&self, body: Value) -> Value {
        let (status, session) = self.post_json("/api/v1/sessions", &body).await;
        assert_eq!(status, 201, "{session}");
        session
    }

    /// Publishes a create request straight to the stream, past the gateway, as a redelivery
    /// would bring it again; `msg_id` is what JetStream de-duplicates on.
    pub async fn publish_create(&self, request: &CreateSession, msg_id: &str) {
        let client = async_nats::connect(self.nats_url())
            .await
            .expect("connects");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(messages::headers::MSG_ID, msg_id);
        async_nats::jetstream::new(client)
            .publish_with_headers(
                messages::subjects::sessions_create(),
                headers,
                messages::encode(request).expect("encodes").into(),
            )
            .await
            .expect("published")
            .await
            .expect("stored");
    }

    pub fn url(&self, path: &str) -> String {
        self.api.url(path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        answer(self.http.get(self.url(path)), "GET").await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        answer(self.http.delete(self.url(path)), "DELETE").await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        answer(self.http.post(self.url(path)).json(body), "POST").await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> (u16, Value) {
        answer(self.http.put(self.url(path)).json(body), "PUT").await
    }

    /// A POST to the internal listener, with `token` as the bearer token if given.
    pub async fn post_internal(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let base = self
            .internal
            .as_deref()
            .expect("started with an internal token");
        let mut request = self.http.post(format!("{base}{path}")).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        answer(request, "POST").await
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        answer(request, "POST").await
    }

    /// Runs SQL against the scheduler's SQLite file, as an operator would.
    pub async fn sql_pool(&self) -> sqlx::SqlitePool {
        sqlx::SqlitePool::connect(&self.stack.database_url())
            .await
            .expect("opens the database file")
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.in_process.stop();
        // Let the in-process daemons stop first, so they make nothing after the clean-up.
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Sends `request`: its status and JSON body (the API answers JSON to everything).
pub async fn answer(request: reqwest::RequestBuilder, method: &str) -> (u16, Value) {
    json_answer(request)
        .await
        .unwrap_or_else(|error| panic!("{method} answered with JSON: {error:#}"))
}

/// The Docker engine, for checking what the node daemon made.
pub fn docker() -> bollard::Docker {
    bollard::Docker::connect_with_local_defaults().expect("docker reachable")
}

//! `sandbox-bench`: the benchmark of issue 5. It brings up what each measurement needs (a private
//! `nats-server` with JetStream, scheduler replicas, the gateway, and either a simulated fleet or
//! a real node daemon, all from the release binaries, with a SQLite database in a temp dir),
//! measures, tears everything down (child processes killed, containers it made removed) and
//! prints one table, also written as JSON. Run it through `ops/bench/run.sh`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Utc;
use clap::Parser as _;
use futures::StreamExt as _;
use messages::api::{ApiRequest as _, GetNode, ListNodes, NodeHealth, NodeInfo};
use messages::headers::{MSG_ID, SCHEMA_VERSION, SCHEMA_VERSION_HEADER};
use messages::session::{CreateSession, Session, SessionStatus};
use messages::simulation::{FleetStats, FleetStatsRequest, NodesSilenced, SilenceNodes};
use messages::{NodeId, Reply, SessionId, subjects};
use sandbox_ops::testkit::{self, NatsServer};
use serde_json::json;

/// The executor image and the template the measurements use.
const IMAGE: &str = "sandbox-executor:v1.0";
const TEMPLATE: &str = "python-basic";
/// Capacity of each simulated node: small, so the admission rule is exercised.
const SIM_MAX_CONTAINERS: u32 = 16;
const SIM_CPU_CORES: u32 = 16;
const SIM_MEMORY_MB: u32 = 16_384;
/// Warm containers per node in the warm-pool measurement (b).
const WARM_POOL_SIZE: usize = 2;
/// How long the warm-pool measurement lets the host settle after the pool filled.
const WARM_POOL_SETTLE: Duration = Duration::from_secs(1);
/// A session placed through the fleet is announced within this, or counted lost.
const SETTLE_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, clap::Parser)]
#[command(
    name = "sandbox-bench",
    about = "Measures the control plane and prints one table"
)]
struct Args {
    /// Folder of the release binaries (scheduler-worker, api-gateway, node-daemon).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where the table is written as JSON.
    #[arg(long, default_value = ".run/bench.json")]
    json: PathBuf,
    /// Simulated fleet sizes for the placement runs (d, f, g).
    #[arg(long, default_value = "1000,10000", value_delimiter = ',')]
    fleet_sizes: Vec<u32>,
    /// Scheduler replica counts for the placement runs.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    replicas: Vec<usize>,
    /// Sessions placed per (fleet size, replicas) run: a few seconds of work, so the figure is
    /// the steady rate rather than the first burst's ramp.
    #[arg(long, default_value_t = 6000)]
    placements: usize,
    /// Creates in flight at once during a placement run.
    #[arg(long, default_value_t = 512)]
    in_flight: usize,
    /// SCHEDULER_MAX_IN_FLIGHT of each replica in the placement runs.
    #[arg(long, default_value_t = 256)]
    scheduler_max_in_flight: usize,
    /// Simulated nodes made silent for the detection measurement (f).
    #[arg(long, default_value_t = 20)]
    silent_nodes: usize,
    /// Nodes of the heartbeat-rate runs (e).
    #[arg(long, default_value_t = 10_000)]
    heartbeat_nodes: u32,
    /// Heartbeat intervals of the heartbeat-rate runs, in ms (10,000 nodes at 500 ms = 20,000/s).
    #[arg(long, default_value = "500", value_delimiter = ',')]
    heartbeat_intervals_ms: Vec<u64>,
    /// How long each heartbeat-rate run watches the node view, in seconds.
    #[arg(long, default_value_t = 20)]
    heartbeat_window_secs: u64,
    /// Samples of each side of the Docker comparisons (a, b, c).
    #[arg(long, default_value_t = 20)]
    docker_runs: usize,
    /// Skip the measurements that need Docker (a, b, c and the real node daemon's memory).
    #[arg(long)]
    skip_docker: bool,
}

// ---------------------------------------------------------------------------------------------
// The table.

#[derive(Debug, Clone)]
struct Row {
    id: &'static str,
    figure: String,
    measured: String,
    target: String,
    verdict: Verdict,
    json: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Miss,
    Info,
    NotMeasured,
}

impl Verdict {
    fn of(pass: bool) -> Self {
        if pass { Verdict::Pass } else { Verdict::Miss }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Miss => "MISS",
            Verdict::Info => "-",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// Latencies in milliseconds, with nearest-rank percentiles.
#[derive(Debug, Clone, Default)]
struct Latencies(Vec<f64>);

impl Latencies {
    fn percentile(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn summary(&self) -> String {
        format!(
            "p50 {:.1} / p95 {:.1} / p99 {:.1} ms",
            self.percentile(50.0),
            self.percentile(95.0),
            self.percentile(99.0)
        )
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "samples": self.0.len(),
            "p50_ms": self.percentile(50.0),
            "p95_ms": self.percentile(95.0),
            "p99_ms": self.percentile(99.0),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// A service started from a release binary; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn start(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; see {}",
                self.name,
                self.log.display()
            );
        }
        Ok(())
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resident memory of a process in MiB, from `/proc/<pid>/status`.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time (user + system) a process used so far, in seconds, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}

/// Samples the resident memory of `pids` until stopped; keeps each one's peak.
struct RssSampler {
    running: Arc<AtomicBool>,
    peaks: Arc<Mutex<BTreeMap<String, f64>>>,
    handle: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pids: Vec<(String, u32)>) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let peaks = Arc::new(Mutex::new(BTreeMap::new()));
        let handle = tokio::spawn({
            let (running, peaks) = (Arc::clone(&running), Arc::clone(&peaks));
            async move {
                while running.load(Ordering::Relaxed) {
                    for (name, pid) in &pids {
                        if let Some(rss) = rss_mb(*pid) {
                            let mut peaks: std::sync::MutexGuard<BTreeMap<String, f64>> =
                                peaks.lock().unwrap_or_else(PoisonError::into_inner);
                            let peak = peaks.entry(name.clone()).or_insert(0.0);
                            *peak = f64::max(*peak, rss);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Self {
            running,
            peaks,
            handle,
        }
    }

    async fn stop(self) -> BTreeMap<String, f64> {
        self.running.store(false, Ordering::Relaxed);
        let _ = self.handle.await;
        self.peaks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// NATS, scheduler replicas, a gateway, and the node side, in a temp dir.
struct Stack {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    nats: NatsServer,
    client: async_nats::Client,
    database_url: String,
    schedulers: Vec<Service>,
    gateway: Option<(Service, String)>,
    nodes: Option<Service>,
}

impl Stack {
    async fn start(bin_dir: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sandbox-bench-")
            .tempdir()
            .context("making the bench's temp dir")?;
        let nats = NatsServer::start()?;
        let client = async_nats::connect(nats.url())
            .await
            .context("connecting to the bench's NATS")?;
        let database_url = format!("sqlite://{}", dir.path().join("bench.db").display());
        Ok(Self {
            dir,
            bin_dir: bin_dir.to_owned(),
            nats,
            client,
            database_url,
            schedulers: Vec::new(),
            gateway: None,
            nodes: None,
        })
    }

    fn binary(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    async fn add_scheduler(&mut self, max_in_flight: usize) -> anyhow::Result<()> {
        let name = format!("scheduler-{}", self.schedulers.len() + 1);
        let env = [
            ("SCHEDULER_NATS_URL", self.nats.url()),
            ("DATABASE_URL", self.database_url.clone()),
            ("SCHEDULER_MAX_IN_FLIGHT", max_in_flight.to_string()),
            ("RUST_LOG", "warn".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
        ];
        let service = Service::start(
            &name,
            &self.binary("scheduler-worker"),
            &[],
            &env,
            self.dir.path(),
        )?;
        self.schedulers.push(service);
        // Ready once it answers the gateway's requests.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.list_nodes().await.is_err() {
            for scheduler in &mut self.schedulers {
                scheduler.check_alive()?;
            }
            if Instant::now() > deadline {
                bail!("{name} did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn add_gateway(&mut self) -> anyhow::Result<String> {
        let port = testkit::free_port()?;
        let internal = testkit::free_port()?;
        let env = [
            ("API_GATEWAY_NATS_URL", self.nats.url()),
            ("API_GATEWAY_LISTEN", format!("127.0.0.1:{port}")),
            (
                "API_GATEWAY_INTERNAL_LISTEN",
                format!("127.0.0.1:{internal}"),
            ),
            ("RUST_LOG", "warn".to_owned()),
        ];
        let mut service = Service::start(
            "api-gateway",
            &self.binary("api-gateway"),
            &[],
            &env,
            self.dir.path(),
        )?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http
                .get(format!("{url}/healthz"))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success())
            {
                break;
            }
            service.check_alive()?;
            if Instant::now() > deadline {
                bail!("the gateway did not answer /healthz within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.gateway = Some((service, url.clone()));
        Ok(url)
    }

    /// Starts `count` simulated nodes and waits until the schedulers see them all online.
    async fn add_fleet(&mut self, count: u32, interval_ms: u64) -> anyhow::Result<Duration> {
        let args: Vec<String> = [
            "--simulate-nodes",
            &count.to_string(),
            "--node-id-prefix",
            "sim",
            "--heartbeat-interval",
            &format!("{interval_ms}ms"),
            "--max-containers",
            &SIM_MAX_CONTAINERS.to_string(),
            "--cpu-cores",
            &SIM_CPU_CORES.to_string(),
            "--memory-mb",
            &SIM_MEMORY_MB.to_string(),
            "--simulated-start-delay",
            "20ms",
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
        let env = [
            ("NODE_DAEMON_NATS_URL", self.nats.url()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        let started = Instant::now();
        let service = Service::start(
            "node-daemon-fleet",
            &self.binary("node-daemon"),
            &args,
            &env,
            self.dir.path(),
        )?;
        self.nodes = Some(service);
        self.wait_online(count as usize, Duration::from_secs(120))
            .await?;
        Ok(started.elapsed())
    }

    async fn add_real_node(&mut self, node_id: &str, network: &str) -> anyhow::Result<()> {
        let env = [
            ("NODE_DAEMON_NATS_URL", self.nats.url()),
            ("NODE_DAEMON_NODE_ID", node_id.to_owned()),
            ("NODE_DAEMON_NETWORK", network.to_owned()),
            // The comparisons run one sandbox at a time; on a 2-core host the engine's own CPU
            // count would leave no room while a removed session's share is being given back.
            ("NODE_DAEMON_CPU_CORES", "8".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        let service = Service::start(
            "node-daemon",
            &self.binary("node-daemon"),
            &[],
            &env,
            self.dir.path(),
        )?;
        self.nodes = Some(service);
        self.wait_online(1, Duration::from_secs(60)).await
    }

    async fn wait_online(&mut self, count: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let online = self
                .list_nodes()
                .await
                .map(|nodes| {
                    nodes
                        .iter()
                        .filter(|node| node.status == NodeHealth::Online)
                        .count()
                })
                .unwrap_or(0);
            if online >= count {
                return Ok(());
            }
            if let Some(nodes) = &mut self.nodes {
                nodes.check_alive()?;
            }
            if Instant::now() > deadline {
                bail!("only {online} of {count} nodes online after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn request<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        subject: String,
        payload: &Req,
        timeout: Duration,
    ) -> anyhow::Result<Resp> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(SCHEMA_VERSION_HEADER, SCHEMA_VERSION.to_string().as_str());
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(messages::encode(payload)?.into())
            .timeout(Some(timeout));
        let answer = self
            .client
            .send_request(subject.clone(), request)
            .await
            .with_context(|| format!("request on {subject}"))?;
        match messages::decode::<Reply<Resp>>(&answer.payload)? {
            Reply::Ok(value) => Ok(value),
            Reply::Error(error) => bail!("{subject}: {error}"),
        }
    }

    async fn list_nodes(&self) -> anyhow::Result<Vec<NodeInfo>> {
        self.request(
            subjects::api(ListNodes::OP).to_owned(),
            &ListNodes {},
            Duration::from_secs(10),
        )
        .await
    }

    async fn fleet_stats(&self) -> anyhow::Result<FleetStats> {
        self.request(
            subjects::simulation_stats().to_owned(),
            &FleetStatsRequest {},
            Duration::from_secs(10),
        )
        .await
    }

    /// The pids of the running services, by name.
    fn pids(&self) -> Vec<(String, u32)> {
        let mut pids: Vec<(String, u32)> = self
            .schedulers
            .iter()
            .chain(self.gateway.iter().map(|(service, _)| service))
            .chain(self.nodes.iter())
            .map(|service| (service.name.clone(), service.pid()))
            .collect();
        pids.push(("nats-server".to_owned(), self.nats.pid()));
        pids
    }

    fn rss(&self) -> BTreeMap<String, f64> {
        self.pids()
            .into_iter()
            .filter_map(|(name, pid)| rss_mb(pid).map(|rss| (name, rss)))
            .collect()
    }

    fn cpu(&self) -> BTreeMap<String, f64> {
        self.pids()
            .into_iter()
            .filter_map(|(name, pid)| cpu_seconds(pid).map(|cpu| (name, cpu)))
            .collect()
    }

    /// Scheduler log lines (JSON) with `message`, by the node they name.
    fn scheduler_events(&self, message: &str) -> Vec<String> {
        let mut nodes = Vec::new();
        for scheduler in &self.schedulers {
            let Ok(log) = std::fs::read_to_string(&scheduler.log) else {
                continue;
            };
            for line in log.lines() {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let fields = &value["fields"];
                if fields["message"] == message
                    && let Some(node) = fields["node"].as_str()
                {
                    nodes.push(node.to_owned());
                }
            }
        }
        nodes
    }
}

// ---------------------------------------------------------------------------------------------
// d. Placements.

#[derive(Debug)]
struct PlacementRun {
    latencies: Latencies,
    per_second: f64,
    failed: BTreeMap<String, usize>,
    unanswered: usize,
    cpu_cores: BTreeMap<String, f64>,
    peak_rss: BTreeMap<String, f64>,
}

/// Publishes `count` creates on `sessions.create` with `in_flight` outstanding, and times each
/// from its publish to its settled announcement on `sessions.status.<id>`.
async fn place_sessions(
    stack: &Stack,
    count: usize,
    in_flight: usize,
) -> anyhow::Result<PlacementRun> {
    let client = &stack.client;
    let mut statuses = client
        .subscribe(subjects::session_status_all())
        .await
        .context("subscribing to session announcements")?;
    let jetstream = async_nats::jetstream::new(client.clone());
    let started: Arc<Mutex<HashMap<SessionId, Instant>>> = Arc::default();
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let cpu_before = stack.cpu();
    let sampler = RssSampler::start(stack.pids());
    let begun = Instant::now();

    let receiver = tokio::spawn({
        let (started, permits) = (Arc::clone(&started), Arc::clone(&permits));
        async move {
            let mut latencies = Vec::with_capacity(count);
            let mut failed: BTreeMap<String, usize> = BTreeMap::new();
            let mut last = Instant::now();
            let deadline = tokio::time::Instant::now() + SETTLE_DEADLINE;
            while latencies.len() + failed.values().sum::<usize>() < count {
                let message = match tokio::time::timeout_at(deadline, statuses.next()).await {
                    Ok(Some(message)) => message,
                    _ => break,
                };
                let Ok(session) = messages::decode::<Session>(&message.payload) else {
                    continue;
                };
                if !session.status.is_settled() {
                    continue;
                }
                let Some(start) = started
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&session.id)
                else {
                    continue;
                };
                last = Instant::now();
                permits.add_permits(1);
                if session.status == SessionStatus::Running {
                    latencies.push(last.duration_since(start).as_secs_f64() * 1000.0);
                } else {
                    let code = session
                        .failure_code
                        .map_or_else(|| session.status.to_string(), |code| code.to_string());
                    *failed.entry(code).or_default() += 1;
                }
            }
            (latencies, failed, last)
        }
    });

    let mut acks = tokio::task::JoinSet::new();
    for _ in 0..count {
        permits.acquire().await?.forget();
        let session_id = SessionId::parse(uuid::Uuid::now_v7().to_string())?;
        let request = CreateSession {
            session_id: session_id.clone(),
            template_id: TEMPLATE.to_owned(),
            env: BTreeMap::new(),
            requested_at: Utc::now(),
            timeout_seconds: Some(3600),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(SCHEMA_VERSION_HEADER, SCHEMA_VERSION.to_string().as_str());
        headers.insert(MSG_ID, session_id.as_str());
        started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(session_id, Instant::now());
        let ack = jetstream
            .publish_with_headers(
                subjects::sessions_create(),
                headers,
                messages::encode(&request)?.into(),
            )
            .await
            .context("publishing a create")?;
        acks.spawn(ack.into_future());
        while let Some(done) = acks.try_join_next() {
            done?.context("JetStream did not store a create")?;
        }
    }
    while let Some(done) = acks.join_next().await {
        done?.context("JetStream did not store a create")?;
    }
    let (latencies, failed, last) = receiver.await?;
    let wall = last.duration_since(begun).as_secs_f64();
    let peak_rss = sampler.stop().await;
    let cpu_after = stack.cpu();
    let cpu_cores = cpu_after
        .iter()
        .filter_map(|(name, after)| {
            let before = cpu_before.get(name)?;
            Some((name.clone(), (after - before) / wall))
        })
        .collect();
    let unanswered = count - latencies.len() - failed.values().sum::<usize>();
    Ok(PlacementRun {
        per_second: latencies.len() as f64 / wall,
        latencies: Latencies(latencies),
        failed,
        unanswered,
        cpu_cores,
        peak_rss,
    })
}

fn format_map(map: &BTreeMap<String, f64>, unit: &str) -> String {
    map.iter()
        .map(|(name, value)| format!("{name} {value:.2}{unit}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// f. Detection of silent nodes.

#[derive(Debug)]
struct Detection {
    latencies: Latencies,
    undetected: usize,
}

async fn detect_silent(stack: &Stack, node_ids: Vec<NodeId>) -> anyhow::Result<Detection> {
    let silenced: NodesSilenced = stack
        .request(
            subjects::simulation_silence().to_owned(),
            &SilenceNodes {
                node_ids: node_ids.clone(),
            },
            Duration::from_secs(5),
        )
        .await?;
    let begun = Instant::now();
    if silenced.silenced as usize != node_ids.len() {
        bail!(
            "the fleet silenced {} of {} nodes",
            silenced.silenced,
            node_ids.len()
        );
    }
    let mut waiting: HashSet<NodeId> = node_ids.into_iter().collect();
    let mut latencies = Vec::new();
    let deadline = begun + Duration::from_secs(90);
    while !waiting.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut offline = Vec::new();
        for node_id in &waiting {
            let info: anyhow::Result<NodeInfo> = stack
                .request(
                    subjects::api(GetNode::OP).to_owned(),
                    &GetNode {
                        node_id: node_id.clone(),
                    },
                    Duration::from_secs(5),
                )
                .await;
            if info.is_ok_and(|info| info.status == NodeHealth::Offline) {
                offline.push(node_id.clone());
            }
        }
        for node_id in offline {
            waiting.remove(&node_id);
            latencies.push(begun.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(Detection {
        latencies: Latencies(latencies),
        undetected: waiting.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// e. Heartbeat rate.

#[derive(Debug)]
struct HeartbeatRun {
    nodes: u32,
    interval_ms: u64,
    delivered_per_second: f64,
    max_age_intervals: f64,
    p99_age_intervals: f64,
    suspect_events: usize,
    cpu_cores: BTreeMap<String, f64>,
}

async fn heartbeat_rate(args: &Args, interval_ms: u64) -> anyhow::Result<HeartbeatRun> {
    let mut stack = Stack::start(&args.bin_dir).await?;
    stack.add_scheduler(args.scheduler_max_in_flight).await?;
    let registered_in = stack.add_fleet(args.heartbeat_nodes, interval_ms).await?;
    eprintln!(
        "  {} nodes at {interval_ms} ms registered and online in {:.1} s",
        args.heartbeat_nodes,
        registered_in.as_secs_f64()
    );
    let interval = Duration::from_millis(interval_ms);
    tokio::time::sleep(interval * 3).await;
    let suspect_before = stack.scheduler_events("node missed two heartbeats").len();
    let stats_before = stack.fleet_stats().await?;
    let cpu_before = stack.cpu();
    let begun = Instant::now();
    let mut ages = Vec::new();
    let mut max_age: f64 = 0.0;
    while begun.elapsed() < Duration::from_secs(args.heartbeat_window_secs) {
        let nodes = stack.list_nodes().await?;
        let now = Utc::now();
        for node in &nodes {
            if let Some(at) = node.last_heartbeat_at {
                let age = (now - at).num_milliseconds() as f64 / interval_ms as f64;
                max_age = max_age.max(age);
                ages.push(age);
            }
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let wall = begun.elapsed().as_secs_f64();
    let stats_after = stack.fleet_stats().await?;
    let cpu_after = stack.cpu();
    let suspect_events =
        stack.scheduler_events("node missed two heartbeats").len() - suspect_before;
    Ok(HeartbeatRun {
        nodes: args.heartbeat_nodes,
        interval_ms,
        delivered_per_second: (stats_after.heartbeats - stats_before.heartbeats) as f64 / wall,
        max_age_intervals: max_age,
        p99_age_intervals: Latencies(ages).percentile(99.0),
        suspect_events,
        cpu_cores: cpu_after
            .iter()
            .filter_map(|(name, after)| {
                Some((name.clone(), (after - cpu_before.get(name)?) / wall))
            })
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// a, b, c. Against Docker.

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `docker run -d -i` with the isolation and limits the node daemon applies to `python-basic`.
const DOCKER_RUN: &[&str] = &[
    "run",
    "-d",
    "-i",
    "--init",
    "--network",
    "none",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--memory",
    "512m",
    "--memory-swap",
    "512m",
    "--cpus",
    "1",
    "--pids-limit",
    "256",
    "--label",
    "io.sandbox.bench=1",
    IMAGE,
];

async fn create_session(
    http: &reqwest::Client,
    url: &str,
    template: &str,
) -> anyhow::Result<serde_json::Value> {
    let response = http
        .post(format!("{url}/api/v1/sessions"))
        .json(&json!({ "template_id": template }))
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    if status.as_u16() != 201 {
        bail!("create answered {status}: {body}");
    }
    Ok(body)
}

async fn delete_session(http: &reqwest::Client, url: &str, id: &str) -> anyhow::Result<()> {
    http.delete(format!("{url}/api/v1/sessions/{id}"))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

struct DockerResults {
    cold: (Latencies, Latencies),
    warm: Option<Latencies>,
    warm_note: String,
    exec: (Latencies, Latencies),
    node_daemon_idle_rss: Option<f64>,
}

async fn against_docker(args: &Args) -> anyhow::Result<DockerResults> {
    let mut stack = Stack::start(&args.bin_dir).await?;
    stack.add_scheduler(64).await?;
    let url = stack.add_gateway().await?;
    let node_id = testkit::unique_name("bench");
    let network = testkit::unique_name("bench-net");
    let result = async {
        stack.add_real_node(&node_id, &network).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let node_daemon_idle_rss = stack.nodes.as_ref().and_then(|node| rss_mb(node.pid()));
        let http = reqwest::Client::new();
        let runs = args.docker_runs;

        // a. Cold create, alternating with docker run.
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let start = Instant::now();
            let session = create_session(&http, &url, TEMPLATE).await?;
            ours.push(ms_since(start));
            delete_session(&http, &url, session["id"].as_str().unwrap_or_default()).await?;
            let start = Instant::now();
            let container = docker(DOCKER_RUN)?;
            theirs.push(ms_since(start));
            docker(&["rm", "-f", &container])?;
        }
        let cold = (Latencies(ours), Latencies(theirs));

        // b. From a warm pool, when templates have one.
        let (warm, warm_note) = warm_pool(&http, &url, runs).await;

        // c. print(1), alternating with docker exec, in one session.
        let session = create_session(&http, &url, TEMPLATE).await?;
        let id = session["id"].as_str().unwrap_or_default().to_owned();
        let container = session["container_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let run = || async {
            let response = http
                .post(format!("{url}/api/v1/sessions/{id}/executions"))
                .json(&json!({ "code": "print(1)" }))
                .send()
                .await?;
            let body: serde_json::Value = response.json().await?;
            if body["stdout"] != "1\n" {
                bail!("print(1) answered {body}");
            }
            anyhow::Ok(())
        };
        run().await?;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let start = Instant::now();
            run().await?;
            ours.push(ms_since(start));
            let start = Instant::now();
            let out = docker(&["exec", &container, "python3", "-c", "print(1)"])?;
            theirs.push(ms_since(start));
            if out != "1" {
                bail!("docker exec printed {out:?}");
            }
        }
        delete_session(&http, &url, &id).await?;
        anyhow::Ok(DockerResults {
            cold,
            warm,
            warm_note,
            exec: (Latencies(ours), Latencies(theirs)),
            node_daemon_idle_rss,
        })
    }
    .await;
    if let Some(mut node) = stack.nodes.take() {
        node.stop();
    }
    testkit::remove_docker_objects(&node_id, &network).await?;
    let _ = Command::new("sh")
        .args([
            "-c",
            "docker ps -aq --filter label=io.sandbox.bench=1 | xargs -r docker rm -f",
        ])
        .output();
    result
}

/// Session creates from a template with a warm pool, when the control plane has them.
async fn warm_pool(http: &reqwest::Client, url: &str, runs: usize) -> (Option<Latencies>, String) {
    let template = json!({
        "id": "bench-warm", "image": IMAGE, "cpu": 1, "memory": 512, "pids": 256,
        "warm_pool_size": WARM_POOL_SIZE,
    });
    let created = http
        .post(format!("{url}/api/v1/templates"))
        .json(&template)
        .send()
        .await;
    match created {
        Ok(response) if response.status().as_u16() == 201 => {}
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return (
                None,
                format!("templates take no warm_pool_size here ({status}: {body})"),
            );
        }
        Err(error) => return (None, format!("could not create the template: {error}")),
    }
    let mut samples = Vec::new();
    for _ in 0..runs {
        // Each create finds the pool full (filled, or refilled after the previous claim) and
        // the host idle again: a container that just started still busies the CPU while its
        // executor agent boots, which is the refill's cost, not the claim's.
        if let Err(error) = wait_for_full_pool("bench-warm", WARM_POOL_SIZE).await {
            return (None, error.to_string());
        }
        tokio::time::sleep(WARM_POOL_SETTLE).await;
        let start = Instant::now();
        match create_session(http, url, "bench-warm").await {
            Ok(session) => {
                samples.push(ms_since(start));
                let id = session["id"].as_str().unwrap_or_default();
                if let Err(error) = delete_session(http, url, id).await {
                    return (None, format!("delete failed: {error}"));
                }
            }
            Err(error) => return (None, format!("create failed: {error}")),
        }
    }
    let _ = http
        .delete(format!("{url}/api/v1/templates/bench-warm"))
        .send()
        .await;
    (
        Some(Latencies(samples)),
        format!(
            "pool of {WARM_POOL_SIZE} per node, each create {} s after the pool is full again",
            WARM_POOL_SETTLE.as_secs()
        ),
    )
}

/// Waits until `template_id`'s pool holds `size` running warm containers.
async fn wait_for_full_pool(template_id: &str, size: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while testkit::warm_containers(template_id).await?.len() < size {
        if Instant::now() > deadline {
            bail!("the warm pool of {template_id} did not fill to {size} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for binary in ["scheduler-worker", "api-gateway", "node-daemon"] {
        let path = args.bin_dir.join(binary);
        if !path.is_file() {
            bail!("{} is missing: cargo build --release", path.display());
        }
    }
    if args.fleet_sizes.is_empty() || args.replicas.is_empty() || args.placements == 0 {
        bail!("--fleet-sizes, --replicas and --placements must not be empty or zero");
    }
    let mut rows: Vec<Row> = Vec::new();
    let begun = Instant::now();

    // d, f, g: a simulated fleet per size; replicas added one at a time.
    let max_replicas = args.replicas.iter().copied().max().unwrap_or(1);
    let largest = args.fleet_sizes.iter().copied().max().unwrap_or(0);
    for &size in &args.fleet_sizes {
        eprintln!("== placements against {size} simulated nodes");
        let phase = async {
        let mut stack = Stack::start(&args.bin_dir).await?;
        stack.add_scheduler(args.scheduler_max_in_flight).await?;
        stack.add_gateway().await?;
        let registered_in = stack.add_fleet(size, 5000).await?;
        eprintln!(
            "  registered and online in {:.1} s",
            registered_in.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = stack.rss();
        if size == largest {
            rows.push(Row {
                id: "g",
                figure: format!("resident memory at idle, {size} simulated nodes"),
                measured: format_map(&idle, " MB"),
                target: "-".to_owned(),
                verdict: Verdict::Info,
                json: json!({ "rss_mb": idle }),
            });
        }
        for replicas in 1..=max_replicas {
            if replicas > 1 {
                stack.add_scheduler(args.scheduler_max_in_flight).await?;
                // The new replica asks every node to announce itself, and takes work only after
                // listening for one heartbeat interval (5 s): let both settle.
                stack
                    .wait_online(size as usize, Duration::from_secs(120))
                    .await?;
                tokio::time::sleep(Duration::from_secs(u64::from(size / 2000 + 6))).await;
            }
            if !args.replicas.contains(&replicas) {
                continue;
            }
            let run = place_sessions(&stack, args.placements, args.in_flight).await?;
            let stats = stack.fleet_stats().await?;
            eprintln!(
                "  {replicas} replica(s): {:.0}/s, {}, failed {:?}, unanswered {}, cpu {}",
                run.per_second,
                run.latencies.summary(),
                run.failed,
                run.unanswered,
                format_map(&run.cpu_cores, "")
            );
            let clean = stats.over_capacity_nodes == 0
                && stats.peak_containers <= SIM_MAX_CONTAINERS
                && run.unanswered == 0;
            let pass = size < 10_000 || run.per_second >= 2000.0;
            rows.push(Row {
                id: "d",
                figure: format!("placements, {size} nodes, {replicas} replica(s)"),
                measured: format!(
                    "{:.0}/s, {}; over-commit {}, refusals {}, failed {}, unanswered {}",
                    run.per_second,
                    run.latencies.summary(),
                    stats.over_capacity_nodes,
                    stats.refused,
                    run.failed.values().sum::<usize>(),
                    run.unanswered
                ),
                target: if size >= 10_000 {
                    "≥ 2,000/s, zero over-commit".to_owned()
                } else {
                    "zero over-commit".to_owned()
                },
                verdict: Verdict::of(pass && clean),
                json: json!({
                    "nodes": size, "replicas": replicas, "placements": args.placements,
                    "in_flight": args.in_flight, "per_second": run.per_second,
                    "latency": run.latencies.json(), "failed": run.failed,
                    "unanswered": run.unanswered, "fleet": {
                        "over_capacity_nodes": stats.over_capacity_nodes,
                        "peak_containers": stats.peak_containers,
                        "max_containers": SIM_MAX_CONTAINERS,
                        "refused": stats.refused, "created": stats.created,
                    },
                    "cpu_cores": run.cpu_cores, "peak_rss_mb": run.peak_rss,
                }),
            });
            if size == largest && replicas == max_replicas {
                rows.push(Row {
                    id: "g",
                    figure: format!("peak resident memory under (d), {size} nodes"),
                    measured: format_map(&run.peak_rss, " MB"),
                    target: "node daemon ≤ 30 MB (real), scheduler ≤ 200 MB".to_owned(),
                    verdict: Verdict::of(
                        run.peak_rss
                            .iter()
                            .filter(|(name, _)| name.starts_with("scheduler"))
                            .all(|(_, rss)| *rss <= 200.0),
                    ),
                    json: json!({ "peak_rss_mb": run.peak_rss }),
                });
            }
        }

        // f. On the largest fleet: silence some nodes, time them to offline.
        if size == largest && args.silent_nodes > 0 {
            let step = (size as usize / args.silent_nodes).max(1);
            let silent: Vec<NodeId> = (0..args.silent_nodes)
                .map(|i| NodeId::parse(format!("sim-{:05}", (i * step + step / 2) % size as usize)))
                .collect::<Result<_, _>>()?;
            let detection = detect_silent(&stack, silent.clone()).await?;
            let silent_names: HashSet<String> =
                silent.iter().map(|id| id.as_str().to_owned()).collect();
            let false_offline = stack
                .scheduler_events("node is offline")
                .into_iter()
                .filter(|node| !silent_names.contains(node))
                .collect::<HashSet<_>>()
                .len();
            let p99_s = detection.latencies.percentile(99.0) / 1000.0;
            eprintln!(
                "  silent to offline: {}, undetected {}, healthy marked offline {false_offline}",
                detection.latencies.summary(),
                detection.undetected
            );
            rows.push(Row {
                id: "f",
                figure: format!(
                    "silent node to offline ({} of {size} nodes, 5 s heartbeats)",
                    args.silent_nodes
                ),
                measured: format!(
                    "p50 {:.2} / p95 {:.2} / p99 {:.2} s; healthy marked offline {false_offline}; undetected {}",
                    detection.latencies.percentile(50.0) / 1000.0,
                    detection.latencies.percentile(95.0) / 1000.0,
                    p99_s,
                    detection.undetected
                ),
                target: "p99 ≤ 15 s, zero false offlines".to_owned(),
                verdict: Verdict::of(
                    p99_s <= 15.0 && false_offline == 0 && detection.undetected == 0,
                ),
                json: json!({
                    "nodes": size, "silenced": args.silent_nodes,
                    "latency": detection.latencies.json(),
                    "healthy_marked_offline": false_offline,
                    "undetected": detection.undetected,
                }),
            });
        }
        drop(stack);
        anyhow::Ok(())
        }
        .await;
        if let Err(error) = phase {
            eprintln!("  failed: {error:#}");
            rows.push(failed("d", &format!("placements, {size} nodes"), &error));
        }
    }

    // e. Heartbeat rates.
    for &interval_ms in &args.heartbeat_intervals_ms {
        eprintln!(
            "== heartbeats: {} nodes every {interval_ms} ms",
            args.heartbeat_nodes
        );
        let run = match heartbeat_rate(&args, interval_ms).await {
            Ok(run) => run,
            Err(error) => {
                eprintln!("  failed: {error:#}");
                let figure = format!(
                    "heartbeats, {} nodes every {interval_ms} ms",
                    args.heartbeat_nodes
                );
                rows.push(failed("e", &figure, &error));
                continue;
            }
        };
        let rate = f64::from(run.nodes) * 1000.0 / run.interval_ms as f64;
        // The view lags by more than one interval when a node's last heartbeat is older than two
        // intervals (it would turn suspect).
        let kept_up = run.max_age_intervals <= 2.0 && run.suspect_events == 0;
        eprintln!(
            "  delivered {:.0}/s, node view age p99 {:.2} / max {:.2} intervals, suspect events {}, cpu {}",
            run.delivered_per_second,
            run.p99_age_intervals,
            run.max_age_intervals,
            run.suspect_events,
            format_map(&run.cpu_cores, "")
        );
        rows.push(Row {
            id: "e",
            figure: format!(
                "heartbeats absorbed, {} nodes every {interval_ms} ms ({rate:.0}/s offered)",
                run.nodes
            ),
            measured: format!(
                "{:.0}/s delivered; last-heartbeat age p99 {:.2}, max {:.2} intervals; suspect events {}",
                run.delivered_per_second,
                run.p99_age_intervals,
                run.max_age_intervals,
                run.suspect_events
            ),
            target: "≥ 20,000/s with the view within one interval".to_owned(),
            verdict: Verdict::of(kept_up && rate >= 20_000.0),
            json: json!({
                "nodes": run.nodes, "interval_ms": run.interval_ms, "offered_per_second": rate,
                "delivered_per_second": run.delivered_per_second,
                "age_p99_intervals": run.p99_age_intervals,
                "age_max_intervals": run.max_age_intervals,
                "suspect_events": run.suspect_events, "cpu_cores": run.cpu_cores,
            }),
        });
    }

    // a, b, c: real Docker, a real node daemon.
    if args.skip_docker {
        for (id, figure) in [
            ("a", "cold session create vs docker run -d"),
            ("b", "session create from a warm pool"),
            ("c", "print(1) round trip vs docker exec"),
        ] {
            rows.push(not_measured(id, figure, "--skip-docker"));
        }
    } else {
        eprintln!("== against Docker ({} runs each)", args.docker_runs);
        match against_docker(&args).await {
            Ok(results) => docker_rows(&mut rows, &results),
            Err(error) => {
                eprintln!("  failed: {error:#}");
                rows.push(failed(
                    "a",
                    "cold create, print(1) and warm pool against Docker",
                    &error,
                ));
            }
        }
    }

    rows.sort_by_key(|row| row.id);
    print_table(&rows);
    println!("(took {:.0} s)", begun.elapsed().as_secs_f64());
    let document = json!({
        "measured_at": Utc::now(),
        "seconds": begun.elapsed().as_secs_f64(),
        "rows": rows.iter().map(|row| json!({
            "id": row.id, "figure": row.figure, "measured": row.measured,
            "target": row.target, "verdict": row.verdict.as_str(), "data": row.json,
        })).collect::<Vec<_>>(),
    });
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&document)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!("written to {}", args.json.display());
    Ok(())
}

fn docker_rows(rows: &mut Vec<Row>, results: &DockerResults) {
    let ratio = |pair: &(Latencies, Latencies)| pair.0.percentile(50.0) / pair.1.percentile(50.0);
    let cold_ratio = ratio(&results.cold);
    rows.push(Row {
            id: "a",
            figure: "cold session create (HTTP, to running) vs docker run -d -i".to_owned(),
            measured: format!(
                "ours {}; docker {}; ratio of p50s {cold_ratio:.2}",
                results.cold.0.summary(),
                results.cold.1.summary()
            ),
            target: "ratio ≤ 1.10".to_owned(),
            verdict: Verdict::of(cold_ratio <= 1.10),
            json: json!({ "ours": results.cold.0.json(), "docker": results.cold.1.json(), "ratio_p50": cold_ratio }),
        });
    match &results.warm {
        Some(warm) => rows.push(Row {
            id: "b",
            figure: "session create from a warm pool (HTTP)".to_owned(),
            measured: warm.summary(),
            target: "p50 ≤ 15 ms, p99 ≤ 50 ms".to_owned(),
            verdict: Verdict::of(warm.percentile(50.0) <= 15.0 && warm.percentile(99.0) <= 50.0),
            json: json!({ "latency": warm.json(), "note": results.warm_note }),
        }),
        None => rows.push(not_measured(
            "b",
            "session create from a warm pool",
            &results.warm_note,
        )),
    }
    let exec_ratio = ratio(&results.exec);
    rows.push(Row {
            id: "c",
            figure: "print(1) round trip (HTTP) vs docker exec python3 -c".to_owned(),
            measured: format!(
                "ours {}; docker {}; ratio of p50s {exec_ratio:.2}",
                results.exec.0.summary(),
                results.exec.1.summary()
            ),
            target: "ratio ≤ 1.10".to_owned(),
            verdict: Verdict::of(exec_ratio <= 1.10),
            json: json!({ "ours": results.exec.0.json(), "docker": results.exec.1.json(), "ratio_p50": exec_ratio }),
        });
    if let Some(rss) = results.node_daemon_idle_rss {
        rows.push(Row {
            id: "g",
            figure: "resident memory, one real node daemon at idle".to_owned(),
            measured: format!("{rss:.1} MB"),
            target: "≤ 30 MB".to_owned(),
            verdict: Verdict::of(rss <= 30.0),
            json: json!({ "rss_mb": rss }),
        });
    }
}

/// A measurement that could not be taken, with the reason.
fn failed(id: &'static str, figure: &str, error: &anyhow::Error) -> Row {
    Row {
        id,
        figure: figure.to_owned(),
        measured: format!("failed: {error:#}"),
        target: "-".to_owned(),
        verdict: Verdict::Miss,
        json: json!({ "failed": format!("{error:#}") }),
    }
}

fn not_measured(id: &'static str, figure: &str, why: &str) -> Row {
    Row {
        id,
        figure: figure.to_owned(),
        measured: format!("not measured: {why}"),
        target: "-".to_owned(),
        verdict: Verdict::NotMeasured,
        json: json!({ "not_measured": why }),
    }
}

fn print_table(rows: &[Row]) {
    let width = rows.iter().map(|row| row.figure.len()).max().unwrap_or(0);
    println!("   | {:<width$} | measured | target | result", "figure");
    for row in rows {
        println!(
            "{:<2} | {:<width$} | {} | {} | {}",
            row.id,
            row.figure,
            row.measured,
            row.target,
            row.verdict.as_str()
        );
    }
}

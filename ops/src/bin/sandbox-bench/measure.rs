//! What the phases stand on and read: a [`Bench`] is a `sandbox_ops::stack::Stack` with the
//! gateway and a first scheduler replica, plus the benchmark's own NATS client for the node
//! view and the simulated fleet's counters; each process's memory and CPU time from `/proc`;
//! scheduler events from the replicas' JSON logs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use messages::api::nodes::{GetNode, ListNodes};
use messages::node::NodeInfo;
use messages::simulation::{FleetStats, FleetStatsRequest, NodesSilenced, SilenceNodes};
use messages::{NodeId, subjects};
use sandbox_ops::stack::{Binaries, DatabaseKind, SchedulerReady, Spec, Stack};
use service_kit::bus;

/// Capacity of each simulated node: small, so the admission rule is exercised.
pub const SIM_MAX_CONTAINERS: u32 = 16;
const SIM_CPU_CORES: u32 = 16;
const SIM_MEMORY_MB: u32 = 16_384;
/// How long a simulated fleet may take to register and show online.
const FLEET_ONLINE_LIMIT: Duration = Duration::from_secs(120);
/// How long the node view and the fleet's counters may take to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running stack under measurement and the benchmark's connection to its NATS.
pub struct Bench {
    pub stack: Stack,
    pub client: async_nats::Client,
}

impl Bench {
    /// NATS, SQLite, the gateway and one scheduler replica placing up to `max_in_flight` at
    /// once. The services log warnings only (the schedulers as JSON, for
    /// [`Bench::scheduler_events`]), so logging costs nothing under load.
    pub async fn start(binaries: &Binaries, max_in_flight: usize) -> anyhow::Result<Self> {
        let mut stack = Stack::start(binaries.clone(), DatabaseKind::Sqlite)?;
        stack.add_gateway(Spec::default().log_level("warn")).await?;
        let client = async_nats::connect(stack.nats_url())
            .await
            .context("connecting to the bench's NATS")?;
        let mut bench = Self { stack, client };
        bench.add_scheduler(max_in_flight).await?;
        Ok(bench)
    }

    /// Another scheduler replica. Its ready line is below the log level, so it counts as up
    /// once the API answers (at once, with other replicas up: callers let it settle).
    pub async fn add_scheduler(&mut self, max_in_flight: usize) -> anyhow::Result<()> {
        let spec = Spec::default()
            .option("--max-in-flight", max_in_flight)
            .env("LOG_FORMAT", "json")
            .log_level("warn");
        self.stack
            .add_scheduler(spec, SchedulerReady::ApiAnswers)
            .await?;
        Ok(())
    }

    /// Starts `count` simulated nodes heartbeating every `interval_ms`; returns how long until
    /// the API showed them all online.
    pub async fn add_fleet(&mut self, count: u32, interval_ms: u64) -> anyhow::Result<Duration> {
        let spec = Spec::default()
            .option("--node-id-prefix", "sim")
            .option("--heartbeat-interval", format!("{interval_ms}ms"))
            .option("--max-containers", SIM_MAX_CONTAINERS)
            .option("--cpu-cores", SIM_CPU_CORES)
            .option("--memory-mb", SIM_MEMORY_MB)
            .option("--simulated-start-delay", "20ms")
            .log_level("warn");
        let started = Instant::now();
        self.stack
            .add_simulated_fleet(count, spec, FLEET_ONLINE_LIMIT)
            .await?;
        Ok(started.elapsed())
    }

    /// The schedulers' node view, straight from NATS (no gateway in the measured path).
    pub async fn list_nodes(&self) -> anyhow::Result<Vec<NodeInfo>> {
        Ok(bus::api_request(&self.client, &ListNodes {}, REQUEST_TIMEOUT).await?)
    }

    pub async fn get_node(&self, node_id: &NodeId) -> anyhow::Result<NodeInfo> {
        let request = GetNode {
            node_id: node_id.clone(),
        };
        Ok(bus::api_request(&self.client, &request, Duration::from_secs(5)).await?)
    }

    /// The simulated fleet's counters.
    pub async fn fleet_stats(&self) -> anyhow::Result<FleetStats> {
        let subject = subjects::simulation_stats().to_owned();
        Ok(bus::request(
            &self.client,
            subject,
            &FleetStatsRequest {},
            REQUEST_TIMEOUT,
        )
        .await?)
    }

    /// Makes the simulated nodes `node_ids` go silent, as hung daemons would.
    pub async fn silence(&self, node_ids: Vec<NodeId>) -> anyhow::Result<NodesSilenced> {
        let subject = subjects::simulation_silence().to_owned();
        let request = SilenceNodes { node_ids };
        Ok(bus::request(&self.client, subject, &request, Duration::from_secs(5)).await?)
    }

    /// Resident memory of every process, in MiB, by name.
    pub fn rss(&self) -> BTreeMap<String, f64> {
        self.stack
            .pids()
            .into_iter()
            .filter_map(|(name, pid)| rss_mb(pid).map(|rss| (name, rss)))
            .collect()
    }

    /// CPU seconds every process used so far, by name.
    pub fn cpu(&self) -> BTreeMap<String, f64> {
        self.stack
            .pids()
            .into_iter()
            .filter_map(|(name, pid)| cpu_seconds(pid).map(|cpu| (name, cpu)))
            .collect()
    }

    /// The nodes named by the schedulers' log lines whose message is `message`.
    pub fn scheduler_events(&self, message: &str) -> Vec<String> {
        let mut nodes = Vec::new();
        for scheduler in self.stack.schedulers() {
            for line in scheduler.log().lines() {
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

/// Cores used per process between two [`Bench::cpu`] readings `wall` seconds apart.
pub fn cores_used(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    wall: f64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(name, after)| Some((name.clone(), (after - before.get(name)?) / wall)))
        .collect()
}

/// Resident memory of a process in MiB, from `/proc/<pid>/status`.
pub fn rss_mb(pid: u32) -> Option<f64> {
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
pub struct RssSampler {
    running: Arc<AtomicBool>,
    peaks: Arc<Mutex<BTreeMap<String, f64>>>,
    handle: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pids: Vec<(String, u32)>) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let peaks = Arc::new(Mutex::new(BTreeMap::new()));
        let handle = tokio::spawn({
            let (running, peaks) = (Arc::clone(&running), Arc::clone(&peaks));
            async move {
                while running.load(Ordering::Relaxed) {
                    for (name, pid) in &pids {
                        if let Some(rss) = rss_mb(*pid) {
                            let mut peaks = peaks.lock().unwrap_or_else(PoisonError::into_inner);
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

    pub async fn stop(self) -> BTreeMap<String, f64> {
        self.running.store(false, Ordering::Relaxed);
        let _ = self.handle.await;
        self.peaks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

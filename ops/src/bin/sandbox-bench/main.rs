//! `sandbox-bench`: the benchmark of issue 5. Each phase brings up what it measures on
//! `sandbox_ops::stack` (a private `nats-server` with JetStream, scheduler replicas, the gateway,
//! and either a simulated fleet or a real node daemon, all from the release binaries, with a
//! SQLite database in a temp dir), measures, and tears it all down (processes stopped, the
//! containers it made removed); the rows make one table, printed and written as JSON. Run it
//! through `ops/bench/run.sh`.
//!
//! Phases: [`placements`] (d, f, g), [`heartbeats`] (e), [`docker`] (a, b, c), [`density`]
//! (h, i); [`report`] is the
//! table, [`measure`] what the phases stand on and read.

mod density;
mod docker;
mod heartbeats;
mod measure;
mod placements;
mod report;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::Parser as _;
use sandbox_ops::stack::Binaries;

/// The executor image and the template the measurements use.
const IMAGE: &str = "sandbox-executor:v1.0";
const TEMPLATE: &str = "python-basic";

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
    /// The phases to run: placements (d, f, g), heartbeats (e), docker (a, b, c), density (h, i).
    #[arg(
        long,
        default_value = "placements,heartbeats,docker,density",
        value_delimiter = ','
    )]
    phases: Vec<String>,
    /// Idle sandboxes held on the host for the density measurement (h).
    #[arg(long, default_value = "0,100,500", value_delimiter = ',')]
    density_levels: Vec<u32>,
    /// Skip the measurements that need Docker (a, b, c and the real node daemon's memory).
    #[arg(long)]
    skip_docker: bool,
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        if self.fleet_sizes.is_empty() || self.replicas.is_empty() || self.placements == 0 {
            bail!("--fleet-sizes, --replicas and --placements must not be empty or zero");
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binaries = Binaries::in_dir(&args.bin_dir)?;
    args.check()?;
    let begun = Instant::now();
    let phase = |name: &str| args.phases.iter().any(|phase| phase == name);
    let mut rows = Vec::new();
    if phase("placements") {
        rows.extend(placements::run(&args, &binaries).await);
    }
    if phase("heartbeats") {
        rows.extend(heartbeats::run(&args, &binaries).await);
    }
    if phase("docker") {
        rows.extend(docker::run(&args, &binaries).await);
    }
    if phase("density") {
        rows.extend(density::run(&args, &binaries).await);
    }
    report::finish(rows, begun, &args.json)
}

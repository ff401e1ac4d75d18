//! h and i against the real Docker engine and one real node daemon: how creates, `print(1)`,
//! memory and heartbeats hold up with 0, 100 and 500 idle sandboxes on the host (h), and a cold
//! create under gVisor against one under runc, alternated in the same run (i).

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use messages::node::Heartbeat;
use sandbox_ops::stack::{Binaries, Spec};
use serde_json::json;

use crate::docker::{create_session, delete_session, ms_since};
use crate::measure::Bench;
use crate::report::{Latencies, Row, Verdict, failed, not_measured};
use crate::{Args, TEMPLATE};

/// An idle agent sandbox as users of agent sandboxes keep them: python-basic's limits, a small
/// guarantee and disk.
const IDLE_TEMPLATE: &str = "bench-idle";
const HEARTBEAT: Duration = Duration::from_millis(1000);
/// Creates in flight at once while filling the host.
const FILL_IN_FLIGHT: usize = 8;

/// What was measured with `held` idle sandboxes on the host.
struct Level {
    held: u32,
    creates: Latencies,
    print: Option<Latencies>,
    /// The host's `MemAvailable` drop per held sandbox, shims and volumes included.
    mb_per_sandbox: Option<f64>,
    /// The most a heartbeat of the node arrived after its interval.
    heartbeat_late_ms: f64,
}

pub async fn run(args: &Args, binaries: &Binaries) -> Vec<Row> {
    if args.skip_docker {
        return vec![
            not_measured("h", "density: idle sandboxes held", "--skip-docker"),
            not_measured("i", "gVisor cold create vs runc", "--skip-docker"),
        ];
    }
    eprintln!("== density ({:?} held) and gVisor", args.density_levels);
    match measure(args, binaries).await {
        Ok(rows) => rows,
        Err(error) => {
            eprintln!("  failed: {error:#}");
            vec![failed("h", "density and gVisor", &error)]
        }
    }
}

async fn measure(args: &Args, binaries: &Binaries) -> anyhow::Result<Vec<Row>> {
    let mut bench = Bench::start(binaries, 64).await?;
    let top = args.density_levels.iter().copied().max().unwrap_or(0);
    let spec = Spec::default()
        .option("--max-containers", top + 16)
        .option("--heartbeat-interval", "1s")
        .log_level("warn");
    let node_id = bench.stack.add_node(spec, Duration::from_secs(60)).await?;
    let http = reqwest::Client::new();
    let url = bench.stack.api()?.base().to_owned();
    let template = json!({"id": IDLE_TEMPLATE, "image": crate::IMAGE, "cpu": 1, "memory": 512,
        "cpu_request": 0.002, "memory_request": 24, "disk_mb": 64});
    let answer = http
        .post(format!("{url}/api/v1/templates"))
        .json(&template)
        .send()
        .await?;
    anyhow::ensure!(
        answer.status().as_u16() == 201,
        "bench template: {}",
        answer.text().await?
    );

    // i first, on an empty host.
    let gvisor = gvisor_versus_runc(&http, &url, args.docker_runs).await;

    let nats = async_nats::connect(bench.stack.nats_url()).await?;
    let mut held: Vec<String> = Vec::new();
    let mut levels = Vec::new();
    let base_available = available_mb();
    for &level in &args.density_levels {
        while held.len() < level as usize {
            let batch = (level as usize - held.len()).min(FILL_IN_FLIGHT);
            let creates = (0..batch).map(|_| create_session(&http, &url, IDLE_TEMPLATE));
            for session in futures::future::join_all(creates).await {
                held.push(session?["id"].as_str().unwrap_or_default().to_owned());
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let per_sandbox = (level > 0)
            .then(|| base_available.saturating_sub(available_mb()) as f64 / f64::from(level));
        let lateness = heartbeat_lateness(&nats, &node_id, Duration::from_secs(8)).await?;
        let mut creates = Vec::new();
        for _ in 0..args.docker_runs {
            let start = Instant::now();
            let session = create_session(&http, &url, IDLE_TEMPLATE).await?;
            creates.push(ms_since(start));
            delete_session(&http, &url, session["id"].as_str().unwrap_or_default()).await?;
        }
        let print = print_one(&http, &url, held.first(), args.docker_runs).await?;
        eprintln!(
            "  {level} held: create p99 {:.0} ms",
            Latencies(creates.clone()).percentile(99.0)
        );
        levels.push(Level {
            held: level,
            creates: Latencies(creates),
            print,
            mb_per_sandbox: per_sandbox,
            heartbeat_late_ms: lateness,
        });
    }
    drop(bench);
    let mut rows = vec![density_row(&levels)];
    rows.push(gvisor?);
    Ok(rows)
}

fn density_row(levels: &[Level]) -> Row {
    let p99 =
        |level: Option<&Level>| level.map_or(f64::NAN, |level| level.creates.percentile(99.0));
    let (first, last) = (p99(levels.first()), p99(levels.last()));
    let per_sandbox = levels
        .last()
        .and_then(|level| level.mb_per_sandbox)
        .unwrap_or(f64::NAN);
    let late = levels
        .iter()
        .map(|level| level.heartbeat_late_ms)
        .fold(0.0, f64::max);
    let held = levels.last().map_or(0, |level| level.held);
    let measured = levels
        .iter()
        .map(|level| {
            format!(
                "{} held: create p50 {:.0}/p99 {:.0} ms, print(1) p50 {}, {} MB each, \
                 heartbeat late ≤ {:.0} ms",
                level.held,
                level.creates.percentile(50.0),
                level.creates.percentile(99.0),
                level
                    .print
                    .as_ref()
                    .map_or("-".to_owned(), |p| format!("{:.1} ms", p.percentile(50.0))),
                level
                    .mb_per_sandbox
                    .map_or("-".to_owned(), |mb| format!("{mb:.1}")),
                level.heartbeat_late_ms,
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let json_levels: Vec<serde_json::Value> = levels
        .iter()
        .map(|level| {
            json!({"held": level.held, "create": level.creates.json(),
                "print": level.print.as_ref().map(Latencies::json),
                "mb_per_sandbox": level.mb_per_sandbox,
                "heartbeat_late_ms": level.heartbeat_late_ms})
        })
        .collect();
    Row {
        id: "h",
        figure: "density: idle sandboxes held on this host".to_owned(),
        measured,
        target: "500 held, create p99 ≤ 2× at 0, ≤ 25 MB each, heartbeats on time".to_owned(),
        verdict: Verdict::of(
            held >= 500 && last <= 2.0 * first && per_sandbox <= 25.0 && late < 1000.0,
        ),
        json: json!(json_levels),
    }
}

/// i: cold creates of `python-gvisor` and `python-basic`, alternated.
async fn gvisor_versus_runc(http: &reqwest::Client, url: &str, runs: usize) -> anyhow::Result<Row> {
    let (mut gvisor, mut runc) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        for (template, into) in [("python-gvisor", &mut gvisor), (TEMPLATE, &mut runc)] {
            let start = Instant::now();
            let session = create_session(http, url, template).await?;
            into.push(ms_since(start));
            delete_session(http, url, session["id"].as_str().unwrap_or_default()).await?;
        }
    }
    let (gvisor, runc) = (Latencies(gvisor), Latencies(runc));
    let ratio = gvisor.percentile(50.0) / runc.percentile(50.0);
    Ok(Row {
        id: "i",
        figure: "cold session create under gVisor vs runc (HTTP, to running)".to_owned(),
        measured: format!(
            "gvisor {}; runc {}; ratio of p50s {ratio:.2}",
            gvisor.summary(),
            runc.summary()
        ),
        target: "ratio ≤ 1.20".to_owned(),
        verdict: Verdict::of(ratio <= 1.2),
        json: json!({"gvisor": gvisor.json(), "runc": runc.json(), "ratio_p50": ratio}),
    })
}

/// `print(1)` round trips in a held session.
async fn print_one(
    http: &reqwest::Client,
    url: &str,
    session: Option<&String>,
    runs: usize,
) -> anyhow::Result<Option<Latencies>> {
    let Some(id) = session else { return Ok(None) };
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        http.post(format!("{url}/api/v1/sessions/{id}/executions"))
            .json(&json!({"code": "print(1)"}))
            .send()
            .await?
            .error_for_status()?;
        times.push(ms_since(start));
    }
    Ok(Some(Latencies(times)))
}

/// The most any of the node's heartbeats arrived after its interval, watched for `window`.
async fn heartbeat_lateness(
    nats: &async_nats::Client,
    node_id: &str,
    window: Duration,
) -> anyhow::Result<f64> {
    let mut beats = nats.subscribe(messages::subjects::heartbeat()).await?;
    let deadline = tokio::time::Instant::now() + window;
    let mut last: Option<Instant> = None;
    let mut late: f64 = 0.0;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, beats.next()).await {
        let Ok(beat) = messages::decode::<Heartbeat>(&message.payload) else {
            continue;
        };
        if beat.node_id.as_str() != node_id {
            continue;
        }
        let now = Instant::now();
        if let Some(previous) = last {
            late = late.max(ms_since(previous) - HEARTBEAT.as_secs_f64() * 1000.0);
        }
        last = Some(now);
    }
    Ok(late.max(0.0))
}

/// The host's `MemAvailable`, in MB.
fn available_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            meminfo
                .lines()
                .find_map(|line| line.strip_prefix("MemAvailable:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kb| kb / 1024)
}

//! e: heartbeats absorbed. A large simulated fleet heartbeats at a short interval while the
//! benchmark watches how old the node view's last heartbeats get and counts nodes turning
//! suspect.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use sandbox_ops::stack::Binaries;
use serde_json::json;

use crate::Args;
use crate::measure::{Bench, cores_used};
use crate::report::{Latencies, Row, Verdict, failed, format_map};

/// What a scheduler logs when a node missed two heartbeats.
const SUSPECT_EVENT: &str = "node missed two heartbeats";

/// One row per heartbeat interval asked for.
pub async fn run(args: &Args, binaries: &Binaries) -> Vec<Row> {
    let mut rows = Vec::new();
    for &interval_ms in &args.heartbeat_intervals_ms {
        let nodes = args.heartbeat_nodes;
        eprintln!("== heartbeats: {nodes} nodes every {interval_ms} ms");
        match heartbeat_rate(args, binaries, interval_ms).await {
            Ok(run) => rows.push(row(&run)),
            Err(error) => {
                eprintln!("  failed: {error:#}");
                let figure = format!("heartbeats, {nodes} nodes every {interval_ms} ms");
                rows.push(failed("e", &figure, &error));
            }
        }
    }
    rows
}

fn row(run: &HeartbeatRun) -> Row {
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
    Row {
        id: "e",
        figure: format!(
            "heartbeats absorbed, {} nodes every {} ms ({rate:.0}/s offered)",
            run.nodes, run.interval_ms
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
    }
}

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

async fn heartbeat_rate(
    args: &Args,
    binaries: &Binaries,
    interval_ms: u64,
) -> anyhow::Result<HeartbeatRun> {
    let mut bench = Bench::start(binaries, args.scheduler_max_in_flight).await?;
    let registered_in = bench.add_fleet(args.heartbeat_nodes, interval_ms).await?;
    eprintln!(
        "  {} nodes at {interval_ms} ms registered and online in {:.1} s",
        args.heartbeat_nodes,
        registered_in.as_secs_f64()
    );
    let interval = Duration::from_millis(interval_ms);
    tokio::time::sleep(interval * 3).await;
    let suspect_before = bench.scheduler_events(SUSPECT_EVENT).len();
    let stats_before = bench.fleet_stats().await?;
    let cpu_before = bench.cpu();
    let begun = Instant::now();
    let mut ages = Vec::new();
    let mut max_age: f64 = 0.0;
    while begun.elapsed() < Duration::from_secs(args.heartbeat_window_secs) {
        let nodes = bench.list_nodes().await?;
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
    let stats_after = bench.fleet_stats().await?;
    let cpu_cores = cores_used(&cpu_before, &bench.cpu(), wall);
    let suspect_events = bench.scheduler_events(SUSPECT_EVENT).len() - suspect_before;
    Ok(HeartbeatRun {
        nodes: args.heartbeat_nodes,
        interval_ms,
        delivered_per_second: (stats_after.heartbeats - stats_before.heartbeats) as f64 / wall,
        max_age_intervals: max_age,
        p99_age_intervals: Latencies(ages).percentile(99.0),
        suspect_events,
        cpu_cores,
    })
}

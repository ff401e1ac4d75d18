//! d, f, g against a simulated fleet per size: placements through JetStream with one replica,
//! then more (d); on the largest fleet, silent nodes timed to offline (f) and the services'
//! memory at idle and under placements (g).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Utc;
use futures::StreamExt as _;
use messages::headers::MSG_ID;
use messages::node::NodeHealth;
use messages::session::{CreateSession, Session, SessionStatus};
use messages::{NodeId, SessionId, subjects};
use sandbox_ops::stack::Binaries;
use serde_json::json;
use service_kit::bus;

use crate::measure::{Bench, RssSampler, SIM_MAX_CONTAINERS, cores_used};
use crate::report::{Latencies, Row, Verdict, failed, format_map};
use crate::{Args, TEMPLATE};

/// A session placed through the fleet is announced within this, or counted lost.
const SETTLE_DEADLINE: Duration = Duration::from_secs(120);
/// The simulated fleet's heartbeat interval, as a real node's default.
const FLEET_HEARTBEAT_MS: u64 = 5000;

/// Every fleet size in turn; a size that fails adds a failed row and the rest go on.
pub async fn run(args: &Args, binaries: &Binaries) -> Vec<Row> {
    let mut rows = Vec::new();
    for &size in &args.fleet_sizes {
        eprintln!("== placements against {size} simulated nodes");
        if let Err(error) = one_fleet(args, binaries, size, &mut rows).await {
            eprintln!("  failed: {error:#}");
            rows.push(failed("d", &format!("placements, {size} nodes"), &error));
        }
    }
    rows
}

/// One fleet of `size` nodes: a d row per replica count asked for, adding replicas one at a
/// time; g and f on the largest fleet. Rows are added as they are measured, so a failure
/// later keeps them.
async fn one_fleet(
    args: &Args,
    binaries: &Binaries,
    size: u32,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let max_replicas = args.replicas.iter().copied().max().unwrap_or(1);
    let largest = size == args.fleet_sizes.iter().copied().max().unwrap_or(0);
    let mut bench = Bench::start(binaries, args.scheduler_max_in_flight).await?;
    let registered_in = bench.add_fleet(size, FLEET_HEARTBEAT_MS).await?;
    eprintln!(
        "  registered and online in {:.1} s",
        registered_in.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    if largest {
        let idle = bench.rss();
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
            bench.add_scheduler(args.scheduler_max_in_flight).await?;
            // The new replica asks every node to announce itself, and takes work only after
            // listening for one heartbeat interval (5 s): let both settle.
            bench
                .stack
                .wait_online(size as usize, Duration::from_secs(120))
                .await?;
            tokio::time::sleep(Duration::from_secs(u64::from(size / 2000 + 6))).await;
        }
        if !args.replicas.contains(&replicas) {
            continue;
        }
        let run = place_sessions(&bench, args.placements, args.in_flight).await?;
        rows.push(placement_row(&bench, args, size, replicas, &run).await?);
        if largest && replicas == max_replicas {
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
    if largest && args.silent_nodes > 0 {
        rows.push(detection_row(&bench, size, args.silent_nodes).await?);
    }
    Ok(())
}

/// d: the run's rate and latencies, and whether the fleet was ever over-committed.
async fn placement_row(
    bench: &Bench,
    args: &Args,
    size: u32,
    replicas: usize,
    run: &PlacementRun,
) -> anyhow::Result<Row> {
    let stats = bench.fleet_stats().await?;
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
    Ok(Row {
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
    })
}

#[derive(Debug)]
struct PlacementRun {
    latencies: Latencies,
    per_second: f64,
    failed: BTreeMap<String, usize>,
    unanswered: usize,
    cpu_cores: BTreeMap<String, f64>,
    peak_rss: BTreeMap<String, f64>,
}

/// When each create in flight was published, by session.
type Started = Arc<Mutex<HashMap<SessionId, Instant>>>;

/// Publishes `count` creates on `sessions.create` with `in_flight` outstanding, and times each
/// from its publish to its settled announcement on `sessions.status.<id>`.
async fn place_sessions(
    bench: &Bench,
    count: usize,
    in_flight: usize,
) -> anyhow::Result<PlacementRun> {
    let client = &bench.client;
    let statuses = client
        .subscribe(subjects::session_status_all())
        .await
        .context("subscribing to session announcements")?;
    let jetstream = async_nats::jetstream::new(client.clone());
    let started: Started = Arc::default();
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let cpu_before = bench.cpu();
    let sampler = RssSampler::start(bench.stack.pids());
    let begun = Instant::now();
    let receiver = tokio::spawn(receive_outcomes(
        statuses,
        count,
        Arc::clone(&started),
        Arc::clone(&permits),
    ));

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
        let mut headers = bus::outgoing_headers();
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
    let cpu_cores = cores_used(&cpu_before, &bench.cpu(), wall);
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

/// Reads settled announcements until `count` creates are answered or the deadline passes;
/// returns the latencies of those running, the others' failure codes, and when the last came.
async fn receive_outcomes(
    mut statuses: async_nats::Subscriber,
    count: usize,
    started: Started,
    permits: Arc<tokio::sync::Semaphore>,
) -> (Vec<f64>, BTreeMap<String, usize>, Instant) {
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

/// f: silences `count` nodes spread over the fleet and times each to offline; no healthy node
/// may be marked offline meanwhile.
async fn detection_row(bench: &Bench, size: u32, count: usize) -> anyhow::Result<Row> {
    let step = (size as usize / count).max(1);
    let silent: Vec<NodeId> = (0..count)
        .map(|i| NodeId::parse(format!("sim-{:05}", (i * step + step / 2) % size as usize)))
        .collect::<Result<_, _>>()?;
    let detection = detect_silent(bench, silent.clone()).await?;
    let silent_names: HashSet<String> = silent.iter().map(|id| id.as_str().to_owned()).collect();
    let false_offline = bench
        .scheduler_events("node is offline")
        .into_iter()
        .filter(|node| !silent_names.contains(node))
        .collect::<HashSet<_>>()
        .len();
    let latencies = &detection.latencies;
    let p99_s = latencies.percentile(99.0) / 1000.0;
    eprintln!(
        "  silent to offline: {}, undetected {}, healthy marked offline {false_offline}",
        latencies.summary(),
        detection.undetected
    );
    Ok(Row {
        id: "f",
        figure: format!("silent node to offline ({count} of {size} nodes, 5 s heartbeats)"),
        measured: format!(
            "p50 {:.2} / p95 {:.2} / p99 {:.2} s; healthy marked offline {false_offline}; undetected {}",
            latencies.percentile(50.0) / 1000.0,
            latencies.percentile(95.0) / 1000.0,
            p99_s,
            detection.undetected
        ),
        target: "p99 ≤ 15 s, zero false offlines".to_owned(),
        verdict: Verdict::of(p99_s <= 15.0 && false_offline == 0 && detection.undetected == 0),
        json: json!({
            "nodes": size, "silenced": count,
            "latency": latencies.json(),
            "healthy_marked_offline": false_offline,
            "undetected": detection.undetected,
        }),
    })
}

#[derive(Debug)]
struct Detection {
    latencies: Latencies,
    undetected: usize,
}

async fn detect_silent(bench: &Bench, node_ids: Vec<NodeId>) -> anyhow::Result<Detection> {
    let silenced = bench.silence(node_ids.clone()).await?;
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
            let info = bench.get_node(node_id).await;
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

//! The simulated nodes' heartbeats: one timer task for the whole fleet, each node's phase spread
//! over the interval.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use messages::node::NodeSelfStatus;
use messages::subjects;
use service_kit::bus;
use tokio_util::sync::CancellationToken;

use super::fleet::{Fleet, SimNode};
use crate::announce;

/// How often the heartbeat task wakes to send the heartbeats that fell due.
const HEARTBEAT_TICK: Duration = Duration::from_millis(10);

/// Sends every node's heartbeat once per interval, node `i` at `i / N` of the way through it,
/// so the schedulers see an even rate rather than bursts. Falls behind gracefully: what fell
/// due while the task was starved is sent at its next tick, at most one round of it.
pub(super) async fn heartbeats(fleet: Arc<Fleet>, cancel: CancellationToken) -> anyhow::Result<()> {
    let count = fleet.nodes.len() as u64;
    let interval = fleet.interval.as_secs_f64();
    let begun = tokio::time::Instant::now();
    let mut sent: u64 = 0;
    let mut ticker = tokio::time::interval(HEARTBEAT_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let elapsed = begun.elapsed().as_secs_f64();
        let due = (elapsed / interval * count as f64) as u64;
        sent = sent.max(due.saturating_sub(count));
        while sent < due {
            let node = &fleet.nodes[(sent % count) as usize];
            sent += 1;
            if node.registered.load(Ordering::Relaxed) && !node.silent() {
                send_heartbeat(&fleet, node, NodeSelfStatus::Online).await;
            }
        }
    }
    // Stopping cleanly: every live node says so, as a daemon does on SIGTERM.
    for node in &fleet.nodes {
        if node.registered.load(Ordering::Relaxed) && !node.silent() {
            send_heartbeat(&fleet, node, NodeSelfStatus::Stopping).await;
        }
    }
    if let Err(error) = fleet.nats.flush().await {
        tracing::warn!(%error, "flushing NATS on shutdown failed");
    }
    Ok(())
}

async fn send_heartbeat(fleet: &Fleet, node: &SimNode, status: NodeSelfStatus) {
    let heartbeat = announce::heartbeat_message(&node.id, &mut node.state().ledger, status, None);
    fleet.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
    if let Err(error) = bus::publish(&fleet.nats, subjects::heartbeat(), &heartbeat).await {
        tracing::warn!(node = %node.id, %error, "sending a simulated heartbeat failed");
    }
}

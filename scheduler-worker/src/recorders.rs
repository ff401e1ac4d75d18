//! What one replica records of each announcement (queue group `scheduler`, so each is written
//! once): registrations, recorded and answered (`node-registrations`); heartbeats, the latest of
//! each node written once a second in one transaction (`heartbeat-records`); the seed's
//! container signals, handed to the lifecycle (`container-events`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use messages::node::{
    ContainerExited, ContainerReady, Heartbeat, NodeRegistration, RegistrationAccepted,
};
use messages::{ErrorBody, ErrorCode, NodeId, subjects};
use service_kit::{Responder, Subscription};
use tokio_util::sync::CancellationToken;

use crate::node_view::admission;
use crate::scheduler::Scheduler;
use crate::store;

/// How often the latest heartbeat of each node is written to `runtime_nodes`. The views are
/// current at once; the table is for operators' SQL, and one transaction a second costs the
/// database the same whatever the size of the fleet.
const HEARTBEAT_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long ready signals are gathered before they are read against their sessions: they
/// matter only for a session its placement no longer waits on, which a second does not change.
const READY_BATCH_EVERY: Duration = Duration::from_secs(1);
/// The most ready signals gathered before they are read (one query's worth).
const READY_BATCH_MOST: usize = 500;

/// What one replica of the queue group hears: each event is recorded once.
#[derive(Debug)]
pub struct RecorderSubscriptions {
    pub registrations: Responder<Scheduler>,
    pub heartbeats: Subscription<Heartbeat>,
    pub ready: Subscription<ContainerReady>,
    pub exited: Subscription<ContainerExited>,
}

/// Subscribes before the replica reports ready, so no announcement after start is missed.
pub async fn subscribe(scheduler: &Arc<Scheduler>) -> anyhow::Result<RecorderSubscriptions> {
    let nats = &scheduler.nats;
    let group = subjects::scheduler_queue_group();
    // One at a time, as they come: a node's registrations must not be recorded (and its
    // inventory reconciled) out of order, and a fleet registering at once must not take every
    // database connection.
    let mut registrations = Responder::new(nats.clone(), Arc::clone(scheduler))
        .in_queue_group(group)
        .max_in_flight(1);
    let span = |registration: &NodeRegistration| tracing::info_span!("scheduler.record_registration", node = %registration.node_id);
    registrations
        .route(subjects::nodes_register(), span, record_registration)
        .await?;
    Ok(RecorderSubscriptions {
        registrations,
        heartbeats: Subscription::queue_subscribe(nats, subjects::heartbeat(), group).await?,
        ready: Subscription::queue_subscribe(nats, subjects::containers_ready(), group).await?,
        exited: Subscription::queue_subscribe(nats, subjects::containers_exited(), group).await?,
    })
}

/// Records a registration if the node may join, reconciles the containers it reported, and
/// answers whether it joined.
async fn record_registration(
    scheduler: Arc<Scheduler>,
    registration: NodeRegistration,
) -> Result<RegistrationAccepted, ErrorBody> {
    let node_id = registration.node_id.clone();
    let retried = |error: store::StoreError| {
        tracing::warn!(node = %node_id, %error, "could not record a registration");
        ErrorBody::new(
            ErrorCode::Internal,
            "the scheduler's database failed; registration will be retried",
        )
    };
    let record = scheduler.store.get_node(&node_id).await.map_err(retried)?;
    if let Err(refusal) = admission(&scheduler, &node_id, record.as_ref()) {
        tracing::warn!(node = %node_id, hostname = %registration.hostname, reason = %refusal.message, "refused a node registration");
        return Err(refusal);
    }
    scheduler
        .store
        .upsert_node(&registration, store::now())
        .await
        .map_err(retried)?;
    let declared = record.filter(|record| record.declared);
    let capacity = declared
        .as_ref()
        .map_or(&registration, |record| &record.registration);
    let accepted = RegistrationAccepted {
        node_id: node_id.clone(),
        declared: declared.is_some(),
        total_cpu_cores: capacity.total_cpu_cores,
        total_memory_mb: capacity.total_memory_mb,
        max_containers: capacity.max_containers,
    };
    if let Some(inventory) = registration.inventory {
        scheduler.reconcile(&node_id, inventory).await;
    }
    Ok(accepted)
}

/// Writes the heartbeats this replica receives from the queue group to `runtime_nodes`: the
/// latest one of each node, once per [`HEARTBEAT_FLUSH_EVERY`], in one transaction.
pub async fn record_heartbeats(
    scheduler: Arc<Scheduler>,
    mut heartbeats: Subscription<Heartbeat>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut latest: BTreeMap<NodeId, (Heartbeat, DateTime<Utc>)> = BTreeMap::new();
    let mut flush = tokio::time::interval(HEARTBEAT_FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                flush_heartbeats(&scheduler, &mut latest).await;
                return Ok(());
            }
            heartbeat = heartbeats.next() => {
                let heartbeat = heartbeat?;
                latest.insert(heartbeat.node_id.clone(), (heartbeat, store::now()));
            }
            _ = flush.tick() => flush_heartbeats(&scheduler, &mut latest).await,
        }
    }
}

/// Writes and forgets the pending heartbeats; on failure they are dropped (logged): newer ones
/// follow within an interval.
async fn flush_heartbeats(
    scheduler: &Scheduler,
    latest: &mut BTreeMap<NodeId, (Heartbeat, DateTime<Utc>)>,
) {
    if latest.is_empty() {
        return;
    }
    // In `node_id` order, as the store asks.
    let batch: Vec<(Heartbeat, DateTime<Utc>)> = std::mem::take(latest).into_values().collect();
    if let Err(error) = scheduler.store.record_heartbeats(&batch).await {
        tracing::warn!(nodes = batch.len(), %error, "could not record heartbeats");
    }
}

/// Hands the seed's container signals (one replica of the queue group each) to the lifecycle:
/// an exit at once; ready signals gathered for up to [`READY_BATCH_EVERY`] (or
/// [`READY_BATCH_MOST`] of them) and read against their sessions together.
pub async fn record_container_events(
    scheduler: Arc<Scheduler>,
    mut ready: Subscription<ContainerReady>,
    mut exited: Subscription<ContainerExited>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut gathered: Vec<ContainerReady> = Vec::new();
    let mut batch_due = tokio::time::interval(READY_BATCH_EVERY);
    batch_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                scheduler.containers_ready(std::mem::take(&mut gathered)).await;
                return Ok(());
            }
            event = ready.next() => {
                gathered.push(event?);
                if gathered.len() >= READY_BATCH_MOST {
                    scheduler.containers_ready(std::mem::take(&mut gathered)).await;
                }
            }
            _ = batch_due.tick(), if !gathered.is_empty() => {
                scheduler.containers_ready(std::mem::take(&mut gathered)).await;
            }
            event = exited.next() => scheduler.container_exited(event?).await,
        }
    }
}

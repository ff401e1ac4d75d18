//! Every replica's node view: registrations, heartbeats and operators' changes go into it
//! (`node-view` task), and the nodes' health is judged from it four times a second
//! (`node-health` task: probes of suspect nodes, health written in one transaction per sweep,
//! the sessions of lost nodes marked). The view's task never writes to the database, so a slow
//! write can never hold heartbeats back and make healthy nodes look silent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use messages::node::{Heartbeat, NodeHealth, NodeRegistration, NodeUpdated, PingNode};
use messages::{ErrorBody, ErrorCode, NodeId, subjects};
use service_kit::Subscription;
use service_kit::bus::{self, BusError};
use tokio_util::sync::CancellationToken;

use crate::config::RegistrationMode;
use crate::fleet::HeartbeatOutcome;
use crate::scheduler::Scheduler;
use crate::store::NodeRecord;

/// How often node health is re-judged, so a silent node is marked offline promptly.
const HEALTH_SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How long a probe of a suspect node waits for its daemon.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The fewest seconds between two asks of one node, heard of only through heartbeats, to
/// register again.
const ANNOUNCE_ASK_EVERY: Duration = Duration::from_secs(5);

/// What every replica hears: the source of its node view.
#[derive(Debug)]
pub struct ViewSubscriptions {
    registrations: Subscription<NodeRegistration>,
    heartbeats: Subscription<Heartbeat>,
    updates: Subscription<NodeUpdated>,
}

/// Subscribes before the replica reports ready, so no announcement after start is missed.
pub async fn subscribe(nats: &async_nats::Client) -> anyhow::Result<ViewSubscriptions> {
    Ok(ViewSubscriptions {
        registrations: Subscription::subscribe(nats, subjects::nodes_register()).await?,
        heartbeats: Subscription::subscribe(nats, subjects::heartbeat()).await?,
        updates: Subscription::subscribe(nats, subjects::nodes_updated()).await?,
    })
}

/// Keeps this replica's node view from registrations, heartbeats and operators' changes.
pub async fn run_view(
    scheduler: Arc<Scheduler>,
    subscriptions: ViewSubscriptions,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let ViewSubscriptions {
        mut registrations,
        mut heartbeats,
        mut updates,
    } = subscriptions;
    let mut asked_to_announce: HashMap<NodeId, Instant> = HashMap::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            registration = registrations.next() => {
                let registration = registration?;
                asked_to_announce.remove(&registration.node_id);
                view_registration(&scheduler, registration).await;
            }
            update = updates.next() => {
                let update = update?;
                match scheduler.store.get_node(&update.node_id).await {
                    Ok(Some(record)) => scheduler.fleet().apply_record(record, Instant::now()),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(node = %update.node_id, %error, "could not read an updated node"),
                }
            }
            heartbeat = heartbeats.next() => {
                let heartbeat = heartbeat?;
                let outcome = scheduler.fleet().heartbeat(&heartbeat, Instant::now());
                if outcome == HeartbeatOutcome::UnknownNode {
                    ask_to_announce(&scheduler, &mut asked_to_announce, heartbeat.node_id).await;
                }
            }
        }
    }
}

/// Re-judges every node's health, four times a second, and acts on what changed.
pub async fn judge_health(
    scheduler: Arc<Scheduler>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut sweep = tokio::time::interval(HEALTH_SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Health not yet written (the write failed): tried again with the next sweep's changes.
    let mut unrecorded = BTreeMap::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = sweep.tick() => record_health_changes(&scheduler, &mut unrecorded).await,
        }
    }
}

/// Asks a node heard of only through heartbeats to register again, at most once per
/// [`ANNOUNCE_ASK_EVERY`].
async fn ask_to_announce(
    scheduler: &Scheduler,
    asked: &mut HashMap<NodeId, Instant>,
    node_id: NodeId,
) {
    let now = Instant::now();
    if asked
        .get(&node_id)
        .is_some_and(|at| now.duration_since(*at) < ANNOUNCE_ASK_EVERY)
    {
        return;
    }
    asked.insert(node_id.clone(), now);
    scheduler.ask_for_inventory(&node_id).await;
}

/// Whether `record` (what the database holds of a node) lets it join: in static mode only
/// declared nodes do. The refusal says why and what to do.
pub(crate) fn admission(
    scheduler: &Scheduler,
    node_id: &NodeId,
    record: Option<&NodeRecord>,
) -> Result<(), ErrorBody> {
    let declared = record.is_some_and(|record| record.declared);
    if scheduler.config.registration_mode == RegistrationMode::Static && !declared {
        return Err(ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "node {node_id} is not declared and the control plane runs in static registration \
                 mode: declare it with POST /api/v1/nodes (or the scheduler's nodes file) first"
            ),
        ));
    }
    Ok(())
}

/// The node view takes a registration if the node may join, with its declared capacity. In
/// dynamic mode what the view holds of a node it knows decides, so a fleet registering at once
/// costs no database reads but for new nodes; in static mode the database, where declarations
/// live, always decides (a declaration changed by SQL, or news of it lost, must not let a node
/// in).
async fn view_registration(scheduler: &Scheduler, registration: NodeRegistration) {
    let node_id = registration.node_id.clone();
    let known = match scheduler.config.registration_mode {
        RegistrationMode::Dynamic => scheduler.fleet().record(&node_id, Instant::now()),
        RegistrationMode::Static => None,
    };
    let record = match known {
        Some(record) => Some(record),
        None => match scheduler.store.get_node(&node_id).await {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(node = %node_id, %error, "could not read the node's record; ignoring its registration");
                return;
            }
        },
    };
    if admission(scheduler, &node_id, record.as_ref()).is_err() {
        tracing::debug!(node = %node_id, "ignoring an undeclared node");
        return;
    }
    tracing::info!(node = %node_id, hostname = %registration.hostname, "node registered");
    scheduler
        .fleet()
        .register(registration, record.as_ref(), Instant::now());
}

/// Asks a suspect node's daemon whether it is there. "No responders" means no process holds
/// its subscriptions (killed, crashed): it is offline now. A timeout or an answer proves
/// nothing more than the missed heartbeats; the usual three-interval rule then decides.
fn probe(scheduler: &Arc<Scheduler>, node_id: NodeId) {
    let prober = Arc::clone(scheduler);
    scheduler.spawn_background(async move {
        match bus::node_request(&prober.nats, &node_id, &PingNode {}, PROBE_TIMEOUT).await {
            Err(BusError::NoResponders { .. }) => {
                tracing::warn!(node = %node_id, "nobody answers for the suspect node: offline");
                prober.fleet().unreachable(&node_id, Instant::now());
            }
            Err(error) => tracing::debug!(node = %node_id, %error, "probe of a suspect node"),
            Ok(_) => tracing::debug!(node = %node_id, "the suspect node's daemon answers"),
        }
    });
}

/// Acts on the nodes whose health changed and writes their health (with any left `unrecorded`
/// by a failed write before, in `node_id` order); then marks the sessions of nodes lost.
async fn record_health_changes(
    scheduler: &Arc<Scheduler>,
    unrecorded: &mut BTreeMap<NodeId, &'static str>,
) {
    let changes = scheduler.fleet().health_changes(Instant::now());
    for change in changes {
        let (node_id, health) = (change.node_id, change.health);
        if change.back_after_loss {
            scheduler.ask_for_inventory(&node_id).await;
        }
        match health {
            NodeHealth::Offline => tracing::warn!(node = %node_id, "node is offline"),
            NodeHealth::Suspect => {
                tracing::warn!(node = %node_id, "node missed two heartbeats");
                probe(scheduler, node_id.clone());
            }
            _ => tracing::info!(node = %node_id, ?health, "node health changed"),
        }
        unrecorded.insert(node_id, health.as_str());
    }
    if !unrecorded.is_empty() {
        let statuses: Vec<(NodeId, &'static str)> = unrecorded
            .iter()
            .map(|(node_id, status)| (node_id.clone(), *status))
            .collect();
        match scheduler.store.set_node_statuses(&statuses).await {
            Ok(()) => unrecorded.clear(),
            Err(error) => {
                tracing::warn!(nodes = statuses.len(), %error, "could not record node health; will retry");
            }
        }
    }
    let lost = scheduler
        .fleet()
        .lost_nodes(Instant::now(), scheduler.config.node_lost_grace);
    for node_id in lost {
        match scheduler.mark_sessions_lost(&node_id).await {
            Ok(()) => scheduler.fleet().sessions_marked_lost(&node_id),
            Err(error) => {
                tracing::warn!(node = %node_id, %error, "could not mark the sessions of a lost node")
            }
        }
    }
}

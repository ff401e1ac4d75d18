//! The scheduler worker: consumes session work from JetStream, keeps a live view of the nodes
//! from their announcements, places sessions, and owns the database. Any number of replicas
//! share the work.

mod api;
pub mod config;
mod discovery;
mod executions;
pub mod fleet;
mod lifecycle;
mod lifetimes;
mod node_view;
mod nodes_file;
mod placement;
mod reconcile;
mod recorders;
mod scheduler;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use messages::subjects;
use service_kit::tasks::Tasks;
use service_kit::{WorkQueue, bus, streams};
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError};
use fleet::Fleet;
use scheduler::Scheduler;
use store::Store;

/// How long the tasks get to finish after a shutdown signal.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(15);
/// How long background work (container removals, probes) gets after the tasks stopped.
const BACKGROUND_DEADLINE: Duration = Duration::from_secs(5);

/// A started replica.
#[derive(Debug)]
pub struct Running {
    tasks: Tasks,
    scheduler: Arc<Scheduler>,
}

impl Running {
    /// Waits for the cancel signal, then for the tasks to finish, then for the background work
    /// they started and the database's last writes.
    pub async fn wait(self) -> anyhow::Result<()> {
        let outcome = self.tasks.join(SHUTDOWN_DEADLINE).await;
        self.scheduler.drain_background(BACKGROUND_DEADLINE).await;
        self.scheduler.store.flush_writes(BACKGROUND_DEADLINE).await;
        outcome
    }
}

/// Starts a replica; returns once it listens for nodes, requests and work.
pub async fn start(config: Config, cancel: CancellationToken) -> anyhow::Result<Running> {
    config.validate().context("invalid configuration")?;

    // 1. The database: schema migrated, seed templates present.
    let store = Store::connect(&config.database_url)
        .await
        .context("opening the database")?;
    tracing::info!(backend = store.backend(), "database ready");
    if let Some(path) = &config.nodes_file {
        let declared = nodes_file::declare_from(&store, path).await?;
        tracing::info!(path = %path.display(), declared, "declared the nodes of the nodes file");
    }
    tracing::info!(mode = ?config.registration_mode, "node registration mode");

    // 2. The node view, seeded from what the database remembers.
    let mut fleet = Fleet::default();
    fleet.load(
        store.list_nodes().await.context("loading nodes")?,
        Instant::now(),
    );

    // 3. NATS, and every subscription before any work is taken.
    let nats = bus::connect(&config.nats_url, "scheduler-worker").await?;
    let scheduler = Scheduler::new(nats.clone(), store, config, fleet);
    let view = node_view::subscribe(&nats).await?;
    let recorders = recorders::subscribe(&scheduler).await?;
    let api = api::responder(&scheduler).await?;
    let jetstream = async_nats::jetstream::new(nats.clone());
    let sessions_stream = streams::ensure_sessions_stream(&jetstream).await?;
    // While the database is down a request is retried with growing pauses, and placed once it
    // is back.
    let sessions_queue = WorkQueue::open(
        &sessions_stream,
        subjects::sessions_consumer(),
        None,
        scheduler.config.ack_wait,
    )
    .await?;
    let results_queue = executions::results_queue(&scheduler).await?;

    let mut tasks = Tasks::new(cancel.clone());
    tasks.spawn(
        "node-view",
        node_view::run_view(scheduler.clone(), view, cancel.clone()),
    );
    tasks.spawn(
        "node-health",
        node_view::judge_health(scheduler.clone(), cancel.clone()),
    );
    tasks.spawn(
        "node-registrations",
        recorders.registrations.serve(cancel.clone()),
    );
    tasks.spawn(
        "heartbeat-records",
        recorders::record_heartbeats(scheduler.clone(), recorders.heartbeats, cancel.clone()),
    );
    tasks.spawn(
        "container-events",
        recorders::record_container_events(
            scheduler.clone(),
            recorders.ready,
            recorders.exited,
            cancel.clone(),
        ),
    );
    tasks.spawn(
        "lifetimes",
        lifetimes::run(scheduler.clone(), cancel.clone()),
    );

    // 4. Ask the nodes to announce themselves, so the view is complete within moments.
    discovery::discover_all(&nats).await?;

    // 5. Serve: the gateway's requests, execution results, and the session work queue.
    tasks.spawn("api", api.serve(cancel.clone()));
    tasks.spawn(
        "execution-results",
        executions::record_results(scheduler.clone(), results_queue, cancel.clone()),
    );
    tasks.spawn(
        "overdue-executions",
        executions::sweep_overdue(scheduler.clone(), cancel.clone()),
    );
    // Session work waits until the nodes the database remembers could be heard from again,
    // so a restarted replica does not fail queued requests for want of a view.
    let settle_time = scheduler.fleet().settle_time();
    let placing = placement::serve(scheduler.clone(), sessions_queue, cancel.clone());
    let settle_cancel = cancel.clone();
    tasks.spawn("sessions", async move {
        tokio::select! {
            () = tokio::time::sleep(settle_time) => placing.await,
            () = settle_cancel.cancelled() => Ok(()),
        }
    });
    bus::sync_with_server(&nats).await?;
    tracing::info!("scheduler worker ready");
    Ok(Running { tasks, scheduler })
}

//! The scheduler worker: consumes session work from JetStream, keeps a live view of the nodes
//! from their announcements, places sessions, and owns the database. Any number of replicas
//! share the work.

mod admin;
mod api;
pub mod config;
mod events;
mod executions;
pub mod fleet;
mod lifetimes;
mod nodes_file;
mod placement;
mod reconcile;
mod scheduler;
mod sessions;
pub mod store;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use service_kit::bus;
use service_kit::tasks::Tasks;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use fleet::Fleet;
use scheduler::Scheduler;
use store::Store;

/// How long the tasks get to finish after a shutdown signal.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(15);

/// A started replica.
#[derive(Debug)]
pub struct Running {
    tasks: Tasks,
}

impl Running {
    /// Waits for the cancel signal, then for the tasks to finish.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.tasks.join(SHUTDOWN_DEADLINE).await
    }
}

/// Starts a replica; returns once it listens for nodes, requests and work.
pub async fn start(config: Config, cancel: CancellationToken) -> anyhow::Result<Running> {
    config.validate()?;

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
    let (view_subscriptions, recorder_subscriptions) = events::subscribe(&nats).await?;
    let api_subscriptions = api::subscribe(&nats).await?;
    let consumer = sessions::consumer(&scheduler).await?;
    let results_consumer = executions::results_consumer(&scheduler).await?;

    let mut tasks = Tasks::new(cancel.clone());
    tasks.spawn(
        "node-view",
        events::run_view(scheduler.clone(), view_subscriptions, cancel.clone()),
    );
    tasks.spawn(
        "node-health",
        events::judge_health(scheduler.clone(), cancel.clone()),
    );
    tasks.spawn(
        "node-registrations",
        events::record_registrations(
            scheduler.clone(),
            recorder_subscriptions.registrations,
            cancel.clone(),
        ),
    );
    tasks.spawn(
        "heartbeat-records",
        events::record_heartbeats(
            scheduler.clone(),
            recorder_subscriptions.heartbeats,
            cancel.clone(),
        ),
    );
    tasks.spawn(
        "container-events",
        events::record_container_events(
            scheduler.clone(),
            recorder_subscriptions.containers,
            cancel.clone(),
        ),
    );
    tasks.spawn(
        "lifetimes",
        lifetimes::run(scheduler.clone(), cancel.clone()),
    );

    // 4. Ask the nodes to announce themselves, so the view is complete within moments.
    events::discover_all(&nats).await?;

    // 5. Serve: the gateway's requests, execution results, and the session work queue.
    tasks.spawn(
        "api",
        api::serve(scheduler.clone(), api_subscriptions, cancel.clone()),
    );
    tasks.spawn(
        "execution-results",
        executions::record_results(scheduler.clone(), results_consumer, cancel.clone()),
    );
    tasks.spawn(
        "overdue-executions",
        executions::sweep_overdue(scheduler.clone(), cancel.clone()),
    );
    // Session work waits until the nodes the database remembers could be heard from again,
    // so a restarted replica does not fail queued requests for want of a view.
    let settle_time = scheduler.fleet().settle_time();
    let consume = sessions::consume(scheduler.clone(), consumer, cancel.clone());
    let settle_cancel = cancel.clone();
    tasks.spawn("sessions", async move {
        tokio::select! {
            () = tokio::time::sleep(settle_time) => consume.await,
            () = settle_cancel.cancelled() => Ok(()),
        }
    });
    bus::sync_with_server(&nats).await?;
    tracing::info!("scheduler worker ready");
    Ok(Running { tasks })
}

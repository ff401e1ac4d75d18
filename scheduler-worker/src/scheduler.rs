//! The state one scheduler replica works with: its NATS client, the database, its node view,
//! its copies of templates, and the background work (container removals, probes) it must
//! finish before it stops.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::future::Future;

use async_nats::Client;
use messages::node::{ContainerRemoved, RemoveContainer};
use messages::session::Session;
use messages::template::Template;
use messages::{NodeId, SessionId, subjects};
use service_kit::bus::{self, BusError};
use service_kit::recent::RecentCopies;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::fleet::Fleet;
use crate::store::{Store, StoreError};

/// How long a placement may use a template as read before: a second's delay for a change made
/// through another replica, for one database read per template per second in a burst.
const TEMPLATE_FRESHNESS: Duration = Duration::from_secs(1);

/// Shared by every task of a replica.
#[derive(Debug)]
pub struct Scheduler {
    pub(crate) nats: Client,
    pub(crate) store: Store,
    pub(crate) config: Config,
    /// Shared with background removals, which update it when the node answers.
    fleet: Arc<Mutex<Fleet>>,
    /// Templates as read lately, so a burst of placements does not read the same row for each.
    templates: RecentCopies<Template>,
    /// Work started in the background (removals, probes), waited for at shutdown.
    background: TaskTracker,
    /// When this replica last asked the fleet for its images (`discovery.rs`).
    images_asked_at: Mutex<Option<Instant>>,
}

impl Scheduler {
    pub fn new(nats: Client, store: Store, config: Config, fleet: Fleet) -> Arc<Self> {
        Arc::new(Self {
            nats,
            store,
            config,
            fleet: Arc::new(Mutex::new(fleet)),
            templates: RecentCopies::new(TEMPLATE_FRESHNESS),
            background: TaskTracker::new(),
            images_asked_at: Mutex::new(None),
        })
    }

    /// Runs `work` in the background; [`Scheduler::drain_background`] waits for it.
    pub(crate) fn spawn_background(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.background.spawn(work);
    }

    /// Waits (up to `deadline`) for the work started in the background, so removals asked for
    /// before a shutdown are not dropped half-way.
    pub(crate) async fn drain_background(&self, deadline: Duration) {
        self.background.close();
        if tokio::time::timeout(deadline, self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.background.len(),
                "background work did not finish by the deadline"
            );
        }
    }

    /// The template a placement is made from: as read within the last [`TEMPLATE_FRESHNESS`],
    /// else from the database. A change made through this replica is seen at once (it forgets
    /// its copy); one made through another replica within that second.
    pub(crate) async fn template_for_placement(
        &self,
        id: &str,
    ) -> Result<Option<Template>, StoreError> {
        if let Some(template) = self.templates.get(id) {
            return Ok(Some(template));
        }
        let template = self.store.get_template(id).await?;
        if let Some(template) = &template {
            self.templates.put(id, template.clone());
        }
        Ok(template)
    }

    /// Forgets this replica's copy of a template that was just changed or deleted.
    pub(crate) fn forget_template(&self, id: &str) {
        self.templates.forget(id);
    }

    pub(crate) fn images_asked_at(&self) -> MutexGuard<'_, Option<Instant>> {
        lock(&self.images_asked_at)
    }

    /// The node view. Held only for short synchronous updates, never across an await.
    pub(crate) fn fleet(&self) -> MutexGuard<'_, Fleet> {
        lock(&self.fleet)
    }

    /// Asks the node to remove the session's container and counts the room freed.
    pub(crate) async fn remove_container(
        &self,
        node: &NodeId,
        session_id: &SessionId,
    ) -> Result<ContainerRemoved, BusError> {
        remove(
            &self.nats,
            &self.fleet,
            self.config.remove_timeout,
            node,
            session_id,
        )
        .await
    }

    /// Removes a session's container without waiting for the answer (clean-up of a container
    /// that must not outlive its session or attempt).
    pub(crate) fn remove_in_background(&self, node: NodeId, session_id: SessionId) {
        let nats = self.nats.clone();
        let fleet = Arc::clone(&self.fleet);
        let timeout = self.config.remove_timeout;
        self.spawn_background(async move {
            if let Err(error) = remove(&nats, &fleet, timeout, &node, &session_id).await {
                tracing::warn!(%session_id, %node, %error, "could not remove a container");
            }
        });
    }

    /// Tells waiting gateways (and anyone watching) the session's recorded state. Losing this
    /// message delays a client, never loses state: clients can read the session back.
    pub(crate) async fn announce(&self, session: &Session) {
        let subject = subjects::session_status(&session.id);
        if let Err(error) = bus::publish(&self.nats, subject, session).await {
            tracing::warn!(session_id = %session.id, %error, "could not announce session state");
        }
    }
}

/// A panic while holding one of these locks leaves state that is still usable (a view, copies):
/// take it back.
fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn remove(
    nats: &Client,
    fleet: &Mutex<Fleet>,
    timeout: Duration,
    node: &NodeId,
    session_id: &SessionId,
) -> Result<ContainerRemoved, BusError> {
    let command = RemoveContainer {
        session_id: session_id.clone(),
    };
    let removed = bus::node_request(nats, node, &command, timeout).await?;
    lock(fleet).removed(node, session_id, removed.usage);
    Ok(removed)
}

//! The state one scheduler replica works with: its NATS client, the database and its node view.

use std::sync::{Arc, Mutex, MutexGuard};

use async_nats::Client;
use messages::session::Session;
use messages::subjects;
use service_kit::bus;

use crate::config::Config;
use crate::fleet::Fleet;
use crate::store::Store;

/// Shared by every task of a replica.
#[derive(Debug)]
pub struct Scheduler {
    pub(crate) nats: Client,
    pub(crate) store: Store,
    pub(crate) config: Config,
    fleet: Mutex<Fleet>,
}

impl Scheduler {
    pub fn new(nats: Client, store: Store, config: Config, fleet: Fleet) -> Arc<Self> {
        Arc::new(Self {
            nats,
            store,
            config,
            fleet: Mutex::new(fleet),
        })
    }

    /// The node view. Held only for short synchronous updates, never across an await.
    pub(crate) fn fleet(&self) -> MutexGuard<'_, Fleet> {
        // A panic while holding the lock leaves a view that is still usable: take it back.
        self.fleet
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

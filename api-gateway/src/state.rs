//! What the gateway's handlers share: its connections and settings, and its one piece of soft
//! state, a second's copy of the templates creates read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use messages::api::templates::GetTemplate;
use messages::template::Template;
use service_kit::bus;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// What every handler shares; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) nats: async_nats::Client,
    pub(crate) jetstream: async_nats::jetstream::Context,
    pub(crate) create_wait: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_file_bytes: u64,
    /// Templates as creates last read them (a second's copy).
    pub(crate) templates: Arc<RecentTemplates>,
    /// Shutdown ends waiting creates early, so they answer before the server stops.
    pub(crate) cancel: CancellationToken,
}

/// How long a create may use a template as read before.
const RECENT_FOR: Duration = Duration::from_secs(1);

/// Templates as creates last read them, for a second: a burst of creates of one template asks
/// the schedulers once a second instead of once per create. A change made through this gateway
/// forgets its copy at once; one made through another shows within the second, as it does in
/// the schedulers' own copies that placements use.
#[derive(Debug, Default)]
pub(crate) struct RecentTemplates {
    copies: Mutex<HashMap<String, (Template, Instant)>>,
}

impl RecentTemplates {
    /// The template for a create: a copy read within [`RECENT_FOR`], or the schedulers' answer
    /// (404 when there is none).
    pub(crate) async fn get(&self, state: &AppState, id: &str) -> Result<Template, ApiError> {
        let now = Instant::now();
        if let Some((template, _)) = self
            .lock()
            .get(id)
            .filter(|(_, read_at)| now.duration_since(*read_at) < RECENT_FOR)
        {
            return Ok(template.clone());
        }
        let request = GetTemplate {
            template_id: id.to_owned(),
        };
        let answer = bus::api_request(&state.nats, &request, state.request_timeout).await;
        let template = ApiError::found("template", id, answer)?;
        self.lock().insert(id.to_owned(), (template.clone(), now));
        Ok(template)
    }

    pub(crate) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Template, Instant)>> {
        self.copies.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

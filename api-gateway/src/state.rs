//! What the gateway's handlers share: its connections and settings, and its one piece of soft
//! state, a second's copy of the templates creates read.

use std::sync::Arc;
use std::time::Duration;

use messages::api::templates::GetTemplate;
use messages::template::Template;
use service_kit::bus;
use service_kit::recent::RecentCopies;
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
#[derive(Debug)]
pub(crate) struct RecentTemplates(RecentCopies<Template>);

impl Default for RecentTemplates {
    fn default() -> Self {
        Self(RecentCopies::new(RECENT_FOR))
    }
}

impl RecentTemplates {
    /// The template for a create: a copy read within [`RECENT_FOR`], or the schedulers' answer
    /// (404 when there is none).
    pub(crate) async fn get(&self, state: &AppState, id: &str) -> Result<Template, ApiError> {
        if let Some(template) = self.0.get(id) {
            return Ok(template);
        }
        let request = GetTemplate {
            template_id: id.to_owned(),
        };
        let answer = bus::api_request(&state.nats, &request, state.request_timeout).await;
        let template = ApiError::found("template", id, answer)?;
        self.0.put(id, template.clone());
        Ok(template)
    }

    pub(crate) fn forget(&self, id: &str) {
        self.0.forget(id);
    }
}

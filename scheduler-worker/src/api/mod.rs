//! Answers the gateway's requests (queue group: whichever replica is free answers). One handler
//! per request type, grouped per resource as the gateway's files are; [`serve_api`] declares
//! each on the one responder. Adding an operation: its request type in `messages::api`, its
//! handler here, its route in the gateway.

mod executions;
mod nodes;
mod sessions;
mod templates;

use std::future::Future;
use std::sync::Arc;

use messages::{ApiRequest, ErrorBody, ErrorCode, subjects};
use service_kit::Responder;
#[cfg(test)]
use service_kit::bus;

use crate::scheduler::Scheduler;
use crate::store::StoreError;

/// The responder of every API request, subscribed (so live before the replica reports ready).
pub async fn responder(scheduler: &Arc<Scheduler>) -> anyhow::Result<Responder<Scheduler>> {
    let responder = Responder::new(scheduler.nats.clone(), Arc::clone(scheduler))
        .in_queue_group(subjects::scheduler_queue_group());
    let mut api = Api(responder);
    api.route(sessions::get).await?;
    api.route(sessions::list).await?;
    api.route(sessions::delete).await?;
    api.route(sessions::set_timeout).await?;
    api.route(templates::get).await?;
    api.route(templates::list).await?;
    api.route(templates::create).await?;
    api.route(templates::update).await?;
    api.route(templates::delete).await?;
    api.route(nodes::get).await?;
    api.route(nodes::list).await?;
    api.route(nodes::declare).await?;
    api.route(nodes::set_drain).await?;
    api.route(executions::start).await?;
    api.route(executions::get).await?;
    api.route(executions::list).await?;
    api.route(executions::record).await?;
    Ok(api.0)
}

/// Routes API requests, each on the subject its type names, in a span named after it.
struct Api(Responder<Scheduler>);

impl Api {
    async fn route<R, F, Fut>(&mut self, handler: F) -> anyhow::Result<()>
    where
        R: ApiRequest + Send + 'static,
        R::Response: Send + Sync,
        F: Fn(Arc<Scheduler>, R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, ErrorBody>> + Send + 'static,
    {
        self.0.route(R::SUBJECT, span::<R>, handler).await
    }
}

fn span<R: ApiRequest>(_: &R) -> tracing::Span {
    tracing::info_span!("scheduler.api", subject = R::SUBJECT)
}

/// Store failures are the replica's problem, not the caller's: logged in full, told briefly.
pub(crate) fn internal(error: StoreError) -> ErrorBody {
    tracing::error!(%error, "database error while answering a request");
    ErrorBody::new(
        ErrorCode::Internal,
        "the scheduler's database failed; see its log",
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::Parser as _;

    use super::*;
    use crate::config::Config;
    use crate::fleet::Fleet;
    use crate::store::Store;

    /// Every request type of the contract is served, each once (`route` refuses a second).
    #[tokio::test]
    async fn every_api_subject_is_served() {
        let nats_server = sandbox_ops::testkit::NatsServer::start().expect("nats-server starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let database = format!("sqlite://{}", dir.path().join("db").display());
        let store = Store::connect(&database).await.expect("store");
        let config = Config::try_parse_from(["scheduler-worker"]).expect("config");
        let nats = bus::connect(&nats_server.url(), "test")
            .await
            .expect("nats");
        let scheduler = Scheduler::new(nats, store, config, Fleet::default());
        let served: BTreeSet<String> = responder(&scheduler)
            .await
            .expect("routes")
            .subjects()
            .map(str::to_owned)
            .collect();
        let contract: BTreeSet<String> = messages::api::SUBJECTS
            .iter()
            .map(|subject| (*subject).to_owned())
            .collect();
        assert_eq!(served, contract);
    }
}

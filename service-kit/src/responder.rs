//! The one server of request-reply subjects: it subscribes (in a queue group or not), checks and
//! decodes each request, runs its handler in its own task inside a span that continues the
//! caller's trace, and answers with a [`Reply`]. At shutdown it stops taking requests and lets
//! those in progress finish. A service declares each subject once:
//! `responder.route(subject, span, handler)`.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::{Client, Message, Subscriber};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use messages::{ErrorBody, Reply, Request};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::bus;

type Serve<S> = dyn Fn(Arc<S>, Client, Message) -> BoxFuture<'static, ()> + Send + Sync;

struct Route<S> {
    subject: String,
    subscriber: Subscriber,
    serve: Arc<Serve<S>>,
}

/// The request-reply subjects one task of a service answers, with the state their handlers
/// share.
pub struct Responder<S> {
    nats: Client,
    state: Arc<S>,
    queue_group: Option<String>,
    /// At most this many requests handled at once (the next waits in its subscription).
    max_in_flight: Option<usize>,
    routes: Vec<Route<S>>,
}

impl<S> std::fmt::Debug for Responder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("queue_group", &self.queue_group)
            .field(
                "subjects",
                &self
                    .routes
                    .iter()
                    .map(|route| &route.subject)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync + 'static> Responder<S> {
    /// Answers on plain subscriptions: every subscriber hears each request (use it for subjects
    /// only one process listens on, such as a node's own commands).
    pub fn new(nats: Client, state: Arc<S>) -> Self {
        Self {
            nats,
            state,
            queue_group: None,
            max_in_flight: None,
            routes: Vec::new(),
        }
    }

    /// Handles at most `count` requests at once; with 1, one after the other in the order they
    /// came, for handlers whose writes must not race (say, one node's registrations).
    pub fn max_in_flight(mut self, count: usize) -> Self {
        self.max_in_flight = Some(count.max(1));
        self
    }

    /// Answers in queue group `group`: each request goes to one member.
    pub fn in_queue_group(mut self, group: &str) -> Self {
        self.queue_group = Some(group.to_owned());
        self
    }

    /// Subscribes to `subject` now (so the subscription is live before the service reports
    /// ready) and answers each request of type `R` with `handler`, inside `span(&request)`.
    /// Refuses a second handler for a subject.
    pub async fn route<R, F, Fut>(
        &mut self,
        subject: impl Into<String>,
        span: fn(&R) -> tracing::Span,
        handler: F,
    ) -> anyhow::Result<()>
    where
        R: Request + Send + 'static,
        R::Response: Send + Sync,
        F: Fn(Arc<S>, R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, ErrorBody>> + Send + 'static,
    {
        let subject = subject.into();
        if self.routes.iter().any(|route| route.subject == subject) {
            anyhow::bail!("two handlers for {subject}");
        }
        let subscriber = match &self.queue_group {
            Some(group) => {
                self.nats
                    .queue_subscribe(subject.clone(), group.clone())
                    .await
            }
            None => self.nats.subscribe(subject.clone()).await,
        }
        .with_context(|| format!("subscribing to {subject}"))?;
        let handler = Arc::new(handler);
        let serve: Arc<Serve<S>> = Arc::new(move |state, nats, message| {
            let handler = Arc::clone(&handler);
            Box::pin(answer(state, nats, message, span, handler))
        });
        self.routes.push(Route {
            subject,
            subscriber,
            serve,
        });
        Ok(())
    }

    /// The subjects routed so far.
    pub fn subjects(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|route| route.subject.as_str())
    }

    /// Answers requests until `cancel` fires, each in a task of its own; then unsubscribes and
    /// waits for the answers in progress.
    pub async fn serve(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let Self {
            nats,
            state,
            routes,
            max_in_flight,
            ..
        } = self;
        let permits = max_in_flight.map(|count| Arc::new(tokio::sync::Semaphore::new(count)));
        let mut requests = futures::stream::select_all(routes.into_iter().map(|route| {
            let serve = route.serve;
            route
                .subscriber
                .map(move |message| (Arc::clone(&serve), message))
        }));
        let mut in_progress = JoinSet::new();
        let outcome = loop {
            tokio::select! {
                () = cancel.cancelled() => break Ok(()),
                Some(finished) = in_progress.join_next(), if !in_progress.is_empty() => {
                    log_panic(finished);
                }
                request = requests.next() => match request {
                    Some((serve, message)) => {
                        let permit = match &permits {
                            Some(permits) => Some(Arc::clone(permits).acquire_owned().await?),
                            None => None,
                        };
                        let answer = serve(Arc::clone(&state), nats.clone(), message);
                        in_progress.spawn(async move {
                            answer.await;
                            drop(permit);
                        });
                    }
                    None => break Err(anyhow::anyhow!("the request subscriptions ended")),
                },
            }
        };
        drop(requests);
        while let Some(finished) = in_progress.join_next().await {
            log_panic(finished);
        }
        outcome
    }
}

/// Decodes, handles and answers one request.
async fn answer<S, R, F, Fut>(
    state: Arc<S>,
    nats: Client,
    message: Message,
    span: fn(&R) -> tracing::Span,
    handler: Arc<F>,
) where
    R: Request,
    F: Fn(Arc<S>, R) -> Fut,
    Fut: Future<Output = Result<R::Response, ErrorBody>>,
{
    let request = match bus::decode_message::<R>(&message) {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(subject = %message.subject, %error, "refusing an unreadable request");
            send(&nats, &message, &Reply::<R::Response>::Error(error)).await;
            return;
        }
    };
    let span = span(&request);
    bus::adopt_remote_parent(&span, message.headers.as_ref());
    async {
        let reply = Reply::from(handler(state, request).await);
        if let Reply::Error(error) = &reply {
            tracing::info!(code = %error.code, reason = %error.message, "request refused");
        }
        send(&nats, &message, &reply).await;
    }
    .instrument(span)
    .await;
}

async fn send<T: serde::Serialize>(nats: &Client, message: &Message, reply: &Reply<T>) {
    if let Err(error) = bus::respond(nats, message, reply).await {
        tracing::warn!(subject = %message.subject, %error, "could not answer a request");
    }
}

fn log_panic(finished: Result<(), tokio::task::JoinError>) {
    if let Err(error) = finished {
        tracing::error!(%error, "a request handler panicked");
    }
}

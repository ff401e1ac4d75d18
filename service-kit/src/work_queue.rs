//! A typed JetStream work queue shared by every replica: each message goes to one of them, is
//! handled while JetStream is told the work is in progress, and is acknowledged only once its
//! handler succeeded. A failure is retried with growing pauses; a payload of a newer schema is
//! handed back for a replica that reads it; one that can never be read is terminated at once. Both of the schedulers' consumers (session requests, execution
//! results) are one of these.

use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt as _;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument as _;

use crate::{bus, streams};

/// The longest pause before a message whose handling failed is delivered again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// How long a broken pull waits before pulling again.
const PULL_RETRY_DELAY: Duration = Duration::from_millis(500);
/// How long the handlers in progress get to finish at shutdown; the rest is redelivered.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// The messages of one durable consumer, decoded as `T`.
#[derive(Debug)]
pub struct WorkQueue<T> {
    name: String,
    consumer: PullConsumer,
    ack_wait: Duration,
    _payload: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + Send + 'static> WorkQueue<T> {
    /// The durable consumer `name` on `stream` (created if missing), filtered to `filter`.
    /// Unacknowledged messages go to another replica after `ack_wait`; work in progress extends
    /// it.
    pub async fn open(
        stream: &jetstream::stream::Stream,
        name: &str,
        filter: Option<&str>,
        ack_wait: Duration,
    ) -> anyhow::Result<Self> {
        let consumer = streams::shared_consumer(stream, name, filter, ack_wait).await?;
        Ok(Self {
            name: name.to_owned(),
            consumer,
            ack_wait,
            _payload: PhantomData,
        })
    }

    /// Handles up to `max_in_flight` messages at once until `cancel` fires, each inside
    /// `span(&payload)` continuing the publisher's trace; then lets those in progress finish
    /// (for a while: what does not finish is redelivered).
    pub async fn serve<F, Fut, E>(
        self,
        cancel: CancellationToken,
        max_in_flight: usize,
        span: fn(&T) -> tracing::Span,
        handler: F,
    ) -> anyhow::Result<()>
    where
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send,
    {
        let mut deliveries = self
            .consumer
            .messages()
            .await
            .with_context(|| format!("pulling from the {} consumer", self.name))?;
        let handler = Arc::new(handler);
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        loop {
            let permit = tokio::select! {
                () = cancel.cancelled() => break,
                permit = Arc::clone(&in_flight).acquire_owned() => permit?,
            };
            let delivery = tokio::select! {
                () = cancel.cancelled() => break,
                delivery = deliveries.next() => delivery,
            };
            match delivery {
                Some(Ok(message)) => {
                    let handler = Arc::clone(&handler);
                    let ack_wait = self.ack_wait;
                    tokio::spawn(async move {
                        handle(message, ack_wait, span, handler.as_ref()).await;
                        drop(permit);
                    });
                }
                Some(Err(error)) => {
                    tracing::warn!(consumer = %self.name, %error, "pulling failed; retrying");
                    tokio::time::sleep(PULL_RETRY_DELAY).await;
                }
                None => anyhow::bail!("the {} consumer's message stream ended", self.name),
            }
        }
        let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
        let _drained = tokio::time::timeout(DRAIN_DEADLINE, in_flight.acquire_many(all)).await;
        Ok(())
    }
}

async fn handle<T, F, Fut, E>(
    message: jetstream::Message,
    ack_wait: Duration,
    span: fn(&T) -> tracing::Span,
    handler: &F,
) where
    T: DeserializeOwned,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    if let Err(error) = bus::check_schema(message.headers.as_ref()) {
        // Written by a newer build: a replica that reads it may come (a rolling upgrade), so it
        // is handed back rather than dropped, and offered again after the longest pause.
        tracing::warn!(subject = %message.subject, %error, "a work item of a newer schema; handing it back");
        ack(&message, AckKind::Nak(Some(MAX_RETRY_DELAY))).await;
        return;
    }
    let payload: T = match messages::decode(&message.payload) {
        Ok(payload) => payload,
        Err(error) => {
            // Retrying cannot make it readable.
            tracing::warn!(subject = %message.subject, %error, "dropping an unreadable work item");
            ack(&message, AckKind::Term).await;
            return;
        }
    };
    let span = span(&payload);
    bus::adopt_remote_parent(&span, message.headers.as_ref());
    async {
        let keep_alive = keep_in_progress(message.clone(), ack_wait);
        let outcome = handler(payload).await;
        drop(keep_alive);
        match outcome {
            Ok(()) => ack(&message, AckKind::Ack).await,
            Err(error) => {
                let delay = retry_delay(&message);
                tracing::error!(%error, ?delay, "handling failed; it will be delivered again");
                ack(&message, AckKind::Nak(Some(delay))).await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// 1 s after the first failed delivery, doubling up to [`MAX_RETRY_DELAY`].
fn retry_delay(message: &jetstream::Message) -> Duration {
    let delivered = message.info().map_or(1, |info| info.delivered).clamp(1, 16);
    let exponent = u32::try_from(delivered - 1).unwrap_or(15);
    Duration::from_secs(1u64 << exponent).min(MAX_RETRY_DELAY)
}

/// Tells JetStream the message is still being worked on, so a slow handler's message is not
/// handed to another replica. Stops when dropped, even if the handler panicked.
fn keep_in_progress(message: jetstream::Message, ack_wait: Duration) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(ack_wait / 3);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            ack(&message, AckKind::Progress).await;
        }
    }))
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(%error, "acknowledging a work item failed");
    }
}

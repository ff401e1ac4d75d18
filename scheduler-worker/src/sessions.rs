//! Takes session-create requests from the JetStream work queue that all replicas share, and
//! acknowledges each only once its outcome is recorded.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt as _;
use messages::session::CreateSession;
use messages::{decode, subjects};
use service_kit::bus;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument as _;

use crate::scheduler::Scheduler;

/// The longest pause before a request whose outcome could not be recorded is tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// The durable consumer every replica shares; created if missing, along with the stream.
pub async fn consumer(scheduler: &Scheduler) -> anyhow::Result<PullConsumer> {
    let jetstream = jetstream::new(scheduler.nats.clone());
    let stream = bus::ensure_sessions_stream(&jetstream).await?;
    // While the database is down a request is retried with growing pauses, and placed once it
    // is back.
    bus::shared_consumer(
        &stream,
        subjects::sessions_consumer(),
        None,
        scheduler.config.ack_wait,
    )
    .await
}

/// Pulls requests and places up to `max_in_flight` of them at once.
pub async fn consume(
    scheduler: Arc<Scheduler>,
    consumer: PullConsumer,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut deliveries = consumer
        .messages()
        .await
        .context("pulling from the sessions consumer")?;
    let in_flight = Arc::new(Semaphore::new(scheduler.config.max_in_flight));
    loop {
        let permit = tokio::select! {
            () = cancel.cancelled() => break,
            permit = in_flight.clone().acquire_owned() => permit?,
        };
        let delivery = tokio::select! {
            () = cancel.cancelled() => break,
            delivery = deliveries.next() => delivery,
        };
        match delivery {
            Some(Ok(message)) => {
                let scheduler = scheduler.clone();
                tokio::spawn(async move {
                    handle(&scheduler, message).await;
                    drop(permit);
                });
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "pulling session requests failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            None => bail!("the sessions consumer stream ended"),
        }
    }
    // Let placements under way record their outcome; what does not finish is redelivered.
    let all = u32::try_from(scheduler.config.max_in_flight).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(10), in_flight.acquire_many(all)).await;
    Ok(())
}

async fn handle(scheduler: &Scheduler, message: jetstream::Message) {
    let span = tracing::info_span!(
        "scheduler.place_session",
        session_id = tracing::field::Empty
    );
    bus::adopt_remote_parent(&span, message.headers.as_ref());
    async {
        let request: CreateSession = match decode(&message.payload) {
            Ok(request) => request,
            Err(error) => {
                // Retrying cannot make it decode.
                tracing::warn!(%error, "dropping an undecodable session request");
                ack(&message, AckKind::Term).await;
                return;
            }
        };
        tracing::Span::current().record("session_id", request.session_id.as_str());
        let keep_alive = keep_in_progress(message.clone(), scheduler.config.ack_wait);
        let outcome = scheduler.place(&request).await;
        drop(keep_alive);
        match outcome {
            Ok(session) => {
                tracing::info!(status = %session.status, node = ?session.runtime_node, "session placed");
                ack(&message, AckKind::Ack).await;
            }
            Err(error) => {
                let delay = retry_delay(&message);
                tracing::error!(%error, ?delay, "could not record the session's outcome; will retry");
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

/// Tells JetStream the request is still being worked on, so a slow placement is not handed to
/// another replica. Stops when dropped, even if the placement panicked.
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
        tracing::warn!(%error, "acknowledging a session request failed");
    }
}

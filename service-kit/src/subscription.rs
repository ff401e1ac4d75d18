//! Typed plain subscriptions: the loop every event follower would otherwise write again (take
//! the next message, check its schema version, decode it or log and skip it, stop when the
//! subscription ends).

use std::future::Future;
use std::marker::PhantomData;

use anyhow::Context as _;
use async_nats::{Client, Subscriber};
use futures::StreamExt as _;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::bus;

/// The payloads of one subject, decoded as `T`.
#[derive(Debug)]
pub struct Subscription<T> {
    subject: String,
    subscriber: Subscriber,
    _payload: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Subscription<T> {
    /// Every message on `subject` (each subscriber gets each message).
    pub async fn subscribe(nats: &Client, subject: impl Into<String>) -> anyhow::Result<Self> {
        let subject = subject.into();
        let subscriber = nats
            .subscribe(subject.clone())
            .await
            .with_context(|| format!("subscribing to {subject}"))?;
        Ok(Self::new(subject, subscriber))
    }

    /// One member of `group` gets each message on `subject`.
    pub async fn queue_subscribe(
        nats: &Client,
        subject: impl Into<String>,
        group: &str,
    ) -> anyhow::Result<Self> {
        let subject = subject.into();
        let subscriber = nats
            .queue_subscribe(subject.clone(), group.to_owned())
            .await
            .with_context(|| format!("subscribing to {subject} in queue group {group}"))?;
        Ok(Self::new(subject, subscriber))
    }

    fn new(subject: String, subscriber: Subscriber) -> Self {
        Self {
            subject,
            subscriber,
            _payload: PhantomData,
        }
    }

    /// The next payload that decodes. One that does not (or is of a newer schema) is logged
    /// and skipped: one bad message from one peer must not stop the follower. An error means
    /// the subscription ended (the connection closed for good).
    pub async fn next(&mut self) -> anyhow::Result<T> {
        loop {
            let Some(message) = self.subscriber.next().await else {
                anyhow::bail!("the {} subscription ended", self.subject);
            };
            match bus::decode_message(&message) {
                Ok(payload) => return Ok(payload),
                Err(error) => {
                    tracing::warn!(subject = %message.subject, %error, "dropping an unreadable message");
                }
            }
        }
    }

    /// Runs `handler` on every payload, one at a time, until `cancel` fires.
    pub async fn for_each<F, Fut>(
        mut self,
        cancel: CancellationToken,
        mut handler: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut(T) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            let payload = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                payload = self.next() => payload?,
            };
            handler(payload).await;
        }
    }
}

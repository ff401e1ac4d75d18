//! The JetStream streams and their shared durable consumers, created by whichever part starts
//! first, so a request is stored even when no scheduler is up yet.

use std::time::Duration;

use messages::subjects;

/// The JetStream stream holding session-create requests, created by whichever part starts first
/// (gateway or scheduler) so that a request is stored even when no scheduler is up yet.
/// Work-queue retention: a message is gone once a scheduler acknowledged it.
pub async fn ensure_sessions_stream(
    jetstream: &async_nats::jetstream::Context,
) -> anyhow::Result<async_nats::jetstream::stream::Stream> {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
    let config = Config {
        name: subjects::sessions_stream().to_owned(),
        subjects: vec![subjects::sessions_create().to_owned()],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        // Requests nobody took within a day are stale; the client has long given up.
        max_age: Duration::from_secs(24 * 3600),
        // A create retried with the same session id within this window is dropped as a duplicate.
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    ensure_stream(jetstream, config).await
}

/// The JetStream stream holding every execution's output and result, created by the gateway and
/// the scheduler at start. Limits retention: a client streaming a run late replays it from the
/// start, and the scheduler's recorder reads the results; after an hour the events go, since the
/// result is in the database by then. Old events make room for new ones.
pub async fn ensure_executions_stream(
    jetstream: &async_nats::jetstream::Context,
) -> anyhow::Result<async_nats::jetstream::stream::Stream> {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
    let config = Config {
        name: subjects::executions_stream().to_owned(),
        subjects: vec![subjects::execution_events_all().to_owned()],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        max_age: Duration::from_secs(3600),
        max_bytes: EXECUTIONS_STREAM_MAX_BYTES,
        // A result published again (say, by a node retrying) within this window is dropped.
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    ensure_stream(jetstream, config).await
}

async fn ensure_stream(
    jetstream: &async_nats::jetstream::Context,
    config: async_nats::jetstream::stream::Config,
) -> anyhow::Result<async_nats::jetstream::stream::Stream> {
    let name = config.name.clone();
    jetstream
        .get_or_create_stream(config)
        .await
        .map_err(|error| anyhow::anyhow!("creating the {name} stream: {error}"))
}

/// The durable pull consumer `name` on `stream`, created if missing, that every scheduler
/// replica shares so each message goes to one of them. Explicit acks, and no limit on
/// redeliveries: work is never given up while a replica cannot record it.
pub async fn shared_consumer(
    stream: &async_nats::jetstream::stream::Stream,
    name: &str,
    filter_subject: Option<&str>,
    ack_wait: Duration,
) -> anyhow::Result<async_nats::jetstream::consumer::PullConsumer> {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: filter_subject.unwrap_or_default().to_owned(),
                ack_policy: AckPolicy::Explicit,
                ack_wait,
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|error| anyhow::anyhow!("creating the {name} consumer: {error}"))
}

/// How much execution output the EXECUTIONS stream keeps before it drops the oldest.
const EXECUTIONS_STREAM_MAX_BYTES: i64 = 1 << 30;

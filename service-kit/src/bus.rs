//! The NATS side of the wire contract: every message leaves with the schema-version and
//! trace-context headers, and requests are typed by the command they carry.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::header::HeaderValue;
use async_nats::{Client, HeaderMap, Message, RequestErrorKind, Subject};
use messages::api::ApiRequest;
use messages::headers::{SCHEMA_VERSION, SCHEMA_VERSION_HEADER};
use messages::node::NodeCommand;
use messages::{CodecError, ErrorBody, NodeId, Reply, decode, encode, subjects};
use opentelemetry::propagation::{Extractor, Injector};
use serde::{Serialize, de::DeserializeOwned};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A publish or request that did not get through, or got an error back.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("publishing to {subject} failed: {reason}")]
    Publish { subject: String, reason: String },
    #[error("nobody is listening on {subject}")]
    NoResponders { subject: String },
    #[error("no answer on {subject} within {after:?}")]
    Timeout { subject: String, after: Duration },
    #[error("request on {subject} failed: {reason}")]
    Request { subject: String, reason: String },
    #[error("{0}")]
    Remote(ErrorBody),
}

/// Connects to NATS under a client name that shows in the server's connection list.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` says nothing; leave the header out.
        if !value.is_empty() {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Returns once the NATS server has processed everything this client sent so far. The server
/// handles one connection's operations in order, so a message sent to ourselves coming back
/// proves it. After this, subscriptions made before are live for every other client: a service
/// calls it before it reports ready. (`Client::flush` only waits for the socket write.)
pub async fn sync_with_server(client: &Client) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .context("subscribing to an inbox")?;
    client
        .publish(inbox, bytes::Bytes::new())
        .await
        .context("publishing to an inbox")?;
    tokio::time::timeout(Duration::from_secs(10), echo.next())
        .await
        .context("the NATS server did not echo within 10 s")?
        .context("the NATS connection closed while syncing")?;
    Ok(())
}

/// Headers for an outgoing message: the schema version and the current span's trace context.
pub fn outgoing_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(SCHEMA_VERSION_HEADER, SCHEMA_VERSION.to_string().as_str());
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(&mut headers));
    });
    headers
}

/// Makes `span` a child of the trace a received message carries, if it carries one.
pub fn adopt_remote_parent(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else { return };
    adopt_parent(span, &HeaderExtractor(headers));
}

/// Makes `span` a child of the trace an HTTP request carries (W3C `traceparent`), if any, so a
/// client's trace continues through the control plane.
pub fn adopt_http_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    adopt_parent(span, &HttpHeaderExtractor(headers));
}

fn adopt_parent(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier));
    // Fails only when no OpenTelemetry layer is installed: then there is no trace to join.
    let _ = span.set_parent(parent);
}

struct HttpHeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Publishes `payload` on `subject` with the standard headers.
pub async fn publish<T: Serialize>(
    client: &Client,
    subject: impl Into<String>,
    payload: &T,
) -> Result<(), BusError> {
    let subject = subject.into();
    let bytes = encode(payload)?;
    client
        .publish_with_headers(
            Subject::from(subject.as_str()),
            outgoing_headers(),
            bytes.into(),
        )
        .await
        .map_err(|error| BusError::Publish {
            subject,
            reason: error.to_string(),
        })
}

/// Sends `payload` to `subject` and decodes the [`Reply`], turning its error into
/// [`BusError::Remote`].
pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
    client: &Client,
    subject: String,
    payload: &Req,
    timeout: Duration,
) -> Result<Resp, BusError> {
    let request = async_nats::Request::new()
        .headers(outgoing_headers())
        .payload(encode(payload)?.into())
        .timeout(Some(timeout));
    let answer = client
        .send_request(Subject::from(subject.as_str()), request)
        .await
        .map_err(|error| match error.kind() {
            RequestErrorKind::NoResponders => BusError::NoResponders {
                subject: subject.clone(),
            },
            RequestErrorKind::TimedOut => BusError::Timeout {
                subject: subject.clone(),
                after: timeout,
            },
            _ => BusError::Request {
                subject: subject.clone(),
                reason: error.to_string(),
            },
        })?;
    match decode::<Reply<Resp>>(&answer.payload)? {
        Reply::Ok(value) => Ok(value),
        Reply::Error(error) => Err(BusError::Remote(error)),
    }
}

/// Sends a command to one node on `runtime.cmd.<node_id>.<verb>`.
pub async fn node_request<C: NodeCommand>(
    client: &Client,
    node_id: &NodeId,
    command: &C,
    timeout: Duration,
) -> Result<C::Response, BusError>
where
    C::Response: DeserializeOwned,
{
    request(
        client,
        subjects::node_command(node_id, C::VERB),
        command,
        timeout,
    )
    .await
}

/// Sends a request to whichever scheduler replica answers first.
pub async fn api_request<R: ApiRequest>(
    client: &Client,
    request_body: &R,
    timeout: Duration,
) -> Result<R::Response, BusError>
where
    R::Response: DeserializeOwned,
{
    request(
        client,
        subjects::api(R::OP).to_owned(),
        request_body,
        timeout,
    )
    .await
}

/// Answers a request. A message without a reply subject was a plain publish: nothing to answer.
pub async fn respond<T: Serialize>(
    client: &Client,
    message: &Message,
    reply: &Reply<T>,
) -> Result<(), BusError> {
    match &message.reply {
        Some(reply_subject) => publish(client, reply_subject.to_string(), reply).await,
        None => Ok(()),
    }
}

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

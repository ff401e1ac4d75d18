//! The NATS side of the wire contract: every message leaves with the schema-version and
//! trace-context headers, every message received is checked for a schema version this build can
//! read, and requests are typed by what they carry.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::header::HeaderValue;
use async_nats::{Client, HeaderMap, Message, RequestErrorKind, Subject};
use messages::headers::{SCHEMA_VERSION, SCHEMA_VERSION_HEADER};
use messages::{
    ApiRequest, CodecError, ErrorBody, NodeCommand, NodeId, Reply, decode, encode, subjects,
};
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
    #[error("the answer on {subject} was refused: {reason}")]
    Schema { subject: String, reason: ErrorBody },
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
    check_schema(answer.headers.as_ref()).map_err(|reason| BusError::Schema {
        subject: subject.clone(),
        reason,
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
    request(client, R::SUBJECT.to_owned(), request_body, timeout).await
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

/// Whether a received message's schema version is one this build reads: the same major version
/// or an older one (within a major version fields are only added). A message without the header
/// comes from a tool (`nats pub`) and is read as the current version.
pub fn check_schema(headers: Option<&HeaderMap>) -> Result<(), ErrorBody> {
    let Some(value) = headers.and_then(|headers| headers.get(SCHEMA_VERSION_HEADER)) else {
        return Ok(());
    };
    let text = value.as_str();
    let major = text
        .split('.')
        .next()
        .and_then(|major| major.trim().parse::<u32>().ok());
    match major {
        Some(major) if major <= SCHEMA_VERSION => Ok(()),
        Some(_) => Err(ErrorBody::invalid(format!(
            "the payload's schema version {text} is newer than this build's {SCHEMA_VERSION}: \
             upgrade this service to read it"
        ))),
        None => Err(ErrorBody::invalid(format!(
            "the {SCHEMA_VERSION_HEADER} header {text:?} is not a version number"
        ))),
    }
}

/// A received message's payload, if its schema version is readable and it decodes.
pub fn decode_message<T: DeserializeOwned>(message: &Message) -> Result<T, ErrorBody> {
    check_schema(message.headers.as_ref())?;
    decode(&message.payload).map_err(|error| ErrorBody::invalid(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_version(version: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(SCHEMA_VERSION_HEADER, version);
        headers
    }

    #[test]
    fn a_newer_major_schema_version_is_refused() {
        assert!(check_schema(None).is_ok());
        assert!(check_schema(Some(&with_version("1"))).is_ok());
        assert!(check_schema(Some(&with_version("1.7"))).is_ok());
        assert!(check_schema(Some(&with_version("0"))).is_ok());
        let newer = check_schema(Some(&with_version("2"))).expect_err("newer");
        assert_eq!(newer.code, messages::ErrorCode::InvalidRequest);
        assert!(newer.message.contains("newer"), "{}", newer.message);
        assert!(check_schema(Some(&with_version("2.0"))).is_err());
        assert!(check_schema(Some(&with_version("v1"))).is_err());
    }
}

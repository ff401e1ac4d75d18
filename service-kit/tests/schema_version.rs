//! Against a real nats-server: a request or an event of a newer major schema version is refused
//! by the receiving side (an error answer naming the version; an event skipped), while one of
//! the current version is served.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use chrono::Utc;
use messages::headers::{SCHEMA_VERSION, SCHEMA_VERSION_HEADER};
use messages::node::{NodePong, NodeUpdated, PingNode};
use messages::{ErrorCode, NodeId, Reply, decode, encode};
use service_kit::bus;
use service_kit::{Responder, Subscription};
use tokio_util::sync::CancellationToken;

const SUBJECT: &str = "test.schema.ping";
const UPDATES: &str = "test.schema.updates";

fn headers(version: u32) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(SCHEMA_VERSION_HEADER, version.to_string().as_str());
    headers
}

async fn ask(nats: &async_nats::Client, version: u32) -> Reply<NodePong> {
    let request = async_nats::Request::new()
        .headers(headers(version))
        .payload(encode(&PingNode {}).expect("encodes").into())
        .timeout(Some(Duration::from_secs(5)));
    let answer = nats.send_request(SUBJECT, request).await.expect("answered");
    decode(&answer.payload).expect("a reply")
}

#[tokio::test]
async fn a_newer_major_version_is_refused_and_the_current_one_served() {
    let server = sandbox_ops::testkit::NatsServer::start().expect("nats-server starts");
    let nats = bus::connect(&server.url(), "schema-test")
        .await
        .expect("connects");
    let node = NodeId::parse("n1").expect("valid");
    let mut responder = Responder::new(nats.clone(), Arc::new(node));
    responder
        .route(
            SUBJECT,
            |_: &PingNode| tracing::info_span!("test.ping"),
            |node: Arc<NodeId>, PingNode {}| async move {
                Ok(NodePong {
                    node_id: (*node).clone(),
                    started_at: Utc::now(),
                })
            },
        )
        .await
        .expect("routes");
    let cancel = CancellationToken::new();
    let serving = tokio::spawn(responder.serve(cancel.clone()));
    bus::sync_with_server(&nats).await.expect("synced");

    let current = ask(&nats, SCHEMA_VERSION).await;
    assert!(matches!(current, Reply::Ok(NodePong { .. })), "{current:?}");
    match ask(&nats, SCHEMA_VERSION + 1).await {
        Reply::Error(error) => {
            assert_eq!(error.code, ErrorCode::InvalidRequest);
            assert!(error.message.contains("newer"), "{}", error.message);
        }
        other => panic!("a newer schema was served: {other:?}"),
    }

    // An event of a newer schema is skipped; the next readable one is delivered.
    let mut updates: Subscription<NodeUpdated> = Subscription::subscribe(&nats, UPDATES)
        .await
        .expect("subscribes");
    for (version, node) in [
        (SCHEMA_VERSION + 1, "from-the-future"),
        (SCHEMA_VERSION, "now"),
    ] {
        let payload = encode(&NodeUpdated {
            node_id: NodeId::parse(node).expect("valid"),
        })
        .expect("encodes");
        nats.publish_with_headers(UPDATES, headers(version), payload.into())
            .await
            .expect("publishes");
    }
    let delivered = tokio::time::timeout(Duration::from_secs(5), updates.next())
        .await
        .expect("in time")
        .expect("a payload");
    assert_eq!(delivered.node_id.as_str(), "now");

    cancel.cancel();
    serving.await.expect("joins").expect("stops cleanly");
}

/// A work item of a newer schema is handed back, not dropped: it stays in the work queue for a
/// replica that reads it, while items of the current schema are handled.
#[tokio::test]
async fn a_work_item_of_a_newer_schema_stays_queued() {
    use async_nats::jetstream::stream::{Config, RetentionPolicy};
    use std::sync::atomic::{AtomicUsize, Ordering};

    let server = sandbox_ops::testkit::NatsServer::start().expect("nats-server starts");
    let nats = bus::connect(&server.url(), "queue-test")
        .await
        .expect("connects");
    let jetstream = async_nats::jetstream::new(nats.clone());
    let stream = jetstream
        .create_stream(Config {
            name: "TESTWORK".into(),
            subjects: vec!["test.work".into()],
            retention: RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .expect("stream");
    let queue: service_kit::WorkQueue<NodeUpdated> =
        service_kit::WorkQueue::open(&stream, "workers", None, Duration::from_secs(5))
            .await
            .expect("consumer");
    let handled = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let counter = Arc::clone(&handled);
    let serving = tokio::spawn(queue.serve(
        cancel.clone(),
        4,
        |_: &NodeUpdated| tracing::info_span!("test.work"),
        move |_update| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<(), String>(())
            }
        },
    ));
    for version in [SCHEMA_VERSION + 1, SCHEMA_VERSION] {
        let payload = encode(&NodeUpdated {
            node_id: NodeId::parse("n1").expect("valid"),
        })
        .expect("encodes");
        jetstream
            .publish_with_headers("test.work", headers(version), payload.into())
            .await
            .expect("publishes")
            .await
            .expect("stored");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handled.load(Ordering::SeqCst) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the current item was never handled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give the newer one time to be (wrongly) handled or dropped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "only the readable item is handled"
    );
    let mut stream = jetstream.get_stream("TESTWORK").await.expect("stream");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.state.messages, 1, "the newer item is still queued");

    cancel.cancel();
    serving.await.expect("joins").expect("stops cleanly");
}

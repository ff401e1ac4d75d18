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

//! The simulated fleet itself (a benchmark tool) against a real `nats-server`: each node answers
//! on its own subjects with the daemon's payloads, refuses past its capacity, and a silenced node
//! answers nothing. No Docker is involved.

use std::time::Duration;

use clap::Parser as _;
use messages::node::{ContainerCreated, CreateContainer, NodePong, PingNode};
use messages::simulation::{FleetStats, FleetStatsRequest, NodesSilenced, SilenceNodes};
use messages::template::{ContainerSpec, NetworkMode, Resources};
use messages::{ErrorCode, NodeId, SessionId, subjects};
use node_daemon::Config;
use sandbox_ops::testkit::NatsServer;
use service_kit::bus::{self, BusError};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(5);

fn node(index: u32) -> NodeId {
    NodeId::parse(format!("simtest-{index:05}")).expect("valid node id")
}

fn create(session: &str) -> CreateContainer {
    CreateContainer {
        session_id: SessionId::parse(session).expect("valid session id"),
        spec: ContainerSpec {
            image: "sandbox-executor:v1.0".to_owned(),
            resources: Resources {
                cpu_cores: 1.0,
                memory_mb: 256,
                pids_limit: 64,
                // Guaranteed its limits: the test fills a node by them.
                cpu_request_cores: Some(1.0),
                memory_request_mb: Some(256),
                ..Resources::default()
            },
            network: NetworkMode::None,
            env: Default::default(),
            runtime: Default::default(),
            egress: Default::default(),
        },
    }
}

#[tokio::test]
async fn simulated_nodes_answer_admit_and_go_silent() {
    let nats = NatsServer::start().expect("nats-server starts");
    let config = Config::try_parse_from([
        "node-daemon",
        "--nats-url",
        &nats.url(),
        "--simulate-nodes",
        "3",
        "--node-id-prefix",
        "simtest",
        "--max-containers",
        "2",
        "--cpu-cores",
        "4",
        "--memory-mb",
        "4096",
        "--simulated-start-delay",
        "5ms",
    ])
    .expect("flags parse");
    let cancel = CancellationToken::new();
    let running = node_daemon::start(config, cancel.clone())
        .await
        .expect("the fleet starts");
    let client = async_nats::connect(nats.url()).await.expect("connects");

    // Creates on one node, idempotent on the session, refused past max_containers.
    let first: ContainerCreated = bus::node_request(&client, &node(1), &create("s1"), TIMEOUT)
        .await
        .expect("created");
    assert_eq!(first.node_id, node(1));
    assert!(!first.existed);
    let again: ContainerCreated = bus::node_request(&client, &node(1), &create("s1"), TIMEOUT)
        .await
        .expect("answered again");
    assert!(again.existed);
    assert_eq!(again.container_id, first.container_id);
    bus::node_request(&client, &node(1), &create("s2"), TIMEOUT)
        .await
        .expect("second fits");
    match bus::node_request(&client, &node(1), &create("s3"), TIMEOUT).await {
        Err(BusError::Remote(error)) => assert_eq!(error.code, ErrorCode::Capacity),
        other => panic!("a third container must be refused, got {other:?}"),
    }
    // Another node has its own ledger.
    bus::node_request(&client, &node(2), &create("s3"), TIMEOUT)
        .await
        .expect("fits on another node");

    let pong: NodePong = bus::node_request(&client, &node(0), &PingNode {}, TIMEOUT)
        .await
        .expect("ping answered");
    assert_eq!(pong.node_id, node(0));

    // A silenced node answers nothing, as a hung daemon.
    let silenced: NodesSilenced = bus::request(
        &client,
        subjects::simulation_silence().to_owned(),
        &SilenceNodes {
            node_ids: vec![node(0)],
        },
        TIMEOUT,
    )
    .await
    .expect("silenced");
    assert_eq!(silenced.silenced, 1);
    let ping = bus::node_request(&client, &node(0), &PingNode {}, Duration::from_millis(500)).await;
    assert!(matches!(ping, Err(BusError::Timeout { .. })), "{ping:?}");

    let stats: FleetStats = bus::request(
        &client,
        subjects::simulation_stats().to_owned(),
        &FleetStatsRequest {},
        TIMEOUT,
    )
    .await
    .expect("stats");
    assert_eq!(stats.nodes, 3);
    assert_eq!(stats.created, 3);
    assert_eq!(stats.existed, 1);
    assert_eq!(stats.refused, 1);
    assert_eq!(stats.peak_containers, 2);
    assert_eq!(stats.over_capacity_nodes, 0);

    cancel.cancel();
    running.wait().await.expect("the fleet stops cleanly");
}

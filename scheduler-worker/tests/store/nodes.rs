//! Nodes: a registration then heartbeats, operators' declarations and drain, and the seed's own
//! static registration.

use chrono::{DateTime, Utc};
use messages::NodeId;
use messages::node::{Heartbeat, NodeRegistration};
use scheduler_worker::store::{self, Store};

use crate::Database;
use crate::fixtures::{declaration, heartbeat, node_id, registration};

/// Records [`crate::fixtures::NODE`]'s registration now; returns it and when that was.
async fn registered(store: &Store) -> (NodeRegistration, DateTime<Utc>) {
    let base = store::now();
    let registration = registration(base);
    store
        .upsert_node(&registration, base)
        .await
        .expect("upserts");
    (registration, base)
}

pub async fn a_node_is_recorded_from_its_registration_then_its_heartbeats(store: &Store) {
    let (registration, base) = registered(store).await;
    store
        .upsert_node(&registration, base)
        .await
        .expect("upserts twice");
    let heartbeat = heartbeat(base);
    // The schedulers' judgement of health is the status; a heartbeat batch written after it
    // (a node that went silent right after) leaves it alone.
    store
        .set_node_statuses(&[(node_id(), "offline")])
        .await
        .expect("updates");
    let never_registered = Heartbeat {
        node_id: NodeId::parse("never-registered").expect("valid"),
        ..heartbeat.clone()
    };
    let received = base + chrono::Duration::seconds(1);
    store
        .record_heartbeats(&[(heartbeat.clone(), received), (never_registered, received)])
        .await
        .expect("records");
    // Another replica's batch holding an older heartbeat changes nothing.
    let older = Heartbeat {
        running_containers: 0,
        ..heartbeat
    };
    store
        .record_heartbeats(&[(older, base)])
        .await
        .expect("records");
    let nodes = store.list_nodes().await.expect("lists");
    assert_eq!(nodes.len(), 1, "a heartbeat alone records no node");
    let node = &nodes[0];
    assert_eq!(node.registration.node_id, node_id());
    assert_eq!(node.registration.cached_images, registration.cached_images);
    assert_eq!(node.registration.labels, registration.labels);
    assert_eq!(
        (node.running_containers, node.allocated_memory_mb),
        (2, 768)
    );
    assert_eq!(node.last_heartbeat_at, Some(received));
    assert_eq!(node.status, "offline");
    assert!(
        !nodes[0].declared,
        "a node that registered itself is not declared"
    );
}

pub async fn a_declaration_outlives_registrations_and_drain_is_recorded(store: &Store) {
    // The node registered itself before the operator declared it.
    let (registration, base) = registered(store).await;
    // A declaration's capacity survives the daemon's next registration.
    store
        .declare_node(&declaration(), base)
        .await
        .expect("declares");
    store
        .upsert_node(&registration, base)
        .await
        .expect("upserts");
    let node = store
        .get_node(&node_id())
        .await
        .expect("reads")
        .expect("found");
    assert!(node.declared);
    assert_eq!(
        (
            node.registration.total_cpu_cores,
            node.registration.total_memory_mb,
            node.registration.max_containers
        ),
        (2.0, 2048, 3)
    );
    assert!(
        store
            .set_node_drained(&node_id(), true)
            .await
            .expect("drains")
    );
    assert!(
        store
            .get_node(&node_id())
            .await
            .expect("reads")
            .expect("found")
            .drained
    );
    let nobody = NodeId::parse("nobody").expect("valid");
    assert!(!store.set_node_drained(&nobody, true).await.expect("no-op"));
    assert!(store.get_node(&nobody).await.expect("reads").is_none());
}

/// The seed's static registration, verbatim (PostgreSQL's `NOW()`), is accepted and read back
/// as a declared node.
pub async fn the_seeds_static_registration_is_read_as_a_node(db: &Database) {
    db.execute_on_postgres(
        "INSERT INTO runtime_nodes (node_id, hostname, runtime_type, ip_address, api_endpoint, status, \
         total_cpu_cores, total_memory_mb, running_containers, max_containers, cached_images, last_heartbeat_at) \
         VALUES ('seed-node', 'localhost', 'docker', '127.0.0.1', 'unix:///var/run/docker.sock', 'online', \
         8.0, 16384, 0, 100, '[\"sandbox-executor:v1.0\"]', NOW());",
    )
    .await;
    let nodes = db.store.list_nodes().await.expect("lists");
    let seeded = nodes
        .iter()
        .find(|n| n.registration.node_id.as_str() == "seed-node")
        .expect("listed");
    assert_eq!(seeded.registration.max_containers, 100);
    assert!(seeded.declared, "the seed's INSERT declares the node");
    assert_eq!(seeded.registration.cached_images, ["sandbox-executor:v1.0"]);
}

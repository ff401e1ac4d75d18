//! Warm pools, through HTTP against a real node daemon and Docker: a template asks each node to
//! keep containers ready; a session claims one, faster than a cold start in the same run; the
//! pool refills; a claimed container is fresh and serves only its session.

mod common;

use std::time::{Duration, Instant};

use common::{System, require_executor_image};
use futures::StreamExt as _;
use messages::node::Heartbeat;
use sandbox_ops::testkit;
use serde_json::json;

const POOL_SIZE: usize = 2;

async fn wait_for_full_pool(template_id: &str) -> Vec<String> {
    for _ in 0..300 {
        let warm = testkit::warm_containers(template_id)
            .await
            .expect("containers listed");
        if warm.len() == POOL_SIZE {
            return warm;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the warm pool of {template_id} did not fill to {POOL_SIZE}");
}

/// Creates a session of `template_id`; returns it and how long the request took.
async fn timed_create(system: &System, template_id: &str) -> (serde_json::Value, Duration) {
    let started = Instant::now();
    let (status, session) = system
        .post_json("/api/v1/sessions", &json!({"template_id": template_id}))
        .await;
    let took = started.elapsed();
    assert_eq!(status, 201, "{session}");
    (session, took)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::test]
async fn a_session_claims_a_fresh_warm_container_faster_than_a_cold_start_and_the_pool_refills() {
    require_executor_image();
    let system = System::with_node().await;
    // Pools hold containers of one exact spec, so the cold template differs (in memory): its
    // sessions cannot claim the warm ones.
    let template = |id: &str, memory: u64, warm_pool_size: usize| {
        json!({"id": id, "image": "sandbox-executor:v1.0", "cpu": 0.25, "memory": memory,
               "pids": 64, "timeout": 300, "warm_pool_size": warm_pool_size})
    };
    let (status, created) = system
        .post_json("/api/v1/templates", &template("warm", 128, POOL_SIZE))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["warm_pool_size"], POOL_SIZE);
    let (status, _) = system
        .post_json("/api/v1/templates", &template("cold", 160, 0))
        .await;
    assert_eq!(status, 201);

    // The node reads the template and fills the pool; its heartbeats count the warm ones.
    wait_for_full_pool("warm").await;
    let client = async_nats::connect(system.nats_url())
        .await
        .expect("NATS reachable");
    let mut heartbeats = client
        .subscribe(messages::subjects::heartbeat())
        .await
        .expect("subscribed");
    let heartbeat: Heartbeat = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), heartbeats.next())
            .await
            .expect("a heartbeat within 10 s")
            .expect("subscription open");
        let heartbeat: Heartbeat = messages::decode(&message.payload).expect("decodes");
        if heartbeat.warm_containers == 2 {
            break heartbeat;
        }
    };
    assert!(
        heartbeat.running_containers >= 2,
        "warm containers count as running"
    );

    // Cold and warm starts, alternated in the same run.
    let mut cold_times = Vec::new();
    let mut warm_times = Vec::new();
    let mut claimed = Vec::new();
    for _ in 0..3 {
        let (_, took) = timed_create(&system, "cold").await;
        cold_times.push(took);
        let warm = wait_for_full_pool("warm").await;
        let (session, took) = timed_create(&system, "warm").await;
        warm_times.push(took);
        let container_id = session["container_id"]
            .as_str()
            .expect("container id")
            .to_owned();
        assert!(
            warm.contains(&container_id),
            "the session did not get one of the warm containers"
        );
        claimed.push((session["id"].as_str().expect("id").to_owned(), container_id));
    }
    let (cold, warm_claim) = (median(cold_times), median(warm_times));
    assert!(
        warm_claim < cold,
        "a warm claim ({warm_claim:?}) is not faster than a cold start ({cold:?})"
    );

    // Each claimed container serves its session alone, by its session's name, and is fresh.
    let distinct: std::collections::HashSet<&String> =
        claimed.iter().map(|(_, container)| container).collect();
    assert_eq!(
        distinct.len(),
        claimed.len(),
        "a container was claimed twice"
    );
    let (session_id, container_id) = &claimed[0];
    let docker = common::docker();
    let inspect = docker
        .inspect_container(container_id, None)
        .await
        .expect("inspected");
    assert_eq!(
        inspect.name.as_deref(),
        Some(format!("/sandbox-{session_id}").as_str())
    );
    let (status, fresh) = system
        .post_json(
            &format!("/api/v1/sessions/{session_id}/executions"),
            &json!({"code": "import os\nprint(os.listdir('.'))"}),
        )
        .await;
    assert_eq!(status, 201, "{fresh}");
    assert_eq!(fresh["stdout"], "[]\n", "{fresh}");

    // A claimed container leaves with its session; it never goes back to the pool.
    let (status, _) = system
        .delete(&format!("/api/v1/sessions/{session_id}"))
        .await;
    assert_eq!(status, 200);
    let refilled = wait_for_full_pool("warm").await;
    assert!(!refilled.contains(container_id));
    for _ in 0..50 {
        if docker.inspect_container(container_id, None).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the deleted session's container is still there");
}

//! The fleet staying truthful when things fail, through HTTP, with real node-daemon processes
//! (killed with SIGKILL), in-process daemons, real NATS and the real Docker engine.

mod common;

use std::time::Duration;

use common::{Options, SLEEPER, System, create_request, docker};
use messages::labels;
use sandbox_ops::stack::Signal;
use sandbox_ops::testkit;
use serde_json::{Value, json};

const TOKEN: &str = "test-internal-token-0123456789";

async fn containers_of_session(session_id: &str) -> usize {
    testkit::containers_labelled(labels::SESSION_ID, session_id)
        .await
        .expect("containers listed")
        .len()
}

async fn wait_until_no_container(session_id: &str, limit: Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if containers_of_session(session_id).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("session {session_id} still has a container after {limit:?}");
}

#[tokio::test]
async fn a_killed_node_goes_offline_its_sessions_are_lost_and_new_ones_go_to_the_survivor() {
    let mut system = System::start(Options {
        scheduler_flags: vec!["--node-lost-grace".into(), "3s".into()],
        ..Options::default()
    })
    .await;
    system.add_sleeper_template(0.25, 64).await;
    let doomed = system.start_node_process("1s").await;
    let survivor = system.start_node().await;

    // Draining the survivor puts the first session on the node about to die.
    let (status, drained) = system
        .post_json(&format!("/api/v1/nodes/{survivor}/drain"), &json!({}))
        .await;
    assert_eq!(status, 200, "{drained}");
    assert_eq!(drained["status"], "draining");
    assert_eq!(drained["drained"], true);
    let session = system.create_session(json!({"template_id": SLEEPER})).await;
    assert_eq!(session["runtime_node"], doomed.as_str());
    let id = session["id"].as_str().expect("id").to_owned();
    let (status, _) = system
        .post_json(&format!("/api/v1/nodes/{survivor}/undrain"), &json!({}))
        .await;
    assert_eq!(status, 200);

    let (_, nodes) = system.get("/api/v1/nodes").await;
    let listed = nodes["nodes"].as_array().expect("nodes");
    assert_eq!(listed.len(), 2, "{nodes}");
    for node in listed {
        assert_eq!(node["status"], "online", "{node}");
        assert!(node["last_heartbeat_at"].is_string(), "{node}");
    }

    // kill -9: no goodbye. Suspect after two missed heartbeats; the probe then finds no
    // process behind the node's subjects, so offline at once.
    system.node_process(&doomed).kill();
    let (took, seen) = system
        .wait_for_node(&doomed, "offline", Duration::from_secs(15))
        .await;
    assert!(
        seen.iter()
            .all(|status| ["online", "suspect", "offline"].contains(&status.as_str())),
        "{seen:?}"
    );
    eprintln!("kill -9 to offline: {took:?} (statuses {seen:?})");

    // After the grace the session is lost, with the reason.
    let (lost, _) = system
        .wait_for_session(&id, "lost", Duration::from_secs(10))
        .await;
    assert_eq!(lost["failure_code"], "node_lost", "{lost}");
    assert!(
        lost["failure_reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("node_lost")),
        "{lost}"
    );

    // New sessions all go to the survivor.
    for _ in 0..2 {
        let session = system.create_session(json!({"template_id": SLEEPER})).await;
        assert_eq!(session["runtime_node"], survivor.as_str());
    }
}

#[tokio::test]
async fn a_frozen_node_daemon_goes_suspect_then_offline_and_back_online() {
    let mut system = System::without_nodes().await;
    let node = system.start_node_process("1s").await;
    // Frozen, its connection stays open: the probe gets no answer, so the heartbeat rule
    // decides.
    system
        .node_process(&node)
        .signal(Signal::Stop)
        .expect("frozen");
    let (_, seen) = system
        .wait_for_node(&node, "offline", Duration::from_secs(10))
        .await;
    assert_eq!(seen, ["online", "suspect", "offline"]);
    system
        .node_process(&node)
        .signal(Signal::Cont)
        .expect("thawed");
    system.wait_until_online(&node).await;
}

#[tokio::test]
async fn a_restarted_node_daemon_adopts_running_sessions_and_removes_the_rest() {
    let image = testkit::ensure_test_image().expect("test image");
    let mut system = System::without_nodes().await;
    system.add_sleeper_template(0.25, 64).await;
    let node = system.start_node_process("1s").await;
    let running = system.create_session(json!({"template_id": SLEEPER})).await;
    let running_id = running["id"].as_str().expect("id").to_owned();
    let ended = system.create_session(json!({"template_id": SLEEPER})).await;
    let ended_id = ended["id"].as_str().expect("id").to_owned();

    system.node_process(&node).kill();
    // While the daemon is away: a session ends (its container cannot be removed yet), and a
    // container appears that no session knows.
    let (status, _) = system.delete(&format!("/api/v1/sessions/{ended_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(containers_of_session(&ended_id).await, 1);
    let orphan_session = uuid::Uuid::now_v7().to_string();
    let orphan = docker()
        .create_container(
            Some(
                bollard::query_parameters::CreateContainerOptionsBuilder::default()
                    .name(&format!("sandbox-{orphan_session}"))
                    .build(),
            ),
            bollard::models::ContainerCreateBody {
                image: Some(image.to_owned()),
                labels: Some(std::collections::HashMap::from([
                    (labels::SESSION_ID.to_owned(), orphan_session.clone()),
                    (labels::NODE_ID.to_owned(), node.clone()),
                    (labels::MANAGED_BY.to_owned(), labels::MANAGER.to_owned()),
                ])),
                ..Default::default()
            },
        )
        .await
        .expect("orphan created");
    docker()
        .start_container(&orphan.id, None)
        .await
        .expect("orphan started");

    system
        .node_process(&node)
        .restart()
        .expect("the daemon starts again");
    system.wait_until_online(&node).await;
    wait_until_no_container(&ended_id, Duration::from_secs(10)).await;
    wait_until_no_container(&orphan_session, Duration::from_secs(10)).await;

    // The running session was never interrupted: same container, still running.
    let (_, after) = system.get(&format!("/api/v1/sessions/{running_id}")).await;
    assert_eq!(after["status"], "running", "{after}");
    assert_eq!(after["container_id"], running["container_id"]);
    let container = docker()
        .inspect_container(running["container_id"].as_str().expect("id"), None)
        .await
        .expect("still there");
    assert_eq!(container.state.and_then(|state| state.running), Some(true));
    assert!(
        system
            .node_process(&node)
            .log()
            .contains("registration accepted")
    );
}

#[tokio::test]
async fn static_mode_refuses_an_undeclared_daemon_until_it_is_declared() {
    let mut system = System::start(Options {
        scheduler_flags: vec!["--registration-mode".into(), "static".into()],
        internal_token: Some(TOKEN.to_owned()),
    })
    .await;
    system.add_sleeper_template(0.25, 64).await;
    let node = system.start_node_unchecked(&[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = system.get(&format!("/api/v1/nodes/{node}")).await;
    assert_eq!(status, 404, "an undeclared node joined");
    let (status, body) = system
        .post_json("/api/v1/sessions", &json!({"template_id": SLEEPER}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "no_healthy_nodes");

    // It is told why: the same refusal an HTTP agent gets.
    let (status, refusal) = system
        .post_internal(
            "/internal/runtime/nodes/register",
            Some(TOKEN),
            &json!({"node_id": node, "hostname": "localhost", "runtime_type": "docker",
                    "api_endpoint": "unix:///var/run/docker.sock", "total_cpu_cores": 8.0,
                    "total_memory_mb": 16384, "max_containers": 100}),
        )
        .await;
    assert_eq!(status, 403, "{refusal}");
    assert_eq!(refusal["error"]["code"], "forbidden");
    assert!(
        refusal["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("not declared")),
        "{refusal}"
    );

    // Declared (with less room than the daemon offers): it joins, with the declared capacity.
    let (status, declared) = system
        .post_json(
            "/api/v1/nodes",
            &json!({"node_id": node, "hostname": "localhost", "runtime_type": "docker",
                    "ip_address": "127.0.0.1", "api_endpoint": "unix:///var/run/docker.sock",
                    "total_cpu_cores": 2.0, "total_memory_mb": 2048, "max_containers": 1}),
        )
        .await;
    assert_eq!(status, 201, "{declared}");
    assert_eq!(declared["declared"], true);
    system.wait_until_online(&node).await;
    let (_, shown) = system.get(&format!("/api/v1/nodes/{node}")).await;
    assert_eq!(shown["max_containers"], 1, "{shown}");
    assert_eq!(shown["total_cpu_cores"], 2.0, "{shown}");
    system.create_session(json!({"template_id": SLEEPER})).await;
    let (status, full) = system
        .post_json("/api/v1/sessions", &json!({"template_id": SLEEPER}))
        .await;
    assert_eq!(status, 503, "the declared capacity holds: {full}");

    // Bad declarations change nothing.
    for bad in [
        json!({"node_id": "x", "hostname": "h", "total_cpu_cores": 0.0,
               "total_memory_mb": 1, "max_containers": 1}),
        json!({"node_id": "not a node id", "hostname": "h", "total_cpu_cores": 1.0,
               "total_memory_mb": 1, "max_containers": 1}),
        json!({"node_id": "x", "hostname": "h"}),
    ] {
        let (status, body) = system.post_json("/api/v1/nodes", &bad).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(body["error"]["message"].is_string());
    }
    let (_, nodes) = system.get("/api/v1/nodes").await;
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(1), "{nodes}");
}

#[tokio::test]
async fn drain_stops_new_placements_and_undrain_resumes_them() {
    let system = System::with_node().await;
    system.add_sleeper_template(0.25, 64).await;
    let node = system.node_ids()[0].clone();
    let (status, drained) = system
        .post_json(&format!("/api/v1/nodes/{node}/drain"), &json!({}))
        .await;
    assert_eq!(status, 200, "{drained}");
    let (status, body) = system
        .post_json("/api/v1/sessions", &json!({"template_id": SLEEPER}))
        .await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = system
        .post_json("/api/v1/nodes/no-such-node/drain", &json!({}))
        .await;
    assert_eq!(status, 404);
    let (status, _) = system
        .post_json(&format!("/api/v1/nodes/{node}/undrain"), &json!({}))
        .await;
    assert_eq!(status, 200);
    system.create_session(json!({"template_id": SLEEPER})).await;
}

#[tokio::test]
async fn sessions_expire_keep_alive_extends_them_and_expired_ones_leave_no_container() {
    let system = System::with_node().await;
    system.add_sleeper_template(0.25, 64).await;
    let short = system
        .create_session(json!({"template_id": SLEEPER, "timeout": 2}))
        .await;
    assert_eq!(short["timeout_seconds"], 2);
    let short_id = short["id"].as_str().expect("id").to_owned();
    let kept = system
        .create_session(json!({"template_id": SLEEPER, "timeout": 2}))
        .await;
    let kept_id = kept["id"].as_str().expect("id").to_owned();
    let keep_alive = |id: &str, body: Value| {
        let (system, path) = (&system, format!("/api/v1/sessions/{id}/timeout"));
        async move { system.post_json(&path, &body).await }
    };
    let (status, extended) = keep_alive(&kept_id, json!({"timeout": 60})).await;
    assert_eq!(status, 200, "{extended}");
    assert_eq!(extended["timeout_seconds"], 60);

    let (expired, _) = system
        .wait_for_session(&short_id, "terminated", Duration::from_secs(10))
        .await;
    assert_eq!(expired["failure_code"], "timeout", "{expired}");
    wait_until_no_container(&short_id, Duration::from_secs(5)).await;
    let (_, still) = system.get(&format!("/api/v1/sessions/{kept_id}")).await;
    assert_eq!(still["status"], "running", "{still}");

    // Bad keep-alives change nothing.
    for (body, wanted) in [
        (json!({"timeout": 0}), 422),
        (json!({"timeout": "soon"}), 422),
        (json!({}), 422),
    ] {
        let (status, answer) = keep_alive(&kept_id, body.clone()).await;
        assert_eq!(status, wanted, "{body}: {answer}");
        assert!(answer["error"]["code"].is_string());
    }
    let (status, answer) = keep_alive(&short_id, json!({"timeout": 60})).await;
    assert_eq!(status, 409, "an expired session is not revived: {answer}");
    let (_, after) = system.get(&format!("/api/v1/sessions/{kept_id}")).await;
    assert_eq!(after["expires_at"], extended["expires_at"]);
}

#[tokio::test]
async fn internal_endpoints_need_the_token_and_an_http_heartbeat_keeps_a_node_online() {
    let system = System::start(Options {
        internal_token: Some(TOKEN.to_owned()),
        ..Options::default()
    })
    .await;
    let register = json!({"node_id": "http-agent", "hostname": "localhost",
        "runtime_type": "docker", "api_endpoint": "unix:///var/run/docker.sock",
        "total_cpu_cores": 8.0, "total_memory_mb": 16384, "max_containers": 100,
        "heartbeat_interval_ms": 500});
    let heartbeat = json!({"node_id": "http-agent", "container_id": "abc123",
        "timestamp": "2024-01-15T10:30:00Z"});
    for token in [None, Some("wrong-token-wrong-token-wrong")] {
        let (status, body) = system
            .post_internal("/internal/runtime/nodes/register", token, &register)
            .await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, _) = system
            .post_internal("/internal/runtime/heartbeat", token, &heartbeat)
            .await;
        assert_eq!(status, 401);
    }
    let (status, _) = system.get("/api/v1/nodes/http-agent").await;
    assert_eq!(status, 404, "a refused request changed something");
    // The public listener does not serve them.
    let (status, _) = system
        .post_json("/internal/runtime/heartbeat", &heartbeat)
        .await;
    assert_eq!(status, 404);

    let (status, accepted) = system
        .post_internal("/internal/runtime/nodes/register", Some(TOKEN), &register)
        .await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["node_id"], "http-agent");
    // Heartbeats over HTTP keep it online well past three intervals.
    for _ in 0..8 {
        let now = json!({"node_id": "http-agent", "container_id": "abc123",
            "timestamp": chrono::Utc::now()});
        let (status, body) = system
            .post_internal("/internal/runtime/heartbeat", Some(TOKEN), &now)
            .await;
        assert_eq!(status, 202, "{body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (_, node) = system.get("/api/v1/nodes/http-agent").await;
        assert_eq!(node["status"], "online", "{node}");
    }
    // Without them it goes.
    system
        .wait_for_node("http-agent", "offline", Duration::from_secs(5))
        .await;

    // Bad input: JSON errors with the right status.
    for (path, body, wanted) in [
        (
            "/internal/runtime/nodes/register",
            json!({"node_id": "a b", "hostname": "h", "total_cpu_cores": 1.0,
                   "total_memory_mb": 1, "max_containers": 1}),
            422,
        ),
        (
            "/internal/runtime/nodes/register",
            json!({"node_id": "n", "hostname": "h", "total_cpu_cores": -1.0,
                   "total_memory_mb": 1, "max_containers": 1}),
            422,
        ),
        (
            "/internal/runtime/heartbeat",
            json!({"timestamp": "x"}),
            422,
        ),
        (
            "/internal/runtime/containers/ready",
            json!({"container_id": "c", "session_id": "no-such-session"}),
            404,
        ),
        (
            "/internal/runtime/containers/exited",
            json!({"container_id": "", "session_id": "s", "node_id": "n"}),
            422,
        ),
        ("/internal/runtime/nothing", json!({}), 404),
    ] {
        let (status, answer) = system.post_internal(path, Some(TOKEN), &body).await;
        assert_eq!(status, wanted, "{path} {body}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    let (_, nodes) = system.get("/api/v1/nodes").await;
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(1), "{nodes}");
}

#[tokio::test]
async fn templates_are_created_replaced_and_deleted_and_a_missing_image_is_named() {
    let system = System::with_node().await;
    let image = testkit::ensure_test_image().expect("the test image is built");
    let template = json!({"id": "tiny", "image": image, "cpu": 0.5,
        "memory": 128, "pids": 32, "timeout": 120, "env": {"MODE": "test"},
        "network": "sandbox_network"});
    let (status, created) = system.post_json("/api/v1/templates", &template).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["resources"]["memory_mb"], 128);
    assert_eq!(created["network"], "sandbox_network");
    let (status, _) = system.post_json("/api/v1/templates", &template).await;
    assert_eq!(status, 409);

    // Bad templates change nothing.
    for bad in [
        json!({"id": "bad", "image": "sandbox-executor:v1.0", "cpu": 0.0}),
        json!({"id": "bad", "image": "not an image"}),
        json!({"id": "bad", "image": "sandbox-executor:v1.0", "network": "host"}),
        json!({"id": "bad", "image": "sandbox-executor:v1.0", "timeout": 0}),
        json!({"id": "bad", "image": "sandbox-executor:v1.0", "env": {"1X": "v"}}),
        json!({"id": "bad", "image": "sandbox-executor:v1.0", "gpus": 1}),
        json!({"image": "sandbox-executor:v1.0"}),
    ] {
        let (status, body) = system.post_json("/api/v1/templates", &bad).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(body["error"]["message"].is_string());
    }
    let (status, _) = system.get("/api/v1/templates/bad").await;
    assert_eq!(status, 404);

    let (status, replaced) = system
        .put_json(
            "/api/v1/templates/tiny",
            &json!({"image": image, "memory": 256, "timeout": 60}),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["resources"]["memory_mb"], 256);
    assert_eq!(replaced["timeout_seconds"], 60);
    // A body naming another id, and an unknown template.
    for (path, body, wanted) in [
        (
            "/api/v1/templates/tiny",
            json!({"id": "other", "image": "sandbox-executor:v1.0"}),
            422,
        ),
        ("/api/v1/templates/absent", json!({"image": "x:1"}), 404),
    ] {
        let (status, answer) = system.put_json(path, &body).await;
        assert_eq!(status, wanted, "{path} {body}: {answer}");
    }
    let session = system.create_session(json!({"template_id": "tiny"})).await;
    assert_eq!(session["resources"]["memory_mb"], 256);
    assert_eq!(session["timeout_seconds"], 60);

    // The seed's mistake: an image no node has is a clear refusal naming it, not a hang.
    let (status, _) = system
        .post_json(
            "/api/v1/templates",
            &json!({"id": "seed-mistake", "image": "python:3.11-slim"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = system
        .post_json("/api/v1/sessions", &json!({"template_id": "seed-mistake"}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("python:3.11-slim")),
        "{body}"
    );

    let (status, deleted) = system.delete("/api/v1/templates/tiny").await;
    assert_eq!(status, 200, "{deleted}");
    let (status, _) = system.delete("/api/v1/templates/tiny").await;
    assert_eq!(status, 404);
    let (status, _) = system
        .post_json("/api/v1/sessions", &json!({"template_id": "tiny"}))
        .await;
    assert_eq!(status, 404);
}

/// Measures kill -9 of a node daemon (default 5 s heartbeats) to `offline` in the API:
/// `RUNS=5 cargo test -p system-tests --test fleet detection_time -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement (about 20 s a run), not a check"]
async fn detection_time_from_kill_to_offline() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(5);
    let mut system = System::without_nodes().await;
    let node = system.start_node_process("5s").await;
    let mut took = Vec::new();
    for run in 1..=runs {
        // Kill at a random point of the heartbeat interval, as a crash would.
        let pause = Duration::from_millis(1000 + u64::from(rand_micros()) % 5000);
        tokio::time::sleep(pause).await;
        system.node_process(&node).kill();
        let (elapsed, seen) = system
            .wait_for_node(&node, "offline", Duration::from_secs(30))
            .await;
        eprintln!("run {run}: kill -9 to offline {elapsed:?} via {seen:?}");
        took.push(elapsed);
        system
            .node_process(&node)
            .restart()
            .expect("the daemon starts again");
        system.wait_until_online(&node).await;
    }
    took.sort();
    eprintln!(
        "kill -9 to offline over {runs} runs: p50 {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
}

/// Microseconds of the clock: enough randomness to spread kills over the interval.
fn rand_micros() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_micros())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_session_stuck_before_running_is_failed_with_the_reason() {
    let system = System::start(Options {
        scheduler_flags: vec!["--start-deadline".into(), "2s".into()],
        ..Options::default()
    })
    .await;
    // A session a crashed replica left "creating" (written as the scheduler would).
    let id = uuid::Uuid::now_v7().to_string();
    let accepted = chrono::Utc::now() - chrono::Duration::seconds(30);
    sqlx::query(
        "INSERT INTO sessions (id, template_id, status, runtime_node, image, cpu_cores, \
         memory_mb, pids_limit, network, created_at, updated_at, timeout_seconds, expires_at) \
         VALUES ($1, 'python-basic', 'creating', 'gone-node', 'sandbox-executor:v1.0', 1.0, \
         512, 256, 'none', $2, $2, 300, $3)",
    )
    .bind(&id)
    .bind(accepted)
    .bind(accepted + chrono::Duration::seconds(300))
    .execute(&system.sql_pool().await)
    .await
    .expect("inserted");
    let (failed, _) = system
        .wait_for_session(&id, "failed", Duration::from_secs(5))
        .await;
    assert_eq!(failed["failure_code"], "timeout", "{failed}");
    let reason = failed["failure_reason"].as_str().expect("reason");
    assert!(
        reason.contains("still creating") && reason.contains("gone-node"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_session_being_placed_on_a_dead_node_is_placed_elsewhere() {
    let system = System::with_node().await;
    let survivor = system.node_ids()[0].clone();
    let image = testkit::ensure_test_image().expect("the test image is built");
    // A replica died while placing this session on a node that died too; its request is
    // delivered again.
    let id = uuid::Uuid::now_v7().to_string();
    let now = chrono::Utc::now();
    sqlx::query(
        "INSERT INTO sessions (id, template_id, status, runtime_node, image, cpu_cores, \
         memory_mb, pids_limit, network, created_at, updated_at, timeout_seconds, expires_at) \
         VALUES ($1, 'sleeper', 'creating', 'dead-node', $2, 0.25, 64, 16, 'none', $3, $3, 300, $4)",
    )
    .bind(&id)
    .bind(image)
    .bind(now)
    .bind(now + chrono::Duration::seconds(300))
    .execute(&system.sql_pool().await)
    .await
    .expect("inserted");
    system
        .publish_create(&create_request(&id, "sleeper", now), &id)
        .await;
    let (placed, _) = system
        .wait_for_session(&id, "running", Duration::from_secs(15))
        .await;
    assert_eq!(placed["runtime_node"], survivor.as_str(), "{placed}");
}

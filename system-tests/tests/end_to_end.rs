//! The spine, end to end through HTTP: a session request becomes a running container on a
//! registered node, with real NATS, the real Docker engine and a real SQLite file.

mod common;

use std::time::Duration;

use common::{System, create_request, docker, require_executor_image};
use messages::session::NO_HEALTHY_NODES;
use messages::{labels, subjects};
use sandbox_ops::testkit;
use serde_json::json;

async fn containers_of_session(session_id: &str) -> Vec<bollard::models::ContainerSummary> {
    testkit::containers_labelled(labels::SESSION_ID, session_id)
        .await
        .expect("containers listed")
}

#[tokio::test]
async fn a_session_request_becomes_a_running_container_and_delete_removes_it() {
    require_executor_image();
    let system = System::with_node().await;
    let node_id = system.node_ids()[0].clone();

    let (status, session) = system
        .post_json("/api/v1/sessions", &json!({"template_id": "python-basic"}))
        .await;
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["status"], "running");
    assert_eq!(session["template_id"], "python-basic");
    assert_eq!(session["runtime_node"], node_id.as_str());
    let id = session["id"].as_str().expect("id").to_owned();
    let container_id = session["container_id"]
        .as_str()
        .expect("container id")
        .to_owned();
    assert!(!container_id.is_empty());
    assert_eq!(session["resources"]["memory_mb"], 512);

    // The container is what the template and the seed ask for.
    let container = docker()
        .inspect_container(&container_id, None)
        .await
        .expect("container exists");
    assert_eq!(
        container.name.as_deref(),
        Some(format!("/sandbox-{id}").as_str())
    );
    let state = container.state.expect("state");
    assert_eq!(state.running, Some(true));
    let config = container.config.expect("config");
    assert_eq!(config.image.as_deref(), Some(common::EXECUTOR_IMAGE));
    let container_labels = config.labels.expect("labels");
    assert_eq!(container_labels[labels::SESSION_ID], id);
    assert_eq!(container_labels[labels::NODE_ID], node_id);
    assert_eq!(container_labels[labels::MANAGED_BY], labels::MANAGER);
    let host = container.host_config.expect("host config");
    testkit::assert_locked_down(&host, 1.0, 512, 256);

    // The seed's own check against the database: the container id is recorded.
    let pool = system.sql_pool().await;
    let (row_id, row_container, row_status): (String, Option<String>, String) = sqlx::query_as(
        "SELECT id, container_id, status FROM sessions ORDER BY created_at DESC LIMIT 1;",
    )
    .fetch_one(&pool)
    .await
    .expect("the seed's query runs");
    assert_eq!(row_id, id);
    assert_eq!(row_container.as_deref(), Some(container_id.as_str()));
    assert_eq!(row_status, "running");

    // Reads agree.
    let (status, read) = system.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(read, session);
    let (status, page) = system.get("/api/v1/sessions?status=running").await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], 1);
    assert_eq!(page["sessions"][0]["id"], id.as_str());
    let (status, node) = system.get(&format!("/api/v1/nodes/{node_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(node["status"], "online");
    let (status, templates) = system.get("/api/v1/templates").await;
    assert_eq!(status, 200);
    assert!(
        templates["templates"]
            .as_array()
            .is_some_and(|t| t.len() >= 2)
    );

    // Delete removes the container and ends the session.
    let (status, deleted) = system.delete(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["status"], "terminated");
    assert!(deleted["ended_at"].is_string());
    assert_eq!(deleted["failure_reason"], serde_json::Value::Null);
    let gone = docker().inspect_container(&container_id, None).await;
    assert!(gone.is_err(), "container still exists after delete");
    // The exit that the removal caused is not mistaken for a crash.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, read) = system.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(read["status"], "terminated");
    assert_eq!(read["failure_code"], serde_json::Value::Null, "{read}");
    // Deleting again is harmless.
    let (status, _) = system.delete(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn room_freed_by_a_delete_can_be_used_at_once() {
    require_executor_image();
    let mut system = System::without_nodes().await;
    system.start_node_with(&["--max-containers", "1"]).await;
    for round in 0..3 {
        let (status, session) = system
            .post_json("/api/v1/sessions", &json!({"template_id": "python-basic"}))
            .await;
        assert_eq!(status, 201, "round {round}: {session}");
        let id = session["id"].as_str().expect("id");
        let (status, _) = system.delete(&format!("/api/v1/sessions/{id}")).await;
        assert_eq!(status, 200);
    }
    // And the node's word still holds when it is full.
    system
        .create_session(json!({"template_id": "python-basic"}))
        .await;
    let (status, body) = system
        .post_json("/api/v1/sessions", &json!({"template_id": "python-basic"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "capacity");
}

#[tokio::test]
async fn a_template_on_sandbox_network_joins_the_nodes_bridge() {
    require_executor_image();
    let system = System::with_node().await;
    let (status, session) = system
        .post_json(
            "/api/v1/sessions",
            &json!({"template_id": "python-network", "env": {"GREETING": "hi"}}),
        )
        .await;
    assert_eq!(status, 201, "{session}");
    let container_id = session["container_id"].as_str().expect("container id");
    let container = docker()
        .inspect_container(container_id, None)
        .await
        .expect("container exists");
    let host = container.host_config.expect("host config");
    assert_eq!(host.network_mode.as_deref(), Some(system.network()));
    let networks = container
        .network_settings
        .and_then(|settings| settings.networks)
        .expect("networks");
    assert!(networks.contains_key(system.network()));
    let env = container.config.and_then(|config| config.env).expect("env");
    assert!(env.contains(&"GREETING=hi".to_owned()));
    assert!(
        env.contains(&"LANG=C.UTF-8".to_owned()),
        "template env is kept: {env:?}"
    );
}

#[tokio::test]
async fn with_no_node_the_session_fails_with_the_seeds_reason() {
    let system = System::without_nodes().await;
    let (status, body) = system
        .post_json("/api/v1/sessions", &json!({"template_id": "python-basic"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "no_healthy_nodes");
    assert_eq!(body["error"]["message"], NO_HEALTHY_NODES);
    let id = body["error"]["session_id"]
        .as_str()
        .expect("session id in the error");

    // Never left pending silently: it reads as failed, with the reason.
    let (status, session) = system.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(session["status"], "failed");
    assert_eq!(session["failure_reason"], NO_HEALTHY_NODES);
    assert_eq!(session["container_id"], serde_json::Value::Null);
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let system = System::with_node().await;
    let (status, body) = system
        .post_json(
            "/api/v1/sessions",
            &json!({"template_id": "no-such-template"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = system
        .post_raw("/api/v1/sessions", "{\"template_id\": ")
        .await;
    assert_eq!(status, 400);
    let (status, _) = system
        .post_raw("/api/v1/sessions", "{\"template_id\": 7}")
        .await;
    assert_eq!(status, 422);
    let (status, _) = system.post_raw("/api/v1/sessions", "{}").await;
    assert_eq!(status, 422);
    let (status, _) = system.get("/api/v1/sessions/not-a-session").await;
    assert_eq!(status, 404);
    let (status, _) = system.delete("/api/v1/sessions/not-a-session").await;
    assert_eq!(status, 404);
    // Each environment is within the limit, but the request's added to the template's is not.
    let many = |prefix: &str, count: usize| -> serde_json::Map<String, serde_json::Value> {
        (0..count)
            .map(|index| (format!("{prefix}{index}"), json!("v")))
            .collect()
    };
    let template =
        json!({"id": "wide-env", "image": "sandbox-executor:v1.0", "env": many("T", 40)});
    let (status, body) = system.post_json("/api/v1/templates", &template).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = system
        .post_json(
            "/api/v1/sessions",
            &json!({"template_id": "wide-env", "env": many("R", 30)}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("at most 64")),
        "{body}"
    );

    let (status, page) = system.get("/api/v1/sessions").await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], 0, "a bad request recorded a session: {page}");
    let managed = testkit::containers_labelled(labels::NODE_ID, &system.node_ids()[0])
        .await
        .expect("containers listed");
    assert!(managed.is_empty(), "a bad request made a container");
}

/// Waits until the schedulers have taken and acknowledged every request in the stream.
async fn wait_until_all_requests_handled(system: &System) {
    let client = async_nats::connect(system.nats_url())
        .await
        .expect("connects");
    let stream = async_nats::jetstream::new(client)
        .get_stream(subjects::sessions_stream())
        .await
        .expect("the stream exists");
    for _ in 0..100 {
        let info = stream
            .consumer_info(subjects::sessions_consumer())
            .await
            .expect("consumer info");
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("session requests are still unhandled");
}

async fn wait_for_status(system: &System, id: &str, wanted: &str) -> serde_json::Value {
    for _ in 0..100 {
        let (status, session) = system.get(&format!("/api/v1/sessions/{id}")).await;
        if status == 200 && session["status"] == wanted {
            return session;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("session {id} never became {wanted}");
}

#[tokio::test]
async fn a_redelivered_request_makes_no_second_container() {
    require_executor_image();
    let system = System::with_node().await;
    let session_id = uuid::Uuid::now_v7().to_string();
    let request = create_request(&session_id, "python-basic", chrono::Utc::now());
    system.publish_create(&request, &session_id).await;
    let first = wait_for_status(&system, &session_id, "running").await;

    // The same request again past JetStream's de-duplication (another message id), twice.
    system.publish_create(&request, "redelivery-1").await;
    system.publish_create(&request, "redelivery-2").await;
    wait_until_all_requests_handled(&system).await;
    let again = wait_for_status(&system, &session_id, "running").await;
    assert_eq!(again["container_id"], first["container_id"]);
    assert_eq!(containers_of_session(&session_id).await.len(), 1);

    // A replica that died after asking the node leaves the session "creating": the redelivery
    // asks the node again and adopts the container it already made.
    let pool = system.sql_pool().await;
    sqlx::query("UPDATE sessions SET status = 'creating', container_id = NULL WHERE id = $1")
        .bind(&session_id)
        .execute(&pool)
        .await
        .expect("updated");
    system.publish_create(&request, "redelivery-3").await;
    wait_until_all_requests_handled(&system).await;
    let adopted = wait_for_status(&system, &session_id, "running").await;
    assert_eq!(adopted["container_id"], first["container_id"]);
    assert_eq!(containers_of_session(&session_id).await.len(), 1);
}

#[tokio::test]
async fn a_container_killed_from_outside_fails_its_session() {
    require_executor_image();
    let system = System::with_node().await;
    let (status, session) = system
        .post_json("/api/v1/sessions", &json!({"template_id": "python-basic"}))
        .await;
    assert_eq!(status, 201, "{session}");
    let id = session["id"].as_str().expect("id");
    let container_id = session["container_id"].as_str().expect("container id");
    docker()
        .kill_container(
            container_id,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .expect("killed");
    // From Docker's event stream within seconds, not at some later sweep.
    let (failed, took) = system
        .wait_for_session(id, "failed", Duration::from_secs(5))
        .await;
    eprintln!("docker kill to failed: {took:?}");
    let reason = failed["failure_reason"].as_str().expect("reason");
    assert!(reason.contains("killed"), "{reason}");
    assert!(reason.contains("exit code 137"), "{reason}");
    // The dead container does not linger.
    for _ in 0..50 {
        if containers_of_session(id).await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the killed session's container was not removed");
}

/// "running" is written once: whichever of the node's reply and its `runtime.containers.ready`
/// signal arrives first, a client hears the session announced running once. And the early
/// answer of `?wait=false` is the session as recorded: the same `created_at` and `expires_at`
/// as every later read.
#[tokio::test]
async fn running_is_announced_once_and_the_early_answer_matches_later_reads() {
    use futures::StreamExt as _;
    require_executor_image();
    let system = System::with_node().await;
    // Five at once on a small host: a tenth of a core each.
    system.add_sleeper_template(0.1, 64).await;
    let nats = async_nats::connect(system.nats_url())
        .await
        .expect("connects");
    let mut announcements = nats
        .subscribe(subjects::session_status_all())
        .await
        .expect("subscribes");
    nats.flush().await.expect("flushed");

    let mut ids = Vec::new();
    for _ in 0..4 {
        let (status, session) = system
            .post_json("/api/v1/sessions", &json!({"template_id": common::SLEEPER}))
            .await;
        assert_eq!(status, 201, "{session}");
        ids.push(session["id"].as_str().expect("id").to_owned());
    }
    let (status, early) = system
        .post_json(
            "/api/v1/sessions?wait=false",
            &json!({"template_id": common::SLEEPER, "timeout": 900}),
        )
        .await;
    assert_eq!(status, 202, "{early}");
    let early_id = early["id"].as_str().expect("id").to_owned();
    let (running, _) = system
        .wait_for_session(&early_id, "running", Duration::from_secs(30))
        .await;
    for field in [
        "created_at",
        "expires_at",
        "timeout_seconds",
        "template_id",
        "image",
    ] {
        assert_eq!(
            early[field], running[field],
            "{field}: {early} vs {running}"
        );
    }
    ids.push(early_id);

    // Every announcement made by now is in: a second more catches any late duplicate.
    let mut running_announcements = std::collections::HashMap::<String, usize>::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, announcements.next()).await {
        let session: messages::session::Session =
            messages::decode(&message.payload).expect("a session");
        if session.status == messages::session::SessionStatus::Running {
            *running_announcements
                .entry(session.id.to_string())
                .or_default() += 1;
        }
    }
    for id in &ids {
        assert_eq!(
            running_announcements.get(id),
            Some(&1),
            "session {id} was announced running {:?} times",
            running_announcements.get(id)
        );
    }
}

/// A NUL in a template's environment would make every session of it fail on the node: the API
/// refuses it with 422 before anything is stored, and so does the scheduler for a request that
/// reaches it another way.
#[tokio::test]
async fn a_nul_in_a_templates_env_is_refused_and_stores_nothing() {
    let system = System::without_nodes().await;
    let template = json!({
        "id": "nul-env", "image": "sandbox-executor:v1.0", "env": {"GREETING": "a\u{0}b"}
    });
    let (status, refusal) = system.post_json("/api/v1/templates", &template).await;
    assert_eq!(status, 422, "{refusal}");
    assert_eq!(refusal["error"]["code"], "invalid_request");
    assert!(
        refusal["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("NUL")),
        "{refusal}"
    );
    let (status, _) = system
        .put_json("/api/v1/templates/python-basic", &template)
        .await;
    assert_eq!(status, 422);
    let (status, _) = system.get("/api/v1/templates/nul-env").await;
    assert_eq!(status, 404, "nothing was stored");
    let (_, basic) = system.get("/api/v1/templates/python-basic").await;
    assert_eq!(basic["env"], json!({"LANG": "C.UTF-8"}), "unchanged");

    // The scheduler applies the same rule to a request that did not come through the gateway.
    let nats = async_nats::connect(system.nats_url())
        .await
        .expect("connects");
    let definition = messages::template::TemplateDefinition {
        id: "nul-env".into(),
        name: "nul-env".into(),
        description: String::new(),
        image_url: "sandbox-executor:v1.0".into(),
        resources: messages::template::Resources {
            cpu_cores: 1.0,
            memory_mb: 256,
            pids_limit: 64,
            ..Default::default()
        },
        network: messages::template::NetworkMode::None,
        env: [("GREETING".to_owned(), "a\0b".to_owned())].into(),
        timeout_seconds: 300,
        warm_pool_size: 0,
        runtime: Default::default(),
        egress: Default::default(),
    };
    let answer = service_kit::bus::api_request(
        &nats,
        &messages::api::templates::CreateTemplate { definition },
        Duration::from_secs(10),
    )
    .await;
    match answer {
        Err(service_kit::bus::BusError::Remote(error)) => {
            assert_eq!(error.code, messages::ErrorCode::InvalidRequest);
        }
        other => panic!("the scheduler took a NUL env value: {other:?}"),
    }
    let (status, _) = system.get("/api/v1/templates/nul-env").await;
    assert_eq!(status, 404);
}

/// A request that waited in the stream past its start deadline (no scheduler took it in time)
/// is recorded failed with the reason when one does, and no node is asked.
#[tokio::test]
async fn a_request_queued_past_its_start_deadline_fails_without_a_container() {
    require_executor_image();
    let system = System::with_node().await;
    let session_id = uuid::Uuid::now_v7().to_string();
    let long_ago = chrono::Utc::now() - chrono::Duration::seconds(600);
    system
        .publish_create(
            &create_request(&session_id, "python-basic", long_ago),
            &session_id,
        )
        .await;
    let session = wait_for_status(&system, &session_id, "failed").await;
    assert_eq!(session["failure_code"], "timeout", "{session}");
    assert!(
        session["failure_reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("start deadline")),
        "{session}"
    );
    assert_eq!(
        session["runtime_node"],
        serde_json::Value::Null,
        "no node was asked"
    );
    assert!(containers_of_session(&session_id).await.is_empty());
}

/// The scheduler applies the contract's rules to the container a request would make, whoever
/// sent it: a request past the gateway with too many environment variables fails at once, and
/// no node is asked.
#[tokio::test]
async fn a_request_the_node_would_refuse_fails_before_placement() {
    require_executor_image();
    let system = System::with_node().await;
    let session_id = uuid::Uuid::now_v7().to_string();
    let mut request = create_request(&session_id, "python-basic", chrono::Utc::now());
    request.env = (0..70)
        .map(|index| (format!("V{index}"), "v".to_owned()))
        .collect();
    system.publish_create(&request, &session_id).await;
    let session = wait_for_status(&system, &session_id, "failed").await;
    assert_eq!(session["failure_code"], "invalid_request", "{session}");
    assert_eq!(
        session["runtime_node"],
        serde_json::Value::Null,
        "no node was asked"
    );
    assert!(containers_of_session(&session_id).await.is_empty());
}

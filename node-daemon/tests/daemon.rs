//! The daemon against a real nats-server and the real Docker engine: each test runs its own
//! daemon in-process under its own node id and network, and removes what it made.

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::query_parameters::KillContainerOptionsBuilder;
use messages::execution::RunExecution;
use messages::files::{AbortUpload, DeleteFile, ListFiles, ReadFileChunk, WriteFileChunk};
use messages::node::{
    ContainerCreated, ContainerExited, ContainerReady, CreateContainer, DiscoverNodes, ExitReason,
    Heartbeat, NodeRegistration, NodeSelfStatus, PingNode, RemoveContainer,
};
use messages::subjects;
use messages::template::NetworkMode;
use messages::{ErrorBody, ErrorCode, NodeCommand, Reply, labels};
use sandbox_ops::testkit;
use service_kit::bus::{self, BusError};

mod common;

use common::*;

fn remote_error(result: Result<ContainerCreated, BusError>) -> ErrorBody {
    match result {
        Err(BusError::Remote(error)) => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn assert_announces(registration: &NodeRegistration, image: &str) {
    assert!(
        registration
            .cached_images
            .iter()
            .any(|cached| cached == image),
        "{image} is not in {:?}",
        registration.cached_images
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn start_registers_heartbeats_answers_discovery_and_says_when_it_stops() {
    let mut harness = Harness::new(|config| {
        config.labels = BTreeMap::from([("zone".to_owned(), "test".to_owned())]);
    })
    .await;
    let mut registrations = harness.subscribe(subjects::nodes_register()).await;
    let mut heartbeats = harness.subscribe(subjects::heartbeat()).await;
    harness.start().await;
    let node_id = harness.node_id().clone();
    let our_registration = |registration: &NodeRegistration| registration.node_id == node_id;
    let our_heartbeat = |beat: &Heartbeat| beat.node_id == node_id;

    let registration = next_matching(&mut registrations, "a registration", our_registration).await;
    assert_eq!(registration.runtime_type, "docker");
    assert_eq!(registration.api_endpoint, "unix:///var/run/docker.sock");
    assert!(registration.total_cpu_cores > 0.0);
    assert!(registration.total_memory_mb > 0);
    assert_eq!(registration.max_containers, 10);
    assert_announces(&registration, harness.image);
    assert!(
        !registration
            .cached_images
            .iter()
            .any(|image| image == "<none>:<none>")
    );
    assert_eq!(
        registration.labels.get("zone").map(String::as_str),
        Some("test")
    );
    assert_eq!(registration.heartbeat_interval_ms, 200);
    assert_eq!(registration.daemon_version, env!("CARGO_PKG_VERSION"));
    assert!(!registration.hostname.is_empty());
    assert!(registration.ip_address.parse::<std::net::IpAddr>().is_ok());

    let first = next_matching(&mut heartbeats, "a heartbeat", our_heartbeat).await;
    let second = next_matching(&mut heartbeats, "a second heartbeat", our_heartbeat).await;
    assert_eq!(first.sequence, 1);
    assert_eq!(second.sequence, 2);
    assert_eq!(first.status, NodeSelfStatus::Online);
    assert_eq!(first.running_containers, 0);
    assert_eq!(first.allocated_memory_mb, 0);

    for asked in [None, Some(node_id.clone())] {
        bus::publish(
            &harness.client,
            subjects::nodes_discover(),
            &DiscoverNodes {
                node_id: asked,
                images_only: false,
            },
        )
        .await
        .expect("discovery published");
        let again = next_matching(
            &mut registrations,
            "a registration on discovery",
            our_registration,
        )
        .await;
        assert_eq!(again.started_at, registration.started_at);
    }

    harness.stop().await;
    let last = next_matching(
        &mut heartbeats,
        "the stopping heartbeat",
        |beat: &Heartbeat| beat.node_id == node_id && beat.status != NodeSelfStatus::Online,
    )
    .await;
    assert_eq!(last.status, NodeSelfStatus::Stopping);
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_for_the_images_only_leaves_the_containers_out() {
    let harness = Harness::started(|_| {}).await;
    let session_id = new_session();
    let created = harness.create(&session_id).await;
    let mut registrations = harness.subscribe(subjects::nodes_register()).await;
    let node_id = harness.node_id().clone();

    // Answered in order: first without the inventory, then with it.
    for images_only in [true, false] {
        bus::publish(
            &harness.client,
            subjects::nodes_discover(),
            &DiscoverNodes {
                node_id: Some(node_id.clone()),
                images_only,
            },
        )
        .await
        .expect("discovery published");
    }
    let mut without_inventory = 0;
    let with_inventory = loop {
        let registration = next_matching(
            &mut registrations,
            "a registration on discovery",
            |registration: &NodeRegistration| registration.node_id == node_id,
        )
        .await;
        assert_announces(&registration, harness.image);
        match registration.inventory {
            Some(inventory) => break inventory,
            // The images-only answer (or an announcement of an image another test made).
            None => without_inventory += 1,
        }
    };
    assert!(
        without_inventory >= 1,
        "the images-only discovery was answered with the inventory"
    );
    let reported = with_inventory
        .containers
        .iter()
        .find(|container| container.container_id == created.container_id)
        .expect("the session's container is in the inventory");
    assert_eq!(reported.session_id.as_ref(), Some(&session_id));
    assert!(reported.running);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_makes_one_locked_down_container_per_session() {
    let harness = Harness::started(|_| {}).await;
    let mut ready = harness.subscribe(subjects::containers_ready()).await;
    let session_id = new_session();

    let created = harness.create(&session_id).await;
    assert!(!created.existed);
    assert_eq!(created.session_id, session_id);
    assert_eq!(&created.node_id, harness.node_id());

    let inspect = harness.inspect(&session_id).await;
    assert_eq!(inspect.id.as_deref(), Some(created.container_id.as_str()));
    assert_eq!(
        inspect.name.as_deref(),
        Some(format!("/sandbox-{session_id}").as_str())
    );
    assert_eq!(
        inspect.state.as_ref().and_then(|state| state.running),
        Some(true)
    );
    let config = inspect.config.expect("container config");
    assert_eq!(config.hostname, Some(session_id.container_name()));
    assert!(
        config
            .env
            .unwrap_or_default()
            .contains(&"GREETING=hello".to_owned())
    );
    let container_labels = config.labels.expect("labels");
    assert_eq!(
        container_labels.get(labels::SESSION_ID),
        Some(&session_id.to_string())
    );
    assert_eq!(
        container_labels.get(labels::NODE_ID),
        Some(&harness.node_id().to_string())
    );
    assert_eq!(
        container_labels.get(labels::MANAGED_BY).map(String::as_str),
        Some(labels::MANAGER)
    );
    let host = inspect.host_config.expect("host config");
    testkit::assert_locked_down(&host, 0.5, 64, 64);

    let announced: ContainerReady =
        next_matching(&mut ready, "a ready container", |ready: &ContainerReady| {
            ready.session_id == session_id
        })
        .await;
    assert_eq!(announced.container_id, created.container_id);
    assert_eq!(&announced.node_id, harness.node_id());

    let again = harness.create(&session_id).await;
    assert!(again.existed);
    assert_eq!(again.container_id, created.container_id);

    let heartbeat = harness.fresh_heartbeat().await;
    assert_eq!(heartbeat.running_containers, 1);
    // Guarantees are counted (the default shares of the 0.5-core, 64 MiB limits), and the
    // limits and the host's free memory reported beside them.
    assert!((heartbeat.allocated_cpu_cores - 0.008).abs() < 1e-9);
    assert_eq!(heartbeat.allocated_memory_mb, 8);
    let host = heartbeat.host.expect("host figures");
    assert!((host.limit_cpu_cores - 0.5).abs() < 1e-9);
    assert_eq!(host.limit_memory_mb, 64);
    assert!(host.memory_available_mb > 0 && host.disk_available_mb > 0);

    let racing = new_session();
    let (first, second) = tokio::join!(harness.create(&racing), harness.create(&racing));
    assert_eq!(first.container_id, second.container_id);
    assert_eq!(
        [first.existed, second.existed]
            .iter()
            .filter(|existed| !**existed)
            .count(),
        1,
        "exactly one of the racing creates made the container"
    );
    assert_eq!(harness.containers_of(&racing).await, 1);
    assert_eq!(harness.fresh_heartbeat().await.running_containers, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_network_mode_joins_the_daemons_network() {
    let harness = Harness::started(|_| {}).await;
    let network = harness
        .docker
        .inspect_network(&harness.config.network, None)
        .await
        .expect("the daemon made the network");
    assert_eq!(network.driver.as_deref(), Some("bridge"));
    assert_eq!(
        network
            .labels
            .unwrap_or_default()
            .get(labels::MANAGED_BY)
            .map(String::as_str),
        Some(labels::MANAGER)
    );

    let session_id = new_session();
    harness
        .create_with(&session_id, harness.spec(NetworkMode::SandboxNetwork))
        .await
        .expect("the container is created");
    let inspect = harness.inspect(&session_id).await;
    assert_eq!(
        inspect
            .host_config
            .and_then(|host| host.network_mode)
            .as_deref(),
        Some(harness.config.network.as_str())
    );
    let networks = inspect
        .network_settings
        .and_then(|settings| settings.networks)
        .unwrap_or_default();
    assert!(
        networks.contains_key(&harness.config.network),
        "{:?}",
        networks.keys()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn capacity_is_the_nodes_word() {
    let harness = Harness::started(|config| {
        config.max_containers = 1;
        config.cpu_cores = Some(1.0);
    })
    .await;

    // Guaranteed two cores on a node of one: refused.
    let mut greedy = harness.spec(NetworkMode::None);
    greedy.resources.cpu_cores = 2.0;
    greedy.resources.cpu_request_cores = Some(2.0);
    let session_id = new_session();
    let refusal = remote_error(harness.create_with(&session_id, greedy).await);
    assert_eq!(refusal.code, ErrorCode::Capacity);
    assert!(refusal.message.contains("CPU"), "{}", refusal.message);
    assert_eq!(harness.containers_of(&session_id).await, 0);

    // Limited to two cores but guaranteed the default share: a limit is not a reservation.
    let mut bursty = harness.spec(NetworkMode::None);
    bursty.resources.cpu_cores = 2.0;
    harness
        .create_with(&new_session(), bursty)
        .await
        .expect("fits by its guarantee");
    let second = new_session();
    let refusal = remote_error(
        harness
            .create_with(&second, harness.spec(NetworkMode::None))
            .await,
    );
    assert_eq!(refusal.code, ErrorCode::Capacity);
    assert!(
        refusal.message.contains("max_containers 1"),
        "{}",
        refusal.message
    );
    assert_eq!(harness.containers_of(&second).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_short_of_disk_refuses_with_the_reason() {
    // More disk kept free than any host has.
    let harness = Harness::started(|config| config.disk_reserve_mb = 1 << 40).await;
    let session_id = new_session();
    let refusal = remote_error(
        harness
            .create_with(&session_id, harness.spec(NetworkMode::None))
            .await,
    );
    assert_eq!(refusal.code, ErrorCode::Capacity);
    assert!(
        refusal.message.contains("disk is short"),
        "{}",
        refusal.message
    );
    assert_eq!(harness.containers_of(&session_id).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_is_not_found_and_bad_input_is_invalid() {
    let harness = Harness::started(|_| {}).await;

    let mut spec = harness.spec(NetworkMode::None);
    spec.image = "sandbox-no-such-image:0".to_owned();
    let session_id = new_session();
    let refusal = remote_error(harness.create_with(&session_id, spec).await);
    assert_eq!(refusal.code, ErrorCode::NotFound);
    assert!(
        refusal.message.contains("sandbox-no-such-image:0")
            && refusal.message.contains("images are never pulled"),
        "{}",
        refusal.message
    );
    // The create's reservation was given back.
    assert_eq!(harness.fresh_heartbeat().await.running_containers, 0);

    let mut spec = harness.spec(NetworkMode::None);
    spec.resources.cpu_cores = 0.0;
    let refusal = remote_error(harness.create_with(&session_id, spec).await);
    assert_eq!(refusal.code, ErrorCode::InvalidRequest);
    assert_eq!(harness.containers_of(&session_id).await, 0);

    // Every verb the daemon answers.
    for verb in [
        CreateContainer::VERB,
        RemoveContainer::VERB,
        RunExecution::VERB,
        WriteFileChunk::VERB,
        AbortUpload::VERB,
        ReadFileChunk::VERB,
        ListFiles::VERB,
        DeleteFile::VERB,
        PingNode::VERB,
    ] {
        let answer = harness
            .client
            .request(
                subjects::node_command(harness.node_id(), verb),
                "not messagepack".into(),
            )
            .await
            .expect("the malformed request is answered");
        let reply: Reply<ContainerCreated> =
            messages::decode(&answer.payload).expect("the reply decodes");
        match reply {
            Reply::Error(error) => assert_eq!(error.code, ErrorCode::InvalidRequest, "{verb:?}"),
            Reply::Ok(created) => panic!("a malformed {verb:?} succeeded: {created:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_deletes_the_container_and_repeats_harmlessly() {
    let harness = Harness::started(|_| {}).await;
    let session_id = new_session();
    harness.create(&session_id).await;

    let removed = harness.remove(&session_id).await;
    assert!(removed.removed);
    assert_eq!(removed.session_id, session_id);
    let gone = harness
        .docker
        .inspect_container(&session_id.container_name(), None)
        .await;
    assert!(
        matches!(
            gone,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            })
        ),
        "{gone:?}"
    );
    assert_eq!(harness.fresh_heartbeat().await.running_containers, 0);

    let again = harness.remove(&session_id).await;
    assert!(!again.removed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_container_is_reported_exited() {
    let harness = Harness::started(|_| {}).await;
    let mut exits = harness.subscribe(subjects::containers_exited()).await;
    let session_id = new_session();
    let created = harness.create(&session_id).await;

    harness
        .docker
        .kill_container(
            &created.container_id,
            Some(
                KillContainerOptionsBuilder::default()
                    .signal("KILL")
                    .build(),
            ),
        )
        .await
        .expect("the container is killed");
    let exited: ContainerExited =
        next_matching(&mut exits, "the exit", |exited: &ContainerExited| {
            exited.session_id == session_id
        })
        .await;
    assert_eq!(exited.container_id, created.container_id);
    assert_eq!(&exited.node_id, harness.node_id());
    assert_eq!(exited.exit_code, Some(137));
    assert_eq!(exited.reason, ExitReason::Killed);
    assert_eq!(harness.fresh_heartbeat().await.running_containers, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn allocations_survive_a_daemon_restart() {
    let mut harness = Harness::started(|_| {}).await;
    let session_id = new_session();
    let created = harness.create(&session_id).await;
    harness.stop().await;

    let mut heartbeats = harness.subscribe(subjects::heartbeat()).await;
    // The stopped daemon's last beat may still be on its way: read only the new daemon's.
    let restarted_at = chrono::Utc::now();
    harness.start().await;
    let node_id = harness.node_id().clone();
    let heartbeat = next_matching(&mut heartbeats, "a heartbeat", |beat: &Heartbeat| {
        beat.node_id == node_id && beat.timestamp >= restarted_at
    })
    .await;
    assert_eq!(
        heartbeat.sequence, 1,
        "a restarted daemon counts from 1 again"
    );
    assert_eq!(heartbeat.running_containers, 1);
    // The guarantee (an eighth of the 64 MiB limit) is read back from the container.
    assert_eq!(heartbeat.allocated_memory_mb, 8);
    assert_eq!(heartbeat.host.map(|host| host.limit_memory_mb), Some(64));
    let again = harness.create(&session_id).await;
    assert!(again.existed);
    assert_eq!(again.container_id, created.container_id);
}

#[tokio::test]
async fn an_image_made_after_start_is_announced_at_once() {
    let mut harness = Harness::new(|_| {}).await;
    harness.start().await;
    let mut registrations = harness.subscribe(subjects::nodes_register()).await;
    let node_id = harness.node_id().clone();
    // A new tag of the test image stands for an image built or loaded while the daemon runs.
    let tag = format!("sandbox-test-new-{}:1", node_id.as_str().to_lowercase());
    let tagged = std::process::Command::new("docker")
        .args(["tag", harness.image, &tag])
        .status()
        .expect("docker runs");
    assert!(tagged.success(), "docker tag failed");
    let announced = tokio::time::timeout(Duration::from_secs(15), async {
        next_matching(
            &mut registrations,
            "a registration",
            |registration: &NodeRegistration| {
                registration.node_id == node_id && registration.cached_images.contains(&tag)
            },
        )
        .await
    })
    .await;
    let _ = std::process::Command::new("docker")
        .args(["rmi", &tag])
        .status();
    assert!(announced.is_ok(), "the new image {tag} was not announced");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandboxs_disk_goes_with_its_container_even_across_a_daemon_restart() {
    let mut harness = Harness::started(|_| {}).await;
    let volumes = harness
        .config
        .state_dir
        .join("volumes")
        .join(harness.node_id().as_str());
    let image = |session_id: &messages::SessionId| {
        volumes.join(format!("{}.img", session_id.container_name()))
    };

    // Removed through the node: its disk goes at once.
    let removed = new_session();
    harness.create(&removed).await;
    assert!(
        image(&removed).exists(),
        "a disk is made with the container"
    );
    harness.remove(&removed).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while image(&removed).exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        !image(&removed).exists(),
        "released when the container went"
    );

    // Removed behind the stopped daemon's back: swept when it starts again.
    let orphaned = new_session();
    let created = harness.create(&orphaned).await;
    harness.stop().await;
    let status = std::process::Command::new("docker")
        .args(["rm", "-f", &created.container_id])
        .status()
        .expect("docker runs");
    assert!(status.success());
    assert!(image(&orphaned).exists(), "nobody released it yet");
    harness.start().await;
    assert!(!image(&orphaned).exists(), "swept at start");
    assert!(!volumes.join(orphaned.container_name()).exists());
}

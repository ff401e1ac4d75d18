//! Scheduler replicas and gateways side by side, through HTTP, with real NATS (JetStream), the
//! real Docker engine, one SQLite file and node daemons of small capacity: no node is given more
//! than it has, every request is answered and settled, a replica killed with SIGKILL loses
//! nothing, no session gets two containers, and any gateway serves any session.

mod checks;
#[path = "../common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use checks::{
    Answer, assert_containers_match, assert_nodes_within_capacity, classify, containers_by_session,
    per_node, wait_until_all_settled,
};
use common::{Options, SLEEPER, System, answer};
use messages::labels;
use sandbox_ops::testkit;
use serde_json::{Value, json};

/// Builds the test image if it is missing. Called before any node starts: a node announces the
/// images it has when it registers, and a template whose image no node has is refused.
fn build_sleeper_image() {
    testkit::ensure_test_image().expect("the test image is built");
}

/// What the burst tests share: the sleeper template, two scheduler replicas as processes next to
/// the in-process one (with these `RUST_LOG`s), and `nodes` node daemon processes of `capacity`
/// containers each. 1 s beats: a node view that fell behind during a burst would turn nodes
/// suspect and answer "no healthy nodes", which the tests count as a failure. Returns the
/// replicas' indexes and the node ids.
async fn replicas_and_small_nodes(
    options: Options,
    replica_logs: [&str; 2],
    nodes: usize,
    capacity: usize,
) -> (System, [usize; 2], Vec<String>) {
    build_sleeper_image();
    let mut system = System::start(options).await;
    system.add_sleeper_template(0.05, 16).await;
    let mut replicas = [0; 2];
    for (replica, rust_log) in replicas.iter_mut().zip(replica_logs) {
        *replica = system.start_scheduler_process(&[], rust_log).await;
    }
    let capacity = capacity.to_string();
    let mut node_ids = Vec::new();
    for _ in 0..nodes {
        let node = system
            .start_node_process_with("1s", &["--max-containers", &capacity])
            .await;
        node_ids.push(node);
    }
    (system, replicas, node_ids)
}

/// `POST {base}/api/v1/sessions` of the sleeper (with `?wait=false` unless `wait`): status and
/// JSON body.
async fn create_at(http: &reqwest::Client, base: &str, wait: bool) -> (u16, Value) {
    let query = if wait { "" } else { "?wait=false" };
    let request = http
        .post(format!("{base}/api/v1/sessions{query}"))
        .json(&json!({"template_id": SLEEPER}));
    answer(request, "POST").await
}

async fn get_at(http: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    answer(http.get(format!("{base}{path}")), "GET").await
}

async fn delete_at(http: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    answer(http.delete(format!("{base}{path}")), "DELETE").await
}

/// Three scheduler replicas (one in this process, two real processes) on one database, and 200
/// creates at once against three nodes of four containers each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_never_over_commit_and_answer_every_create() {
    const NODES: usize = 3;
    const CAPACITY: usize = 4;
    const REQUESTS: usize = 200;
    let test_started = Instant::now();
    let (system, _, nodes) =
        replicas_and_small_nodes(Options::default(), ["info", "info"], NODES, CAPACITY).await;
    let ready = test_started.elapsed();

    // 200 creates at once, each waiting for its outcome.
    let started = Instant::now();
    let answers = futures::future::join_all(
        (0..REQUESTS).map(|_| create_at(&system.http, &system.gateway, true)),
    )
    .await;
    let burst = started.elapsed();
    let answers: Vec<Answer> = answers
        .iter()
        .map(|(status, body)| classify(*status, body, &nodes))
        .collect();
    let ids: BTreeSet<&str> = answers.iter().map(Answer::id).collect();
    assert_eq!(ids.len(), REQUESTS, "every request is its own session");
    let mut running: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut full = Vec::new();
    for answer in &answers {
        match answer {
            Answer::Running {
                id,
                node,
                container,
            } => {
                running.insert(id.clone(), (node.clone(), container.clone()));
            }
            Answer::Full { id } => full.push(id.clone()),
            Answer::Accepted { .. } => unreachable!("every create waited"),
        }
    }
    eprintln!(
        "{REQUESTS} creates in {burst:?}: {} running, {} refused for capacity",
        running.len(),
        full.len()
    );
    assert!(!running.is_empty(), "no create succeeded");
    assert!(
        running.len() <= NODES * CAPACITY,
        "{} sessions run on {NODES} nodes of {CAPACITY}",
        running.len()
    );
    let mut placed: HashMap<&str, usize> = HashMap::new();
    for (node, _) in running.values() {
        *placed.entry(node.as_str()).or_default() += 1;
    }
    for (node, count) in &placed {
        assert!(*count <= CAPACITY, "{count} sessions placed on {node}");
    }

    // What was answered is what is recorded, and what Docker holds.
    for id in &full {
        let (status, session) = system.get(&format!("/api/v1/sessions/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(session["status"], "failed", "{session}");
        assert_eq!(session["failure_code"], "capacity", "{session}");
        assert_eq!(session["container_id"], Value::Null, "{session}");
    }
    for (id, (_, container)) in &running {
        let (_, session) = system.get(&format!("/api/v1/sessions/{id}")).await;
        assert_eq!(session["status"], "running", "{session}");
        assert_eq!(session["container_id"], container.as_str(), "{session}");
    }
    assert_containers_match(&nodes, &running, CAPACITY).await;
    assert_nodes_within_capacity(&system, &nodes, CAPACITY as u64).await;

    // Deleting gives the room back: every node fills up again, to exactly its capacity.
    let shared = &system;
    let deletes = futures::future::join_all(
        running
            .keys()
            .map(|id| async move { shared.delete(&format!("/api/v1/sessions/{id}")).await }),
    )
    .await;
    for (status, deleted) in deletes {
        assert_eq!(status, 200, "{deleted}");
        assert_eq!(deleted["status"], "terminated", "{deleted}");
    }
    let deleted_at = chrono::Utc::now();
    assert_containers_match(&nodes, &BTreeMap::new(), CAPACITY).await;
    // Every replica hears the nodes' heartbeats: wait for one sent after the deletes.
    let started = Instant::now();
    loop {
        let (_, listed) = system.get("/api/v1/nodes").await;
        let fresh = nodes.iter().all(|node| {
            listed["nodes"].as_array().is_some_and(|all| {
                all.iter().any(|shown| {
                    shown["node_id"] == node.as_str()
                        && shown["running_containers"] == 0
                        && shown["last_heartbeat_at"]
                            .as_str()
                            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                            .is_some_and(|at| at > deleted_at)
                })
            })
        });
        if fresh {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the nodes did not report their room back within 10 s: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut refilled: BTreeMap<String, (String, String)> = BTreeMap::new();
    for round in 0..NODES * CAPACITY {
        let (status, body) = create_at(&system.http, &system.gateway, true).await;
        match classify(status, &body, &nodes) {
            Answer::Running {
                id,
                node,
                container,
            } => {
                refilled.insert(id, (node, container));
            }
            other => panic!("create {round} after the deletes: {other:?} {body}"),
        }
    }
    let (status, body) = create_at(&system.http, &system.gateway, true).await;
    assert!(
        matches!(classify(status, &body, &nodes), Answer::Full { .. }),
        "a create beyond the capacity of every node: {status} {body}"
    );
    assert_containers_match(&nodes, &refilled, CAPACITY).await;
    let counts = per_node(&containers_by_session(&nodes).await);
    for node in &nodes {
        assert_eq!(counts.get(node), Some(&CAPACITY), "{counts:?}");
    }
    assert_nodes_within_capacity(&system, &nodes, CAPACITY as u64).await;
    eprintln!("set-up {ready:?}, whole test {:?}", test_started.elapsed());
}

/// Session ids the replica's log shows it began placing but never finished: it logs queries
/// (`sqlx::query=debug`) inside the `scheduler.place_session{session_id=...}` span, and
/// "session placed" only once the outcome is recorded.
fn held_by(log: &str) -> BTreeSet<String> {
    let mut begun = BTreeSet::new();
    let mut finished = BTreeSet::new();
    for line in log.lines() {
        let Some(at) = line.find("scheduler.place_session{session_id=") else {
            continue;
        };
        let rest = &line[at + "scheduler.place_session{session_id=".len()..];
        let id: String = rest
            .trim_start_matches('"')
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || *c == '-')
            .collect();
        if id.is_empty() {
            continue;
        }
        if line.contains("session placed") {
            finished.insert(id);
        } else {
            begun.insert(id);
        }
    }
    begun.difference(&finished).cloned().collect()
}

/// A replica killed with SIGKILL while it places: every accepted request still settles (the
/// requests it held are delivered again to the others), and no session gets two containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_placement_loses_no_request_and_makes_no_duplicate() {
    const NODES: usize = 3;
    const CAPACITY: usize = 8;
    const REQUESTS: usize = 100;
    // A short ack wait, so JetStream hands the dead replica's requests on within seconds
    // (the replica that creates the consumer sets it; this one is first). The victim logs its
    // queries, which show what it holds.
    let options = Options {
        scheduler_flags: vec!["--ack-wait".into(), "3s".into()],
        ..Options::default()
    };
    let replica_logs = ["info,sqlx::query=debug", "info"];
    let test_started = Instant::now();
    let (mut system, [victim, _], nodes) =
        replicas_and_small_nodes(options, replica_logs, NODES, CAPACITY).await;
    let client = async_nats::connect(system.nats_url())
        .await
        .expect("connects");
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream
        .get_stream(messages::subjects::sessions_stream())
        .await
        .expect("the sessions stream exists");
    let stored_before = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    eprintln!("set-up took {:?}", test_started.elapsed());

    // 100 creates at once, half waiting for the outcome, half answered 202 at once.
    let requests: Vec<_> = (0..REQUESTS)
        .map(|n| {
            let http = system.http.clone();
            let base = system.gateway.clone();
            tokio::spawn(async move { create_at(&http, &base, n % 2 == 0).await })
        })
        .collect();

    // Kill the replica once every request is stored (so no template check is lost with it)
    // and it is in the middle of placing some.
    let started = Instant::now();
    loop {
        let stored = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence
            - stored_before;
        let held = held_by(&system.scheduler_process(victim).log());
        if stored >= REQUESTS as u64 && !held.is_empty() {
            system.scheduler_process(victim).kill();
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the replica never held a placement once all requests were stored \
             ({stored} stored, holding {held:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_after = started.elapsed();
    let held = held_by(&system.scheduler_process(victim).log());
    assert!(!held.is_empty());
    eprintln!(
        "killed the replica {killed_after:?} into the burst, holding {} placements",
        held.len()
    );

    eprintln!("waiting for the answers");
    let mut answers = Vec::new();
    for request in requests {
        let (status, body) = tokio::time::timeout(Duration::from_secs(60), request)
            .await
            .expect("every create is answered within 60 s")
            .expect("the request task ran");
        answers.push(classify(status, &body, &nodes));
    }
    let ids: Vec<String> = answers
        .iter()
        .map(|answer| answer.id().to_owned())
        .collect();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        REQUESTS,
        "every request is its own session"
    );
    for id in &held {
        assert!(
            ids.contains(id),
            "the replica held {id}, which nobody asked for"
        );
    }

    eprintln!("all answered after {:?}", started.elapsed());
    // Every accepted request settles, those the dead replica held included.
    let settled = wait_until_all_settled(&system, &ids, Duration::from_secs(30)).await;
    let mut running: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut failed = 0;
    for (id, session) in &settled {
        match session["status"].as_str() {
            Some("running") => {
                let node = session["runtime_node"].as_str().expect("node").to_owned();
                let container = session["container_id"]
                    .as_str()
                    .expect("container")
                    .to_owned();
                running.insert(id.clone(), (node, container));
            }
            Some("failed") => {
                failed += 1;
                assert_eq!(session["failure_code"], "capacity", "{session}");
                assert!(
                    session["failure_reason"]
                        .as_str()
                        .is_some_and(|reason| !reason.is_empty()),
                    "{session}"
                );
            }
            _ => panic!("session {id} ended neither running nor failed: {session}"),
        }
    }
    // Nothing is left in the work queue: every request was acknowledged by a live replica.
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(messages::subjects::sessions_consumer())
        .await
        .expect("the shared consumer");
    let started = Instant::now();
    loop {
        let info = consumer.info().await.expect("consumer info");
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "requests left unacknowledged: {} pending, {} awaiting an ack",
            info.num_pending,
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A 201 is never taken back.
    for answer in &answers {
        if let Answer::Running { id, container, .. } = answer {
            assert_eq!(
                running.get(id).map(|(_, held)| held.as_str()),
                Some(container.as_str()),
                "{id}"
            );
        }
    }
    let held_outcomes: Vec<&str> = held
        .iter()
        .map(|id| settled[id]["status"].as_str().unwrap_or("?"))
        .collect();
    eprintln!(
        "{} running, {failed} failed for capacity; the dead replica's placements ended {held_outcomes:?}",
        running.len()
    );
    assert!(running.len() <= NODES * CAPACITY);
    assert_containers_match(&nodes, &running, CAPACITY).await;
    assert_nodes_within_capacity(&system, &nodes, CAPACITY as u64).await;
    eprintln!("whole test {:?}", test_started.elapsed());
}

/// Gateways hold no state: a session made through one is read, listed and deleted through
/// another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_serve_the_same_sessions() {
    build_sleeper_image();
    let mut system = System::with_node().await;
    system.add_sleeper_template(0.05, 16).await;
    let first = system.gateway.clone();
    let second = system.start_gateway_process().await;
    assert_ne!(first, second);
    let http = system.http.clone();

    for (maker, reader) in [(&first, &second), (&second, &first)] {
        let (status, made) = create_at(&http, maker, true).await;
        assert_eq!(status, 201, "{made}");
        let id = made["id"].as_str().expect("id").to_owned();
        let path = format!("/api/v1/sessions/{id}");

        let (status, read) = get_at(&http, reader, &path).await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read, made);
        let (status, page) = get_at(&http, reader, "/api/v1/sessions?status=running").await;
        assert_eq!(status, 200, "{page}");
        assert!(
            page["sessions"]
                .as_array()
                .is_some_and(|all| all.iter().any(|session| session["id"] == id.as_str())),
            "{page}"
        );

        let (status, deleted) = delete_at(&http, reader, &path).await;
        assert_eq!(status, 200, "{deleted}");
        assert_eq!(deleted["status"], "terminated");
        let (status, after) = get_at(&http, maker, &path).await;
        assert_eq!(status, 200);
        assert_eq!(after["status"], "terminated", "{after}");
        let left = testkit::containers_labelled(labels::SESSION_ID, &id)
            .await
            .expect("containers listed");
        assert!(
            left.is_empty(),
            "the deleted session's container is still there"
        );
    }

    // A session accepted on one gateway without waiting is followed on the other.
    let (status, accepted) = create_at(&http, &second, false).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().expect("id");
    let started = Instant::now();
    loop {
        let (status, session) = get_at(&http, &first, &format!("/api/v1/sessions/{id}")).await;
        if status == 200 && session["status"] == "running" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "session {id} not running within 15 s: {status} {session}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, missing) = get_at(
        &http,
        &second,
        &format!("/api/v1/sessions/{}", uuid::Uuid::now_v7()),
    )
    .await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["error"]["code"], "not_found");
}

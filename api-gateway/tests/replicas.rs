//! Scheduler replicas and gateways side by side, through HTTP, with real NATS (JetStream), the
//! real Docker engine, one SQLite file and node daemons of small capacity: no node is given more
//! than it has, every request is answered and settled, a replica killed with SIGKILL loses
//! nothing, no session gets two containers, and any gateway serves any session.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{Options, System};
use messages::labels;
use sandbox_ops::testkit;
use serde_json::{Value, json};

/// A template whose containers sleep until removed (the busybox test image).
const SLEEPER: &str = "sleeper";

/// Builds the test image if it is missing. Called before any node starts: a node announces the
/// images it has when it registers, and a template whose image no node has is refused.
fn sleeper_image() -> &'static str {
    testkit::ensure_test_image().expect("the test image is built")
}

async fn add_sleeper_template(system: &System, image: &str) {
    let (status, body) = system
        .post_json(
            "/api/v1/templates",
            &json!({"id": SLEEPER, "image": image, "cpu": 0.05, "memory": 16, "pids": 16}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// `POST {base}/api/v1/sessions` (with `?wait=false` unless `wait`): status and JSON body.
/// Starts `count` node daemons of `capacity` containers each. 1 s beats: a node view that fell
/// behind during a burst would turn nodes suspect and answer "no healthy nodes", which the tests
/// count as a failure.
async fn start_small_nodes(system: &mut System, count: usize, capacity: usize) -> Vec<String> {
    let mut nodes = Vec::new();
    for _ in 0..count {
        let node = system
            .start_node_process_with("1s", &["--max-containers", &capacity.to_string()])
            .await;
        nodes.push(node);
    }
    nodes
}

async fn create_at(http: &reqwest::Client, base: &str, wait: bool) -> (u16, Value) {
    let query = if wait { "" } else { "?wait=false" };
    let response = http
        .post(format!("{base}/api/v1/sessions{query}"))
        .json(&json!({"template_id": SLEEPER}))
        .send()
        .await
        .expect("POST answered");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body read");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    (status, body)
}

async fn get_at(http: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    answer(http.get(format!("{base}{path}"))).await
}

async fn delete_at(http: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    answer(http.delete(format!("{base}{path}"))).await
}

/// Sends `request`; its status and JSON body.
async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// What one create was answered.
#[derive(Debug)]
enum Answer {
    /// 201: running, with its container on a node.
    Running {
        id: String,
        node: String,
        container: String,
    },
    /// 202: accepted, still pending.
    Accepted { id: String },
    /// 503 `capacity`: every node was full; the session is recorded failed.
    Full { id: String },
}

impl Answer {
    fn id(&self) -> &str {
        match self {
            Answer::Running { id, .. } | Answer::Accepted { id } | Answer::Full { id } => id,
        }
    }
}

/// The only answers a create may get here: 201 running with a container on one of `nodes`,
/// 202 pending, or 503 `capacity` naming the session it recorded as failed.
fn classify(status: u16, body: &Value, nodes: &[String]) -> Answer {
    let string = |value: &Value| value.as_str().map(str::to_owned);
    match status {
        201 => {
            assert_eq!(body["status"], "running", "{body}");
            let node = string(&body["runtime_node"]).expect("runtime_node");
            assert!(nodes.contains(&node), "placed on an unknown node: {body}");
            Answer::Running {
                id: string(&body["id"]).expect("id"),
                node,
                container: string(&body["container_id"]).expect("a 201 has a container id"),
            }
        }
        202 => {
            assert_eq!(body["status"], "pending", "{body}");
            Answer::Accepted {
                id: string(&body["id"]).expect("id"),
            }
        }
        503 if body["error"]["code"] == "capacity" => {
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("max_containers") || message.contains("all full"),
                "a capacity error says why: {body}"
            );
            Answer::Full {
                id: string(&body["error"]["session_id"]).expect("the failed session's id"),
            }
        }
        _ => panic!("a create got neither 201, 202 nor 503 capacity: {status} {body}"),
    }
}

/// A container of ours, as Docker lists it.
#[derive(Debug, Clone)]
struct Container {
    id: String,
    node: String,
    running: bool,
}

/// Every container labelled with one of `nodes`, by session id (warm-pool ones under their
/// pool id).
async fn containers_by_session(nodes: &[String]) -> BTreeMap<String, Vec<Container>> {
    let mut by_session: BTreeMap<String, Vec<Container>> = BTreeMap::new();
    for node in nodes {
        for summary in testkit::containers_labelled(labels::NODE_ID, node)
            .await
            .expect("containers listed")
        {
            let container_labels = summary.labels.clone().unwrap_or_default();
            let session = container_labels
                .get(labels::SESSION_ID)
                .cloned()
                .unwrap_or_else(|| format!("unlabelled:{:?}", summary.id));
            by_session.entry(session).or_default().push(Container {
                id: summary.id.clone().unwrap_or_default(),
                node: node.clone(),
                running: summary
                    .state
                    .as_ref()
                    .is_some_and(|state| format!("{state:?}").to_lowercase().contains("running")),
            });
        }
    }
    by_session
}

fn per_node(containers: &BTreeMap<String, Vec<Container>>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for container in containers.values().flatten() {
        *counts.entry(container.node.clone()).or_default() += 1;
    }
    counts
}

/// Docker holds exactly one running container for each session in `running` (the one the
/// session records, on its node), and none for any other session. Waits (bounded) for
/// containers still being removed.
async fn assert_containers_match(
    nodes: &[String],
    running: &BTreeMap<String, (String, String)>,
    capacity: usize,
) {
    let started = Instant::now();
    loop {
        let containers = containers_by_session(nodes).await;
        // Over-commit is never allowed, not even for a moment.
        for (node, count) in per_node(&containers) {
            assert!(
                count <= capacity,
                "node {node} holds {count} containers, above its {capacity}"
            );
        }
        for (session, held) in &containers {
            assert_eq!(
                held.len(),
                1,
                "session {session} has several containers: {held:?}"
            );
        }
        let mut problems = Vec::new();
        for (session, (node, container)) in running {
            match containers.get(session).map(Vec::as_slice) {
                Some([held]) if held.id == *container && held.node == *node && held.running => {}
                other => problems.push(format!(
                    "running session {session} (container {container} on {node}) has {other:?}"
                )),
            }
        }
        for (session, held) in &containers {
            if !running.contains_key(session) {
                problems.push(format!("session {session} is not running but has {held:?}"));
            }
        }
        if problems.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "Docker disagrees with the sessions after 15 s:\n{}",
            problems.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every node's own figures, as the API shows them, are within its capacity.
async fn assert_nodes_within_capacity(system: &System, nodes: &[String], capacity: u64) {
    let (status, listed) = system.get("/api/v1/nodes").await;
    assert_eq!(status, 200, "{listed}");
    for node in nodes {
        let shown = listed["nodes"]
            .as_array()
            .and_then(|all| all.iter().find(|shown| shown["node_id"] == node.as_str()))
            .unwrap_or_else(|| panic!("node {node} is not listed: {listed}"));
        assert_eq!(shown["max_containers"], capacity, "{shown}");
        let running = shown["running_containers"].as_u64().expect("a count");
        assert!(
            running <= capacity,
            "node {node} shows {running} containers: {shown}"
        );
        let cpu = shown["allocated_cpu_cores"].as_f64().expect("cpu");
        let total_cpu = shown["total_cpu_cores"].as_f64().expect("cpu");
        assert!(cpu <= total_cpu + 1e-9, "{shown}");
        let memory = shown["allocated_memory_mb"].as_u64().expect("memory");
        let total_memory = shown["total_memory_mb"].as_u64().expect("memory");
        assert!(memory <= total_memory, "{shown}");
    }
}

/// Polls every session until none is pending or creating; returns each one's last state.
async fn wait_until_all_settled(
    system: &System,
    ids: &[String],
    limit: Duration,
) -> BTreeMap<String, Value> {
    let started = Instant::now();
    let mut settled: BTreeMap<String, Value> = BTreeMap::new();
    loop {
        let unsettled: Vec<&String> = ids.iter().filter(|id| !settled.contains_key(*id)).collect();
        if unsettled.is_empty() {
            return settled;
        }
        let reads = futures::future::join_all(
            unsettled
                .iter()
                .map(|id| async move { system.get(&format!("/api/v1/sessions/{id}")).await }),
        )
        .await;
        let mut still = Vec::new();
        for (id, (status, session)) in unsettled.into_iter().zip(reads) {
            assert_eq!(status, 200, "session {id} cannot be read: {session}");
            if ["pending", "creating"].contains(&session["status"].as_str().unwrap_or("")) {
                still.push(session);
            } else {
                settled.insert(id.clone(), session);
            }
        }
        if still.is_empty() {
            continue;
        }
        assert!(
            started.elapsed() < limit,
            "{} sessions not settled within {limit:?}, e.g. {}",
            still.len(),
            still[0]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Three scheduler replicas (one in this process, two real processes) on one database, and 200
/// creates at once against three nodes of four containers each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_never_over_commit_and_answer_every_create() {
    const NODES: usize = 3;
    const CAPACITY: usize = 4;
    const REQUESTS: usize = 200;
    let test_started = Instant::now();
    let image = sleeper_image();
    let mut system = System::start(Options::default()).await;
    add_sleeper_template(&system, image).await;
    for _ in 0..2 {
        system.start_scheduler_process(&[], "info").await;
    }
    let nodes = start_small_nodes(&mut system, NODES, CAPACITY).await;
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
    let test_started = Instant::now();
    // A short ack wait, so JetStream hands the dead replica's requests on within seconds
    // (the replica that creates the consumer sets it; this one is first).
    let image = sleeper_image();
    let mut system = System::start(Options {
        scheduler_flags: vec!["--ack-wait".into(), "3s".into()],
        ..Options::default()
    })
    .await;
    add_sleeper_template(&system, image).await;
    let victim = system
        .start_scheduler_process(&[], "info,sqlx::query=debug")
        .await;
    system.start_scheduler_process(&[], "info").await;
    let nodes = start_small_nodes(&mut system, NODES, CAPACITY).await;
    let client = async_nats::connect(system.nats.url())
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
        let held = held_by(&system.service_processes[victim].log());
        if stored >= REQUESTS as u64 && !held.is_empty() {
            system.service_processes[victim].kill();
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
    let held = held_by(&system.service_processes[victim].log());
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
    let image = sleeper_image();
    let mut system = System::with_node().await;
    add_sleeper_template(&system, image).await;
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

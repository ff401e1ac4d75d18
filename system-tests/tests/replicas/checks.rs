//! What the replica tests check after a burst: each create's answer is one of the allowed ones,
//! Docker holds exactly the running sessions' containers, no node is over its capacity, and
//! every session settles.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use messages::labels;
use sandbox_ops::testkit;
use serde_json::Value;

use crate::common::System;

/// What one create was answered.
#[derive(Debug)]
pub enum Answer {
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
    pub fn id(&self) -> &str {
        match self {
            Answer::Running { id, .. } | Answer::Accepted { id } | Answer::Full { id } => id,
        }
    }
}

/// The only answers a create may get here: 201 running with a container on one of `nodes`,
/// 202 pending, or 503 `capacity` naming the session it recorded as failed.
pub fn classify(status: u16, body: &Value, nodes: &[String]) -> Answer {
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
pub struct Container {
    id: String,
    node: String,
    running: bool,
}

/// Every container labelled with one of `nodes`, by session id (warm-pool ones under their
/// pool id).
pub async fn containers_by_session(nodes: &[String]) -> BTreeMap<String, Vec<Container>> {
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

pub fn per_node(containers: &BTreeMap<String, Vec<Container>>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for container in containers.values().flatten() {
        *counts.entry(container.node.clone()).or_default() += 1;
    }
    counts
}

/// Docker holds exactly one running container for each session in `running` (the one the
/// session records, on its node), and none for any other session. Waits (bounded) for
/// containers still being removed.
pub async fn assert_containers_match(
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
pub async fn assert_nodes_within_capacity(system: &System, nodes: &[String], capacity: u64) {
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
pub async fn wait_until_all_settled(
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

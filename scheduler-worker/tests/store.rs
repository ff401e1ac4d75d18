//! The store behaves the same on SQLite and PostgreSQL, and the seed's own SQL works on it.

use std::collections::BTreeMap;

use messages::api::nodes::NodeDeclaration;
use messages::api::sessions::ListSessions;
use messages::execution::{Execution, ExecutionResult, ExecutionStatus, Language};
use messages::node::{Heartbeat, NodeRegistration, NodeSelfStatus};
use messages::session::{Session, SessionStatus};
use messages::template::{NetworkMode, Resources, TemplateDefinition};
use messages::{ErrorCode, ExecutionId, NodeId, SessionId};
use sandbox_ops::testkit::Postgres;
use scheduler_worker::store::{self, Applied, Store, Transition};

/// A transition's outcome as these cases read it: the session and whether it changed.
trait AsPair {
    fn pair(self) -> Option<(Session, bool)>;
}

impl AsPair for Applied {
    fn pair(self) -> Option<(Session, bool)> {
        match self {
            Applied::Changed(session) => Some((session, true)),
            Applied::Unchanged(session) => Some((session, false)),
            Applied::Missing => None,
        }
    }
}

fn to(status: SessionStatus) -> Transition {
    Transition {
        status,
        runtime_node: None,
        container_id: None,
        failure_code: None,
        failure_reason: None,
    }
}

fn creating_on(node: NodeId) -> Transition {
    Transition {
        runtime_node: Some(node),
        ..to(SessionStatus::Creating)
    }
}

fn running(node: NodeId, container_id: String) -> Transition {
    Transition {
        runtime_node: Some(node),
        container_id: Some(container_id),
        ..to(SessionStatus::Running)
    }
}

fn ended(status: SessionStatus, code: ErrorCode, reason: &str) -> Transition {
    Transition {
        failure_code: Some(code),
        failure_reason: Some(reason.to_owned()),
        ..to(status)
    }
}

fn session(id: &str, template_id: &str, created_at: chrono::DateTime<chrono::Utc>) -> Session {
    Session {
        id: SessionId::parse(id).expect("valid id"),
        template_id: template_id.into(),
        status: SessionStatus::Pending,
        runtime_node: None,
        container_id: None,
        image: "sandbox-executor:v1.0".into(),
        resources: Resources {
            cpu_cores: 0.5,
            memory_mb: 256,
            pids_limit: 64,
        },
        network: NetworkMode::None,
        failure_code: None,
        failure_reason: None,
        created_at,
        updated_at: created_at,
        started_at: None,
        ended_at: None,
        timeout_seconds: 300,
        expires_at: Some(messages::session::expiry(created_at, 300)),
    }
}

fn node_id() -> NodeId {
    NodeId::parse("docker-local").expect("valid node id")
}

/// The seed's own check, as written, against either database: the newest session is `s-3`,
/// still pending, with no container.
macro_rules! assert_seed_query_shows_the_newest_session {
    ($pool:expr) => {{
        let (id, container_id, status): (String, Option<String>, String) = sqlx::query_as(
            "SELECT id, container_id, status FROM sessions ORDER BY created_at DESC LIMIT 1;",
        )
        .fetch_one($pool)
        .await
        .expect("the seed's query runs");
        assert_eq!(
            (id.as_str(), container_id, status.as_str()),
            ("s-3", None, "pending")
        );
    }};
}

async fn behaves_as_designed(store: &Store) {
    // Seeded: the seed's template with the executor image.
    let template = store
        .get_template("python-basic")
        .await
        .expect("reads")
        .expect("seeded");
    assert_eq!(template.definition.image_url, "sandbox-executor:v1.0");
    assert_eq!(template.definition.network, NetworkMode::None);
    let templates = store.list_templates().await.expect("lists");
    assert!(
        templates
            .iter()
            .any(|t| t.definition.network == NetworkMode::SandboxNetwork)
    );
    assert!(store.get_template("nope").await.expect("reads").is_none());

    // A session is recorded once, whatever the redeliveries.
    let base = store::now();
    let first = session("s-1", "python-basic", base);
    let env = BTreeMap::from([("SECRET".to_owned(), "x".to_owned())]);
    assert!(
        store
            .insert_session_if_absent(&first, &env)
            .await
            .expect("inserts")
    );
    assert!(
        !store
            .insert_session_if_absent(&first, &env)
            .await
            .expect("inserts")
    );
    let (read, read_spec) = store
        .get_session_with_spec(&first.id)
        .await
        .expect("reads")
        .expect("exists");
    assert_eq!(read, first);
    assert_eq!(read_spec.env, env);
    assert_eq!(read_spec.image, first.image);

    // Transitions are guarded by the current status.
    let pending = [SessionStatus::Pending, SessionStatus::Creating];
    let (creating, changed) = store
        .transition(&first.id, &pending, &creating_on(node_id()))
        .await
        .expect("updates")
        .pair()
        .expect("exists");
    assert!(changed);
    assert_eq!(creating.status, SessionStatus::Creating);
    assert_eq!(creating.runtime_node, Some(node_id()));
    let to_running = running(node_id(), "c0ffee".into());
    let (running_session, changed) = store
        .transition(&first.id, &pending, &to_running)
        .await
        .expect("updates")
        .pair()
        .expect("exists");
    assert!(changed);
    assert_eq!(running_session.status, SessionStatus::Running);
    assert_eq!(running_session.container_id.as_deref(), Some("c0ffee"));
    assert!(running_session.started_at.is_some());
    // A late "running" or "failed" meant for a pending session changes nothing now.
    let failed = ended(SessionStatus::Failed, ErrorCode::NoHealthyNodes, "none");
    let (unchanged, changed) = store
        .transition(&first.id, &pending, &failed)
        .await
        .expect("updates")
        .pair()
        .expect("exists");
    assert!(!changed);
    assert_eq!(unchanged.status, SessionStatus::Running);
    let (terminated, changed) = store
        .transition(
            &first.id,
            &[SessionStatus::Running],
            &to(SessionStatus::Terminated),
        )
        .await
        .expect("updates")
        .pair()
        .expect("exists");
    assert!(changed);
    assert!(terminated.ended_at.is_some());
    assert_eq!(terminated.container_id.as_deref(), Some("c0ffee"));
    let missing = SessionId::parse("missing").expect("valid");
    assert!(
        store
            .transition(&missing, &pending, &failed)
            .await
            .expect("updates")
            .pair()
            .is_none()
    );

    // Failures keep their code and reason.
    let second = session("s-2", "other", base + chrono::Duration::seconds(1));
    store
        .insert_session_if_absent(&second, &BTreeMap::new())
        .await
        .expect("inserts");
    let (failed_session, _) = store
        .transition(&second.id, &pending, &failed)
        .await
        .expect("updates")
        .pair()
        .expect("exists");
    assert_eq!(failed_session.failure_code, Some(ErrorCode::NoHealthyNodes));
    assert_eq!(failed_session.failure_reason.as_deref(), Some("none"));

    // Listing: newest first, filters, pages, and the total across pages.
    let third = session("s-3", "python-basic", base + chrono::Duration::seconds(2));
    store
        .insert_session_if_absent(&third, &BTreeMap::new())
        .await
        .expect("inserts");
    let all = ListSessions {
        status: None,
        template_id: None,
        limit: 10,
        offset: 0,
    };
    let (sessions, total) = store.list_sessions(&all).await.expect("lists");
    let ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["s-3", "s-2", "s-1"]);
    assert_eq!(total, 3);
    let page = ListSessions {
        limit: 1,
        offset: 1,
        ..all.clone()
    };
    let (sessions, total) = store.list_sessions(&page).await.expect("lists");
    assert_eq!(sessions[0].id.as_str(), "s-2");
    assert_eq!(total, 3);
    let by_template = ListSessions {
        template_id: Some("python-basic".into()),
        ..all.clone()
    };
    assert_eq!(store.list_sessions(&by_template).await.expect("lists").1, 2);
    let by_status = ListSessions {
        status: Some(SessionStatus::Failed),
        ..all.clone()
    };
    let (sessions, total) = store.list_sessions(&by_status).await.expect("lists");
    assert_eq!((sessions[0].id.as_str(), total), ("s-2", 1));

    // Nodes: a registration, then a heartbeat's figures.
    let registration = NodeRegistration {
        node_id: node_id(),
        hostname: "localhost".into(),
        runtime_type: "docker".into(),
        ip_address: "127.0.0.1".into(),
        api_endpoint: "unix:///var/run/docker.sock".into(),
        total_cpu_cores: 8.0,
        total_memory_mb: 16384,
        max_containers: 100,
        cached_images: vec!["sandbox-executor:v1.0".into()],
        labels: BTreeMap::from([("zone".into(), "a".into())]),
        daemon_version: "0.1.0".into(),
        heartbeat_interval_ms: 5000,
        started_at: base,
        inventory: None,
    };
    store
        .upsert_node(&registration, base)
        .await
        .expect("upserts");
    store
        .upsert_node(&registration, base)
        .await
        .expect("upserts twice");
    let heartbeat = Heartbeat {
        node_id: node_id(),
        timestamp: base,
        sequence: 1,
        running_containers: 2,
        allocated_cpu_cores: 1.5,
        allocated_memory_mb: 768,
        status: NodeSelfStatus::Online,
        warm_containers: 0,
    };
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

    operations_behave(store, &registration).await;
}

/// Declarations, drain, templates and session lifetimes.
async fn operations_behave(store: &Store, registration: &NodeRegistration) {
    let base = store::now();
    // A declaration's capacity survives the daemon's next registration.
    let declaration = NodeDeclaration {
        node_id: node_id(),
        hostname: "declared-host".into(),
        runtime_type: "docker".into(),
        ip_address: "10.0.0.1".into(),
        api_endpoint: "unix:///var/run/docker.sock".into(),
        total_cpu_cores: 2.0,
        total_memory_mb: 2048,
        max_containers: 3,
        labels: BTreeMap::new(),
    };
    store
        .declare_node(&declaration, base)
        .await
        .expect("declares");
    store
        .upsert_node(registration, base)
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

    // Templates: create once, update, delete.
    let mut definition = TemplateDefinition {
        id: "t-ops".into(),
        name: "ops".into(),
        description: String::new(),
        image_url: "busybox:latest".into(),
        resources: Resources {
            cpu_cores: 0.25,
            memory_mb: 64,
            pids_limit: 16,
        },
        network: NetworkMode::SandboxNetwork,
        env: BTreeMap::new(),
        timeout_seconds: 30,
        warm_pool_size: 0,
    };
    assert!(
        store
            .create_template(&definition, base)
            .await
            .expect("creates")
    );
    assert!(
        !store
            .create_template(&definition, base)
            .await
            .expect("exists")
    );
    definition.timeout_seconds = 45;
    definition.warm_pool_size = 3;
    let updated = store
        .update_template(&definition, base)
        .await
        .expect("updates")
        .expect("found");
    assert_eq!(
        (
            updated.definition.timeout_seconds,
            updated.definition.network,
            updated.definition.warm_pool_size
        ),
        (45, NetworkMode::SandboxNetwork, 3)
    );
    definition.id = "t-missing".into();
    assert!(
        store
            .update_template(&definition, base)
            .await
            .expect("no-op")
            .is_none()
    );
    let deleted = store.delete_template("t-ops").await.expect("deletes");
    assert_eq!(deleted.map(|t| t.definition.id), Some("t-ops".to_owned()));
    assert!(
        store
            .delete_template("t-ops")
            .await
            .expect("no-op")
            .is_none()
    );

    // Lifetimes: expiry, keep-alive, stuck starts, sessions by node.
    let old = base - chrono::Duration::seconds(600);
    let mut expiring = session("life-1", "t", old);
    expiring.status = SessionStatus::Running;
    expiring.runtime_node = Some(node_id());
    expiring.started_at = Some(old);
    store
        .insert_session_if_absent(&expiring, &BTreeMap::new())
        .await
        .expect("inserts");
    let expired = store.expired_sessions(base).await.expect("queries");
    assert!(expired.iter().any(|s| s.id.as_str() == "life-1"));
    let (kept, changed) = store
        .set_session_timeout(&expiring.id, 120, base)
        .await
        .expect("sets")
        .pair()
        .expect("found");
    assert!(changed);
    assert_eq!(kept.timeout_seconds, 120);
    assert!(kept.expires_at > Some(base));
    let expired = store.expired_sessions(base).await.expect("queries");
    assert!(!expired.iter().any(|s| s.id.as_str() == "life-1"));
    let on_node = store.live_sessions_on(&node_id()).await.expect("queries");
    assert!(on_node.iter().any(|s| s.id.as_str() == "life-1"));
    let stuck = store
        .sessions_not_started_since(base)
        .await
        .expect("queries");
    assert!(!stuck.iter().any(|s| s.id.as_str() == "life-1"), "it runs");
    let lost = ended(SessionStatus::Lost, ErrorCode::NodeLost, "node_lost");
    let (ended, _) = store
        .transition(&expiring.id, &[SessionStatus::Running], &lost)
        .await
        .expect("transitions")
        .pair()
        .expect("found");
    assert_eq!(ended.status, SessionStatus::Lost);
    assert!(ended.ended_at.is_some());
    let (_, changed) = store
        .set_session_timeout(&expiring.id, 120, base)
        .await
        .expect("no-op")
        .pair()
        .expect("found");
    assert!(!changed, "an ended session is not kept alive");
}

#[tokio::test]
async fn store_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/sandbox.db", dir.path().display());
    let store = Store::connect(&url).await.expect("connects");
    behaves_as_designed(&store).await;
    executions_behave_as_designed(&store).await;
    // Connecting again migrates nothing twice and keeps the data.
    let again = Store::connect(&url).await.expect("reconnects");
    assert_eq!(again.list_templates().await.expect("lists").len(), 2);

    // The seed's own check, as written, against the file.
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("opens the file");
    assert_seed_query_shows_the_newest_session!(&pool);
}

#[tokio::test]
async fn store_on_postgres() {
    let postgres = Postgres::start().expect("postgres starts");
    let url = postgres.url();
    let store = Store::connect(&url).await.expect("connects");
    behaves_as_designed(&store).await;
    executions_behave_as_designed(&store).await;
    Store::connect(&url).await.expect("reconnects");

    let pool = sqlx::PgPool::connect(&url).await.expect("connects");
    // The seed's static registration, verbatim, is accepted and read back as a node.
    sqlx::query(
        "INSERT INTO runtime_nodes (node_id, hostname, runtime_type, ip_address, api_endpoint, status, \
         total_cpu_cores, total_memory_mb, running_containers, max_containers, cached_images, last_heartbeat_at) \
         VALUES ('seed-node', 'localhost', 'docker', '127.0.0.1', 'unix:///var/run/docker.sock', 'online', \
         8.0, 16384, 0, 100, '[\"sandbox-executor:v1.0\"]', NOW());",
    )
    .execute(&pool)
    .await
    .expect("the seed's INSERT runs");
    let nodes = store.list_nodes().await.expect("lists");
    let seeded = nodes
        .iter()
        .find(|n| n.registration.node_id.as_str() == "seed-node")
        .expect("listed");
    assert_eq!(seeded.registration.max_containers, 100);
    assert!(seeded.declared, "the seed's INSERT declares the node");
    assert_eq!(seeded.registration.cached_images, ["sandbox-executor:v1.0"]);

    assert_seed_query_shows_the_newest_session!(&pool);
    let (image,): (String,) =
        sqlx::query_as("SELECT image_url FROM templates WHERE id = 'python-basic';")
            .fetch_one(&pool)
            .await
            .expect("the seed's template query runs");
    assert_eq!(image, "sandbox-executor:v1.0");
}

fn execution(id: &str, session_id: &str, created_at: chrono::DateTime<chrono::Utc>) -> Execution {
    Execution {
        id: ExecutionId::parse(id).expect("valid id"),
        session_id: SessionId::parse(session_id).expect("valid id"),
        language: Language::Python,
        code: "print(6*7)".into(),
        status: ExecutionStatus::Running,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        error: None,
        state_lost: false,
        return_value: None,
        fresh: false,
        timeout_secs: 30,
        runtime_node: Some(node_id()),
        duration_ms: None,
        created_at,
        started_at: None,
        completed_at: None,
        metrics: None,
    }
}

/// Executions: recorded running, listed newest first per session, and given exactly one result.
async fn executions_behave_as_designed(store: &Store) {
    let base = store::now();
    let seconds = chrono::Duration::seconds;
    for (index, (id, due_in)) in [("e-1", 10), ("e-2", 3), ("e-3", 1)]
        .into_iter()
        .enumerate()
    {
        let at = base + chrono::Duration::milliseconds(i64::try_from(index).expect("small"));
        store
            .insert_execution(&execution(id, "s-exec", at), base + seconds(due_in))
            .await
            .expect("inserts");
    }
    store
        .insert_execution(&execution("e-other", "s-other", base), base + seconds(100))
        .await
        .expect("inserts");
    let (page, total) = store
        .list_executions(&SessionId::parse("s-exec").expect("valid"), 2, 0)
        .await
        .expect("lists");
    assert_eq!(total, 3);
    let ids: Vec<&str> = page.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e-3", "e-2"]);

    let id = ExecutionId::parse("e-1").expect("valid");
    let completed = ExecutionResult {
        status: ExecutionStatus::Completed,
        exit_code: Some(0),
        stdout: "42\n".into(),
        duration_ms: Some(4),
        started_at: Some(base),
        return_value: Some("None".into()),
        metrics: Some(serde_json::json!({"cpu_ms": 3})),
        ..ExecutionResult::error(id.clone(), "unused")
    };
    let completed = ExecutionResult {
        error: None,
        ..completed
    };
    let (recorded, changed) = store
        .record_execution_result(&completed)
        .await
        .expect("records")
        .expect("exists");
    assert!(changed);
    assert_eq!(recorded.status, ExecutionStatus::Completed);
    assert_eq!(recorded.stdout, "42\n");
    assert_eq!(recorded.exit_code, Some(0));
    assert_eq!(recorded.metrics, Some(serde_json::json!({"cpu_ms": 3})));
    assert_eq!(recorded.started_at, Some(base));

    // A later result (say, the overdue sweep's) never overwrites the first.
    let late = ExecutionResult::error(id.clone(), "no result came");
    let (after, changed) = store
        .record_execution_result(&late)
        .await
        .expect("runs")
        .expect("exists");
    assert!(!changed);
    assert_eq!(after, recorded);
    assert_eq!(
        store.get_execution(&id).await.expect("reads"),
        Some(recorded)
    );

    let unknown = ExecutionResult::error(ExecutionId::parse("e-none").expect("valid"), "x");
    assert!(
        store
            .record_execution_result(&unknown)
            .await
            .expect("runs")
            .is_none()
    );
    // Overdue: still running, due before now, most overdue first (e-1 has its result).
    let overdue = |limit| store.overdue_executions(base + seconds(5), limit);
    let ids = |runs: Vec<scheduler_worker::store::OverdueExecution>| -> Vec<String> {
        runs.into_iter().map(|run| run.id.to_string()).collect()
    };
    assert_eq!(ids(overdue(10).await.expect("lists")), ["e-3", "e-2"]);
    assert_eq!(ids(overdue(1).await.expect("lists")), ["e-3"]);
}

//! Sessions: the seeded templates, recording once, guarded transitions, failures, listing, the
//! seed's own queries, and a second connection to the same database.

use std::collections::BTreeMap;

use messages::api::PageRequest;
use messages::api::sessions::ListSessions;
use messages::session::{Session, SessionStatus};
use messages::template::NetworkMode;
use messages::{ErrorCode, SessionId};
use scheduler_worker::store::{self, Store, Transition};

use crate::Database;
use crate::fixtures::{AsPair as _, creating_on, ended, node_id, running, session};

/// Statuses a placement may move a session from.
const PENDING: [SessionStatus; 2] = [SessionStatus::Pending, SessionStatus::Creating];

fn no_healthy_nodes() -> Transition {
    ended(SessionStatus::Failed, ErrorCode::NoHealthyNodes, "none")
}

/// Records a pending session of `template_id`, made now.
async fn inserted(store: &Store, id: &str, template_id: &str) -> Session {
    let recorded = session(id, template_id, store::now());
    store
        .insert_session_if_absent(&recorded, &BTreeMap::new(), &Default::default())
        .await
        .expect("inserts");
    recorded
}

/// `s-1` (python-basic), `s-2` (another template, failed) and `s-3` (python-basic, pending),
/// each a second newer than the one before.
async fn three_sessions(store: &Store) {
    let base = store::now();
    let seconds = chrono::Duration::seconds;
    for (id, template_id, age) in [("s-1", "python-basic", 0), ("s-2", "other", 1)] {
        store
            .insert_session_if_absent(
                &session(id, template_id, base + seconds(age)),
                &BTreeMap::new(),
                &Default::default(),
            )
            .await
            .expect("inserts");
    }
    let failed = SessionId::parse("s-2").expect("valid");
    store
        .transition(&failed, &PENDING, &no_healthy_nodes())
        .await
        .expect("updates")
        .pair()
        .expect("exists");
    let third = session("s-3", "python-basic", base + seconds(2));
    store
        .insert_session_if_absent(&third, &BTreeMap::new(), &Default::default())
        .await
        .expect("inserts");
}

pub async fn the_seed_templates_are_there(store: &Store) {
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
}

pub async fn a_session_is_recorded_once_whatever_the_redeliveries(store: &Store) {
    let first = session("s-1", "python-basic", store::now());
    let env = BTreeMap::from([("SECRET".to_owned(), "x".to_owned())]);
    assert!(
        store
            .insert_session_if_absent(&first, &env, &Default::default())
            .await
            .expect("inserts")
    );
    assert!(
        !store
            .insert_session_if_absent(&first, &env, &Default::default())
            .await
            .expect("inserts")
    );
    let (read, read_env) = store
        .get_session_with_spec(&first.id)
        .await
        .expect("reads")
        .expect("exists");
    assert_eq!(read, first);
    assert_eq!(read_env.env, env);
    assert_eq!(read_env.image, first.image);
}

pub async fn transitions_are_guarded_by_the_current_status(store: &Store) {
    let first = inserted(store, "s-1", "python-basic").await;
    let (creating, changed) = store
        .transition(&first.id, &PENDING, &creating_on(node_id()))
        .await
        .expect("updates")
        .pair()
        .expect("exists");
    assert!(changed);
    assert_eq!(creating.status, SessionStatus::Creating);
    assert_eq!(creating.runtime_node, Some(node_id()));
    let to_running = running(node_id(), "c0ffee");
    let (running_session, changed) = store
        .transition(&first.id, &PENDING, &to_running)
        .await
        .expect("updates")
        .pair()
        .expect("exists");
    assert!(changed);
    assert_eq!(running_session.status, SessionStatus::Running);
    assert_eq!(running_session.container_id.as_deref(), Some("c0ffee"));
    assert!(running_session.started_at.is_some());
    // A late "running" or "failed" meant for a pending session changes nothing now.
    let (unchanged, changed) = store
        .transition(&first.id, &PENDING, &no_healthy_nodes())
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
            &Transition::to(SessionStatus::Terminated),
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
            .transition(&missing, &PENDING, &no_healthy_nodes())
            .await
            .expect("updates")
            .pair()
            .is_none()
    );
}

pub async fn sessions_are_read_by_ids_in_chunks(store: &Store) {
    three_sessions(store).await;
    let mut ids: Vec<SessionId> = ["s-1", "s-3", "missing"]
        .into_iter()
        .map(|id| SessionId::parse(id).expect("valid"))
        .collect();
    // Past one query's worth of ids, so the reads come in several queries.
    ids.extend((0..600).map(|n| SessionId::parse(format!("absent-{n}")).expect("valid")));
    ids.push(SessionId::parse("s-2").expect("valid"));
    let found = store.get_sessions(&ids).await.expect("reads");
    let mut names: Vec<&str> = found.keys().map(SessionId::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["s-1", "s-2", "s-3"]);
    assert_eq!(found[&ids[1]].id.as_str(), "s-3");
    assert!(store.get_sessions(&[]).await.expect("reads").is_empty());
}

pub async fn failures_keep_their_code_and_reason(store: &Store) {
    let second = inserted(store, "s-2", "other").await;
    let (failed_session, _) = store
        .transition(&second.id, &PENDING, &no_healthy_nodes())
        .await
        .expect("updates")
        .pair()
        .expect("exists");
    assert_eq!(failed_session.failure_code, Some(ErrorCode::NoHealthyNodes));
    assert_eq!(failed_session.failure_reason.as_deref(), Some("none"));
}

pub async fn sessions_are_listed_newest_first_with_filters_and_pages(store: &Store) {
    three_sessions(store).await;
    let all = ListSessions {
        status: None,
        template_id: None,
        page: PageRequest {
            limit: 10,
            offset: 0,
        },
    };
    let (sessions, total) = store.list_sessions(&all).await.expect("lists");
    let ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["s-3", "s-2", "s-1"]);
    assert_eq!(total, 3);
    let page = ListSessions {
        page: PageRequest {
            limit: 1,
            offset: 1,
        },
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
}

/// The seed's own check, as written: the newest session is `s-3`, still pending, with no
/// container.
pub async fn the_seeds_query_shows_the_newest_session(db: &Database) {
    three_sessions(&db.store).await;
    let (id, container_id, status): (String, Option<String>, String) = db
        .query_one(
            "SELECT id, container_id, status FROM sessions ORDER BY created_at DESC LIMIT 1;",
        )
        .await;
    assert_eq!(
        (id.as_str(), container_id, status.as_str()),
        ("s-3", None, "pending")
    );
}

pub async fn the_seeds_template_query_runs(db: &Database) {
    let (image,): (String,) = db
        .query_one("SELECT image_url FROM templates WHERE id = 'python-basic';")
        .await;
    assert_eq!(image, "sandbox-executor:v1.0");
}

pub async fn connecting_again_migrates_nothing_twice_and_keeps_the_data(db: &Database) {
    three_sessions(&db.store).await;
    let again = db.reconnect().await;
    assert_eq!(again.list_templates().await.expect("lists").len(), 3);
    let newest = SessionId::parse("s-3").expect("valid");
    assert!(
        again
            .get_session_with_spec(&newest)
            .await
            .expect("reads")
            .is_some()
    );
}

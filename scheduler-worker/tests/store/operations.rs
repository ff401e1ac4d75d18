//! What operators change and the lifetime queries: templates created, updated and deleted;
//! sessions expiring, kept alive, stuck, found by node, and ended.

use std::collections::BTreeMap;

use messages::ErrorCode;
use messages::session::SessionStatus;
use messages::template::NetworkMode;
use scheduler_worker::store::{self, Store};

use crate::fixtures::{AsPair as _, ended, node_id, session, template_definition};

pub async fn templates_are_created_updated_and_deleted(store: &Store) {
    let base = store::now();
    let mut definition = template_definition("t-ops");
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
}

pub async fn sessions_expire_are_kept_alive_and_end(store: &Store) {
    let base = store::now();
    // Running for ten minutes on a five-minute timeout.
    let old = base - chrono::Duration::seconds(600);
    let mut expiring = session("life-1", "t", old);
    expiring.status = SessionStatus::Running;
    expiring.runtime_node = Some(node_id());
    expiring.started_at = Some(old);
    store
        .insert_session_if_absent(&expiring, &BTreeMap::new(), &Default::default())
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

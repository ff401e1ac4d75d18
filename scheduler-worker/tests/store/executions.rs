//! Executions: recorded running, listed newest first per session, given exactly one result,
//! and found when overdue.

use chrono::{DateTime, Utc};
use messages::api::PageRequest;
use messages::execution::{ExecutionResult, ExecutionStatus};
use messages::{ExecutionId, SessionId};
use scheduler_worker::store::{self, OverdueExecution, Store};

use crate::fixtures::execution;

/// Three runs of `s-exec` made a millisecond apart and due 10, 3 and 1 s after `base`, and one
/// of `s-other` due after 100 s.
async fn four_runs(store: &Store, base: DateTime<Utc>) {
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
}

/// `e-1`'s result: completed, printing 42.
fn completed(base: DateTime<Utc>) -> ExecutionResult {
    let id = ExecutionId::parse("e-1").expect("valid");
    ExecutionResult {
        status: ExecutionStatus::Completed,
        exit_code: Some(0),
        stdout: "42\n".into(),
        duration_ms: Some(4),
        started_at: Some(base),
        return_value: Some("None".into()),
        metrics: Some(serde_json::json!({"cpu_ms": 3})),
        error: None,
        ..ExecutionResult::error(id, "unused")
    }
}

pub async fn runs_are_listed_newest_first_per_session(store: &Store) {
    four_runs(store, store::now()).await;
    let (page, total) = store
        .list_executions(
            &SessionId::parse("s-exec").expect("valid"),
            PageRequest {
                limit: 2,
                offset: 0,
            },
        )
        .await
        .expect("lists");
    assert_eq!(total, 3);
    let ids: Vec<&str> = page.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e-3", "e-2"]);
}

pub async fn a_run_gets_exactly_one_result(store: &Store) {
    let base = store::now();
    four_runs(store, base).await;
    let (recorded, changed) = store
        .record_execution_result(&completed(base))
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
    let id = ExecutionId::parse("e-1").expect("valid");
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
    let recorded = store.record_execution_result(&unknown).await.expect("runs");
    assert!(
        recorded.is_none(),
        "a result of no known run records nothing"
    );
}

pub async fn overdue_runs_are_listed_most_overdue_first(store: &Store) {
    let base = store::now();
    four_runs(store, base).await;
    store
        .record_execution_result(&completed(base))
        .await
        .expect("records")
        .expect("exists");
    // Overdue: still running, due before now, most overdue first (e-1 has its result).
    let overdue = |limit| store.overdue_executions(base + chrono::Duration::seconds(5), limit);
    let ids = |runs: Vec<OverdueExecution>| -> Vec<String> {
        runs.into_iter().map(|run| run.id.to_string()).collect()
    };
    assert_eq!(ids(overdue(10).await.expect("lists")), ["e-3", "e-2"]);
    assert_eq!(ids(overdue(1).await.expect("lists")), ["e-3"]);
}

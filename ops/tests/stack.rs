//! The process harness itself: a process's log, readiness, signals and stop; a stack on
//! PostgreSQL serving the API, and nothing left running after it is dropped.

use std::path::Path;
use std::time::Duration;

use sandbox_ops::stack::{
    Binaries, DatabaseKind, Process, SchedulerReady, Signal, Spec, Stack, stop_all,
};

fn shell(dir: &Path, name: &str, script: &str) -> Process {
    Process::spawn(
        name,
        Path::new("/bin/sh"),
        vec!["-c".to_owned(), script.to_owned()],
        vec![("GREETING".to_owned(), "hello".to_owned())],
        dir.join(format!("{name}.log")),
    )
    .expect("sh starts")
}

fn is_alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would still show "Z".
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

#[tokio::test]
async fn a_process_logs_is_waited_for_frozen_thawed_and_stopped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut process = shell(dir.path(), "greeter", "echo $GREETING; exec sleep 30");
    process
        .wait_ready(Duration::from_secs(10), async |process: &Process| {
            process.log().contains("hello")
        })
        .await
        .expect("it greets");
    assert!(process.is_running());
    let pid = process.pid().expect("a pid");
    process.signal(Signal::Stop).expect("frozen");
    // The signal is delivered asynchronously.
    let stopped = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| stat.contains(") T "))
    });
    assert!(stopped, "SIGSTOP did not stop {pid}");
    process.signal(Signal::Cont).expect("thawed");
    process.stop();
    assert!(!process.is_running());
    assert!(!is_alive(pid));
    assert!(
        process.signal(Signal::Cont).is_err(),
        "a stopped process takes no signal"
    );

    // Restarted with the same flags, appending to the same log.
    process.restart().expect("starts again");
    process
        .wait_ready(Duration::from_secs(10), async |process: &Process| {
            process.log().matches("hello").count() == 2
        })
        .await
        .expect("it greets again");
    process.kill();
    assert!(!process.is_running());
}

/// What waiting for a process that is never ready fails with.
async fn never_ready(process: &mut Process, within: Duration) -> String {
    let error = process
        .wait_ready(within, async |_: &Process| false)
        .await
        .expect_err("never ready");
    error.to_string()
}

#[tokio::test]
async fn waiting_fails_with_the_log_when_the_process_exits_or_takes_too_long() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut quitter = shell(dir.path(), "quitter", "echo giving up; exit 3");
    let message = never_ready(&mut quitter, Duration::from_secs(10)).await;
    assert!(
        message.contains("quitter exited at start") && message.contains("giving up"),
        "{message}"
    );
    let mut sleeper = shell(dir.path(), "sleeper", "echo zzz; exec sleep 30");
    let message = never_ready(&mut sleeper, Duration::from_millis(300)).await;
    assert!(
        message.contains("sleeper not ready within") && message.contains("zzz"),
        "{message}"
    );

    // One that ignores SIGTERM is killed after the grace; several stop in one shared wait.
    let mut stubborn = shell(dir.path(), "stubborn", "trap '' TERM; sleep 30 & wait");
    let pids = [sleeper.pid(), stubborn.pid()];
    stop_all([&mut sleeper, &mut stubborn]);
    for pid in pids.into_iter().flatten() {
        assert!(!is_alive(pid), "{pid} survived stop_all");
    }
}

#[tokio::test]
async fn a_stack_on_postgres_serves_the_api_and_leaves_no_process_behind() {
    let mut stack =
        Stack::start(Binaries::Cargo, DatabaseKind::Postgres).expect("NATS and PostgreSQL");
    assert!(stack.database_url().starts_with("postgres://"));
    let base = stack
        .add_gateway(Spec::default())
        .await
        .expect("the gateway starts");
    // With the ready line hidden, readiness is the API answering.
    stack
        .add_scheduler(
            Spec::default().log_level("warn"),
            SchedulerReady::ApiAnswers,
        )
        .await
        .expect("a quiet scheduler starts");
    stack
        .add_scheduler(Spec::default(), SchedulerReady::Logged)
        .await
        .expect("a second scheduler starts");
    let api = stack.api().expect("the gateway is the API");
    assert_eq!(api.base(), base);
    let (status, templates) = api.get("/api/v1/templates").await.expect("answered");
    assert_eq!(status, 200, "{templates}");
    assert!(
        templates["templates"]
            .as_array()
            .is_some_and(|all| all.iter().any(|t| t["id"] == "python-basic")),
        "{templates}"
    );
    assert_eq!(api.online_count().await.expect("nodes listed"), 0);
    assert!(
        stack.schedulers()[1]
            .log()
            .contains("scheduler worker ready")
    );

    let pids = stack.pids();
    let names: Vec<&str> = pids.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        ["scheduler-1", "scheduler-2", "api-gateway", "nats-server"]
    );
    drop(stack);
    for (name, pid) in pids {
        assert!(!is_alive(pid), "{name} ({pid}) outlived the stack");
    }
}

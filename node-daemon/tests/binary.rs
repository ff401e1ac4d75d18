//! The `node-daemon` binary's exit codes: a configuration it cannot run with is refused with 64
//! (EX_USAGE) and the reason on stderr, before it contacts NATS or Docker.

use std::process::{Command, Output};

/// sysexits.h's EX_USAGE.
const EX_USAGE: i32 = 64;

fn node_daemon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_node-daemon"))
        // Nothing listens there: a daemon that got as far as connecting would fail otherwise.
        .args(["--nats-url", "nats://127.0.0.1:1"])
        .args(["--docker-socket", "/nonexistent/docker.sock"])
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("node-daemon runs")
}

fn refused_as_usage(args: &[&str], reason: &str) {
    let output = node_daemon(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EX_USAGE), "{args:?}: {stderr}");
    assert!(stderr.contains(reason), "{args:?}: {stderr}");
}

#[test]
fn a_bad_value_exits_with_ex_usage_and_says_why() {
    refused_as_usage(
        &["--max-containers", "0"],
        "invalid configuration: max_containers must be more than zero",
    );
    refused_as_usage(&["--network", "a/b"], "is not a usable Docker network name");
    // Values clap itself refuses end the same way.
    refused_as_usage(&["--heartbeat-interval", "0s"], "--heartbeat-interval");
    refused_as_usage(&["--no-such-flag"], "--no-such-flag");
    if !cfg!(feature = "simulation") {
        refused_as_usage(
            &["--simulate-nodes", "3"],
            "built without the `simulation` feature",
        );
    }
}

#[test]
fn help_and_version_are_not_errors() {
    for flag in ["--help", "--version"] {
        let output = node_daemon(&[flag]);
        assert_eq!(output.status.code(), Some(0), "{flag}");
        assert!(!output.stdout.is_empty(), "{flag}");
    }
}

#[test]
fn a_good_configuration_gets_as_far_as_connecting() {
    let output = node_daemon(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Docker"), "{stderr}");
}

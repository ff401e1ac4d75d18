//! The harness itself: real servers come up on private ports and are gone after drop.

use sandbox_ops::testkit::{NatsServer, Postgres};

#[test]
fn nats_server_with_jetstream_comes_up_and_goes_away() {
    let nats = NatsServer::start().expect("nats-server starts");
    let port = nats.port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(nats);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn postgres_cluster_comes_up_and_takes_a_new_database() {
    let postgres = Postgres::start().expect("postgres starts");
    let url = postgres
        .create_database("harness_check")
        .expect("database created");
    assert!(url.ends_with("/harness_check"));
}

#[test]
fn the_test_image_is_built_locally_and_runs() {
    let image = sandbox_ops::testkit::ensure_test_image().expect("image built");
    let out = std::process::Command::new("docker")
        .args(["run", "--rm", image, "/bin/echo", "hello"])
        .output()
        .expect("docker runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
}

//! Operator tooling and the test harness: real `nats-server` and PostgreSQL instances started on
//! free ports in temp dirs, and clean-up of the Docker objects a test made.

pub mod testkit;

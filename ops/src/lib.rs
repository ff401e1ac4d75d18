//! Operator tooling and the harness the tests and the benchmark share: [`testkit`] starts real
//! `nats-server` and PostgreSQL instances on free ports in temp dirs and cleans up Docker
//! objects; [`stack`] runs the control plane's own binaries as processes on them.

pub mod stack;
pub mod testkit;

//! What every service binary of the control plane shares: telemetry set-up, the NATS side of the
//! wire contract (headers, typed publish and request), and shutdown with named tasks.

pub mod bus;
pub mod config;
pub mod tasks;
pub mod telemetry;

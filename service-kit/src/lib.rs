//! What every service binary of the control plane shares: telemetry set-up, the NATS side of the
//! wire contract (headers, schema checks, typed publish and request), the one request server
//! ([`responder`]), typed subscriptions and work queues, and shutdown with named tasks.

pub mod bus;
pub mod config;
pub mod recent;
pub mod responder;
pub mod service;
pub mod streams;
pub mod subscription;
pub mod tasks;
pub mod telemetry;
pub mod work_queue;

pub use responder::Responder;
pub use subscription::Subscription;
pub use work_queue::WorkQueue;

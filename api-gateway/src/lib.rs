//! The public HTTP API of the sandbox control plane. Stateless: every request becomes a NATS
//! request to the scheduler replicas or a JetStream publish, so any number of replicas can run.

pub mod config;
pub mod error;
mod execution_stream;
mod executions;
mod extract;
mod files;
mod input;
mod internal;
mod nodes;
mod router;
mod sessions;
mod state;
mod templates;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use service_kit::tasks::Tasks;
use service_kit::{bus, streams};
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::state::AppState;

/// Time left after the last in-flight NATS request for the server to wind down on shutdown.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// A started gateway: bound, connected to NATS, serving until its cancel token fires.
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    internal_addr: Option<SocketAddr>,
    tasks: Tasks,
    shutdown_deadline: Duration,
}

impl Running {
    /// The address the API listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the internal endpoints' listener; `None` when no token is configured.
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.internal_addr
    }

    /// Waits for cancellation, then for in-flight requests to finish, up to a deadline.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.tasks.join(self.shutdown_deadline).await
    }
}

/// Validates `config`, connects to NATS, makes sure the SESSIONS and EXECUTIONS streams exist, binds the
/// listener and starts serving; returns once requests can be taken.
pub async fn start(config: Config, cancel: CancellationToken) -> anyhow::Result<Running> {
    config.validate().context("invalid configuration")?;
    let internal_token = config.internal_token().context("invalid configuration")?;
    let nats = bus::connect(&config.nats_url, "api-gateway").await?;
    let mut jetstream = async_nats::jetstream::new(nats.clone());
    // Bounds the wait for a publish ack like any other request to the control plane.
    jetstream.set_timeout(config.request_timeout);
    streams::ensure_sessions_stream(&jetstream).await?;
    streams::ensure_executions_stream(&jetstream).await?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the HTTP listener to {}", config.listen))?;
    let local_addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    let internal_listener = match &internal_token {
        Some(_) => Some(
            tokio::net::TcpListener::bind(config.internal_listen)
                .await
                .with_context(|| {
                    format!(
                        "binding the internal listener to {}",
                        config.internal_listen
                    )
                })?,
        ),
        None => None,
    };
    let internal_addr = internal_listener
        .as_ref()
        .map(tokio::net::TcpListener::local_addr)
        .transpose()
        .context("reading the internal listener's address")?;

    let state = AppState {
        nats,
        jetstream,
        create_wait: config.create_wait,
        request_timeout: config.request_timeout,
        max_file_bytes: config.max_file_bytes,
        templates: std::sync::Arc::default(),
        cancel: cancel.clone(),
    };
    let app = router::router(state.clone(), config.max_body_bytes);
    let mut tasks = Tasks::new(cancel.clone());
    match (internal_listener, internal_token) {
        (Some(listener), Some(token)) => {
            let internal = internal::router(state, token, config.max_body_bytes);
            let stop = cancel.clone();
            tasks.spawn("internal-http", async move {
                axum::serve(listener, internal)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .context("serving the internal endpoints")
            });
            tracing::info!(internal_addr = ?internal_addr, "internal endpoints listening");
        }
        _ => tracing::info!(
            "no internal token configured (API_GATEWAY_INTERNAL_TOKEN or _FILE): the internal \
             endpoints are off"
        ),
    }
    tasks.spawn("http", async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
            .context("serving HTTP")
    });
    tracing::info!(%local_addr, "api-gateway listening");
    Ok(Running {
        local_addr,
        internal_addr,
        tasks,
        // A request in flight at shutdown ends within one request timeout (waits end at once).
        shutdown_deadline: config.request_timeout + SHUTDOWN_SLACK,
    })
}

//! `scheduler-worker`: places sandbox sessions on runtime nodes. See the library for the runbook.

use clap::Parser as _;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = scheduler_worker::Config::parse();
    let telemetry = service_kit::telemetry::init("scheduler-worker")?;
    let cancel = CancellationToken::new();
    service_kit::tasks::cancel_on_signal(cancel.clone())?;
    let result = match scheduler_worker::start(config, cancel.clone()).await {
        Ok(running) => running.wait().await,
        Err(error) => Err(error),
    };
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "scheduler worker stopped");
    }
    telemetry.shutdown();
    result
}

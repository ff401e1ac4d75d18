//! The `api-gateway` binary: configuration from flags and `API_GATEWAY_*`, then [`api_gateway::start`].

use clap::Parser as _;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = api_gateway::Config::parse();
    let telemetry = service_kit::telemetry::init("api-gateway")?;
    let cancel = CancellationToken::new();
    service_kit::tasks::cancel_on_signal(cancel.clone())?;
    let running = api_gateway::start(config, cancel).await?;
    let result = running.wait().await;
    telemetry.shutdown();
    result
}

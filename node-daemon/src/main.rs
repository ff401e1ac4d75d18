//! The `node-daemon` binary: configuration from flags and `NODE_DAEMON_*`, then the daemon until
//! SIGTERM or SIGINT.

use clap::Parser as _;
use node_daemon::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = service_kit::telemetry::init("node-daemon")?;
    let cancel = CancellationToken::new();
    service_kit::tasks::cancel_on_signal(cancel.clone())?;
    let running = node_daemon::start(config, cancel).await?;
    let result = running.wait().await;
    telemetry.shutdown();
    result
}

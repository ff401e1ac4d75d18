//! The `node-daemon` binary: configuration from flags and `NODE_DAEMON_*`, checked before
//! anything is bound or contacted (a bad value exits with 64, EX_USAGE, saying why on stderr),
//! then the daemon until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser as _;
use node_daemon::Config;
use tokio_util::sync::CancellationToken;

/// sysexits.h's EX_USAGE: a flag or variable is wrong; running again as is will not help.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let config = match checked_config() {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:?}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration, or how to exit after saying what is wrong with it.
fn checked_config() -> Result<Config, ExitCode> {
    let config = Config::try_parse().map_err(|error| {
        // `--help` and `--version` end here too, on stdout and successfully.
        let _ = error.print();
        if error.use_stderr() {
            ExitCode::from(EX_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })?;
    config.validate().map_err(|error| {
        eprintln!("node-daemon: invalid configuration: {error}");
        ExitCode::from(EX_USAGE)
    })?;
    Ok(config)
}

#[tokio::main]
async fn run(config: Config) -> anyhow::Result<()> {
    let telemetry = service_kit::telemetry::init("node-daemon")?;
    let cancel = CancellationToken::new();
    service_kit::tasks::cancel_on_signal(cancel.clone())?;
    let running = node_daemon::start(config, cancel).await?;
    let result = running.wait().await;
    telemetry.shutdown();
    result
}

//! The body of every service binary's `main`, so each `main.rs` is a few lines: the
//! configuration is parsed and checked before anything is contacted (a bad value exits with
//! [`EX_USAGE`] and the reason, as linkerd2-proxy does), then telemetry, the one cancel signal
//! on SIGTERM/SIGINT, and the service until it stops (exit 1 if it failed).

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::EX_USAGE;

/// Parses the configuration from the command line and the environment and checks it with
/// `validate` (a value either refuses exits with [`EX_USAGE`]; `--help` and `--version` print and
/// exit 0), then runs `serve(config, cancel)` on a multi-threaded runtime with telemetry for
/// `name`, until it returns.
pub fn main<C, E, F, Fut>(
    name: &'static str,
    validate: impl FnOnce(&C) -> Result<(), E>,
    serve: F,
) -> ExitCode
where
    C: clap::Parser,
    E: Display,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = match C::try_parse() {
        Ok(config) => config,
        Err(error) => {
            // `--help` and `--version` end here too, printed on stdout, successfully.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Err(error) = validate(&config) {
        eprintln!("{name}: invalid configuration: {error}");
        return ExitCode::from(EX_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let telemetry = crate::telemetry::init(name)?;
        let cancel = CancellationToken::new();
        crate::tasks::cancel_on_signal(cancel.clone())?;
        let outcome = serve(config, cancel).await;
        if let Err(error) = &outcome {
            tracing::error!(error = format!("{error:#}"), "{name} stopped");
        }
        telemetry.shutdown();
        outcome
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

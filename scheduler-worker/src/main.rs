//! `scheduler-worker`: places sandbox sessions on runtime nodes (see the library for the
//! runbook). The configuration is checked before anything is contacted.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    service_kit::service::main(
        "scheduler-worker",
        scheduler_worker::Config::parse(),
        scheduler_worker::Config::validate,
        |config, cancel| async move { scheduler_worker::start(config, cancel).await?.wait().await },
    )
}

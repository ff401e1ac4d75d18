//! `scheduler-worker`: places sandbox sessions on runtime nodes (see the library for the
//! runbook). The configuration is checked before anything is contacted (a bad value exits with
//! 64, EX_USAGE, and the reason).

use std::process::ExitCode;

fn main() -> ExitCode {
    service_kit::service::main(
        "scheduler-worker",
        scheduler_worker::Config::validate,
        |config, cancel| async move { scheduler_worker::start(config, cancel).await?.wait().await },
    )
}

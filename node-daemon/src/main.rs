//! The `node-daemon` binary: configuration from flags and `NODE_DAEMON_*`, checked before
//! anything is bound or contacted (a bad value exits with 64, EX_USAGE, saying why on stderr),
//! then the daemon until SIGTERM or SIGINT.

use std::process::ExitCode;

fn main() -> ExitCode {
    service_kit::service::main(
        "node-daemon",
        node_daemon::Config::validate,
        |config, cancel| async move { node_daemon::start(config, cancel).await?.wait().await },
    )
}

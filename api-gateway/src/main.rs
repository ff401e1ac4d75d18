//! The `api-gateway` binary: configuration from flags and `API_GATEWAY_*`, checked before
//! anything binds, then [`api_gateway::start`] until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    service_kit::service::main(
        "api-gateway",
        api_gateway::Config::parse(),
        api_gateway::Config::validate,
        |config, cancel| async move { api_gateway::start(config, cancel).await?.wait().await },
    )
}

//! The `api-gateway` binary: configuration from flags and `API_GATEWAY_*`, checked before
//! anything binds (a bad value exits with 64, EX_USAGE, and the reason), then
//! [`api_gateway::start`] until SIGTERM or SIGINT.

use std::process::ExitCode;

fn main() -> ExitCode {
    service_kit::service::main(
        "api-gateway",
        api_gateway::Config::validate,
        |config, cancel| async move { api_gateway::start(config, cancel).await?.wait().await },
    )
}

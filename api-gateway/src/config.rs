//! The gateway's configuration, from flags or `API_GATEWAY_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use service_kit::config::parse_duration;

/// The largest request body a replica may be configured to accept; bodies are buffered whole.
const MAX_BODY_BYTES_CEILING: usize = 64 * 1024 * 1024;
/// A shorter bearer token is too easy to guess.
const MIN_TOKEN_CHARS: usize = 16;

/// How the gateway listens and how long it waits on the rest of the control plane.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "api-gateway",
    version,
    about = "The sandbox control plane's HTTP API"
)]
pub struct Config {
    /// Address the HTTP API listens on.
    #[arg(long, env = "API_GATEWAY_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// NATS server URL.
    #[arg(
        long,
        env = "API_GATEWAY_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// How long `POST /api/v1/sessions` waits for the session to run (500ms, 60s, 2m).
    #[arg(long, env = "API_GATEWAY_CREATE_WAIT", default_value = "60s", value_parser = parse_duration)]
    pub create_wait: Duration,

    /// How long a request to the schedulers may take before the API answers 503.
    #[arg(long, env = "API_GATEWAY_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// The largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "API_GATEWAY_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// The largest file an upload may carry, in bytes; larger ones get 413. Files are streamed
    /// in chunks, so this bounds disk use in the sandbox, not the gateway's memory.
    #[arg(long, env = "API_GATEWAY_MAX_FILE_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_file_bytes: u64,
    /// Address of the internal listener (the seed's /internal endpoints for agents that speak
    /// only HTTP). Keep it off the public network.
    #[arg(
        long,
        env = "API_GATEWAY_INTERNAL_LISTEN",
        default_value = "127.0.0.1:8001"
    )]
    pub internal_listen: SocketAddr,

    /// The bearer token the internal endpoints require. With neither it nor a token file, the
    /// internal listener is not started.
    #[arg(long, env = "API_GATEWAY_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<String>,

    /// A file whose first line is the internal endpoints' bearer token.
    #[arg(long, env = "API_GATEWAY_INTERNAL_TOKEN_FILE")]
    pub internal_token_file: Option<PathBuf>,
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} must be more than zero")]
    ZeroDuration { name: &'static str },
    #[error("max_body_bytes must be between 1 and {MAX_BODY_BYTES_CEILING}, not {value}")]
    MaxBodyBytes { value: usize },
    #[error("max_file_bytes must be more than zero")]
    ZeroMaxFileBytes,
    #[error("nats_url must not be empty")]
    EmptyNatsUrl,
    #[error("set the internal token or a token file, not both")]
    TwoTokens,
    #[error("reading the internal token file {path}: {reason}")]
    TokenFile { path: String, reason: String },
    #[error("the internal token must have at least {MIN_TOKEN_CHARS} characters")]
    ShortToken,
}

impl Config {
    /// Checks what clap's parsers cannot (or what a test built by hand may get wrong).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.create_wait.is_zero() {
            return Err(ConfigError::ZeroDuration {
                name: "create_wait",
            });
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration {
                name: "request_timeout",
            });
        }
        if !(1..=MAX_BODY_BYTES_CEILING).contains(&self.max_body_bytes) {
            return Err(ConfigError::MaxBodyBytes {
                value: self.max_body_bytes,
            });
        }
        if self.max_file_bytes == 0 {
            return Err(ConfigError::ZeroMaxFileBytes);
        }
        if self.nats_url.trim().is_empty() {
            return Err(ConfigError::EmptyNatsUrl);
        }
        self.internal_token()?;
        Ok(())
    }

    /// The internal endpoints' token, from the setting or the file; `None` when neither is set
    /// (the internal listener stays off).
    pub fn internal_token(&self) -> Result<Option<String>, ConfigError> {
        let token = match (&self.internal_token, &self.internal_token_file) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoTokens),
            (None, None) => return Ok(None),
            (Some(token), None) => token.trim().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|error| ConfigError::TokenFile {
                    path: path.display().to_string(),
                    reason: error.to_string(),
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        };
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(ConfigError::ShortToken);
        }
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn defaults_are_as_documented() {
        let config = Config::try_parse_from(["api-gateway"]).expect("defaults parse");
        assert_eq!(config.listen, "0.0.0.0:8000".parse().expect("address"));
        assert_eq!(config.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(config.create_wait, Duration::from_secs(60));
        assert_eq!(config.request_timeout, Duration::from_secs(10));
        assert_eq!(config.max_body_bytes, 1024 * 1024);
        assert_eq!(config.max_file_bytes, 100 * 1024 * 1024);
        assert_eq!(
            config.internal_listen,
            "127.0.0.1:8001".parse().expect("address")
        );
        assert_eq!(config.internal_token().expect("no token"), None);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn refuses_out_of_range_values() {
        let config =
            Config::try_parse_from(["api-gateway", "--max-body-bytes", "0"]).expect("flags parse");
        assert_eq!(
            config.validate(),
            Err(ConfigError::MaxBodyBytes { value: 0 })
        );
        assert!(Config::try_parse_from(["api-gateway", "--create-wait", "0s"]).is_err());
        let short = Config::try_parse_from(["api-gateway", "--internal-token", "abc"])
            .expect("flags parse");
        assert_eq!(short.validate(), Err(ConfigError::ShortToken));
        let missing =
            Config::try_parse_from(["api-gateway", "--internal-token-file", "/no/such/token"])
                .expect("flags parse");
        assert!(matches!(
            missing.validate(),
            Err(ConfigError::TokenFile { .. })
        ));
    }
}

//! The scheduler worker's configuration: flags, or environment variables prefixed `SCHEDULER_`
//! (and the conventional `DATABASE_URL`).

use std::path::PathBuf;
use std::time::Duration;

use service_kit::config::parse_duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "scheduler-worker",
    version,
    about = "Places sandbox sessions on runtime nodes"
)]
pub struct Config {
    /// NATS server to connect to.
    #[arg(
        long,
        env = "SCHEDULER_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// `sqlite://PATH` (created if missing) or `postgres://...`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://sandbox.db")]
    pub database_url: String,

    /// How long to wait for a node to answer a command (a container create included).
    #[arg(long, env = "SCHEDULER_NODE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub node_timeout: Duration,

    /// How long a node may take to remove a container. A DELETE waits for it, so keep it below
    /// the gateway's API_GATEWAY_REQUEST_TIMEOUT (10 s by default).
    #[arg(long, env = "SCHEDULER_REMOVE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub remove_timeout: Duration,

    /// How long a node may take to start a code execution (not to finish it).
    #[arg(long, env = "SCHEDULER_RUN_START_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub run_start_timeout: Duration,

    /// How long a taken request may go unacknowledged before JetStream hands it to another
    /// replica; work in progress extends it.
    #[arg(long, env = "SCHEDULER_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,

    /// Session requests placed at once by this replica.
    #[arg(long, env = "SCHEDULER_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,

    /// Nodes tried for one session before it fails (a full or silent node passes it on).
    #[arg(long, env = "SCHEDULER_PLACEMENT_ATTEMPTS", default_value_t = 3)]
    pub placement_attempts: usize,

    /// `dynamic`: any node daemon that connects joins. `static`: only declared nodes join
    /// (POST /api/v1/nodes, --nodes-file, or a row inserted into runtime_nodes).
    #[arg(long, env = "SCHEDULER_REGISTRATION_MODE", value_enum, default_value_t = RegistrationMode::Dynamic)]
    pub registration_mode: RegistrationMode,

    /// A JSON file with a list of node declarations (the seed's fields), declared at start.
    #[arg(long, env = "SCHEDULER_NODES_FILE")]
    pub nodes_file: Option<PathBuf>,

    /// How long a node may stay offline before the sessions on it are marked lost.
    #[arg(long, env = "SCHEDULER_NODE_LOST_GRACE", default_value = "60s", value_parser = parse_duration)]
    pub node_lost_grace: Duration,

    /// How long a session may take to reach running before it is failed.
    #[arg(long, env = "SCHEDULER_START_DEADLINE", default_value = "120s", value_parser = parse_duration)]
    pub start_deadline: Duration,

    /// How often session lifetimes (timeouts, stuck starts) are checked.
    #[arg(long, env = "SCHEDULER_LIFETIME_SWEEP", default_value = "1s", value_parser = parse_duration)]
    pub lifetime_sweep: Duration,
}

/// Which node daemons may join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistrationMode {
    /// Any daemon that registers joins.
    Dynamic,
    /// Only nodes an operator declared join; others are refused with the reason.
    Static,
}

/// A configuration value out of range, found before anything is contacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("DATABASE_URL {0:?} must start with sqlite: or postgres://")]
    DatabaseUrl(String),
    #[error("SCHEDULER_NATS_URL {0:?} must be a URL such as nats://host:4222")]
    NatsUrl(String),
    #[error("SCHEDULER_MAX_IN_FLIGHT must be between 1 and 4096, not {0}")]
    MaxInFlight(usize),
    #[error("SCHEDULER_PLACEMENT_ATTEMPTS must be between 1 and 16, not {0}")]
    PlacementAttempts(usize),
    #[error("SCHEDULER_ACK_WAIT must be at least 1s")]
    AckWait,
    #[error("SCHEDULER_LIFETIME_SWEEP must be between 1ms and 60s")]
    LifetimeSweep,
    #[error("SCHEDULER_START_DEADLINE must be at least 1s")]
    StartDeadline,
    #[error("SCHEDULER_NODES_FILE {0} is not a readable file")]
    NodesFile(String),
}

impl Config {
    /// Checks what can be checked before any connection is made.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database_url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::DatabaseUrl(url.clone()));
        }
        if !self.nats_url.contains("://") {
            return Err(ConfigError::NatsUrl(self.nats_url.clone()));
        }
        if !(1..=4096).contains(&self.max_in_flight) {
            return Err(ConfigError::MaxInFlight(self.max_in_flight));
        }
        if !(1..=16).contains(&self.placement_attempts) {
            return Err(ConfigError::PlacementAttempts(self.placement_attempts));
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err(ConfigError::AckWait);
        }
        if self.lifetime_sweep.is_zero() || self.lifetime_sweep > Duration::from_secs(60) {
            return Err(ConfigError::LifetimeSweep);
        }
        if self.start_deadline < Duration::from_secs(1) {
            return Err(ConfigError::StartDeadline);
        }
        if let Some(path) = &self.nodes_file
            && !path.is_file()
        {
            return Err(ConfigError::NodesFile(path.display().to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["scheduler-worker"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).expect("parses")
    }

    #[test]
    fn defaults_are_valid() {
        parse(&[]).validate().expect("valid");
    }

    #[test]
    fn bad_values_are_refused_before_start() {
        assert!(parse(&["--database-url", "mysql://x"]).validate().is_err());
        assert!(parse(&["--max-in-flight", "0"]).validate().is_err());
        assert!(parse(&["--nats-url", "localhost"]).validate().is_err());
        assert!(Config::try_parse_from(["s", "--node-timeout", "soon"]).is_err());
        assert!(Config::try_parse_from(["s", "--registration-mode", "open"]).is_err());
        assert!(
            parse(&["--nodes-file", "/no/such/nodes.json"])
                .validate()
                .is_err()
        );
        assert!(parse(&["--start-deadline", "500ms"]).validate().is_err());
    }
}

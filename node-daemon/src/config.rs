//! The daemon's configuration, from flags or `NODE_DAEMON_*` environment variables.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use messages::NodeId;
use messages::ids::MAX_ID_LEN;
use service_kit::config::parse_duration;

/// The default output limit: 1 MiB per stream.
const DEFAULT_OUTPUT_LIMIT: u64 = 1024 * 1024;

/// Where the node daemon connects, what it calls itself, and how much it may hold.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "node-daemon",
    version,
    about = "Runs sandbox containers on this host for the control plane"
)]
pub struct Config {
    /// NATS server URL.
    #[arg(
        long,
        env = "NODE_DAEMON_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// This node's id, the last token of its command subjects (default: the host name, made safe).
    #[arg(long, env = "NODE_DAEMON_NODE_ID", default_value_t = default_node_id())]
    pub node_id: NodeId,

    /// Path of the Docker engine's unix socket.
    #[arg(
        long,
        env = "NODE_DAEMON_DOCKER_SOCKET",
        default_value = "/var/run/docker.sock"
    )]
    pub docker_socket: String,

    /// How often the node heartbeats (500ms, 5s, 1m).
    #[arg(long, env = "NODE_DAEMON_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// The bridge network sandboxes join when their template asks for `sandbox_network`;
    /// created if missing, never removed.
    #[arg(long, env = "NODE_DAEMON_NETWORK", default_value = "sandbox_network")]
    pub network: String,

    /// The most sandbox containers this node runs at once. What they are guaranteed (their CPU
    /// and memory requests) must fit the node too, and their memory the host's free memory.
    #[arg(long, env = "NODE_DAEMON_MAX_CONTAINERS", default_value_t = 256)]
    pub max_containers: u32,

    /// Host memory kept free beside the sandboxes, in MiB: a session whose guarantee would eat
    /// into it is refused (the host's real free memory, `MemAvailable`, is checked).
    #[arg(long, env = "NODE_DAEMON_MEMORY_RESERVE_MB", default_value_t = 1024)]
    pub memory_reserve_mb: u64,

    /// Disk kept free where the sandboxes' disks are, in MiB: their images are sparse (taken as
    /// written), so a session is refused when the free space is below this plus its `disk_mb`.
    #[arg(long, env = "NODE_DAEMON_DISK_RESERVE_MB", default_value_t = 4096)]
    pub disk_reserve_mb: u64,

    /// Where the daemon keeps the sandboxes' disk images (`volumes/`).
    #[arg(
        long,
        env = "NODE_DAEMON_STATE_DIR",
        default_value = "/var/lib/sandbox-node"
    )]
    pub state_dir: PathBuf,

    /// The Docker engine's runtime for gVisor sandboxes without a network (registered by
    /// ops/install-deps.sh); gVisor is offered only if the engine has it.
    #[arg(
        long,
        env = "NODE_DAEMON_GVISOR_RUNTIME",
        default_value = "sandbox-gvisor"
    )]
    pub gvisor_runtime: String,

    /// The Docker engine's runtime for gVisor sandboxes on `sandbox_network`.
    #[arg(
        long,
        env = "NODE_DAEMON_GVISOR_NETWORKED_RUNTIME",
        default_value = "sandbox-gvisor-net"
    )]
    pub gvisor_networked_runtime: String,

    /// The DNS servers the egress rules' domain names are resolved with, as `ip:port,...`
    /// (default: the host's /etc/resolv.conf).
    #[arg(long, env = "NODE_DAEMON_EGRESS_NAMESERVERS", value_delimiter = ',')]
    pub egress_nameservers: Vec<SocketAddr>,

    /// CPU cores offered to sandboxes (default: what the Docker engine reports).
    #[arg(long, env = "NODE_DAEMON_CPU_CORES")]
    pub cpu_cores: Option<f64>,

    /// Memory offered to sandboxes, in MiB (default: what the Docker engine reports).
    #[arg(long, env = "NODE_DAEMON_MEMORY_MB")]
    pub memory_mb: Option<u64>,

    /// The address announced to the control plane (default: this host's outbound IPv4).
    #[arg(long, env = "NODE_DAEMON_ADVERTISE_IP")]
    pub advertise_ip: Option<IpAddr>,

    /// Labels announced with the node, as `key=value,key=value`.
    #[arg(
        long,
        env = "NODE_DAEMON_LABELS",
        default_value = "",
        hide_default_value = true,
        value_parser = parse_labels
    )]
    pub labels: BTreeMap<String, String>,

    /// The most output of one stream (stdout, stderr) of a run that is kept and published, in
    /// bytes; the rest is dropped and the result says it was truncated. The NATS server's
    /// max_payload must hold twice this plus 128 KiB.
    #[arg(long, env = "NODE_DAEMON_OUTPUT_LIMIT_BYTES", default_value_t = DEFAULT_OUTPUT_LIMIT)]
    pub output_limit: u64,

    /// For scale benchmarks only: run this many simulated nodes instead of one backed by Docker
    /// (containers are in-memory records). The capacity flags apply to each node. Needs a build
    /// with the `simulation` feature.
    #[arg(long, env = "NODE_DAEMON_SIMULATE_NODES")]
    pub simulate_nodes: Option<u32>,

    /// How long a simulated container takes to start.
    #[arg(long, env = "NODE_DAEMON_SIMULATED_START_DELAY", default_value = "20ms", value_parser = parse_duration)]
    pub simulated_start_delay: Duration,

    /// Simulated nodes are named `<prefix>-00000`, `<prefix>-00001`, ...
    #[arg(long, env = "NODE_DAEMON_NODE_ID_PREFIX", default_value = "sim")]
    pub node_id_prefix: String,

    /// The images every simulated node reports, comma-separated.
    #[arg(
        long,
        env = "NODE_DAEMON_SIMULATED_IMAGES",
        default_value = "sandbox-executor:v1.0",
        value_delimiter = ','
    )]
    pub simulated_images: Vec<String>,
}

/// The most simulated nodes one process runs.
pub const MAX_SIMULATED_NODES: u32 = 100_000;

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("nats_url must not be empty")]
    EmptyNatsUrl,
    #[error("docker_socket must be an absolute path, not {0:?}")]
    DockerSocket(String),
    #[error("heartbeat_interval must be more than zero")]
    ZeroHeartbeatInterval,
    #[error(
        "network {0:?} is not a usable Docker network name: start with a letter or digit, \
         then use letters, digits, '_', '.' or '-' (at most 128)"
    )]
    NetworkName(String),
    #[error("max_containers must be more than zero")]
    ZeroMaxContainers,
    #[error("state_dir must be an absolute path, not {0:?}")]
    StateDir(PathBuf),
    #[error("cpu_cores must be a number more than zero, not {0}")]
    CpuCores(f64),
    #[error("memory_mb must be more than zero")]
    ZeroMemory,
    #[error("label keys must not be empty")]
    EmptyLabelKey,
    #[error("output_limit must be more than zero")]
    ZeroOutputLimit,
    #[error("simulate_nodes must be between 1 and {MAX_SIMULATED_NODES}, not {0}")]
    SimulatedNodes(u32),
    #[error(
        "node_id_prefix {0:?} must be 1 to 40 letters, digits, '_' or '-' (the node ids are \
         <prefix>-<number>)"
    )]
    NodeIdPrefix(String),
    #[error("simulated_images must name at least one image")]
    NoSimulatedImages,
    #[error(
        "simulate_nodes (--simulate-nodes) runs a simulated fleet, but this node-daemon was built \
         without the `simulation` feature: build it with `--features node-daemon/simulation`"
    )]
    SimulationNotBuilt,
}

impl Config {
    /// Checks what clap's parsers cannot (or what a test built by hand may get wrong).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nats_url.trim().is_empty() {
            return Err(ConfigError::EmptyNatsUrl);
        }
        if !self.docker_socket.starts_with('/') {
            return Err(ConfigError::DockerSocket(self.docker_socket.clone()));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::ZeroHeartbeatInterval);
        }
        if !is_network_name(&self.network) {
            return Err(ConfigError::NetworkName(self.network.clone()));
        }
        if self.max_containers == 0 {
            return Err(ConfigError::ZeroMaxContainers);
        }
        if !self.state_dir.is_absolute() {
            return Err(ConfigError::StateDir(self.state_dir.clone()));
        }
        if let Some(cores) = self.cpu_cores
            && !(cores.is_finite() && cores > 0.0)
        {
            return Err(ConfigError::CpuCores(cores));
        }
        if self.memory_mb == Some(0) {
            return Err(ConfigError::ZeroMemory);
        }
        if self.labels.keys().any(|key| key.trim().is_empty()) {
            return Err(ConfigError::EmptyLabelKey);
        }
        if self.output_limit == 0 {
            return Err(ConfigError::ZeroOutputLimit);
        }
        if let Some(nodes) = self.simulate_nodes {
            if !(1..=MAX_SIMULATED_NODES).contains(&nodes) {
                return Err(ConfigError::SimulatedNodes(nodes));
            }
            let prefix = &self.node_id_prefix;
            if prefix.is_empty()
                || prefix.len() > 40
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            {
                return Err(ConfigError::NodeIdPrefix(prefix.clone()));
            }
            if self
                .simulated_images
                .iter()
                .all(|image| image.trim().is_empty())
            {
                return Err(ConfigError::NoSimulatedImages);
            }
            if !cfg!(feature = "simulation") {
                return Err(ConfigError::SimulationNotBuilt);
            }
        }
        Ok(())
    }
}

/// The network name ends up in Docker API paths, so it is kept to Docker's usual name alphabet.
fn is_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphanumeric())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parses `key=value,key=value`; an empty string is no labels.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    if text.trim().is_empty() {
        return Ok(labels);
    }
    for pair in text.split(',') {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("label {pair:?} is not key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("label {pair:?} has an empty key"));
        }
        if labels
            .insert(key.to_owned(), value.trim().to_owned())
            .is_some()
        {
            return Err(format!("label {key:?} is given twice"));
        }
    }
    Ok(labels)
}

/// The machine's host name, as the kernel knows it.
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The host name made into a node id: characters a subject token cannot hold become '-'.
pub fn default_node_id() -> NodeId {
    node_id_from_host_name(&host_name())
}

fn node_id_from_host_name(host_name: &str) -> NodeId {
    let token: String = host_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_ID_LEN)
        .collect();
    let token = if token.is_empty() {
        "localhost".to_owned()
    } else {
        token
    };
    // Every character is one of the id alphabet and there are 1 to MAX_ID_LEN of them.
    NodeId::parse(token).expect("a sanitised host name is a valid node id")
}

/// The IPv4 address this host would send from towards the outside, else loopback. Connecting a
/// UDP socket sends nothing; it only asks the kernel for a route.
pub fn default_advertise_ip() -> IpAddr {
    let outbound = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|socket| {
            socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9))?;
            socket.local_addr()
        })
        .map(|address| address.ip());
    match outbound {
        Ok(ip) if !ip.is_loopback() && !ip.is_unspecified() => ip,
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn defaults_are_as_documented() {
        let config = Config::try_parse_from(["node-daemon"]).expect("defaults parse");
        assert_eq!(config.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(config.docker_socket, "/var/run/docker.sock");
        assert_eq!(config.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(config.network, "sandbox_network");
        assert_eq!(config.max_containers, 256);
        assert_eq!(config.memory_reserve_mb, 1024);
        assert_eq!(config.disk_reserve_mb, 4096);
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/sandbox-node"));
        assert!(config.egress_nameservers.is_empty());
        assert_eq!(config.cpu_cores, None);
        assert_eq!(config.memory_mb, None);
        assert_eq!(config.advertise_ip, None);
        assert!(config.labels.is_empty());
        assert_eq!(config.output_limit, 1024 * 1024);
        assert_eq!(config.node_id, default_node_id());
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn labels_parse_and_bad_syntax_is_refused() {
        let config = Config::try_parse_from(["node-daemon", "--labels", "zone=a, gpu=none"])
            .expect("labels parse");
        assert_eq!(
            config.labels,
            BTreeMap::from([
                ("zone".to_owned(), "a".to_owned()),
                ("gpu".to_owned(), "none".to_owned())
            ])
        );
        for bad in ["zone", "=a", "a=1,a=2", "a=1,,b=2"] {
            assert!(
                Config::try_parse_from(["node-daemon", "--labels", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(std::iter::once("node-daemon").chain(args.iter().copied()))
                .expect("flags parse")
                .validate()
        };
        assert_eq!(
            parse(&["--max-containers", "0"]),
            Err(ConfigError::ZeroMaxContainers)
        );
        assert_eq!(parse(&["--cpu-cores=-1"]), Err(ConfigError::CpuCores(-1.0)));
        assert_eq!(parse(&["--memory-mb", "0"]), Err(ConfigError::ZeroMemory));
        assert_eq!(
            parse(&["--output-limit", "0"]),
            Err(ConfigError::ZeroOutputLimit)
        );
        assert_eq!(
            parse(&["--network", "a/b"]),
            Err(ConfigError::NetworkName("a/b".to_owned()))
        );
        assert_eq!(
            parse(&["--state-dir", "state"]),
            Err(ConfigError::StateDir(PathBuf::from("state")))
        );
        assert_eq!(
            parse(&["--docker-socket", "docker.sock"]),
            Err(ConfigError::DockerSocket("docker.sock".to_owned()))
        );
        assert_eq!(
            parse(&["--simulate-nodes", "0"]),
            Err(ConfigError::SimulatedNodes(0))
        );
        assert_eq!(
            parse(&["--simulate-nodes", "10", "--node-id-prefix", "a.b"]),
            Err(ConfigError::NodeIdPrefix("a.b".to_owned()))
        );
        let simulation = if cfg!(feature = "simulation") {
            Ok(())
        } else {
            Err(ConfigError::SimulationNotBuilt)
        };
        assert_eq!(parse(&["--simulate-nodes", "10000"]), simulation);
        assert!(
            ConfigError::SimulationNotBuilt
                .to_string()
                .contains("built without the `simulation` feature")
        );
        assert!(Config::try_parse_from(["node-daemon", "--node-id", "a.b"]).is_err());
        assert!(Config::try_parse_from(["node-daemon", "--heartbeat-interval", "0s"]).is_err());
    }

    #[test]
    fn host_names_become_valid_node_ids() {
        assert_eq!(node_id_from_host_name("web-1").as_str(), "web-1");
        assert_eq!(
            node_id_from_host_name("web-1.example.org").as_str(),
            "web-1-example-org"
        );
        assert_eq!(node_id_from_host_name("").as_str(), "localhost");
        assert_eq!(
            node_id_from_host_name(&"h".repeat(100)).as_str().len(),
            MAX_ID_LEN
        );
    }
}

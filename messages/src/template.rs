//! Templates and the container spec a session's container is made from.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::egress::Egress;
use crate::limits;

wire_enum! {
    /// Which network a sandbox joins.
    #[derive(Default)]
    pub enum NetworkMode ("network") {
        /// No network at all: the safe default for untrusted code.
        #[default]
        None = "none",
        /// The node's `sandbox_network` bridge, for executors that call back to the control plane.
        SandboxNetwork = "sandbox_network",
    }
}

wire_enum! {
    /// The container runtime a sandbox runs under.
    #[derive(Default)]
    pub enum Runtime ("runtime") {
        /// Docker's default runtime: namespaces and cgroups on the host's kernel.
        #[default]
        Runc = "runc",
        /// gVisor's `runsc`: the sandbox's system calls meet a user-space kernel, not the host's.
        Gvisor = "gvisor",
        /// A runtime named by a newer writer; refused by every check.
        #[serde(other)]
        Unknown = "unknown",
    }
}

/// The disk a sandbox may fill when its template does not say: 2 GiB.
pub const DEFAULT_DISK_MB: u64 = 2048;
/// The most disk one sandbox may ask for: 1 TiB.
pub const MAX_DISK_MB: u64 = 1024 * 1024;
/// The least disk: an ext4 file system smaller than this cannot be made.
pub const MIN_DISK_MB: u64 = 16;
/// Without a CPU request a sandbox is guaranteed this share of its CPU limit: mostly idle agent
/// sandboxes use next to none, and the kernel still shares CPU fairly by these weights.
pub const DEFAULT_CPU_REQUEST_DIVISOR: f64 = 64.0;
/// Without a memory request a sandbox is guaranteed this share of its memory limit (an idle
/// Python sandbox uses about 20 MB of a 512 MB limit); the node also checks real free memory.
pub const DEFAULT_MEMORY_REQUEST_DIVISOR: u64 = 8;
/// The smallest CPU guarantee: a thousandth of a core.
const MIN_CPU_REQUEST_CORES: f64 = 0.001;
/// The smallest memory guarantee counted (Docker's smallest memory reservation), unless the
/// limit is smaller still.
pub const MIN_MEMORY_GUARANTEE_MB: u64 = 6;

fn default_disk_mb() -> u64 {
    DEFAULT_DISK_MB
}

/// What a sandbox runs under. `cpu_cores` and `memory_mb` are limits (the engine's ceilings);
/// placement and admission count the requests, what the sandbox is guaranteed (Kubernetes'
/// requests and limits), so mostly idle sandboxes can share a host.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_cores: f64,
    pub memory_mb: u64,
    pub pids_limit: u32,
    /// What the sandbox may write in all, in `/workspace` and `/tmp` together.
    #[serde(default = "default_disk_mb")]
    pub disk_mb: u64,
    /// The CPU it is guaranteed; absent, its limit over [`DEFAULT_CPU_REQUEST_DIVISOR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_request_cores: Option<f64>,
    /// The memory it is guaranteed; absent, its limit over [`DEFAULT_MEMORY_REQUEST_DIVISOR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_request_mb: Option<u64>,
}

/// The seed's `python-basic` limits.
impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu_cores: 1.0,
            memory_mb: 512,
            pids_limit: 256,
            disk_mb: DEFAULT_DISK_MB,
            cpu_request_cores: None,
            memory_request_mb: None,
        }
    }
}

/// What a sandbox is guaranteed: the figures placement and admission add up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guarantee {
    pub cpu_cores: f64,
    pub memory_mb: u64,
}

impl Resources {
    /// The requests, or the default shares of the limits where none is given.
    pub fn guarantee(&self) -> Guarantee {
        Guarantee {
            cpu_cores: self.cpu_request_cores.unwrap_or_else(|| {
                (self.cpu_cores / DEFAULT_CPU_REQUEST_DIVISOR).max(MIN_CPU_REQUEST_CORES)
            }),
            memory_mb: self
                .memory_request_mb
                .unwrap_or(self.memory_mb / DEFAULT_MEMORY_REQUEST_DIVISOR)
                .max(MIN_MEMORY_GUARANTEE_MB.min(self.memory_mb)),
        }
    }

    /// Checks limits asked of a node; `what` names them in the message.
    pub fn check(&self, what: &str) -> Result<(), String> {
        limits::check_capacity(what, self.cpu_cores, self.memory_mb)?;
        if self.pids_limit == 0 {
            return Err("pids must be more than 0".to_owned());
        }
        if !(MIN_DISK_MB..=MAX_DISK_MB).contains(&self.disk_mb) {
            return Err(format!(
                "disk_mb must be between {MIN_DISK_MB} and {MAX_DISK_MB}, not {}",
                self.disk_mb
            ));
        }
        if let Some(request) = self.cpu_request_cores
            && !(request.is_finite()
                && request >= MIN_CPU_REQUEST_CORES
                && request <= self.cpu_cores)
        {
            return Err(format!(
                "cpu_request_cores must be between {MIN_CPU_REQUEST_CORES} and the cpu limit \
                 ({}), not {request}",
                self.cpu_cores
            ));
        }
        if let Some(request) = self.memory_request_mb
            && !(1..=self.memory_mb).contains(&request)
        {
            return Err(format!(
                "memory_request_mb must be between 1 and the memory limit ({}), not {request}",
                self.memory_mb
            ));
        }
        Ok(())
    }
}

/// What a node needs to start a session's container. Made only by
/// [`Template::container_spec_with`] (or read back from where one was recorded), so a warm
/// container and the session that claims it agree on every field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub image: String,
    pub resources: Resources,
    pub network: NetworkMode,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub runtime: Runtime,
    /// Where a networked sandbox may connect; see [`crate::egress`].
    #[serde(default, skip_serializing_if = "Egress::is_empty")]
    pub egress: Egress,
}

impl ContainerSpec {
    /// The checks a node applies before it asks the engine for anything.
    pub fn check(&self) -> Result<(), String> {
        limits::check_image(&self.image)?;
        self.resources.check("the container's")?;
        check_runtime(self.runtime)?;
        self.egress.check()?;
        limits::check_env(&self.env)
    }
}

/// A template as an operator writes it; the schedulers stamp the times ([`Template`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateDefinition {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub image_url: String,
    pub resources: Resources,
    pub network: NetworkMode,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub timeout_seconds: u64,
    /// Containers of this template each node keeps created and running, ready to be claimed by
    /// a session instead of starting one.
    #[serde(default)]
    pub warm_pool_size: u32,
    #[serde(default)]
    pub runtime: Runtime,
    /// Where its sandboxes may connect, for a networked template; see [`crate::egress`].
    #[serde(default, skip_serializing_if = "Egress::is_empty")]
    pub egress: Egress,
}

/// A runtime this version knows.
fn check_runtime(runtime: Runtime) -> Result<(), String> {
    if runtime == Runtime::Unknown {
        return Err("runtime must be \"runc\" or \"gvisor\"".to_owned());
    }
    Ok(())
}

impl TemplateDefinition {
    /// Everything a template must satisfy before it is stored; sessions made from a template
    /// that passes are never refused by a node for its values.
    pub fn check(&self) -> Result<(), String> {
        limits::check_template_id(&self.id)?;
        limits::check_text("name", &self.name, limits::MAX_NAME_CHARS)?;
        limits::check_image(&self.image_url)?;
        self.resources.check("the template's")?;
        check_runtime(self.runtime)?;
        self.egress.check()?;
        if !self.egress.is_empty() && self.network == NetworkMode::None {
            return Err("egress rules need network \"sandbox_network\"".to_owned());
        }
        limits::check_session_timeout(self.timeout_seconds)?;
        if self.warm_pool_size > limits::MAX_WARM_POOL_SIZE {
            return Err(format!(
                "warm_pool_size may be at most {} containers per node",
                limits::MAX_WARM_POOL_SIZE
            ));
        }
        limits::check_env(&self.env)
    }
}

/// A template sessions are made from (the seed's `python-basic`, for one): its definition and
/// when it was made and last changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    #[serde(flatten)]
    pub definition: TemplateDefinition,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Template {
    pub fn id(&self) -> &str {
        &self.definition.id
    }

    /// The container a session of this template gets: the template's image, limits and network,
    /// its environment with `request_env` added over it. With no request environment it is the
    /// spec the node's warm pools hold.
    pub fn container_spec_with(&self, request_env: &BTreeMap<String, String>) -> ContainerSpec {
        let definition = &self.definition;
        let mut env = definition.env.clone();
        env.extend(
            request_env
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        ContainerSpec {
            image: definition.image_url.clone(),
            resources: definition.resources,
            network: definition.network,
            env,
            runtime: definition.runtime,
            egress: definition.egress.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition() -> TemplateDefinition {
        TemplateDefinition {
            id: "py".into(),
            name: "Python".into(),
            description: String::new(),
            image_url: "sandbox-executor:v1.0".into(),
            resources: Resources::default(),
            network: NetworkMode::None,
            env: BTreeMap::from([("LANG".into(), "C.UTF-8".into()), ("A".into(), "1".into())]),
            timeout_seconds: 300,
            warm_pool_size: 0,
            runtime: Runtime::Runc,
            egress: Egress::default(),
        }
    }

    #[test]
    fn a_request_environment_overrides_the_templates() {
        let at = Utc::now();
        let template = Template {
            definition: definition(),
            created_at: at,
            updated_at: at,
        };
        let spec = template.container_spec_with(&BTreeMap::from([("A".into(), "2".into())]));
        assert_eq!(spec.env["A"], "2");
        assert_eq!(spec.env["LANG"], "C.UTF-8");
        assert_eq!(spec.image, "sandbox-executor:v1.0");
        assert_eq!(template.container_spec_with(&BTreeMap::new()).env["A"], "1");
    }

    #[test]
    fn a_nul_in_a_templates_env_value_is_refused() {
        let mut bad = definition();
        bad.env.insert("X".into(), "a\0b".into());
        assert!(bad.check().is_err_and(|error| error.contains("NUL")));
        assert!(definition().check().is_ok());
    }

    #[test]
    fn guarantees_default_to_shares_of_the_limits() {
        let resources = Resources::default();
        let guarantee = resources.guarantee();
        assert_eq!(guarantee.memory_mb, 64);
        assert!((guarantee.cpu_cores - 1.0 / 64.0).abs() < 1e-12);
        let asked = Resources {
            cpu_request_cores: Some(0.25),
            memory_request_mb: Some(100),
            ..resources
        };
        assert_eq!(asked.guarantee().memory_mb, 100);
        assert!(asked.check("the").is_ok());
        for bad in [
            Resources {
                cpu_request_cores: Some(2.0),
                ..resources
            },
            Resources {
                cpu_request_cores: Some(f64::NAN),
                ..resources
            },
            Resources {
                memory_request_mb: Some(0),
                ..resources
            },
            Resources {
                memory_request_mb: Some(513),
                ..resources
            },
            Resources {
                disk_mb: 1,
                ..resources
            },
        ] {
            assert!(bad.check("the").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_runtimes_and_egress_without_a_network_are_refused() {
        let json = serde_json::json!({"id": "t", "name": "T", "image_url": "img:1",
            "resources": {"cpu_cores": 1.0, "memory_mb": 256, "pids_limit": 64},
            "network": "none", "timeout_seconds": 60, "runtime": "kata"});
        let parsed: TemplateDefinition = serde_json::from_value(json).expect("parses");
        assert_eq!(parsed.runtime, Runtime::Unknown);
        assert_eq!(parsed.resources.disk_mb, DEFAULT_DISK_MB);
        assert!(parsed.check().is_err_and(|error| error.contains("runtime")));
        let mut networkless = definition();
        networkless.egress.deny.push("198.18.0.1".into());
        assert!(
            networkless
                .check()
                .is_err_and(|error| error.contains("egress"))
        );
        networkless.network = NetworkMode::SandboxNetwork;
        assert!(networkless.check().is_ok());
    }
}

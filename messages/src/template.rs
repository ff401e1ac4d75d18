//! Templates and the container spec a session's container is made from.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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

/// The limits a sandbox runs under.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_cores: f64,
    pub memory_mb: u64,
    pub pids_limit: u32,
}

impl Resources {
    /// Checks limits asked of a node; `what` names them in the message.
    pub fn check(&self, what: &str) -> Result<(), String> {
        limits::check_capacity(what, self.cpu_cores, self.memory_mb)?;
        if self.pids_limit == 0 {
            return Err("pids must be more than 0".to_owned());
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
}

impl ContainerSpec {
    /// The checks a node applies before it asks the engine for anything.
    pub fn check(&self) -> Result<(), String> {
        limits::check_image(&self.image)?;
        self.resources.check("the container's")?;
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
}

impl TemplateDefinition {
    /// Everything a template must satisfy before it is stored; sessions made from a template
    /// that passes are never refused by a node for its values.
    pub fn check(&self) -> Result<(), String> {
        limits::check_template_id(&self.id)?;
        limits::check_text("name", &self.name, limits::MAX_NAME_CHARS)?;
        limits::check_image(&self.image_url)?;
        self.resources.check("the template's")?;
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
            resources: Resources {
                cpu_cores: 1.0,
                memory_mb: 512,
                pids_limit: 256,
            },
            network: NetworkMode::None,
            env: BTreeMap::from([("LANG".into(), "C.UTF-8".into()), ("A".into(), "1".into())]),
            timeout_seconds: 300,
            warm_pool_size: 0,
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
}

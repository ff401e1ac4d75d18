//! What operators change beyond reads: node declarations (static registration) and drain,
//! templates, and a session's timeout (keep-alive). Requests from the gateway to the schedulers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{ApiRequest, NodeInfo, api_request};
use crate::ids::{NodeId, SessionId};
use crate::session::{NetworkMode, Resources, Session, Template};
use crate::subjects::ApiOp;

fn docker() -> String {
    "docker".to_owned()
}

/// A node an operator declares, with the seed's fields. In static registration mode only
/// declared nodes may join; in either mode the declared capacity is what schedulers place
/// against, whatever the daemon reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDeclaration {
    pub node_id: NodeId,
    pub hostname: String,
    #[serde(default = "docker")]
    pub runtime_type: String,
    #[serde(default)]
    pub ip_address: String,
    #[serde(default)]
    pub api_endpoint: String,
    pub total_cpu_cores: f64,
    pub total_memory_mb: u64,
    pub max_containers: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// More than any one host offers; a typo such as 16384 cores is refused.
pub const MAX_CPU_CORES: f64 = 1024.0;
/// 16 TiB, in MiB.
pub const MAX_MEMORY_MB: u64 = 16 * 1024 * 1024;

/// Checks CPU cores and memory (MiB) offered or asked for; `what` names them in the message.
pub fn check_capacity(what: &str, cpu_cores: f64, memory_mb: u64) -> Result<(), String> {
    if !(cpu_cores.is_finite() && cpu_cores > 0.0 && cpu_cores <= MAX_CPU_CORES) {
        return Err(format!(
            "{what} cpu must be more than 0 and at most {MAX_CPU_CORES} cores, not {cpu_cores}"
        ));
    }
    if !(1..=MAX_MEMORY_MB).contains(&memory_mb) {
        return Err(format!(
            "{what} memory must be between 1 and {MAX_MEMORY_MB} MB, not {memory_mb}"
        ));
    }
    Ok(())
}

impl NodeDeclaration {
    /// Checks what a declaration (or a registration over HTTP) says of the node.
    pub fn check(&self) -> Result<(), String> {
        let chars = self.hostname.chars().count();
        if self.hostname.trim().is_empty() || chars > 253 {
            return Err("hostname must have 1 to 253 characters".to_owned());
        }
        check_capacity("total", self.total_cpu_cores, self.total_memory_mb)?;
        if self.max_containers == 0 {
            return Err("max_containers must be more than 0".to_owned());
        }
        Ok(())
    }
}

/// Declare a node (or change its declaration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeclareNode {
    pub declaration: NodeDeclaration,
}
api_request!(DeclareNode, ApiOp::NodesDeclare, NodeInfo);

/// Drain a node (no new sessions; running ones run on) or undrain it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetNodeDrain {
    pub node_id: NodeId,
    pub drained: bool,
}
api_request!(SetNodeDrain, ApiOp::NodesDrain, NodeInfo);

/// A template as an operator writes it; the schedulers stamp the times.
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
    #[serde(default)]
    pub warm_pool_size: u32,
}

/// The largest warm pool a template may ask of each node.
pub const MAX_WARM_POOL_SIZE: u32 = 32;

/// Create a template; an existing id is a conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateTemplate {
    pub definition: TemplateDefinition,
}
api_request!(CreateTemplate, ApiOp::TemplatesCreate, Template);

/// Replace an existing template. Sessions made from it keep what they were made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateTemplate {
    pub definition: TemplateDefinition,
}
api_request!(UpdateTemplate, ApiOp::TemplatesUpdate, Template);

/// Delete a template; answers the deleted template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteTemplate {
    pub template_id: String,
}
api_request!(DeleteTemplate, ApiOp::TemplatesDelete, Template);

/// On [`crate::subjects::templates_updated`]: a template was created, changed or deleted. Node
/// daemons read the templates again at once, so a warm pool fills (or shrinks) within moments
/// rather than at their next periodic read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateUpdated {
    pub template_id: String,
}

/// Keep a session alive: it now expires `timeout_seconds` from the moment this is handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetSessionTimeout {
    pub session_id: SessionId,
    pub timeout_seconds: u64,
}
api_request!(SetSessionTimeout, ApiOp::SessionsSetTimeout, Session);

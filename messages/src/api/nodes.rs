//! Reads of the schedulers' node view, and the operators' declarations (static registration)
//! and drain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::limits;
use crate::node::NodeInfo;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetNode {
    pub node_id: NodeId,
}
api_request!(GetNode => "nodes.get", NodeInfo);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListNodes {}
api_request!(ListNodes => "nodes.list", Vec<NodeInfo>);

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

impl NodeDeclaration {
    /// Checks what a declaration (or a registration over HTTP) says of the node.
    pub fn check(&self) -> Result<(), String> {
        let chars = self.hostname.chars().count();
        if self.hostname.trim().is_empty() || chars > 253 {
            return Err("hostname must have 1 to 253 characters".to_owned());
        }
        limits::check_capacity("total", self.total_cpu_cores, self.total_memory_mb)?;
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
api_request!(DeclareNode => "nodes.declare", NodeInfo);

/// Drain a node (no new sessions; running ones run on) or undrain it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetNodeDrain {
    pub node_id: NodeId,
    pub drained: bool,
}
api_request!(SetNodeDrain => "nodes.drain", NodeInfo);

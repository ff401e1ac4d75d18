//! The nodes file: node declarations (the seed's fields) declared at start, for static
//! registration without an API call.

use std::path::Path;

use anyhow::Context as _;
use messages::control::NodeDeclaration;

use crate::store::{self, Store};

/// Declares every node in the JSON list at `path`; returns how many.
pub async fn declare_from(store: &Store, path: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the nodes file {}", path.display()))?;
    let declarations: Vec<NodeDeclaration> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} must be a JSON list of nodes with node_id, hostname, total_cpu_cores, \
             total_memory_mb and max_containers",
            path.display()
        )
    })?;
    for declaration in &declarations {
        declaration.check().map_err(|error| {
            anyhow::anyhow!("{}: node {}: {error}", path.display(), declaration.node_id)
        })?;
        store
            .declare_node(declaration, store::now())
            .await
            .with_context(|| format!("declaring node {}", declaration.node_id))?;
    }
    Ok(declarations.len())
}

//! The nodes file: node declarations (the seed's fields) declared at start, for static
//! registration without an API call.

use std::path::Path;

use anyhow::Context as _;
use messages::api::nodes::NodeDeclaration;

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

#[cfg(test)]
mod tests {
    use messages::NodeId;

    use super::*;

    #[tokio::test]
    async fn declares_the_listed_nodes_and_refuses_a_bad_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/sandbox.db", dir.path().display());
        let store = Store::connect(&url).await.expect("store");
        let file = dir.path().join("nodes.json");
        std::fs::write(
            &file,
            r#"[{"node_id": "docker-local", "hostname": "localhost", "total_cpu_cores": 8.0,
                 "total_memory_mb": 16384, "max_containers": 100}]"#,
        )
        .expect("written");
        assert_eq!(declare_from(&store, &file).await.expect("declared"), 1);
        let node = store
            .get_node(&NodeId::parse("docker-local").expect("valid"))
            .await
            .expect("read")
            .expect("declared");
        assert!(node.declared);
        assert_eq!(node.registration.max_containers, 100);
        assert_eq!(node.status, "offline", "not heard from yet");

        for bad in [
            r#"[{"node_id": "x", "hostname": "h", "total_cpu_cores": 0.0,
                 "total_memory_mb": 1, "max_containers": 1}]"#,
            r#"{"node_id": "x"}"#,
            "not json",
        ] {
            std::fs::write(&file, bad).expect("written");
            assert!(declare_from(&store, &file).await.is_err(), "{bad}");
        }
        assert_eq!(store.list_nodes().await.expect("listed").len(), 1);
    }
}

//! The control plane's HTTP API as the harness uses it: JSON answers, and waiting until nodes
//! show a status. Only paths and JSON fields of the public API, no wire types.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// How often the waits below ask again.
const POLL: Duration = Duration::from_millis(50);

/// The API of one gateway, at `base` (`http://127.0.0.1:<port>`).
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::new(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        json_answer(self.http.get(self.url(path))).await
    }

    /// `GET /healthz` answers 200.
    pub async fn is_healthy(&self) -> bool {
        self.http
            .get(self.url("/healthz"))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    }

    /// The node's status as the API shows it, if the API knows the node.
    pub async fn node_status(&self, node_id: &str) -> Option<String> {
        match self.get(&format!("/api/v1/nodes/{node_id}")).await {
            Ok((200, node)) => node["status"].as_str().map(str::to_owned),
            _ => None,
        }
    }

    /// How many nodes the API shows `online`; an error when it cannot list them.
    pub async fn online_count(&self) -> anyhow::Result<usize> {
        let (status, body) = self.get("/api/v1/nodes").await?;
        if status != 200 {
            bail!("GET /api/v1/nodes answered {status}: {body}");
        }
        let nodes = body["nodes"].as_array().context("a node list")?;
        Ok(nodes
            .iter()
            .filter(|node| node["status"] == "online")
            .count())
    }

    /// Polls the node until the API shows it with status `wanted`; returns how long that took
    /// and every status seen on the way.
    pub async fn wait_for_node(
        &self,
        node_id: &str,
        wanted: &str,
        within: Duration,
    ) -> anyhow::Result<(Duration, Vec<String>)> {
        let started = Instant::now();
        let mut seen: Vec<String> = Vec::new();
        while started.elapsed() < within {
            if let Some(now) = self.node_status(node_id).await {
                if seen.last() != Some(&now) {
                    seen.push(now.clone());
                }
                if now == wanted {
                    return Ok((started.elapsed(), seen));
                }
            }
            tokio::time::sleep(POLL).await;
        }
        bail!("node {node_id} was not {wanted} within {within:?}; saw {seen:?}")
    }
}

/// Sends `request`; its status and JSON body. An error when nothing answers or the body is not
/// JSON (the API answers JSON to everything, errors included).
pub async fn json_answer(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let response = request.send().await.context("sending the request")?;
    let status = response.status().as_u16();
    let text = response.text().await.context("reading the body")?;
    let body = serde_json::from_str(&text)
        .with_context(|| format!("status {status}: body is not JSON: {text:?}"))?;
    Ok((status, body))
}

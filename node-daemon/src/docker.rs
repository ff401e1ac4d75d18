//! Every call this daemon makes to the local Docker engine (through bollard); the shape of the
//! sandbox containers it makes is `sandbox.rs`.

use std::collections::HashMap;

use bollard::Docker;
use bollard::container::AttachContainerResults;
use bollard::errors::Error as BollardError;
use bollard::models::{EventMessage, NetworkCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
    RenameContainerOptionsBuilder,
};
use futures::{Stream, StreamExt as _};
use messages::{ErrorBody, ErrorCode, NodeId, labels};

use crate::sandbox::BYTES_PER_MIB;
pub use crate::sandbox::{ContainerFacts, SandboxContainer};

/// Seconds bollard waits for the engine to answer a request (not for a stream to end).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// A Docker call that failed: what was being done, and the engine's own message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{action}: {message}")]
pub struct DockerError {
    pub action: String,
    /// The engine's HTTP status, when it answered at all.
    pub status: Option<u16>,
    pub message: String,
}

impl DockerError {
    fn during(action: impl Into<String>) -> impl FnOnce(BollardError) -> Self {
        move |error| {
            let (status, message) = match error {
                BollardError::DockerResponseServerError {
                    status_code,
                    message,
                } => (Some(status_code), message),
                other => (None, other.to_string()),
            };
            Self {
                action: action.into(),
                status,
                message,
            }
        }
    }

    pub fn is_conflict(&self) -> bool {
        self.status == Some(409)
    }

    /// The engine has no image of the name a create asked for (it never pulls one). Other
    /// missing things (a network, say) are 404s too, so the engine's message decides.
    pub fn is_no_such_image(&self) -> bool {
        self.status == Some(404) && self.message.starts_with("No such image")
    }
}

/// Docker failures reach the requester with Docker's own message.
impl From<DockerError> for ErrorBody {
    fn from(error: DockerError) -> Self {
        ErrorBody::new(ErrorCode::RuntimeError, error.to_string())
    }
}

/// What the engine reports about the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostResources {
    pub cpu_cores: f64,
    pub memory_mb: u64,
    /// The engine's container runtimes by name (`runc`, and any configured, such as gVisor's).
    pub runtimes: Vec<String>,
}

/// The local Docker engine.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
}

impl DockerEngine {
    /// Connects over the unix socket, agrees on an API version the engine speaks, and pings it.
    pub async fn connect(socket: &str) -> Result<Self, DockerError> {
        let action = || format!("connecting to Docker at {socket}");
        let docker =
            Docker::connect_with_unix(socket, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                .map_err(DockerError::during(action()))?
                .negotiate_version()
                .await
                .map_err(DockerError::during(action()))?;
        docker.ping().await.map_err(DockerError::during(action()))?;
        Ok(Self { docker })
    }

    pub async fn host_resources(&self) -> Result<HostResources, DockerError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(DockerError::during("reading docker info"))?;
        let mut runtimes: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        runtimes.sort();
        Ok(HostResources {
            cpu_cores: info.ncpu.unwrap_or_default().max(0) as f64,
            memory_mb: (info.mem_total.unwrap_or_default().max(0) / BYTES_PER_MIB).unsigned_abs(),
            runtimes,
        })
    }

    /// The Linux bridge interface and IPv4 subnet of the network `name`.
    pub async fn bridge_of(&self, name: &str) -> Result<(String, String), DockerError> {
        let action = || format!("inspecting network {name}");
        let network = self
            .docker
            .inspect_network(name, None)
            .await
            .map_err(DockerError::during(action()))?;
        let interface = network
            .options
            .as_ref()
            .and_then(|options| options.get("com.docker.network.bridge.name").cloned())
            .or_else(|| {
                network
                    .id
                    .as_deref()
                    .and_then(|id| id.get(..12))
                    .map(|id| format!("br-{id}"))
            });
        let subnet = network
            .ipam
            .and_then(|ipam| ipam.config)
            .into_iter()
            .flatten()
            .filter_map(|config| config.subnet)
            .find(|subnet| subnet.contains('.'));
        match (interface, subnet) {
            (Some(interface), Some(subnet)) => Ok((interface, subnet)),
            _ => Err(DockerError {
                action: action(),
                status: None,
                message: "it has no bridge interface or IPv4 subnet".to_owned(),
            }),
        }
    }

    /// Makes the bridge network `name` unless it exists. Returns whether it was made.
    pub async fn ensure_network(&self, name: &str) -> Result<bool, DockerError> {
        let existing = self
            .docker
            .inspect_network(name, None)
            .await
            .map_err(DockerError::during(format!("inspecting network {name}")));
        if found(existing)?.is_some() {
            return Ok(false);
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(HashMap::from([(
                labels::MANAGED_BY.to_owned(),
                labels::MANAGER.to_owned(),
            )])),
            // Sandboxes on it do not reach each other (the egress rules refuse it too).
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".to_owned(),
                "false".to_owned(),
            )])),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map_err(DockerError::during(format!("creating network {name}")))?;
        Ok(true)
    }

    /// The `repo:tag` names of the local images (untagged ones left out).
    pub async fn image_tags(&self) -> Result<Vec<String>, DockerError> {
        let images = self
            .docker
            .list_images(Some(ListImagesOptionsBuilder::default().build()))
            .await
            .map_err(DockerError::during("listing images"))?;
        let mut tags: Vec<String> = images
            .into_iter()
            .flat_map(|image| image.repo_tags)
            .filter(|tag| tag != "<none>:<none>")
            .collect();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// Every container labelled as this node's, running or not.
    pub async fn managed_containers(
        &self,
        node_id: &NodeId,
    ) -> Result<Vec<ContainerFacts>, DockerError> {
        let filters = HashMap::from([("label", vec![node_label(node_id)])]);
        let summaries = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(DockerError::during("listing this node's containers"))?;
        let mut containers = Vec::with_capacity(summaries.len());
        for id in summaries.into_iter().filter_map(|summary| summary.id) {
            // One removed since the listing is simply not there any more.
            if let Some(facts) = self.inspect(&id).await? {
                containers.push(facts);
            }
        }
        Ok(containers)
    }

    /// The container named or numbered `container`, if it exists.
    pub async fn inspect(&self, container: &str) -> Result<Option<ContainerFacts>, DockerError> {
        let inspected = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(DockerError::during(format!(
                "inspecting container {container}"
            )));
        Ok(found(inspected)?.map(ContainerFacts::from_inspect))
    }

    /// Makes (but does not start) the session's container; returns its id. A name already taken
    /// is a [`DockerError::is_conflict`] error, an image the engine does not have a
    /// [`DockerError::is_no_such_image`] one.
    pub async fn create_sandbox(
        &self,
        sandbox: &SandboxContainer<'_>,
    ) -> Result<String, DockerError> {
        let name = sandbox.session_id.container_name();
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                sandbox.body(),
            )
            .await
            .map_err(DockerError::during(format!("creating container {name}")))?;
        Ok(created.id)
    }

    /// Starts a container; one already running is fine.
    pub async fn start(&self, container: &str) -> Result<(), DockerError> {
        self.docker
            .start_container(container, None)
            .await
            .map_err(DockerError::during(format!(
                "starting container {container}"
            )))
    }

    /// Kills and deletes a container with its anonymous volumes. Returns whether it existed.
    pub async fn remove(&self, container: &str) -> Result<bool, DockerError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let removed = self
            .docker
            .remove_container(container, Some(options))
            .await
            .map_err(DockerError::during(format!(
                "removing container {container}"
            )));
        Ok(found(removed)?.is_some())
    }

    /// Gives a container a new name (a claimed warm container takes its session's name).
    pub async fn rename(&self, container: &str, name: &str) -> Result<(), DockerError> {
        self.docker
            .rename_container(
                container,
                RenameContainerOptionsBuilder::default().name(name).build(),
            )
            .await
            .map_err(DockerError::during(format!(
                "renaming container {container} to {name}"
            )))
    }

    /// Attaches to a running container's stdin, stdout and stderr, from now on (no old output).
    pub async fn attach(&self, container: &str) -> Result<AttachContainerResults, DockerError> {
        // Docker's detach keys (ctrl-p ctrl-q) never appear in what is written: JSON escapes
        // every control character.
        let options = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        self.docker
            .attach_container(container, Some(options))
            .await
            .map_err(DockerError::during(format!(
                "attaching to container {container}"
            )))
    }

    /// The `die`, `oom` and `destroy` events of this node's containers, from `since` (Docker's
    /// `<seconds>.<nanoseconds>` form) or from now.
    pub fn container_events(
        &self,
        node_id: &NodeId,
        since: Option<&str>,
    ) -> impl Stream<Item = Result<EventMessage, DockerError>> + use<> {
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("label", vec![node_label(node_id)]),
            (
                "event",
                vec!["die".to_owned(), "oom".to_owned(), "destroy".to_owned()],
            ),
        ]);
        let mut options = EventsOptionsBuilder::default().filters(&filters);
        if let Some(since) = since {
            options = options.since(since);
        }
        self.docker
            .events(Some(options.build()))
            .map(|event| event.map_err(DockerError::during("following container events")))
    }
}

impl DockerEngine {
    /// The engine's image events that change which images it holds (built, tagged, loaded,
    /// removed), from now on.
    pub fn image_events(&self) -> impl Stream<Item = Result<EventMessage, DockerError>> + use<> {
        let filters = HashMap::from([
            ("type", vec!["image".to_owned()]),
            (
                "event",
                ["tag", "untag", "delete", "load", "import", "pull"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ]);
        self.docker
            .events(Some(
                EventsOptionsBuilder::default().filters(&filters).build(),
            ))
            .map(|event| event.map_err(DockerError::during("following image events")))
    }
}

/// Turns the engine's "no such object" into `None`.
fn found<T>(result: Result<T, DockerError>) -> Result<Option<T>, DockerError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.status == Some(404) => Ok(None),
        Err(error) => Err(error),
    }
}

/// The label filter that selects this node's containers.
fn node_label(node_id: &NodeId) -> String {
    format!("{}={node_id}", labels::NODE_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_image_is_a_missing_image() {
        let error = |status, message: &str| DockerError {
            action: "creating container sandbox-s1".to_owned(),
            status: Some(status),
            message: message.to_owned(),
        };
        assert!(error(404, "No such image: sandbox-no-such-image:0").is_no_such_image());
        assert!(!error(404, "network sandbox_net not found").is_no_such_image());
        assert!(!error(500, "No such image: x").is_no_such_image());
        assert!(error(409, "Conflict. The container name is in use").is_conflict());
    }
}

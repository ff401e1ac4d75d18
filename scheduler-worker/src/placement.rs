//! Turns a `sessions.create` request into a recorded outcome: a running session on a node, or a
//! failed one with the reason. Safe to run again for the same request (redelivery).

use std::time::Instant;

use messages::node::{ContainerCreated, CreateContainer};
use messages::session::{ContainerSpec, CreateSession, Resources, Session, SessionStatus};
use messages::{ErrorBody, ErrorCode, NodeId, SessionId};
use service_kit::bus::{self, BusError};

use crate::scheduler::Scheduler;
use crate::store::{self, Transition};
use crate::{events, fleet};

/// States a placement may move a session out of.
const UNSETTLED: [SessionStatus; 2] = [SessionStatus::Pending, SessionStatus::Creating];

/// What the node's answer means for the next step.
enum Attempt {
    Placed(ContainerCreated),
    /// This node cannot take it; another may.
    TryElsewhere(ErrorBody),
    /// No node could: fail the session.
    Fail(ErrorBody),
}

impl Scheduler {
    /// Records the session (once) and places it. Returns the session in a settled state; an
    /// `Err` means the outcome could not be recorded, and the request should be redelivered.
    pub async fn place(&self, request: &CreateSession) -> Result<Session, store::StoreError> {
        let (session, env) = self.record_session(request).await?;
        if session.status.is_settled() {
            // A redelivery of work already done: say the outcome again for any waiting client.
            self.announce(&session).await;
            return Ok(session);
        }
        let spec = ContainerSpec {
            image: session.image.clone(),
            resources: session.resources,
            network: session.network,
            env,
        };
        // A replica that died mid-placement may have asked this node already; it answers for
        // the same session with the same container.
        let earlier_node = match session.status {
            SessionStatus::Creating => session.runtime_node.clone(),
            _ => None,
        };
        self.place_on_nodes(&session.id, &spec, earlier_node).await
    }

    /// Records the request's session unless an earlier delivery did; the session as recorded.
    async fn record_session(
        &self,
        request: &CreateSession,
    ) -> Result<(Session, std::collections::BTreeMap<String, String>), store::StoreError> {
        let now = store::now();
        let template = self.template_for_placement(&request.template_id).await?;
        let mut env = template
            .as_ref()
            .map(|template| template.env.clone())
            .unwrap_or_default();
        env.extend(request.env.clone());
        let session = match &template {
            Some(template) => Session::pending(
                request.session_id.clone(),
                template,
                request.timeout_seconds,
                now,
            ),
            // The gateway checked the template; it was deleted since. Record why.
            None => Session {
                id: request.session_id.clone(),
                template_id: request.template_id.clone(),
                status: SessionStatus::Failed,
                runtime_node: None,
                container_id: None,
                image: String::new(),
                resources: Resources {
                    cpu_cores: 0.0,
                    memory_mb: 0,
                    pids_limit: 0,
                },
                network: Default::default(),
                failure_code: Some(ErrorCode::NotFound),
                failure_reason: Some(format!("template '{}' not found", request.template_id)),
                created_at: now,
                updated_at: now,
                started_at: None,
                ended_at: Some(now),
                timeout_seconds: 0,
                expires_at: None,
            },
        };
        if self.store.insert_session_if_absent(&session, &env).await? {
            return Ok((session, env));
        }
        // A redelivery, or another replica inserted it first: what the database holds is the
        // truth.
        Ok(self
            .store
            .get_session_with_env(&request.session_id)
            .await?
            .unwrap_or((session, env)))
    }

    async fn place_on_nodes(
        &self,
        session_id: &SessionId,
        spec: &ContainerSpec,
        mut next_node: Option<NodeId>,
    ) -> Result<Session, store::StoreError> {
        let mut refused_by: Vec<NodeId> = Vec::new();
        let mut last_refusal: Option<ErrorBody> = None;
        for _ in 0..self.config.placement_attempts {
            let chosen = match next_node.take() {
                Some(node) => Ok(node),
                None => self
                    .fleet()
                    .reserve(session_id, spec, &refused_by, Instant::now()),
            };
            let node = match chosen {
                Ok(node) => node,
                // Every healthy node refused already: their reason beats "none healthy".
                Err(error) => {
                    if error == fleet::image_missing(&spec.image) {
                        // The image may have been loaded since the nodes last announced their
                        // images: ask them again, so the next request sees it.
                        if let Err(error) = events::discover_all(&self.nats).await {
                            tracing::warn!(%error, "could not ask the nodes for their images");
                        }
                    }
                    return self.fail(session_id, last_refusal.unwrap_or(error)).await;
                }
            };
            let creating = Transition::creating_on(node.clone());
            match self
                .store
                .transition(session_id, &UNSETTLED, &creating)
                .await?
            {
                Some((session, _)) if !session.status.is_final() => self.announce(&session).await,
                // Deleted while being placed: nothing more to do.
                recorded => {
                    self.fleet().release(&node, session_id);
                    return self.settled(session_id, recorded).await;
                }
            }
            match self.create_on(&node, session_id, spec).await {
                Attempt::Placed(created) => {
                    self.fleet().confirm(&node, session_id, created.usage);
                    return self.record_running(session_id, &node, created).await;
                }
                Attempt::TryElsewhere(refusal) => {
                    tracing::info!(%session_id, %node, reason = %refusal, "node refused; trying another");
                    self.fleet().release(&node, session_id);
                    refused_by.push(node);
                    last_refusal = Some(refusal);
                }
                Attempt::Fail(error) => {
                    self.fleet().release(&node, session_id);
                    return self.fail(session_id, error).await;
                }
            }
        }
        let error = last_refusal.unwrap_or_else(|| {
            ErrorBody::new(ErrorCode::NodeUnavailable, "no node accepted the session")
        });
        self.fail(session_id, error).await
    }

    async fn create_on(
        &self,
        node: &NodeId,
        session_id: &SessionId,
        spec: &ContainerSpec,
    ) -> Attempt {
        let command = CreateContainer {
            session_id: session_id.clone(),
            spec: spec.clone(),
        };
        match bus::node_request(&self.nats, node, &command, self.config.node_timeout).await {
            Ok(created) => Attempt::Placed(created),
            Err(BusError::Remote(error)) if error.code == ErrorCode::Capacity => {
                Attempt::TryElsewhere(error)
            }
            Err(BusError::Remote(error)) => Attempt::Fail(error),
            Err(error @ BusError::Timeout { .. }) => {
                // The node may still make the container after we gave up: ask it to remove it,
                // so the session never has two.
                self.remove_in_background(node.clone(), session_id.clone());
                Attempt::TryElsewhere(ErrorBody::new(
                    ErrorCode::NodeUnavailable,
                    format!("node {node} did not answer: {error}"),
                ))
            }
            Err(error) => Attempt::TryElsewhere(ErrorBody::new(
                ErrorCode::NodeUnavailable,
                format!("node {node} could not be asked: {error}"),
            )),
        }
    }

    async fn record_running(
        &self,
        session_id: &SessionId,
        node: &NodeId,
        created: ContainerCreated,
    ) -> Result<Session, store::StoreError> {
        let transition = Transition::running(node.clone(), created.container_id);
        match self
            .store
            .transition(session_id, &UNSETTLED, &transition)
            .await?
        {
            Some((session, _)) if session.status == SessionStatus::Running => {
                self.announce(&session).await;
                Ok(session)
            }
            // It ended while its container was being made (deleted, or the container died):
            // the container must not outlive it.
            recorded => {
                self.remove_in_background(node.clone(), session_id.clone());
                self.settled(session_id, recorded).await
            }
        }
    }

    /// Records a failure (unless the session already settled) and announces the outcome.
    pub(crate) async fn fail(
        &self,
        session_id: &SessionId,
        error: ErrorBody,
    ) -> Result<Session, store::StoreError> {
        tracing::warn!(%session_id, code = %error.code, reason = %error.message, "session failed");
        let transition = Transition::failed(error.code, error.message);
        let recorded = self
            .store
            .transition(session_id, &UNSETTLED, &transition)
            .await?;
        self.settled(session_id, recorded).await
    }

    /// Announces the session as a transition just left it (and read it back) to waiting clients.
    async fn settled(
        &self,
        session_id: &SessionId,
        recorded: Option<(Session, bool)>,
    ) -> Result<Session, store::StoreError> {
        let (session, _) = recorded.ok_or_else(|| store::StoreError::Corrupt {
            table: "sessions",
            id: session_id.to_string(),
            reason: "vanished while being placed".into(),
        })?;
        self.announce(&session).await;
        Ok(session)
    }
}

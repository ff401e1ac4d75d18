//! Turns a `sessions.create` request into a recorded outcome: a running session on a node, or a
//! failed one with the reason. The choice of node is the fleet's (`fleet/choose.rs`); this file
//! applies it: it asks the chosen node, and on a refusal or silence moves on to another. Safe to
//! run again for the same request (redelivery).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use messages::egress::Egress;
use messages::node::{ContainerCreated, CreateContainer};
use messages::session::{CreateSession, Session, SessionStatus, at_storage_precision};
use messages::template::{ContainerSpec, NetworkMode, Resources, Runtime};
use messages::{ErrorBody, ErrorCode, NodeId, SessionId};
use service_kit::WorkQueue;
use service_kit::bus::{self, BusError};
use tokio_util::sync::CancellationToken;

use crate::fleet;
use crate::lifecycle::Change;
use crate::scheduler::Scheduler;
use crate::store::{Applied, StoreError};

/// What the node's answer means for the next step.
enum Attempt {
    Placed(ContainerCreated),
    /// This node cannot take it; another may.
    TryElsewhere(ErrorBody),
    /// No node could: fail the session.
    Fail(ErrorBody),
}

/// Places the requests of the work queue every replica shares, up to `max_in_flight` at once;
/// a request is acknowledged once its outcome is recorded, and redelivered with growing pauses
/// while it cannot be (say, while the database is down).
pub(crate) async fn serve(
    scheduler: Arc<Scheduler>,
    queue: WorkQueue<CreateSession>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let max_in_flight = scheduler.config.max_in_flight;
    let span = |request: &CreateSession| tracing::info_span!("scheduler.place_session", session_id = %request.session_id);
    queue
        .serve(cancel, max_in_flight, span, move |request| {
            let scheduler = Arc::clone(&scheduler);
            async move {
                let session = scheduler.place(&request).await?;
                tracing::info!(status = %session.status, node = ?session.runtime_node, "session placed");
                Ok::<(), StoreError>(())
            }
        })
        .await
}

impl Scheduler {
    /// Records the session (once) and places it. Returns the session in a settled state; an
    /// `Err` means the outcome could not be recorded, and the request should be redelivered.
    pub async fn place(&self, request: &CreateSession) -> Result<Session, StoreError> {
        let (session, spec) = self.record_session(request).await?;
        let spec = match spec {
            Some(spec) if !session.status.is_settled() => spec,
            // A redelivery of work already done, or a session that could not start: say the
            // outcome (again) for any waiting client.
            _ => {
                self.announce(&session).await;
                return Ok(session);
            }
        };
        // A replica that died mid-placement may have asked this node already; it answers for
        // the same session with the same container.
        let earlier_node = match session.status {
            SessionStatus::Creating => session.runtime_node.clone(),
            _ => None,
        };
        self.place_on_nodes(&session.id, &spec, earlier_node).await
    }

    /// Records the request's session unless an earlier delivery did; the session as recorded,
    /// and the spec of its container (none for a session that failed before any node was asked:
    /// its template is gone, its container would be refused, or it waited past its deadline).
    async fn record_session(
        &self,
        request: &CreateSession,
    ) -> Result<(Session, Option<ContainerSpec>), StoreError> {
        // The gateway's moment of acceptance, so its early answer and every read agree.
        let accepted_at = at_storage_precision(request.requested_at);
        let (session, spec) = match self.template_for_placement(&request.template_id).await? {
            Some(template) => {
                let spec = template.container_spec_with(&request.env);
                let timeout = request
                    .timeout_seconds
                    .unwrap_or(template.definition.timeout_seconds);
                let session = Session::pending(
                    request.session_id.clone(),
                    &request.template_id,
                    &spec,
                    timeout,
                    accepted_at,
                );
                match self.refusal_before_placement(&session, &spec) {
                    Some(refusal) => (failed(session, refusal), None),
                    None => (session, Some(spec)),
                }
            }
            // The gateway checked the template; it was deleted since. Record why.
            None => (template_gone(request, accepted_at), None),
        };
        let env = spec.as_ref().map_or(&request.env, |spec| &spec.env);
        let no_egress = Egress::default();
        let egress = spec.as_ref().map_or(&no_egress, |spec| &spec.egress);
        if self
            .store
            .insert_session_if_absent(&session, env, egress)
            .await?
        {
            return Ok((session, spec));
        }
        // A redelivery, or another replica inserted it first: what the database holds is the
        // truth.
        let (session, spec) = self
            .store
            .get_session_with_spec(&request.session_id)
            .await?
            .ok_or_else(|| vanished(&request.session_id))?;
        Ok((session, Some(spec)))
    }

    /// Why the session must fail without a node being asked, if it must: the container's spec
    /// breaks the contract's rules (a request's environment added to the template's may), or the
    /// request waited in the queue (no scheduler ran) past its start deadline or its timeout.
    fn refusal_before_placement(
        &self,
        session: &Session,
        spec: &ContainerSpec,
    ) -> Option<ErrorBody> {
        if let Err(reason) = spec.check() {
            return Some(ErrorBody::invalid(reason));
        }
        let now = crate::store::now();
        let waited = (now - session.created_at).to_std().unwrap_or_default();
        let deadline = self.config.start_deadline;
        if waited > deadline {
            return Some(ErrorBody::new(
                ErrorCode::Timeout,
                format!(
                    "the request waited {waited:.0?} to be placed, past the start deadline of \
                     {deadline:?}"
                ),
            ));
        }
        if session.expires_at.is_some_and(|expires| expires <= now) {
            return Some(ErrorBody::new(
                ErrorCode::Timeout,
                format!(
                    "the session's timeout of {} s ran out while the request waited to be placed",
                    session.timeout_seconds
                ),
            ));
        }
        None
    }

    async fn place_on_nodes(
        &self,
        session_id: &SessionId,
        spec: &ContainerSpec,
        mut next_node: Option<NodeId>,
    ) -> Result<Session, StoreError> {
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
                        self.ask_for_images().await;
                    }
                    let error = last_refusal.unwrap_or(error);
                    return self.start_failed(session_id, error).await;
                }
            };
            // The write is what lets a redelivery re-ask the same node; the announcement of
            // "creating" serves watchers only (a waiting gateway answers on settled states).
            match self
                .apply(session_id, Change::CreatingOn(node.clone()))
                .await?
            {
                Applied::Changed(_) => {}
                // Deleted (or otherwise ended) while being placed: nothing more to do.
                applied => {
                    self.fleet().release(&node, session_id);
                    return settled(session_id, applied);
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
                    return self.start_failed(session_id, error).await;
                }
            }
        }
        let error = last_refusal.unwrap_or_else(|| {
            ErrorBody::new(ErrorCode::NodeUnavailable, "no node accepted the session")
        });
        self.start_failed(session_id, error).await
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

    /// Records "running" from the node's answer (the ready signal and the reconciliation only
    /// write it for a session no placement waits on).
    async fn record_running(
        &self,
        session_id: &SessionId,
        node: &NodeId,
        created: ContainerCreated,
    ) -> Result<Session, StoreError> {
        let running = Change::Running {
            node: node.clone(),
            container_id: created.container_id,
        };
        let applied = self.apply(session_id, running).await?;
        if let Applied::Unchanged(session) = &applied
            && session.status.is_final()
        {
            // It ended while its container was being made (deleted, or the container died):
            // the container must not outlive it.
            self.remove_in_background(node.clone(), session_id.clone());
        }
        settled(session_id, applied)
    }

    /// Records a failed start (unless the session already settled).
    async fn start_failed(
        &self,
        session_id: &SessionId,
        error: ErrorBody,
    ) -> Result<Session, StoreError> {
        tracing::warn!(%session_id, code = %error.code, reason = %error.message, "session failed");
        let applied = self.apply(session_id, Change::StartFailed(error)).await?;
        if let Applied::Unchanged(session) = &applied {
            // Someone else settled it; a client waiting on this replica's word hears it again.
            self.announce(session).await;
        }
        settled(session_id, applied)
    }
}

/// The session as a change left it: changed or not, it exists (sessions are never deleted).
fn settled(session_id: &SessionId, applied: Applied) -> Result<Session, StoreError> {
    match applied {
        Applied::Changed(session) | Applied::Unchanged(session) => Ok(session),
        Applied::Missing => Err(vanished(session_id)),
    }
}

fn vanished(session_id: &SessionId) -> StoreError {
    StoreError::Vanished {
        table: "sessions",
        id: session_id.to_string(),
    }
}

/// The record of a session whose template was deleted between the gateway's check and the
/// placement: failed, with the reason.
fn template_gone(request: &CreateSession, at: DateTime<Utc>) -> Session {
    let nothing = ContainerSpec {
        image: String::new(),
        resources: Resources {
            cpu_cores: 0.0,
            memory_mb: 0,
            pids_limit: 0,
            disk_mb: 0,
            cpu_request_cores: None,
            memory_request_mb: None,
        },
        network: NetworkMode::None,
        env: BTreeMap::new(),
        runtime: Runtime::Runc,
        egress: Egress::default(),
    };
    let session = Session::pending(
        request.session_id.clone(),
        &request.template_id,
        &nothing,
        0,
        at,
    );
    let reason = format!("template '{}' not found", request.template_id);
    failed(session, ErrorBody::new(ErrorCode::NotFound, reason))
}

/// `session` as first recorded when it fails before any node is asked.
fn failed(mut session: Session, error: ErrorBody) -> Session {
    let now = crate::store::now();
    session.status = SessionStatus::Failed;
    session.failure_code = Some(error.code);
    session.failure_reason = Some(error.message);
    session.updated_at = now;
    session.ended_at = Some(now);
    session.expires_at = None;
    session
}

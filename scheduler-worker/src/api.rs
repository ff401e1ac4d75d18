//! Answers the gateway's requests (queue group: whichever replica is free answers).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use async_nats::Message;
use futures::StreamExt as _;
use messages::api::{
    ApiRequest, DeleteSession, GetExecution, GetNode, GetSession, GetTemplate, ListExecutions,
    ListNodes, ListSessions, ListTemplates, NodeInfo, RecordExecutionResult, SessionPage,
    StartExecution,
};
use messages::control::{
    CreateTemplate, DeclareNode, DeleteTemplate, SetNodeDrain, SetSessionTimeout, UpdateTemplate,
};
use messages::session::{Session, SessionStatus, Template};
use messages::subjects::{self, ApiOp};
use messages::{ErrorBody, ErrorCode, Reply, decode};
use service_kit::bus::{self, BusError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::scheduler::Scheduler;
use crate::store::{StoreError, Transition};

/// One queue-group subscription per operation, made before the replica reports ready.
pub async fn subscribe(
    nats: &async_nats::Client,
) -> anyhow::Result<Vec<(ApiOp, async_nats::Subscriber)>> {
    let mut subscriptions = Vec::new();
    for op in ApiOp::ALL {
        let group = subjects::scheduler_queue_group().to_owned();
        subscriptions.push((op, nats.queue_subscribe(subjects::api(op), group).await?));
    }
    Ok(subscriptions)
}

/// Answers requests until cancelled; each request runs on its own task.
pub async fn serve(
    scheduler: Arc<Scheduler>,
    subscriptions: Vec<(ApiOp, async_nats::Subscriber)>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut requests = futures::stream::select_all(
        subscriptions
            .into_iter()
            .map(|(op, subscriber)| subscriber.map(move |message| (op, message))),
    );
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            request = requests.next() => {
                let Some((op, message)) = request else { bail!("API subscriptions ended") };
                let scheduler = scheduler.clone();
                let span = tracing::info_span!("scheduler.api", ?op);
                bus::adopt_remote_parent(&span, message.headers.as_ref());
                tokio::spawn(async move { answer(&scheduler, op, &message).await }.instrument(span));
            }
        }
    }
}

async fn answer(scheduler: &Scheduler, op: ApiOp, message: &Message) {
    match op {
        ApiOp::SessionsGet => {
            respond(scheduler, message, |r: GetSession| {
                scheduler.api_get_session(r)
            })
            .await;
        }
        ApiOp::SessionsList => {
            respond(scheduler, message, |r: ListSessions| {
                scheduler.api_list_sessions(r)
            })
            .await;
        }
        ApiOp::SessionsDelete => {
            respond(scheduler, message, |r: DeleteSession| {
                scheduler.api_delete_session(r)
            })
            .await;
        }
        ApiOp::TemplatesGet => {
            respond(scheduler, message, |r: GetTemplate| {
                scheduler.api_get_template(r)
            })
            .await;
        }
        ApiOp::TemplatesList => {
            respond(scheduler, message, |_: ListTemplates| {
                scheduler.api_list_templates()
            })
            .await;
        }
        ApiOp::NodesGet => {
            respond(scheduler, message, |r: GetNode| async move {
                scheduler.api_get_node(&r)
            })
            .await;
        }
        ApiOp::NodesList => {
            respond(scheduler, message, |_: ListNodes| async move {
                Ok(scheduler.fleet().infos(Instant::now()))
            })
            .await;
        }
        ApiOp::ExecutionsStart => {
            respond(scheduler, message, |r: StartExecution| {
                scheduler.api_start_execution(r)
            })
            .await;
        }
        ApiOp::ExecutionsGet => {
            respond(scheduler, message, |r: GetExecution| {
                scheduler.api_get_execution(r)
            })
            .await;
        }
        ApiOp::ExecutionsList => {
            respond(scheduler, message, |r: ListExecutions| {
                scheduler.api_list_executions(r)
            })
            .await;
        }
        ApiOp::ExecutionsRecord => {
            respond(scheduler, message, |r: RecordExecutionResult| {
                scheduler.api_record_execution(r)
            })
            .await;
        }
        ApiOp::SessionsSetTimeout => {
            respond(scheduler, message, |r: SetSessionTimeout| {
                scheduler.api_set_session_timeout(r)
            })
            .await;
        }
        ApiOp::TemplatesCreate => {
            respond(scheduler, message, |r: CreateTemplate| {
                scheduler.api_create_template(r)
            })
            .await;
        }
        ApiOp::TemplatesUpdate => {
            respond(scheduler, message, |r: UpdateTemplate| {
                scheduler.api_update_template(r)
            })
            .await;
        }
        ApiOp::TemplatesDelete => {
            respond(scheduler, message, |r: DeleteTemplate| {
                scheduler.api_delete_template(r)
            })
            .await;
        }
        ApiOp::NodesDeclare => {
            respond(scheduler, message, |r: DeclareNode| {
                scheduler.api_declare_node(r)
            })
            .await;
        }
        ApiOp::NodesDrain => {
            respond(scheduler, message, |r: SetNodeDrain| {
                scheduler.api_set_node_drain(r)
            })
            .await;
        }
    }
}

/// Decodes the request, runs `handler`, and sends its [`Reply`].
async fn respond<R, F, Fut>(scheduler: &Scheduler, message: &Message, handler: F)
where
    R: ApiRequest,
    F: FnOnce(R) -> Fut,
    Fut: Future<Output = Result<R::Response, ErrorBody>>,
{
    let result = match decode::<R>(&message.payload) {
        Ok(request) => handler(request).await,
        Err(error) => Err(ErrorBody::new(ErrorCode::InvalidRequest, error.to_string())),
    };
    if let Err(error) = bus::respond(&scheduler.nats, message, &Reply::from(result)).await {
        tracing::warn!(subject = %message.subject, %error, "could not answer a request");
    }
}

/// Store failures are the replica's problem, not the caller's: logged in full, told briefly.
fn internal(error: StoreError) -> ErrorBody {
    tracing::error!(%error, "database error while answering a request");
    ErrorBody::new(
        ErrorCode::Internal,
        "the scheduler's database failed; see its log",
    )
}

fn session_not_found(id: &impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, format!("session '{id}' not found"))
}

impl Scheduler {
    async fn api_get_session(&self, request: GetSession) -> Result<Session, ErrorBody> {
        self.store
            .get_session(&request.session_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| session_not_found(&request.session_id))
    }

    async fn api_list_sessions(&self, request: ListSessions) -> Result<SessionPage, ErrorBody> {
        let (sessions, total) = self.store.list_sessions(&request).await.map_err(internal)?;
        Ok(SessionPage {
            sessions,
            total,
            limit: request.limit,
            offset: request.offset,
        })
    }

    /// Records the session terminated, then removes its container. In that order: the
    /// container's exit event that the removal causes must find the session already ended, or
    /// a requested delete would read as a crash. Deleting again retries the removal.
    async fn api_delete_session(&self, request: DeleteSession) -> Result<Session, ErrorBody> {
        let id = &request.session_id;
        let from = [
            SessionStatus::Pending,
            SessionStatus::Creating,
            SessionStatus::Running,
            SessionStatus::Failed,
            SessionStatus::Lost,
        ];
        let (session, changed) = self
            .store
            .transition(id, &from, &Transition::to(SessionStatus::Terminated))
            .await
            .map_err(internal)?
            .ok_or_else(|| session_not_found(id))?;
        if changed {
            self.announce(&session).await;
        }
        // A session still being placed has no container yet; placement removes the one it
        // makes once it finds the session terminated.
        if let Some(node) = &session.runtime_node {
            match self.remove_container(node, id).await {
                Ok(_) => {}
                Err(BusError::Remote(error)) => return Err(error),
                // A node that is gone cannot be asked; its containers are reconciled when it
                // comes back. The session has ended either way.
                Err(error) => {
                    tracing::warn!(session_id = %id, %node, %error, "node unreachable while deleting");
                }
            }
        }
        Ok(session)
    }

    async fn api_get_template(&self, request: GetTemplate) -> Result<Template, ErrorBody> {
        self.store
            .get_template(&request.template_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                ErrorBody::new(
                    ErrorCode::NotFound,
                    format!("template '{}' not found", request.template_id),
                )
            })
    }

    async fn api_list_templates(&self) -> Result<Vec<Template>, ErrorBody> {
        self.store.list_templates().await.map_err(internal)
    }

    fn api_get_node(&self, request: &GetNode) -> Result<NodeInfo, ErrorBody> {
        self.fleet()
            .info(&request.node_id, Instant::now())
            .ok_or_else(|| {
                ErrorBody::new(
                    ErrorCode::NotFound,
                    format!("node '{}' not found", request.node_id),
                )
            })
    }
}

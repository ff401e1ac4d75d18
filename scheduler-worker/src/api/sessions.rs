//! The sessions' reads, delete and keep-alive.

use std::sync::Arc;

use messages::api::PageInfo;
use messages::api::sessions::{
    DeleteSession, GetSession, ListSessions, SessionPage, SetSessionTimeout,
};
use messages::session::Session;
use messages::{ErrorBody, ErrorCode, limits};
use service_kit::bus::BusError;

use super::internal;
use crate::lifecycle::Change;
use crate::scheduler::Scheduler;
use crate::store::{self, Applied};

pub(super) async fn get(
    scheduler: Arc<Scheduler>,
    request: GetSession,
) -> Result<Session, ErrorBody> {
    scheduler
        .store
        .get_session(&request.session_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ErrorBody::not_found("session", &request.session_id))
}

pub(super) async fn list(
    scheduler: Arc<Scheduler>,
    request: ListSessions,
) -> Result<SessionPage, ErrorBody> {
    let (sessions, total) = scheduler
        .store
        .list_sessions(&request)
        .await
        .map_err(internal)?;
    Ok(SessionPage {
        sessions,
        page: PageInfo {
            total,
            page: request.page,
        },
    })
}

/// Records the session terminated, then removes its container. In that order: the container's
/// exit event that the removal causes must find the session already ended, or a requested
/// delete would read as a crash. Deleting again retries the removal.
pub(super) async fn delete(
    scheduler: Arc<Scheduler>,
    request: DeleteSession,
) -> Result<Session, ErrorBody> {
    let id = &request.session_id;
    let session = match scheduler
        .apply(id, Change::Deleted)
        .await
        .map_err(internal)?
    {
        Applied::Changed(session) | Applied::Unchanged(session) => session,
        Applied::Missing => return Err(ErrorBody::not_found("session", id)),
    };
    // A session still being placed has no container yet; placement removes the one it makes
    // once it finds the session terminated.
    if let Some(node) = &session.runtime_node {
        match scheduler.remove_container(node, id).await {
            Ok(_) => {}
            Err(BusError::Remote(error)) => return Err(error),
            // A node that is gone cannot be asked; its containers are reconciled when it comes
            // back. The session has ended either way.
            Err(error) => {
                tracing::warn!(session_id = %id, %node, %error, "node unreachable while deleting");
            }
        }
    }
    Ok(session)
}

/// Keep-alive: the session now ends `timeout_seconds` from now. An ended session cannot be
/// kept alive.
pub(super) async fn set_timeout(
    scheduler: Arc<Scheduler>,
    request: SetSessionTimeout,
) -> Result<Session, ErrorBody> {
    limits::check_session_timeout(request.timeout_seconds).map_err(ErrorBody::invalid)?;
    let id = &request.session_id;
    match scheduler
        .store
        .set_session_timeout(id, request.timeout_seconds, store::now())
        .await
        .map_err(internal)?
    {
        Applied::Changed(session) => Ok(session),
        Applied::Unchanged(session) => Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "session '{id}' is {} and cannot be kept alive",
                session.status
            ),
        )),
        Applied::Missing => Err(ErrorBody::not_found("session", id)),
    }
}

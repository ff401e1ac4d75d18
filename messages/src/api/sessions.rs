//! Reads and changes of sessions (creating one goes through the JetStream stream instead:
//! [`crate::session::CreateSession`]).

use serde::{Deserialize, Serialize};

use super::{PageInfo, PageRequest};
use crate::ids::SessionId;
use crate::session::{Session, SessionStatus};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetSession {
    pub session_id: SessionId,
}
api_request!(GetSession => "sessions.get", Session);

/// Sessions newest first, optionally filtered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListSessions {
    #[serde(default)]
    pub status: Option<SessionStatus>,
    #[serde(default)]
    pub template_id: Option<String>,
    #[serde(flatten)]
    pub page: PageRequest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionPage {
    pub sessions: Vec<Session>,
    /// `total`: how many sessions match the filter, across all pages.
    #[serde(flatten)]
    pub page: PageInfo,
}
api_request!(ListSessions => "sessions.list", SessionPage);

/// End a session: its container is removed and it turns `terminated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteSession {
    pub session_id: SessionId,
}
api_request!(DeleteSession => "sessions.delete", Session);

/// Keep a session alive: it now expires `timeout_seconds` from the moment this is handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetSessionTimeout {
    pub session_id: SessionId,
    pub timeout_seconds: u64,
}
api_request!(SetSessionTimeout => "sessions.timeout", Session);

//! Starting, reading and listing code executions, and recording a result reported over HTTP.

use serde::{Deserialize, Serialize};

use super::{PageInfo, PageRequest};
use crate::execution::{Execution, ExecutionResult, RunExecution};
use crate::ids::{ExecutionId, SessionId};

/// Record an execution of a running session and start it on the session's node. The gateway
/// names the execution, so it can wait on [`crate::subjects::execution_status`] before asking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartExecution {
    /// The run as the node is asked for it (its fields inline, as they always travelled).
    #[serde(flatten)]
    pub run: RunExecution,
}
api_request!(StartExecution => "executions.start", Execution);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetExecution {
    pub execution_id: ExecutionId,
}
api_request!(GetExecution => "executions.get", Execution);

/// A session's executions, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListExecutions {
    pub session_id: SessionId,
    #[serde(flatten)]
    pub page: PageRequest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionPage {
    pub executions: Vec<Execution>,
    /// `total`: how many executions the session has, across all pages.
    #[serde(flatten)]
    pub page: PageInfo,
}
api_request!(ListExecutions => "executions.list", ExecutionPage);

/// A result reported over the seed's HTTP callback. Recording the same result twice answers the
/// record both times; a different result for an execution that already has one is a conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordExecutionResult {
    pub result: ExecutionResult,
}
api_request!(RecordExecutionResult => "executions.record", Execution);

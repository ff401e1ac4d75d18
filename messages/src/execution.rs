//! Code executions: the run command a node takes, the output and result events it publishes, and
//! the execution record the scheduler keeps and the HTTP API shows.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ExecutionId, NodeId, SessionId};
use crate::node::NodeCommand;
use crate::session::UnknownValue;
use crate::subjects::NodeVerb;

/// The default and the bounds of an execution's timeout, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u32 = 30;
pub const MAX_TIMEOUT_SECS: u32 = 3600;

/// The languages the executor image runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// Python 3; one long-lived interpreter per session unless the run asks to be fresh.
    Python,
    /// POSIX `sh -c`.
    Shell,
    /// Node.js.
    Javascript,
}

impl Language {
    pub const ALL: [Language; 3] = [Language::Python, Language::Shell, Language::Javascript];

    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Shell => "shell",
            Language::Javascript => "javascript",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Language {
    type Err = UnknownValue;
    fn from_str(value: &str) -> Result<Self, UnknownValue> {
        Language::ALL
            .into_iter()
            .find(|language| language.as_str() == value)
            .ok_or_else(|| UnknownValue::new("language", value))
    }
}

/// Where an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// Sent to the node; no result yet.
    Running,
    /// The program exited with code 0.
    Completed,
    /// The program exited with another code, was killed, or raised.
    Failed,
    /// It ran past its timeout and was killed.
    Timeout,
    /// It could not be run, or its result was lost; `error` says why.
    Error,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 5] = [
        ExecutionStatus::Running,
        ExecutionStatus::Completed,
        ExecutionStatus::Failed,
        ExecutionStatus::Timeout,
        ExecutionStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Running => "running",
            ExecutionStatus::Completed => "completed",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Timeout => "timeout",
            ExecutionStatus::Error => "error",
        }
    }

    /// Every status but `running` is final: a recorded result never changes.
    pub fn is_final(self) -> bool {
        self != ExecutionStatus::Running
    }
}

impl fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExecutionStatus {
    type Err = UnknownValue;
    fn from_str(value: &str) -> Result<Self, UnknownValue> {
        ExecutionStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
            .ok_or_else(|| UnknownValue::new("execution status", value))
    }
}

/// An execution as recorded by the scheduler; also its JSON shape in the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub id: ExecutionId,
    pub session_id: SessionId,
    pub language: Language,
    pub code: String,
    pub status: ExecutionStatus,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout or stderr was cut at the node's output cap.
    pub truncated: bool,
    /// Why it could not run, or what stopped it (say, out of memory).
    pub error: Option<String>,
    /// The stateful interpreter was killed; the next Python run starts from a clean state.
    pub state_lost: bool,
    /// The `repr` of a stateful Python run's last expression, or what an HTTP executor reported.
    pub return_value: Option<String>,
    pub fresh: bool,
    pub timeout_secs: u32,
    pub runtime_node: Option<NodeId>,
    pub duration_ms: Option<u64>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Figures an HTTP executor reported with its result (a JSON object), kept as given.
    #[serde(default)]
    pub metrics: Option<serde_json::Value>,
}

/// `executions.run`: start a run in the session's container. The reply only says it started;
/// output and the result follow as events on the EXECUTIONS stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunExecution {
    pub execution_id: ExecutionId,
    pub session_id: SessionId,
    pub language: Language,
    pub code: String,
    #[serde(default)]
    pub stdin: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub timeout_secs: u32,
    /// Run in a new process instead of the session's long-lived Python interpreter.
    #[serde(default)]
    pub fresh: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionStarted {
    pub execution_id: ExecutionId,
    pub started_at: DateTime<Utc>,
}

impl NodeCommand for RunExecution {
    const VERB: NodeVerb = NodeVerb::ExecutionsRun;
    type Response = ExecutionStarted;
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// On `executions.events.<id>.output`: output as the program wrote it, in order (`seq` counts
/// from 0 across both streams). Nothing past a stream's cap is published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionOutput {
    pub execution_id: ExecutionId,
    pub seq: u64,
    pub stream: OutputStream,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// On `executions.events.<id>.result` (published once, after every output chunk), and what the
/// seed's HTTP callback reports: how a run ended. The scheduler records the first result of an
/// execution; a repeat of the same result changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionResult {
    pub execution_id: ExecutionId,
    pub status: ExecutionStatus,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    pub error: Option<String>,
    #[serde(default)]
    pub state_lost: bool,
    #[serde(default)]
    pub return_value: Option<String>,
    pub duration_ms: Option<u64>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: DateTime<Utc>,
    /// Figures an HTTP executor sent with its result (a JSON object).
    #[serde(default)]
    pub metrics: Option<serde_json::Value>,
}

impl ExecutionResult {
    /// A run that never produced a result of its own: `error` says why.
    pub fn error(execution_id: ExecutionId, message: impl Into<String>) -> Self {
        Self {
            execution_id,
            status: ExecutionStatus::Error,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            error: Some(message.into()),
            state_lost: false,
            return_value: None,
            duration_ms: None,
            started_at: None,
            completed_at: Utc::now(),
            metrics: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_languages_parse_what_they_print() {
        for status in ExecutionStatus::ALL {
            assert_eq!(status.as_str().parse::<ExecutionStatus>(), Ok(status));
        }
        for language in Language::ALL {
            assert_eq!(language.as_str().parse::<Language>(), Ok(language));
        }
        assert!("ruby".parse::<Language>().is_err());
        assert!(!ExecutionStatus::Running.is_final());
        assert!(ExecutionStatus::Timeout.is_final());
    }
}

//! Code executions: the run command a node takes, the output and result events it publishes, and
//! the execution record the scheduler keeps and the HTTP API shows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ExecutionId, NodeId, SessionId};
use crate::limits;

wire_enum! {
    /// The languages the executor image runs.
    pub enum Language ("language") {
        /// Python 3; one long-lived interpreter per session unless the run asks to be fresh.
        Python = "python",
        /// POSIX `sh -c`.
        Shell = "shell",
        /// Node.js.
        Javascript = "javascript",
    }
}

wire_enum! {
    /// Where an execution is in its life.
    pub enum ExecutionStatus ("execution status") {
        /// Sent to the node; no result yet.
        Running = "running",
        /// The program exited with code 0.
        Completed = "completed",
        /// The program exited with another code, was killed, or raised.
        Failed = "failed",
        /// It ran past its timeout and was killed.
        Timeout = "timeout",
        /// It could not be run, or its result was lost; `error` says why.
        Error = "error",
    }
}

impl ExecutionStatus {
    /// Every status but `running` is final: a recorded result never changes.
    pub fn is_final(self) -> bool {
        self != ExecutionStatus::Running
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

impl Execution {
    /// A run as first recorded: sent to `node` at `at`, no result yet.
    pub fn running(run: &RunExecution, node: NodeId, at: DateTime<Utc>) -> Self {
        Self {
            id: run.execution_id.clone(),
            session_id: run.session_id.clone(),
            language: run.language,
            code: run.code.clone(),
            status: ExecutionStatus::Running,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            error: None,
            state_lost: false,
            return_value: None,
            fresh: run.fresh,
            timeout_secs: run.timeout_secs,
            runtime_node: Some(node),
            duration_ms: None,
            created_at: at,
            started_at: None,
            completed_at: None,
            metrics: None,
        }
    }
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

node_command!(RunExecution => "executions.run", ExecutionStarted);

/// How many bytes `value` takes as JSON, counted without keeping them.
fn json_length(value: &impl Serialize) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

impl RunExecution {
    /// What every service checks of a run before passing it on: its timeout, its environment,
    /// and that it fits the executor agent's request line.
    pub fn check(&self) -> Result<(), String> {
        limits::check_execution_timeout(self.timeout_secs)?;
        if self.code.contains('\0') {
            return Err("code must not contain NUL bytes".to_owned());
        }
        let as_json = json_length(&(&self.code, &self.stdin, &self.env));
        if as_json > limits::MAX_RUN_JSON_BYTES {
            return Err(format!(
                "code, stdin and env take {as_json} bytes as JSON; the most is {}: upload larger \
                 inputs as files",
                limits::MAX_RUN_JSON_BYTES
            ));
        }
        limits::check_env(&self.env)
    }
}

wire_enum! {
    /// Which output stream a chunk came from.
    pub enum OutputStream ("output stream") {
        Stdout = "stdout",
        Stderr = "stderr",
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

//! One cancel signal per service, named tasks joined on exit, and SIGTERM/SIGINT handling.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The long-running tasks of one service. A task that fails cancels all the others, so the
/// service stops as a whole instead of running on half-broken.
#[derive(Debug)]
pub struct Tasks {
    cancel: CancellationToken,
    handles: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

impl Tasks {
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            cancel,
            handles: Vec::new(),
        }
    }

    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Runs `task` under `name`; its error is logged and stops the service.
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let cancel = self.cancel.clone();
        let handle = tokio::spawn(async move {
            let result = task.await;
            if let Err(error) = &result {
                tracing::error!(task = name, error = format!("{error:#}"), "task failed");
                cancel.cancel();
            }
            result
        });
        self.handles.push((name, handle));
    }

    /// Waits for every task after cancellation, in reverse order of start, giving them `deadline`
    /// in all; a task still running then is aborted. Returns the first task error.
    pub async fn join(self, deadline: Duration) -> anyhow::Result<()> {
        self.cancel.cancelled().await;
        let until = tokio::time::Instant::now() + deadline;
        let mut first_error = None;
        for (name, mut handle) in self.handles.into_iter().rev() {
            match tokio::time::timeout_at(until, &mut handle).await {
                Ok(Ok(Ok(()))) => tracing::debug!(task = name, "task stopped"),
                Ok(Ok(Err(error))) => {
                    first_error.get_or_insert(error.context(format!("task {name}")));
                }
                Ok(Err(join_error)) => {
                    tracing::error!(task = name, error = %join_error, "task panicked");
                    first_error.get_or_insert(anyhow::anyhow!("task {name} panicked"));
                }
                Err(_) => {
                    tracing::warn!(task = name, "task did not stop by the deadline; aborting");
                    handle.abort();
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Cancels `cancel` on SIGTERM or SIGINT.
pub fn cancel_on_signal(cancel: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
            () = cancel.cancelled() => return,
        }
        cancel.cancel();
    });
    Ok(())
}

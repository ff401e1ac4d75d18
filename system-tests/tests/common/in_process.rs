//! Services started inside the test process, from the same flags as their binaries: for tests
//! that need them there (a process-wide tracing subscriber sees their spans), and because an
//! in-process start costs no process. All of them stop on one cancel signal.

use clap::Parser as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Parses `flags` as the binary would (the crate's `Config`) and starts the crate's service
/// (its `start`) on `cancel`: every service crate has this shape.
macro_rules! start {
    ($service:ident, $binary:literal, $flags:expr, $cancel:expr) => {{
        let config = $service::Config::try_parse_from(with_name($binary, $flags))
            .expect(concat!($binary, " config"));
        $service::start(config, $cancel.clone())
            .await
            .expect(concat!($binary, " starts"))
    }};
}

/// The services this process runs, stopped when dropped (or by [`InProcess::stop`]).
pub struct InProcess {
    cancel: CancellationToken,
    running: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    pub fn new() -> Self {
        Self {
            cancel: CancellationToken::new(),
            running: Vec::new(),
        }
    }

    /// A scheduler replica, `flags` as the binary takes them; returns once it is ready.
    pub async fn start_scheduler(&mut self, flags: &[String]) {
        let running = start!(scheduler_worker, "scheduler-worker", flags, self.cancel);
        self.running.push(tokio::spawn(running.wait()));
    }

    /// A gateway; returns its base URL, and its internal listener's when it has one.
    pub async fn start_gateway(&mut self, flags: &[String]) -> (String, Option<String>) {
        let running = start!(api_gateway, "api-gateway", flags, self.cancel);
        let base = format!("http://{}", running.local_addr());
        let internal = running
            .internal_addr()
            .map(|address| format!("http://{address}"));
        self.running.push(tokio::spawn(running.wait()));
        (base, internal)
    }

    /// A node daemon; returns once it started (registered or not).
    pub async fn start_node(&mut self, flags: &[String]) {
        let running = start!(node_daemon, "node-daemon", flags, self.cancel);
        self.running.push(tokio::spawn(running.wait()));
    }

    /// Cancels every service; they wind down on the test's runtime.
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn with_name<'a>(binary: &'a str, flags: &'a [String]) -> impl Iterator<Item = &'a str> {
    std::iter::once(binary).chain(flags.iter().map(String::as_str))
}

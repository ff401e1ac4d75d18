//! One child process of the harness: started from a binary with its flags and environment, its
//! stdout and stderr appended to a log file, waited for until a readiness check holds, stopped
//! cleanly or killed, frozen and thawed.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long [`Process::stop`] waits after SIGTERM before it kills.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// A signal [`Process::signal`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Freezes the process: a hung service whose connections stay open.
    Stop,
    /// Thaws a frozen process.
    Cont,
    /// Asks the process to shut down cleanly.
    Term,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
            Signal::Term => "TERM",
        }
    }
}

/// A child process with its log in a file. Killed (SIGKILL) when dropped, so nothing outlives a
/// failed test or an aborted benchmark; [`Process::stop`] is the clean way.
#[derive(Debug)]
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Starts `program` with `args` and `env` on top of this process's environment, appending
    /// its output to `log`. The child reads nothing, prints without colour, and exports no
    /// traces (whatever `OTEL_EXPORTER_OTLP_ENDPOINT` the caller has).
    pub fn spawn(
        name: &str,
        program: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut process = Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            env,
            log,
            child: None,
        };
        process.launch()?;
        Ok(process)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("NO_COLOR", "1")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("sharing the log file")?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while a child was started and not yet reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_none())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process wrote so far (empty if the log cannot be read).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `ready` every 50 ms until it holds; fails, with the log, when the process exits
    /// first or `within` runs out.
    pub async fn wait_ready(
        &mut self,
        within: Duration,
        ready: impl AsyncFnMut(&Process) -> bool,
    ) -> anyhow::Result<()> {
        self.wait_ready_polling(within, Duration::from_millis(50), ready)
            .await
    }

    /// [`Process::wait_ready`], asking every `every` (for a check that costs).
    pub async fn wait_ready_polling(
        &mut self,
        within: Duration,
        every: Duration,
        mut ready: impl AsyncFnMut(&Process) -> bool,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        while !ready(self).await {
            if !self.is_running() {
                bail!("{} exited at start: {}", self.name, self.log());
            }
            if started.elapsed() > within {
                bail!("{} not ready within {within:?}: {}", self.name, self.log());
            }
            tokio::time::sleep(every).await;
        }
        Ok(())
    }

    /// Sends `signal` with kill(1). Fails when the process is not running.
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        if !self.is_running() {
            bail!("{} is not running", self.name);
        }
        let pid = self.pid().context("a running process has a pid")?;
        let status = Command::new("kill")
            .arg(format!("-{}", signal.name()))
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{} {} ({}) failed", signal.name(), pid, self.name);
        }
        Ok(())
    }

    /// SIGKILL: no clean shutdown, nothing it holds is handed back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to [`STOP_GRACE`] for the process to end, then SIGKILL.
    pub fn stop(&mut self) {
        stop_all([self]);
    }

    /// Kills the process if it runs and starts it again with the same flags, appending to the
    /// same log.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops several processes at once: SIGTERM to each (and SIGCONT, so a frozen one gets it), one
/// shared wait of up to [`STOP_GRACE`], then SIGKILL for those still running.
pub fn stop_all<'a>(processes: impl IntoIterator<Item = &'a mut Process>) {
    let mut running: Vec<&mut Process> = processes
        .into_iter()
        .filter_map(|process| process.is_running().then_some(process))
        .collect();
    for process in &mut running {
        let _ = process.signal(Signal::Term);
        let _ = process.signal(Signal::Cont);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && running.iter_mut().any(|process| process.is_running()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for process in running {
        process.kill();
    }
}

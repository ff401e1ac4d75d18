//! Where the service binaries come from: a folder of builds (the benchmark's release binaries),
//! or this workspace built by cargo once per process (the tests).

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context as _, bail};

/// The binaries a [`super::Stack`] starts; each is also its package's name.
pub const SERVICE_BINARIES: [&str; 3] = ["scheduler-worker", "api-gateway", "node-daemon"];

/// How the harness finds a service binary.
#[derive(Debug, Clone)]
pub enum Binaries {
    /// Every binary is in this folder, say `target/release`.
    Dir(PathBuf),
    /// `cargo build -p <name> --bin <name>` in this workspace (the dev profile) on first use,
    /// once per process.
    Cargo,
}

impl Binaries {
    /// The binaries in `dir`; fails, saying how to build them, when one is missing.
    pub fn in_dir(dir: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let dir = dir.into();
        for name in SERVICE_BINARIES {
            let path = dir.join(name);
            if !path.is_file() {
                bail!("{} is missing: cargo build --release", path.display());
            }
        }
        Ok(Self::Dir(dir))
    }

    /// The path of the binary `name`, building it first if that is how these are found.
    pub fn path(&self, name: &str) -> anyhow::Result<PathBuf> {
        match self {
            Binaries::Dir(dir) => Ok(dir.join(name)),
            Binaries::Cargo => built_by_cargo(name),
        }
    }
}

/// Builds `name` once per process; a second caller waits for the first one's build.
fn built_by_cargo(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(path) = built.get(name) {
        return Ok(path.clone());
    }
    let path = cargo_build(name)?;
    built.insert(name.to_owned(), path.clone());
    Ok(path)
}

/// Runs cargo for the binary and takes its path from cargo's own report of what it built, so
/// the target folder and profile need no guessing.
fn cargo_build(name: &str) -> anyhow::Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the ops crate lives in the workspace")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
        ])
        .args(["-p", name, "--bin", name])
        .current_dir(workspace)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo build")?;
    let stdout = child.stdout.take().context("cargo's stdout is piped")?;
    let mut executable = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let message: serde_json::Value = match serde_json::from_str(&line?) {
            Ok(message) => message,
            Err(_) => continue,
        };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == name
            && let Some(path) = message["executable"].as_str()
        {
            executable = Some(PathBuf::from(path));
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        bail!("cargo build -p {name} --bin {name} failed with {status}");
    }
    executable.with_context(|| format!("cargo built no executable named {name}"))
}

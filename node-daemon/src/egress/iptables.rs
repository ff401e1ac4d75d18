//! Running `iptables` and `iptables-restore` (those found on PATH), always with `-w` so
//! concurrent callers wait for the xtables lock instead of failing.

use std::io::ErrorKind;
use std::process::{Output, Stdio};

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use super::EgressError;

const IPTABLES: &str = "iptables";
const IPTABLES_RESTORE: &str = "iptables-restore";

/// Runs `iptables -w <args>` and returns its standard output.
pub async fn run(args: &[&str]) -> Result<String, EgressError> {
    let output = spawn(IPTABLES, args, None).await?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(failed(IPTABLES, args, &output))
    }
}

/// Runs `iptables -w -C <rule>`: whether the rule is in place. iptables answers 1 both for
/// a missing rule and a missing chain; either way the rule is not there.
pub async fn has_rule(rule: &[&str]) -> Result<bool, EgressError> {
    let args: Vec<&str> = ["-C"].iter().chain(rule).copied().collect();
    let output = spawn(IPTABLES, &args, None).await?;
    match output.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failed(IPTABLES, &args, &output)),
    }
}

/// The whole filter table, as `iptables -S` prints it.
pub async fn listing() -> Result<String, EgressError> {
    run(&["-t", "filter", "-S"]).await
}

/// Applies one `iptables-restore --noflush` input: all of it or, on an error, none of it.
pub async fn restore(input: &str) -> Result<(), EgressError> {
    let args = ["--noflush"];
    let output = spawn(IPTABLES_RESTORE, &args, Some(input)).await?;
    if output.status.success() {
        return Ok(());
    }
    let mut error = failed(IPTABLES_RESTORE, &args, &output);
    // iptables-restore names the line it could not apply: show that line too.
    if let EgressError::Command { stderr, .. } = &mut error {
        let failed_line = stderr
            .split("line ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|number| number.parse::<usize>().ok())
            .and_then(|number| input.lines().nth(number.saturating_sub(1)));
        if let Some(line) = failed_line {
            stderr.push_str(&format!(" (the line: {line:?})"));
        }
    }
    Err(error)
}

async fn spawn(program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, EgressError> {
    let mut command = Command::new(program);
    command
        .arg("-w")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|error| match error.kind() {
        ErrorKind::NotFound => EgressError::Unavailable(format!(
            "`{program}` was not found on PATH: install iptables (the same backend Docker uses)"
        )),
        _ => EgressError::Unavailable(format!("`{program}` could not be started: {error}")),
    })?;
    let mut written = Ok(());
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        written = pipe.write_all(text.as_bytes()).await;
        // Closing stdin tells iptables-restore the input is complete.
        drop(pipe);
    }
    // Waited for even when writing failed, so the child is reaped and its stderr is read.
    let output = child
        .wait_with_output()
        .await
        .map_err(|error| EgressError::Unavailable(format!("waiting for `{program}`: {error}")))?;
    match written {
        Err(error) if output.status.success() => Err(EgressError::Unavailable(format!(
            "writing to `{program}`: {error}"
        ))),
        _ => Ok(output),
    }
}

fn failed(program: &str, args: &[&str], output: &Output) -> EgressError {
    // The nf_tables backend warns about legacy tables on every call: not the reason.
    let stderr = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| !line.contains("iptables-legacy tables present"))
        .collect::<Vec<_>>()
        .join("; ");
    EgressError::Command {
        command: format!("{program} -w {}", args.join(" ")),
        status: output.status.to_string(),
        stderr,
    }
}

//! `sandbox-watch`: prints the messages of the control plane's NATS subjects as JSON lines, payloads decoded from MessagePack.
//!
//! ```text
//! sandbox-watch                                # everything under runtime.>
//! sandbox-watch runtime.heartbeat --pretty     # one subject, indented
//! NATS_URL=nats://10.0.0.5:4222 sandbox-watch 'runtime.cmd.*.>'
//! ```
//!
//! Each message becomes one line on stdout:
//! `{"subject": .., "received_at": <RFC 3339>, "headers": {name: value}, "payload": ..}`.
//! A payload that is not one whole MessagePack value is shown as
//! `{"undecodable": <the bytes as lossy UTF-8>, "bytes": <length>}`. Connection events and errors
//! go to stderr, so stdout can be piped into `jq`. Ctrl-C (or SIGTERM) stops it.

use std::io::{ErrorKind, Write as _};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Parser;
use futures::StreamExt as _;
use serde_json::{Map, Value, json};

/// Watch NATS subjects of the sandbox control plane, one decoded JSON line per message.
#[derive(Debug, Parser)]
#[command(name = "sandbox-watch", version)]
struct Args {
    /// The NATS server to watch.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,

    /// Print each message as indented, multi-line JSON.
    #[arg(long)]
    pretty: bool,

    /// Subjects to subscribe to; the NATS wildcards `*` (one token) and `>` (the rest) work.
    #[arg(value_name = "SUBJECT", default_value = "runtime.>")]
    subjects: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    run(Args::parse()).await
}

async fn run(args: Args) -> anyhow::Result<()> {
    for subject in &args.subjects {
        validate_subject(subject)?;
    }
    let client = async_nats::ConnectOptions::new()
        .name("sandbox-watch")
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move { eprintln!("sandbox-watch: NATS {event}") })
        .connect(args.nats_url.as_str())
        .await
        .with_context(|| {
            format!(
                "connecting to NATS at {} (is it running? ops/up.sh starts one)",
                args.nats_url
            )
        })?;

    let mut subscriptions = Vec::with_capacity(args.subjects.len());
    for subject in &args.subjects {
        let subscriber = client
            .subscribe(subject.clone())
            .await
            .with_context(|| format!("subscribing to {subject}"))?;
        subscriptions.push(subscriber);
    }
    // The subscriptions reach the server with the next flush; say "watching" only after that.
    client
        .flush()
        .await
        .context("sending the subscriptions to NATS")?;
    eprintln!(
        "sandbox-watch: watching {} on {} (Ctrl-C stops)",
        args.subjects.join(" "),
        args.nats_url
    );

    let mut messages = futures::stream::select_all(subscriptions);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let stdout = std::io::stdout();
    loop {
        let message = tokio::select! {
            stopped = &mut shutdown => return stopped,
            message = messages.next() => message,
        };
        let Some(message) = message else {
            bail!("the NATS connection closed");
        };
        let record = render(
            message.subject.as_str(),
            message.headers.as_ref(),
            &message.payload,
            Utc::now(),
        );
        let line = if args.pretty {
            serde_json::to_string_pretty(&record)
        } else {
            serde_json::to_string(&record)
        }
        .context("formatting a message as JSON")?;
        let mut out = stdout.lock();
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => {}
            // The reader went away (`sandbox-watch | head`): a normal end.
            Err(error) if error.kind() == ErrorKind::BrokenPipe => return Ok(()),
            Err(error) => return Err(error).context("writing to stdout"),
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("listening for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// Refuses what NATS would not take as a subscription subject, with a message saying why.
fn validate_subject(subject: &str) -> anyhow::Result<()> {
    if subject.is_empty() {
        bail!("a subject must not be empty");
    }
    if subject.chars().any(char::is_whitespace) {
        bail!("subject {subject:?} must not contain whitespace");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (index, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            bail!("subject {subject:?} has an empty token (two dots, or a dot at an end)");
        }
        if token.contains('>') && (*token != ">" || index + 1 != tokens.len()) {
            bail!("subject {subject:?}: `>` must be a whole token, and the last one");
        }
        if token.contains('*') && *token != "*" {
            bail!("subject {subject:?}: `*` must be a whole token");
        }
    }
    Ok(())
}

/// One message as printed: the fields appear in this order.
#[derive(Debug, serde::Serialize)]
struct Record<'a> {
    subject: &'a str,
    received_at: String,
    headers: Map<String, Value>,
    payload: Value,
}

/// One message as the record printed for it.
fn render<'a>(
    subject: &'a str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    received_at: DateTime<Utc>,
) -> Record<'a> {
    Record {
        subject,
        received_at: received_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        headers: headers.map(headers_json).unwrap_or_default(),
        payload: payload_json(payload),
    }
}

/// Headers as `{name: value}`; a header sent more than once becomes an array of its values.
fn headers_json(headers: &HeaderMap) -> Map<String, Value> {
    headers
        .iter()
        .map(|(name, values)| {
            let value = match values.as_slice() {
                [single] => Value::from(single.as_str()),
                many => many
                    .iter()
                    .map(|value| Value::from(value.as_str()))
                    .collect(),
            };
            (name.to_string(), value)
        })
        .collect()
}

/// The payload decoded by the wire contract's codec, or a description of the bytes when they
/// are not exactly one MessagePack value.
fn payload_json(payload: &[u8]) -> Value {
    match messages::codec::to_json(payload) {
        Ok(value) => value,
        _ => json!({
            "undecodable": String::from_utf8_lossy(payload),
            "bytes": payload.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Beat {
        node_id: &'static str,
        running_containers: u32,
    }

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-15T10:30:00Z")
            .map(|time| time.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn decodes_a_messagepack_payload_with_its_headers() {
        let payload = messages::encode(&Beat {
            node_id: "docker-local",
            running_containers: 3,
        })
        .expect("encodes");
        let mut headers = HeaderMap::new();
        headers.insert("Sandbox-Schema-Version", "1");
        headers.append("X-Twice", "a");
        headers.append("X-Twice", "b");

        let record = render("runtime.heartbeat", Some(&headers), &payload, at());

        let line = serde_json::to_string(&record).expect("serializes");
        assert!(line.starts_with(r#"{"subject":"runtime.heartbeat","received_at":"#));
        assert_eq!(
            serde_json::to_value(&record).expect("serializes"),
            json!({
                "subject": "runtime.heartbeat",
                "received_at": "2024-01-15T10:30:00.000000Z",
                "headers": {"Sandbox-Schema-Version": "1", "X-Twice": ["a", "b"]},
                "payload": {"node_id": "docker-local", "running_containers": 3},
            })
        );
    }

    #[test]
    fn shows_plain_text_as_undecodable() {
        let record = render("runtime.heartbeat", None, b"hello", at());
        assert!(record.headers.is_empty());
        assert_eq!(record.payload, json!({"undecodable": "hello", "bytes": 5}));
    }

    #[test]
    fn shows_broken_and_empty_payloads_as_undecodable() {
        // A map header announcing one entry, then nothing.
        assert_eq!(
            payload_json(&[0x81, 0xff, 0xfe]),
            json!({"undecodable": "\u{fffd}\u{fffd}\u{fffd}", "bytes": 3})
        );
        assert_eq!(payload_json(b""), json!({"undecodable": "", "bytes": 0}));
    }

    #[test]
    fn accepts_wildcards_and_refuses_malformed_subjects() {
        for good in [
            "runtime.>",
            "runtime.heartbeat",
            "runtime.cmd.*.containers.create",
            ">",
        ] {
            assert!(validate_subject(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "runtime..x",
            "runtime.",
            "a b",
            "runtime.>.x",
            "run*",
            "a.b>",
        ] {
            assert!(validate_subject(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_subject_is_everything_under_runtime() {
        let args = Args::try_parse_from(["sandbox-watch"]).expect("parses");
        assert_eq!(args.subjects, ["runtime.>"]);
        assert!(!args.pretty);
        let args =
            Args::try_parse_from(["sandbox-watch", "--pretty", "a.b", "c.*"]).expect("parses");
        assert_eq!(args.subjects, ["a.b", "c.*"]);
        assert!(args.pretty);
    }
}

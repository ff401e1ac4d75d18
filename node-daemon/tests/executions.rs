//! Runs and file transfers through the executor agent, against a real nats-server with JetStream,
//! the real Docker engine and the real `sandbox-executor:v1.0` image (ops/images/build.sh).

use std::fmt::Debug;
use std::time::Duration;

use async_nats::Subscriber;
use futures::StreamExt as _;
use messages::NodeCommand as _;
use messages::execution::{
    ExecutionOutput, ExecutionResult, ExecutionStarted, ExecutionStatus, Language, OutputStream,
    RunExecution,
};
use messages::files::{
    AbortUpload, CHUNK_BYTES, DeleteFile, FileKind, FileListing, ListFiles, ReadFileChunk,
    WorkspacePath, WriteFileChunk,
};
use messages::headers::MSG_ID;
use messages::subjects;
use messages::template::{ContainerSpec, NetworkMode};
use messages::{ErrorBody, ErrorCode, ExecutionId, Reply, SessionId};
use sandbox_ops::testkit;
use service_kit::bus::{self, BusError};

mod common;

use common::*;

const EXECUTOR_IMAGE: &str = "sandbox-executor:v1.0";
const PROTOCOL_LABEL: &str = "io.sandbox.executor-protocol";
/// How long past its own timeout a run's result may take to arrive in a test.
const RESULT_SLACK: Duration = Duration::from_secs(30);

/// A daemon with the EXECUTIONS stream in place (the scheduler and gateway make it in real life).
async fn harness(output_limit: u64) -> Harness {
    let harness = Harness::started(|config| config.output_limit = output_limit).await;
    require_executor_image(&harness).await;
    let jetstream = async_nats::jetstream::new(harness.client.clone());
    service_kit::streams::ensure_executions_stream(&jetstream)
        .await
        .expect("the EXECUTIONS stream exists");
    harness
}

async fn require_executor_image(harness: &Harness) {
    let image = harness
        .docker
        .inspect_image(EXECUTOR_IMAGE)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "{EXECUTOR_IMAGE} is missing ({error}): build it with `bash ops/images/build.sh`"
            )
        });
    let labels = image
        .config
        .and_then(|config| config.labels)
        .unwrap_or_default();
    assert_eq!(
        labels.get(PROTOCOL_LABEL).map(String::as_str),
        Some("1"),
        "{EXECUTOR_IMAGE} has no executor agent: rebuild it with `bash ops/images/build.sh`"
    );
}

fn executor_spec(harness: &Harness) -> ContainerSpec {
    let mut spec = harness.spec(NetworkMode::None);
    spec.image = EXECUTOR_IMAGE.to_owned();
    spec.resources.memory_mb = 256;
    spec.resources.pids_limit = 128;
    spec
}

async fn executor_session(harness: &Harness) -> SessionId {
    let session_id = new_session();
    harness
        .create_with(&session_id, executor_spec(harness))
        .await
        .expect("the executor container is created");
    session_id
}

fn new_execution() -> ExecutionId {
    ExecutionId::parse(uuid::Uuid::now_v7().to_string()).expect("a uuid is a valid execution id")
}

fn run_command(session_id: &SessionId, language: Language, code: &str) -> RunExecution {
    RunExecution {
        execution_id: new_execution(),
        session_id: session_id.clone(),
        language,
        code: code.to_owned(),
        stdin: String::new(),
        env: Default::default(),
        timeout_secs: 30,
        fresh: false,
    }
}

/// The events of one run as published.
#[derive(Debug)]
struct Finished {
    output: Vec<ExecutionOutput>,
    result: ExecutionResult,
}

impl Finished {
    fn stream(&self, stream: OutputStream) -> Vec<u8> {
        self.output
            .iter()
            .filter(|chunk| chunk.stream == stream)
            .flat_map(|chunk| chunk.data.iter().copied())
            .collect()
    }
}

/// Subscribes to the run's events, starts it, and collects them up to its result.
async fn run(harness: &Harness, command: RunExecution) -> Finished {
    let mut events = start(harness, &command).await;
    let within = Duration::from_secs(u64::from(command.timeout_secs)) + RESULT_SLACK;
    collect(&mut events, &command.execution_id, within).await
}

async fn start(harness: &Harness, command: &RunExecution) -> Subscriber {
    let events = harness
        .subscribe(subjects::execution_events(&command.execution_id))
        .await;
    let started: ExecutionStarted =
        bus::node_request(&harness.client, harness.node_id(), command, REQUEST_TIMEOUT)
            .await
            .expect("the run starts");
    assert_eq!(started.execution_id, command.execution_id);
    events
}

async fn collect(events: &mut Subscriber, id: &ExecutionId, within: Duration) -> Finished {
    let mut output: Vec<ExecutionOutput> = Vec::new();
    let collected = tokio::time::timeout(within, async {
        while let Some(message) = events.next().await {
            if message.subject.ends_with(".result") {
                let msg_id = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(MSG_ID));
                assert_eq!(
                    msg_id.map(|value| value.as_str().to_owned()),
                    Some(format!("{id}-result"))
                );
                let result: ExecutionResult = messages::decode(&message.payload).expect("a result");
                return result;
            }
            let chunk: ExecutionOutput = messages::decode(&message.payload).expect("an output");
            assert_eq!(&chunk.execution_id, id);
            assert_eq!(chunk.seq, output.len() as u64, "output comes in order");
            output.push(chunk);
        }
        panic!("the event subscription ended");
    })
    .await;
    let result = collected.unwrap_or_else(|_| panic!("no result within {within:?}"));
    assert_eq!(&result.execution_id, id);
    Finished { output, result }
}

/// The result the EXECUTIONS stream holds for run `id`.
async fn stored_result(harness: &Harness, id: &ExecutionId) -> ExecutionResult {
    let jetstream = async_nats::jetstream::new(harness.client.clone());
    let stream = jetstream
        .get_stream(subjects::executions_stream())
        .await
        .expect("the stream");
    let stored = stream
        .get_last_raw_message_by_subject(&subjects::execution_result(id))
        .await
        .expect("the result is stored");
    messages::decode(&stored.payload).expect("a stored result")
}

async fn python(harness: &Harness, session_id: &SessionId, code: &str) -> Finished {
    run(harness, run_command(session_id, Language::Python, code)).await
}

fn refusal<T: Debug>(result: Result<T, BusError>) -> ErrorBody {
    match result {
        Err(BusError::Remote(error)) => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn path(text: &str) -> WorkspacePath {
    WorkspacePath::parse(text).expect("a valid path")
}

#[tokio::test(flavor = "multi_thread")]
async fn code_runs_with_its_output_streamed_and_its_result_published() {
    let harness = harness(1024 * 1024).await;
    let session_id = executor_session(&harness).await;

    let finished = python(&harness, &session_id, "print(6*7)").await;
    assert_eq!(finished.output.len(), 1, "{finished:?}");
    assert_eq!(finished.output[0].stream, OutputStream::Stdout);
    assert_eq!(finished.output[0].data, b"42\n");
    let result = &finished.result;
    assert_eq!(result.status, ExecutionStatus::Completed, "{result:?}");
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.stdout, "42\n");
    assert_eq!(result.stderr, "");
    assert!(!result.truncated);
    assert_eq!(result.error, None);
    let started_at = result.started_at.expect("a start time");
    assert!(started_at <= result.completed_at);
    assert!(result.duration_ms.is_some());

    // The result is kept in the EXECUTIONS stream under its de-duplication id.
    assert_eq!(&stored_result(&harness, &result.execution_id).await, result);

    // Stateful Python keeps its globals; the last expression is the return value.
    let finished = python(&harness, &session_id, "x = 41").await;
    assert_eq!(finished.result.status, ExecutionStatus::Completed);
    let finished = python(&harness, &session_id, "print(x + 1)\nx").await;
    assert_eq!(finished.result.stdout, "42\n");
    assert_eq!(finished.result.return_value.as_deref(), Some("41"));

    let finished = python(
        &harness,
        &session_id,
        "import sys\nprint('to out')\nprint('to err', file=sys.stderr)",
    )
    .await;
    assert_eq!(finished.stream(OutputStream::Stdout), b"to out\n");
    assert_eq!(finished.stream(OutputStream::Stderr), b"to err\n");
    assert_eq!(finished.result.stdout, "to out\n");
    assert_eq!(finished.result.stderr, "to err\n");

    let mut shell = run_command(
        &session_id,
        Language::Shell,
        "echo \"$GREETING $WHO\"; exit 3",
    );
    shell.env.insert("WHO".to_owned(), "world".to_owned());
    let finished = run(&harness, shell).await;
    assert_eq!(finished.result.status, ExecutionStatus::Failed);
    assert_eq!(finished.result.exit_code, Some(3));
    assert_eq!(finished.result.stdout, "hello world\n");

    let javascript = run_command(&session_id, Language::Javascript, "console.log(20 + 22)");
    let finished = run(&harness, javascript).await;
    assert_eq!(finished.result.status, ExecutionStatus::Completed);
    assert_eq!(finished.result.stdout, "42\n");

    let mut with_stdin = run_command(
        &session_id,
        Language::Python,
        "import sys\nprint(sys.stdin.read().upper())",
    );
    with_stdin.stdin = "quiet".to_owned();
    with_stdin.fresh = true;
    let finished = run(&harness, with_stdin).await;
    assert_eq!(finished.result.stdout, "QUIET\n");

    let raised = python(&harness, &session_id, "raise ValueError('no')").await;
    assert_eq!(raised.result.status, ExecutionStatus::Failed);
    assert!(
        raised.result.stderr.contains("ValueError: no"),
        "{raised:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn output_past_the_cap_is_dropped_and_the_result_says_so() {
    const CAP: u64 = 64 * 1024;
    let harness = harness(CAP).await;
    let session_id = executor_session(&harness).await;
    let code = "import sys\nsys.stdout.write('x' * (3 << 20))\nsys.stderr.write('e' * 10)";
    let finished = python(&harness, &session_id, code).await;
    let result = &finished.result;
    assert_eq!(result.status, ExecutionStatus::Completed, "{result:?}");
    assert!(result.truncated);
    assert_eq!(result.stdout.len() as u64, CAP);
    assert_eq!(result.stderr, "e".repeat(10));
    assert_eq!(finished.stream(OutputStream::Stdout).len() as u64, CAP);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_past_its_timeout_is_killed_and_the_session_goes_on() {
    let harness = harness(1024 * 1024).await;
    let session_id = executor_session(&harness).await;
    let mut endless = run_command(&session_id, Language::Shell, "while :; do :; done");
    endless.timeout_secs = 1;
    let finished = run(&harness, endless).await;
    assert_eq!(
        finished.result.status,
        ExecutionStatus::Timeout,
        "{finished:?}"
    );

    let mut stateful = run_command(&session_id, Language::Python, "y = 1\nwhile True: pass");
    stateful.timeout_secs = 1;
    let finished = run(&harness, stateful).await;
    assert_eq!(
        finished.result.status,
        ExecutionStatus::Timeout,
        "{finished:?}"
    );

    let finished = python(&harness, &session_id, "print('still here')").await;
    assert_eq!(finished.result.stdout, "still here\n");
}

async fn write_file(harness: &Harness, session_id: &SessionId, target: &str, data: &[u8]) -> u64 {
    let chunks: Vec<&[u8]> = data.chunks(CHUNK_BYTES).collect();
    let mut last_progress = None;
    for (index, chunk) in chunks.iter().enumerate() {
        let command = WriteFileChunk {
            session_id: session_id.clone(),
            path: path(target),
            upload_id: "up-1".to_owned(),
            offset: (index * CHUNK_BYTES) as u64,
            data: chunk.to_vec(),
            last: index + 1 == chunks.len(),
        };
        let progress = bus::node_request(
            &harness.client,
            harness.node_id(),
            &command,
            REQUEST_TIMEOUT,
        )
        .await
        .expect("the chunk is written");
        assert_eq!(
            progress.received,
            (index * CHUNK_BYTES + chunk.len()) as u64
        );
        assert_eq!(progress.entry.is_some(), command.last);
        last_progress = Some(progress);
    }
    let entry = last_progress
        .and_then(|progress| progress.entry)
        .expect("the last chunk names the file");
    assert_eq!(entry.path, target);
    assert_eq!(entry.kind, FileKind::File);
    entry.size
}

async fn read_file(harness: &Harness, session_id: &SessionId, target: &str) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let command = ReadFileChunk {
            session_id: session_id.clone(),
            path: path(target),
            offset: data.len() as u64,
            // More than a chunk: the node caps it.
            length: u32::MAX,
        };
        let chunk = bus::node_request(
            &harness.client,
            harness.node_id(),
            &command,
            REQUEST_TIMEOUT,
        )
        .await
        .expect("the chunk is read");
        assert!(chunk.data.len() <= CHUNK_BYTES);
        data.extend_from_slice(&chunk.data);
        if chunk.eof {
            assert_eq!(chunk.size, data.len() as u64);
            return data;
        }
    }
}

async fn list(harness: &Harness, session_id: &SessionId, folder: &str) -> FileListing {
    let command = ListFiles {
        session_id: session_id.clone(),
        path: path(folder),
    };
    bus::node_request(
        &harness.client,
        harness.node_id(),
        &command,
        REQUEST_TIMEOUT,
    )
    .await
    .expect("the folder is listed")
}

#[tokio::test(flavor = "multi_thread")]
async fn files_go_up_in_chunks_come_back_whole_and_stay_inside_the_workspace() {
    let harness = harness(1024 * 1024).await;
    let session_id = executor_session(&harness).await;
    let data: Vec<u8> = (0..(2 * CHUNK_BYTES + 1234))
        .map(|index| (index * 7 % 251) as u8)
        .collect();
    let size = write_file(&harness, &session_id, "dir/data.bin", &data).await;
    assert_eq!(size, data.len() as u64);
    assert!(read_file(&harness, &session_id, "dir/data.bin").await == data);

    let listing = list(&harness, &session_id, "dir").await;
    assert_eq!(listing.path, "dir");
    let names: Vec<&str> = listing
        .entries
        .iter()
        .map(|entry| entry.name.as_str())
        .collect();
    assert_eq!(names, ["data.bin"]);
    assert_eq!(listing.entries[0].size, data.len() as u64);
    let root = list(&harness, &session_id, "").await;
    assert!(
        root.entries
            .iter()
            .any(|entry| entry.name == "dir" && entry.kind == FileKind::Directory),
        "{root:?}"
    );

    // The code sees the uploaded file.
    let finished = python(
        &harness,
        &session_id,
        "import os\nprint(os.path.getsize('dir/data.bin'))",
    )
    .await;
    assert_eq!(finished.result.stdout, format!("{}\n", data.len()));

    // An aborted upload leaves nothing behind.
    let first = WriteFileChunk {
        session_id: session_id.clone(),
        path: path("dir/partial.bin"),
        upload_id: "up-2".to_owned(),
        offset: 0,
        data: vec![1; 10],
        last: false,
    };
    bus::node_request(&harness.client, harness.node_id(), &first, REQUEST_TIMEOUT)
        .await
        .expect("the first chunk is written");
    let abort = AbortUpload {
        session_id: session_id.clone(),
        path: path("dir/partial.bin"),
        upload_id: "up-2".to_owned(),
    };
    bus::node_request(&harness.client, harness.node_id(), &abort, REQUEST_TIMEOUT)
        .await
        .expect("the upload is aborted");
    assert_eq!(list(&harness, &session_id, "dir").await.entries.len(), 1);

    let delete = DeleteFile {
        session_id: session_id.clone(),
        path: path("dir/data.bin"),
    };
    let deleted = bus::node_request(&harness.client, harness.node_id(), &delete, REQUEST_TIMEOUT)
        .await
        .expect("the file is deleted");
    assert_eq!(deleted.path, "dir/data.bin");
    let gone = ReadFileChunk {
        session_id: session_id.clone(),
        path: path("dir/data.bin"),
        offset: 0,
        length: 10,
    };
    let error = refusal(
        bus::node_request(&harness.client, harness.node_id(), &gone, REQUEST_TIMEOUT).await,
    );
    assert_eq!(error.code, ErrorCode::NotFound, "{error:?}");

    // A symlink out of the workspace is refused by the agent, which sees the real files.
    let link = run_command(&session_id, Language::Shell, "ln -s /etc /workspace/out");
    assert_eq!(
        run(&harness, link).await.result.status,
        ExecutionStatus::Completed
    );
    let escape = ReadFileChunk {
        session_id: session_id.clone(),
        path: path("out/passwd"),
        offset: 0,
        length: 100,
    };
    let error = refusal(
        bus::node_request(&harness.client, harness.node_id(), &escape, REQUEST_TIMEOUT).await,
    );
    assert_eq!(error.code, ErrorCode::InvalidRequest, "{error:?}");
    assert!(error.message.contains("/workspace"), "{error:?}");

    // A path with `..` does not even decode.
    #[derive(serde::Serialize)]
    struct RawList<'a> {
        session_id: &'a SessionId,
        path: &'a str,
    }
    let raw = RawList {
        session_id: &session_id,
        path: "../etc",
    };
    let answer = harness
        .client
        .request(
            subjects::node_command(harness.node_id(), ListFiles::VERB),
            messages::encode(&raw).expect("encodes").into(),
        )
        .await
        .expect("answered");
    match messages::decode::<Reply<FileListing>>(&answer.payload).expect("a reply") {
        Reply::Error(error) => assert_eq!(error.code, ErrorCode::InvalidRequest),
        Reply::Ok(listing) => panic!("listed {listing:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_without_an_agent_or_a_container_are_refused_clearly() {
    let harness = harness(1024 * 1024).await;
    let plain = new_session();
    harness.create(&plain).await;
    let command = run_command(&plain, Language::Python, "print(1)");
    let error = refusal(
        bus::node_request::<RunExecution>(
            &harness.client,
            harness.node_id(),
            &command,
            REQUEST_TIMEOUT,
        )
        .await,
    );
    assert_eq!(error.code, ErrorCode::Conflict, "{error:?}");
    assert!(error.message.contains("has no executor agent"), "{error:?}");
    let listing = ListFiles {
        session_id: plain.clone(),
        path: path(""),
    };
    let error = refusal(
        bus::node_request(
            &harness.client,
            harness.node_id(),
            &listing,
            REQUEST_TIMEOUT,
        )
        .await,
    );
    assert_eq!(error.code, ErrorCode::Conflict, "{error:?}");

    let nowhere = run_command(&new_session(), Language::Python, "print(1)");
    let error = refusal(
        bus::node_request(
            &harness.client,
            harness.node_id(),
            &nowhere,
            REQUEST_TIMEOUT,
        )
        .await,
    );
    assert_eq!(error.code, ErrorCode::NotFound, "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_the_container_ends_a_run_in_progress_with_an_error() {
    let harness = harness(1024 * 1024).await;
    let session_id = executor_session(&harness).await;
    let mut long = run_command(
        &session_id,
        Language::Python,
        "import time\nprint('started', flush=True)\ntime.sleep(600)",
    );
    long.timeout_secs = 900;
    let mut events = start(&harness, &long).await;
    // The first output shows the run is going.
    let first = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("output in time")
        .expect("an event");
    let first: ExecutionOutput = messages::decode(&first.payload).expect("an output");
    assert_eq!(first.data, b"started\n");

    // The same request again (say, redelivered) is answered with the run already going.
    let again: ExecutionStarted =
        bus::node_request(&harness.client, harness.node_id(), &long, REQUEST_TIMEOUT)
            .await
            .expect("the repeat is answered");
    assert_eq!(again.execution_id, long.execution_id);

    // The remove does not wait for the run.
    let removed = tokio::time::timeout(WAIT, harness.remove(&session_id))
        .await
        .expect("the remove is answered while the run goes on");
    assert!(removed.removed);
    let finished = collect(&mut events, &long.execution_id, WAIT).await;
    assert_eq!(
        finished.result.status,
        ExecutionStatus::Error,
        "{finished:?}"
    );
    assert_eq!(
        finished.result.error.as_deref(),
        Some("the session's container stopped")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_daemon_attaches_again_and_the_state_is_kept() {
    let mut harness = harness(1024 * 1024).await;
    let session_id = executor_session(&harness).await;
    python(&harness, &session_id, "kept = 'yes'").await;
    harness.stop().await;
    harness.start().await;
    let finished = python(&harness, &session_id, "print(kept)").await;
    assert_eq!(finished.result.stdout, "yes\n", "{finished:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_still_going_at_shutdown_reports_before_the_daemon_stops() {
    let mut harness = harness(1024 * 1024).await;
    let session_id = executor_session(&harness).await;
    let command = run_command(&session_id, Language::Shell, "sleep 2; echo done");
    let _events = start(&harness, &command).await;
    harness.stop().await;

    // The daemon waited for the run's follower: the result was stored before it stopped.
    let stored = stored_result(&harness, &command.execution_id).await;
    assert_eq!(stored.status, ExecutionStatus::Completed, "{stored:?}");
    assert_eq!(stored.stdout, "done\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_limit_the_server_cannot_carry_stops_the_start() {
    // The test server takes 8 MB messages; two 8 MiB streams do not fit.
    let harness = Harness::new(|config| config.output_limit = 8 * 1024 * 1024).await;
    let error = node_daemon::start(harness.config.clone(), Default::default())
        .await
        .expect_err("the start is refused");
    assert!(format!("{error:#}").contains("max_payload"), "{error:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_out_of_memory_fails_and_says_so() {
    let harness = harness(1024 * 1024).await;
    let session_id = new_session();
    let mut spec = executor_spec(&harness);
    spec.resources.memory_mb = 128;
    harness
        .create_with(&session_id, spec)
        .await
        .expect("the executor container is created");
    let mut hog = run_command(
        &session_id,
        Language::Python,
        "chunks = []\nwhile True: chunks.append(bytearray(16 << 20))",
    );
    hog.fresh = true;
    let finished = run(&harness, hog).await;
    let result = &finished.result;
    assert_eq!(result.status, ExecutionStatus::Failed, "{result:?}");
    assert!(
        result
            .error
            .as_deref()
            .is_some_and(|error| error.starts_with("out of memory")),
        "{result:?}"
    );
    let finished = python(&harness, &session_id, "print('after')").await;
    assert_eq!(finished.result.stdout, "after\n");
}

/// An image that claims the agent protocol but whose "agent" only echoes its stdin: it never
/// answers, and everything it writes is a line that is not a frame.
const SILENT_AGENT_IMAGE: &str = "sandbox-test-silent-agent:1";

fn ensure_silent_agent_image() {
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", SILENT_AGENT_IMAGE])
        .output()
        .expect("docker runs")
        .status
        .success();
    if present {
        return;
    }
    let base = testkit::ensure_test_image().expect("the test image is built");
    let name = testkit::unique_name("silent-agent");
    let script = format!(
        "docker create --name {name} {base} >/dev/null && \
         docker commit --change 'LABEL {PROTOCOL_LABEL}=1' --change 'CMD [\"/bin/cat\"]' \
         {name} {SILENT_AGENT_IMAGE} >/dev/null; status=$?; docker rm {name} >/dev/null; \
         exit $status"
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "making {SILENT_AGENT_IMAGE}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_never_answers_cannot_keep_anyone_waiting() {
    ensure_silent_agent_image();
    let harness = harness(1024 * 1024).await;
    let session_id = new_session();
    let mut spec = harness.spec(NetworkMode::None);
    spec.image = SILENT_AGENT_IMAGE.to_owned();
    harness
        .create_with(&session_id, spec)
        .await
        .expect("the container is created");
    let mut command = run_command(&session_id, Language::Shell, "true");
    command.timeout_secs = 1;
    let listing = ListFiles {
        session_id: session_id.clone(),
        path: path(""),
    };
    // The run starts first: the listing then waits on the agent alongside it.
    let mut events = start(&harness, &command).await;
    let within = Duration::from_secs(1) + RESULT_SLACK;
    let (finished, listed) = tokio::join!(
        collect(&mut events, &command.execution_id, within),
        bus::node_request(
            &harness.client,
            harness.node_id(),
            &listing,
            REQUEST_TIMEOUT + WAIT
        ),
    );
    assert_eq!(finished.result.status, ExecutionStatus::Error);
    assert_eq!(
        finished.result.error.as_deref(),
        Some("the executor did not report in time")
    );
    let error = refusal(listed);
    assert_eq!(error.code, ErrorCode::Timeout, "{error:?}");

    // A request waiting on the agent does not hold up the session's removal.
    let listing = bus::node_request::<ListFiles>(
        &harness.client,
        harness.node_id(),
        &listing,
        REQUEST_TIMEOUT + WAIT,
    );
    let remove = async {
        // Lets the listing reach the agent first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::time::timeout(WAIT, harness.remove(&session_id))
            .await
            .expect("the remove is answered while the listing waits")
    };
    let (listed, removed) = tokio::join!(listing, remove);
    assert!(removed.removed);
    let error = refusal(listed);
    assert_eq!(error.code, ErrorCode::Conflict, "{error:?}");
    assert!(error.message.contains("stopped"), "{error:?}");
}

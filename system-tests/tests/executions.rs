//! Running code and moving files in a session, through HTTP, against real sessions: real NATS,
//! the real Docker engine and the real `sandbox-executor:v1.0` image with its agent.

mod common;

use std::time::{Duration, Instant};

use common::{Options, System, require_executor_image};
use serde_json::{Value, json};

/// A system with one node, on the executor image.
async fn executor_system() -> System {
    require_executor_image();
    System::with_node().await
}

/// A running `python-basic` session of a system, to run code and move files in.
struct Session<'a> {
    system: &'a System,
    id: String,
    container: String,
}

impl<'a> Session<'a> {
    async fn create(system: &'a System) -> Self {
        let session = system
            .create_session(json!({"template_id": "python-basic"}))
            .await;
        let text = |field: &str| session[field].as_str().expect(field).to_owned();
        Self {
            system,
            id: text("id"),
            container: text("container_id"),
        }
    }

    /// `/api/v1/sessions/<id><rest>`.
    fn path(&self, rest: &str) -> String {
        format!("/api/v1/sessions/{}{rest}", self.id)
    }

    /// Runs `body` in the session and waits for the result.
    async fn run(&self, body: Value) -> Value {
        let (status, execution) = self
            .system
            .post_json(&self.path("/executions"), &body)
            .await;
        assert_eq!(status, 201, "{execution}");
        execution
    }

    async fn python(&self, code: &str) -> Value {
        self.run(json!({"code": code, "language": "python"})).await
    }
}

/// A run's stderr.
fn stderr(execution: &Value) -> &str {
    execution["stderr"].as_str().expect("stderr")
}

/// An id no session or execution has.
const UNKNOWN_ID: &str = "0193a1b2-0000-7000-8000-000000000000";

/// A GET that is not answered JSON (an event stream, a download), expected to answer 200.
async fn get_ok(system: &System, url: String) -> reqwest::Response {
    let response = system.http.get(&url).send().await.expect("answered");
    assert_eq!(response.status(), 200, "GET {url}");
    response
}

/// The command lines of the processes in a container, as `docker top` shows them.
fn processes(container_id: &str) -> String {
    let output = std::process::Command::new("docker")
        .args(["top", container_id, "-o", "pid,args"])
        .output()
        .expect("docker top runs");
    assert!(output.status.success(), "docker top failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn each_language_runs_with_its_output_exit_code_and_record() {
    let system = executor_system().await;
    let session = Session::create(&system).await;

    let execution = session.python("print(6*7)").await;
    assert_eq!(execution["status"], "completed");
    assert_eq!(execution["exit_code"], 0);
    assert_eq!(execution["stdout"], "42\n");
    assert_eq!(execution["stderr"], "");
    assert_eq!(execution["language"], "python");
    assert_eq!(execution["session_id"], session.id.as_str());
    assert_eq!(execution["truncated"], false);
    assert!(execution["duration_ms"].as_u64().is_some());
    assert!(execution["started_at"].is_string() && execution["completed_at"].is_string());

    let shell = session
        .run(json!({"code": "echo out; echo err >&2; read line; echo \"got $line $GREETING\"; exit 3",
               "language": "shell", "stdin": "input\n", "env": {"GREETING": "hi"}}))
        .await;
    assert_eq!(shell["status"], "failed");
    assert_eq!(shell["exit_code"], 3);
    assert_eq!(shell["stdout"], "out\ngot input hi\n");
    assert_eq!(shell["stderr"], "err\n");

    let javascript = session
        .run(json!({"code": "console.log([1, 2, 3].map(x => x * 2).join(',')); console.error('warn'); process.exit(2)",
               "language": "javascript"}))
        .await;
    assert_eq!(javascript["status"], "failed");
    assert_eq!(javascript["exit_code"], 2);
    assert_eq!(javascript["stdout"], "2,4,6\n");
    assert_eq!(javascript["stderr"], "warn\n");

    let raised = session.python("raise ValueError('boom')").await;
    assert_eq!(raised["status"], "failed");
    assert_eq!(raised["exit_code"], 1);
    assert!(stderr(&raised).contains("ValueError: boom"), "{raised}");

    // Each run is stored and readable, and the session lists them newest first.
    let (status, read_back) = system
        .get(&format!(
            "/api/v1/executions/{}",
            execution["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(read_back, execution);
    let (status, page) = system.get(&session.path("/executions?limit=2")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total"], 4);
    assert_eq!(page["executions"][0]["id"], raised["id"]);
    assert_eq!(page["executions"][1]["id"], javascript["id"]);
    let (_, rest) = system
        .get(&session.path("/executions?limit=2&offset=2"))
        .await;
    assert_eq!(rest["executions"][1]["id"], execution["id"]);

    // The executions table holds it, as DESIGN.md names it.
    let pool = system.sql_pool().await;
    let (code, stdout, exit_code): (String, String, i64) =
        sqlx::query_as("SELECT code, stdout, exit_code FROM executions WHERE id = $1")
            .bind(execution["id"].as_str().expect("id"))
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_eq!(
        (code.as_str(), stdout.as_str(), exit_code),
        ("print(6*7)", "42\n", 0)
    );

    // Without waiting: 202 at once, the result later at the execution's URL.
    let (status, started) = system
        .post_json(
            &session.path("/executions?wait=false"),
            &json!({"code": "import time; time.sleep(0.5); print('late')"}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["status"], "running");
    let path = format!("/api/v1/executions/{}", started["id"].as_str().expect("id"));
    let mut finished = Value::Null;
    for _ in 0..100 {
        let (_, execution) = system.get(&path).await;
        if execution["status"] != "running" {
            finished = execution;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(finished["status"], "completed", "{finished}");
    assert_eq!(finished["stdout"], "late\n");
}

#[tokio::test]
async fn python_state_persists_until_the_interpreter_is_killed() {
    let system = executor_system().await;
    let session = Session::create(&system).await;

    session
        .python("x = 41\nimport json\nlog = open('log.txt', 'w')")
        .await;
    let next = session
        .python("print(x + 1)\nlog.write('kept')\nprint(json.dumps([x]))")
        .await;
    assert_eq!(next["stdout"], "42\n[41]\n", "{next}");
    let value = session.python("x * 2").await;
    assert_eq!(value["return_value"], "82");

    // A fresh process shares nothing with the session's interpreter.
    let fresh = session
        .run(json!({"code": "print(x)", "fresh": true}))
        .await;
    assert_eq!(fresh["status"], "failed");
    assert!(stderr(&fresh).contains("NameError"), "{fresh}");

    // A timeout interrupts the running code and keeps the state.
    let interrupted = session
        .run(json!({"code": "while True: pass", "timeout": 2}))
        .await;
    assert_eq!(interrupted["status"], "timeout", "{interrupted}");
    assert_eq!(interrupted["state_lost"], false);
    assert_eq!(session.python("print(x)").await["stdout"], "41\n");

    // Code that ignores the interrupt gets its interpreter killed: the state is gone, said so,
    // and the next run starts clean.
    let stubborn = session
        .run(json!({"code": "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
               "timeout": 2}))
        .await;
    assert_eq!(stubborn["status"], "timeout");
    assert_eq!(stubborn["state_lost"], true, "{stubborn}");
    let after = session.python("print(x)").await;
    assert_eq!(after["status"], "failed");
    assert!(stderr(&after).contains("NameError"), "{after}");
    assert_eq!(
        session.python("print('fresh start')").await["stdout"],
        "fresh start\n"
    );
}

#[tokio::test]
async fn limits_hold_and_the_node_and_other_sessions_carry_on() {
    let system = executor_system().await;
    let session = Session::create(&system).await;
    let bystander = Session::create(&system).await;

    // A timeout kills the whole tree, children included.
    let looping = session
        .run(
            json!({"code": "sleep 1001 & sleep 1002 & while true; do :; done",
               "language": "shell", "timeout": 2}),
        )
        .await;
    assert_eq!(looping["status"], "timeout", "{looping}");
    let left = processes(&session.container);
    assert!(
        !left.contains("sleep 100"),
        "children survived the timeout:\n{left}"
    );

    // Output is capped per stream (1 MiB by default) and says so.
    let loud = session
        .run(json!({"code": "import sys\nsys.stdout.write('x' * (3 << 20))\nsys.stderr.write('e' * 10)",
               "fresh": true}))
        .await;
    assert_eq!(loud["status"], "completed", "{}", loud["error"]);
    assert_eq!(loud["stdout"].as_str().expect("stdout").len(), 1 << 20);
    assert_eq!(loud["stderr"], "eeeeeeeeee");
    assert_eq!(loud["truncated"], true);

    // Past the session's memory limit (512 MiB): out of memory, reported as such.
    let hungry = session
        .run(json!({"code": "chunks = []\nwhile True: chunks.append(b'x' * (16 << 20))", "fresh": true,
               "timeout": 60}))
        .await;
    assert_eq!(hungry["status"], "failed", "{hungry}");
    assert!(
        hungry["error"]
            .as_str()
            .unwrap_or_default()
            .contains("memory"),
        "{hungry}"
    );

    // A fork bomb meets the pids limit: it fails to fork or runs into its timeout, and either
    // way none of its processes outlive the run.
    let bomb = session
        .run(
            json!({"code": "bomb() { bomb | bomb & }; bomb; sleep 1000", "language": "shell",
               "timeout": 5}),
        )
        .await;
    assert!(
        bomb["status"] == "failed" || bomb["status"] == "timeout",
        "{}",
        bomb["status"]
    );
    let left = processes(&session.container);
    assert!(
        !left.contains("sh -c"),
        "the fork bomb outlived its run:\n{left}"
    );

    // The session, its neighbour and the node all still work.
    assert_eq!(
        session.python("print('still here')").await["stdout"],
        "still here\n"
    );
    assert_eq!(bystander.python("print(1)").await["stdout"], "1\n");
    let (status, node) = system
        .get(&format!("/api/v1/nodes/{}", system.node_ids()[0]))
        .await;
    assert_eq!((status, node["status"].as_str()), (200, Some("online")));
}

/// Reads Server-Sent Events from `response` until the `result` event; returns each event's
/// name, data, and when it arrived.
async fn read_events(mut response: reqwest::Response) -> Vec<(String, Value, Instant)> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), response.chunk())
        .await
        .expect("events keep coming")
        .expect("stream readable")
    {
        buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let data: Value = serde_json::from_str(&data).expect("JSON event data");
            let is_result = name == "result";
            events.push((name, data, Instant::now()));
            if is_result {
                return events;
            }
        }
    }
    panic!("the stream ended without a result event: {events:?}");
}

#[tokio::test]
async fn output_streams_while_the_program_runs_and_replays_after() {
    let system = executor_system().await;
    let session = Session::create(&system).await;

    // Six lines, half a second apart: the run lasts three seconds.
    let code = "import sys, time\nfor i in range(6):\n    print(i)\n    print('e', i, file=sys.stderr)\n    time.sleep(0.5)";
    let (status, started) = system
        .post_json(
            &session.path("/executions?wait=false"),
            &json!({"code": code}),
        )
        .await;
    assert_eq!(status, 202);
    let execution_id = started["id"].as_str().expect("id").to_owned();
    let stream = system.url(&format!("/api/v1/executions/{execution_id}/stream"));
    let response = get_ok(&system, stream.clone()).await;
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("header")
            .starts_with("text/event-stream")
    );
    let events = read_events(response).await;

    // The first line arrives while the program still runs, not with its result.
    let (name, first, first_at) = &events[0];
    assert_eq!(
        (name.as_str(), first["data"].as_str()),
        ("stdout", Some("0\n"))
    );
    let (_, result, result_at) = events.last().expect("the result event");
    assert!(
        result_at.duration_since(*first_at) > Duration::from_secs(1),
        "the output came only at the end"
    );

    let mut stdout = String::new();
    let mut stderr = String::new();
    for (name, data, _) in &events[..events.len() - 1] {
        match name.as_str() {
            "stdout" => stdout.push_str(data["data"].as_str().expect("text")),
            "stderr" => stderr.push_str(data["data"].as_str().expect("text")),
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(stdout, "0\n1\n2\n3\n4\n5\n");
    assert_eq!(stderr, "e 0\ne 1\ne 2\ne 3\ne 4\ne 5\n");
    assert_eq!(result["status"], "completed");
    assert_eq!(result["stdout"], stdout.as_str());

    // After the end, the stream replays the record.
    let response = get_ok(&system, stream).await;
    let replay: Vec<String> = read_events(response)
        .await
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    assert_eq!(replay, ["stdout", "stderr", "result"]);

    let (status, missing) = system
        .get(&format!("/api/v1/executions/{UNKNOWN_ID}/stream"))
        .await;
    assert_eq!(status, 404, "{missing}");
}

#[tokio::test]
async fn files_move_whole_and_paths_stay_inside_the_workspace() {
    let system = executor_system().await;
    let session = Session::create(&system).await;
    let files = |path: &str| system.url(&session.path(&format!("/files/{path}")));

    // 50 MiB of bytes that are not text, up and down, compared byte for byte.
    let big: Vec<u8> = (0..50u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let response = system
        .http
        .put(files("data/big.bin"))
        .body(big.clone())
        .send()
        .await
        .expect("upload answered");
    assert_eq!(response.status(), 201);
    let entry: Value = response.json().await.expect("JSON");
    assert_eq!(entry["size"], 50u64 << 20);
    assert_eq!(entry["kind"], "file");
    assert_eq!(entry["path"], "data/big.bin");
    let response = get_ok(&system, files("data/big.bin")).await;
    assert_eq!(
        response.headers()["content-length"]
            .to_str()
            .expect("header"),
        (50u64 << 20).to_string()
    );
    let downloaded = response.bytes().await.expect("body");
    assert!(
        downloaded.len() == big.len() && downloaded == big,
        "the file changed in transit"
    );
    drop(big);

    // The walk-through: upload a CSV, sum a column in Python, download the result.
    let csv = "name,amount\na,10\nb,20\nc,12\n";
    let response = system
        .http
        .put(files("in/sales.csv"))
        .body(csv)
        .send()
        .await
        .expect("upload answered");
    assert_eq!(response.status(), 201);
    let summed = session
        .python(
            "import csv, os\n\
         rows = list(csv.DictReader(open('in/sales.csv')))\n\
         total = sum(int(row['amount']) for row in rows)\n\
         os.makedirs('out', exist_ok=True)\n\
         with open('out/total.txt', 'w') as out:\n    out.write(str(total))\n\
         print(total)",
        )
        .await;
    assert_eq!(summed["stdout"], "42\n", "{summed}");
    let total = get_ok(&system, files("out/total.txt"))
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(total, "42");

    let (status, listing) = system.get(&session.path("/files?path=in")).await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing["entries"][0]["name"], "sales.csv");
    assert_eq!(listing["entries"][0]["size"], csv.len());
    let (_, root) = system.get(&session.path("/files")).await;
    let names: Vec<&str> = root["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|entry| entry["name"].as_str())
        .collect();
    assert_eq!(names, ["data", "in", "out"]);

    let (status, _) = system.delete(&session.path("/files/data")).await;
    assert_eq!(status, 200);
    let (status, gone) = system.get(&session.path("/files/data/big.bin")).await;
    assert_eq!(status, 404, "{gone}");

    // Escapes are refused with 400 and change nothing.
    session
        .python("import os\nos.symlink('/etc', 'etc-link')")
        .await;
    // Slashes inside a segment are encoded, so the client does not resolve the dots itself.
    for path in [
        "..%2Fescape.txt",
        "in%2F..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "etc-link/passwd",
    ] {
        let (status, body) = system.get(&session.path(&format!("/files/{path}"))).await;
        assert_eq!(status, 400, "GET {path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
        let response = system
            .http
            .put(files(path))
            .body("x")
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 400, "PUT {path}");
    }
    let (status, _) = system.get(&session.path("/files?path=etc-link")).await;
    assert_eq!(status, 400);
    let check = session
        .python("import os\nprint(os.path.exists('/escape.txt'), os.path.exists('/etc/x'))")
        .await;
    assert_eq!(check["stdout"], "False False\n");
}

#[tokio::test]
async fn bad_execution_requests_get_clear_errors_and_change_nothing() {
    let system = executor_system().await;
    let session = Session::create(&system).await;
    let path = session.path("/executions");

    for (body, expected) in [
        (json!({"code": "print(1)", "timeout": 0}), 422),
        (json!({"code": "print(1)", "timeout": 3601}), 422),
        (json!({"code": "print(1)", "language": "ruby"}), 422),
        (json!({"language": "python"}), 422),
        (json!({"code": "print(1)", "env": {"1BAD": "x"}}), 422),
        (json!({"code": "print(1)", "colour": "blue"}), 422),
    ] {
        let (status, error) = system.post_json(&path, &body).await;
        assert_eq!(status, expected, "{body} -> {error}");
        assert!(error["error"]["message"].is_string(), "{error}");
    }
    let (status, error) = system.post_raw(&path, "{not json").await;
    assert_eq!(status, 400, "{error}");
    let (_, page) = system.get(&path).await;
    assert_eq!(page["total"], 0, "a refused request was recorded");

    let unknown_session = format!("/api/v1/sessions/{UNKNOWN_ID}/executions");
    let (status, error) = system
        .post_json(&unknown_session, &json!({"code": "print(1)"}))
        .await;
    assert_eq!(status, 404, "{error}");
    let (status, _) = system.get("/api/v1/executions/no-such-run").await;
    assert_eq!(status, 404);
    let (status, _) = system
        .get(&format!("/api/v1/sessions/{UNKNOWN_ID}/files?path="))
        .await;
    assert_eq!(status, 404);

    // A session that is no longer running takes no code and serves no files.
    let (status, _) = system.delete(&session.path("")).await;
    assert_eq!(status, 200);
    let (status, error) = system.post_json(&path, &json!({"code": "print(1)"})).await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["error"]["code"], "conflict");
    let (status, _) = system.get(&session.path("/files?path=")).await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn the_seeds_result_callback_records_one_result_and_needs_the_token() {
    require_executor_image();
    const TOKEN: &str = "callback-test-token-0123456789";
    let mut system = System::start(Options {
        internal_token: Some(TOKEN.to_owned()),
        ..Options::default()
    })
    .await;
    system.start_node().await;
    let session = Session::create(&system).await;
    let (status, started) = system
        .post_json(
            &session.path("/executions?wait=false"),
            &json!({"code": "import time\ntime.sleep(20)", "timeout": 60}),
        )
        .await;
    assert_eq!(status, 202);
    let execution_id = started["id"].as_str().expect("id");
    let path = format!("/internal/executions/{execution_id}/result");
    let result = json!({"status": "success", "stdout": "from the executor\n", "stderr": "",
        "exit_code": 0, "execution_time": 1.25, "return_value": {"answer": 42},
        "metrics": {"cpu_seconds": 0.5}});

    let (status, body) = system.post_internal(&path, None, &result).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = system
        .post_internal(&path, Some(TOKEN), &json!({"status": "finished"}))
        .await;
    assert_eq!(status, 422, "{body}");
    let (_, unchanged) = system
        .get(&format!("/api/v1/executions/{execution_id}"))
        .await;
    assert_eq!(unchanged["status"], "running");

    let (status, recorded) = system.post_internal(&path, Some(TOKEN), &result).await;
    assert_eq!(status, 200, "{recorded}");
    assert_eq!(recorded["status"], "completed");
    assert_eq!(recorded["stdout"], "from the executor\n");
    assert_eq!(recorded["duration_ms"], 1250);
    assert_eq!(recorded["return_value"], "{\"answer\":42}");
    assert_eq!(recorded["metrics"], json!({"cpu_seconds": 0.5}));

    // The same result again is answered with the record; nothing is recorded twice.
    let (status, again) = system.post_internal(&path, Some(TOKEN), &result).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, recorded);
    let (_, page) = system.get(&session.path("/executions")).await;
    assert_eq!(page["total"], 1);

    // A different result for a run that has one is a conflict and changes nothing.
    let other = json!({"status": "failed", "stdout": "", "stderr": "boom", "exit_code": 1});
    let (status, conflict) = system.post_internal(&path, Some(TOKEN), &other).await;
    assert_eq!(status, 409, "{conflict}");
    let (_, read_back) = system
        .get(&format!("/api/v1/executions/{execution_id}"))
        .await;
    assert_eq!(read_back, recorded);

    let (status, _) = system
        .post_internal(
            &format!("/internal/executions/{UNKNOWN_ID}/result"),
            Some(TOKEN),
            &result,
        )
        .await;
    assert_eq!(status, 404);
}

/// `curl -F file=@data.bin`'s body, by hand: a text field first, then the file.
fn multipart_body(boundary: &str, file: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nnot the file\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

#[tokio::test]
async fn a_multipart_upload_stores_the_file_not_the_form() {
    let system = executor_system().await;
    let session = Session::create(&system).await;
    let files = |path: &str| system.url(&session.path(&format!("/files/{path}")));

    // More than a chunk, with line breaks and dashes that look like a boundary's start.
    let file: Vec<u8> = (0..300 * 1024u32)
        .map(|i| match i % 97 {
            0 => b'\r',
            1 => b'\n',
            2 | 3 => b'-',
            _ => (i.wrapping_mul(31) >> 3) as u8,
        })
        .collect();
    let boundary = "------------------------d74496d66958873e";
    let response = system
        .http
        .put(files("up/data.bin"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(multipart_body(boundary, &file))
        .send()
        .await
        .expect("upload answered");
    assert_eq!(response.status(), 201);
    let entry: Value = response.json().await.expect("JSON");
    assert_eq!(entry["size"], file.len(), "{entry}");
    let stored = get_ok(&system, files("up/data.bin"))
        .await
        .bytes()
        .await
        .expect("body");
    assert!(
        stored.as_ref() == file.as_slice(),
        "the stored file is not the uploaded one ({} bytes stored)",
        stored.len()
    );

    // A form without a file field stores nothing.
    let response = system
        .http
        .put(files("up/none.bin"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--{boundary}--\r\n"
        ))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 422);

    let (status, body) = system.get(&session.path("/files/up/none.bin")).await;
    assert_eq!(status, 404, "{body}");

    // What `curl --data-binary @FILE` sends: the bytes as they are, labelled form-encoded.
    let raw = b"a=1&b=2\r\nline two\n--not-a-boundary\n";
    let response = system
        .http
        .put(files("up/raw.txt"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(raw.to_vec())
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 201);
    let stored = get_ok(&system, files("up/raw.txt"))
        .await
        .bytes()
        .await
        .expect("body");
    assert_eq!(stored.as_ref(), raw);
}

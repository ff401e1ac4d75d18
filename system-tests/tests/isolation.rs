//! Holding strangers' code, through HTTP against real sessions (real NATS, Docker, runsc and
//! iptables): the disk quota, the read-only root and the rest of the lockdown, the agent's
//! channel, density, gVisor, and the egress rules of a networked sandbox. Network traffic stays
//! on this machine: a listener on the host side of the bridge, and a test host in a network
//! namespace this test makes (198.18/15, the benchmarking range, stands in for the internet).

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{System, require_executor_image};
use serde_json::{Value, json};

async fn executor_system() -> System {
    require_executor_image();
    System::with_node().await
}

/// Creates a session of `template_id` and returns its id.
async fn session_of(system: &System, template_id: &str) -> String {
    let session = system
        .create_session(json!({"template_id": template_id}))
        .await;
    session["id"].as_str().expect("id").to_owned()
}

/// Runs `code` in `language` in the session and returns the result.
async fn run(system: &System, session_id: &str, language: &str, code: &str) -> Value {
    let (status, execution) = system
        .post_json(
            &format!("/api/v1/sessions/{session_id}/executions"),
            &json!({"code": code, "language": language, "timeout": 60}),
        )
        .await;
    assert_eq!(status, 201, "{execution}");
    execution
}

fn text<'a>(execution: &'a Value, field: &str) -> &'a str {
    execution[field].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_quota_and_a_read_only_root_bound_what_a_sandbox_writes() {
    let system = executor_system().await;
    let template = json!({"id": "quota", "image": "sandbox-executor:v1.0", "disk_mb": 256});
    let (status, body) = system.post_json("/api/v1/templates", &template).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["resources"]["disk_mb"], 256);
    let session = session_of(&system, "quota").await;

    // 400 MiB into a 256 MiB quota, in /workspace and then in /tmp: refused inside.
    for dir in ["/workspace", "/tmp"] {
        let written = run(
            &system,
            &session,
            "shell",
            &format!("dd if=/dev/zero of={dir}/big bs=1M count=400; echo rc=$?; rm -f {dir}/big"),
        )
        .await;
        assert!(
            text(&written, "stderr").contains("No space left on device"),
            "{dir}: {written}"
        );
        assert!(text(&written, "stdout").contains("rc=1"), "{written}");
    }
    // The session carries on.
    let alive = run(&system, &session, "python", "print(6 * 7)").await;
    assert_eq!(text(&alive, "stdout"), "42\n", "{alive}");

    // Nothing else is writable, the Docker socket is not there, and the limits hold.
    let lockdown = run(
        &system,
        &session,
        "shell",
        "for f in /etc/x /usr/x /root/x /x; do touch $f 2>&1; done; \
         ls /var/run/docker.sock /run/docker.sock 2>&1; \
         echo nofile=$(ulimit -n) core=$(ulimit -c); df -m /dev/shm | tail -1",
    )
    .await;
    let out = format!("{}{}", text(&lockdown, "stdout"), text(&lockdown, "stderr"));
    assert_eq!(out.matches("cannot touch").count(), 4, "{out}");
    assert!(out.matches("Read-only file system").count() >= 3, "{out}");
    assert_eq!(out.matches("No such file or directory").count(), 2, "{out}");
    assert!(out.contains("nofile=4096 core=0"), "{out}");
    assert!(out.contains(" 64 "), "/dev/shm is 64 MiB: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_code_cannot_forge_the_agents_frames_or_stop_it() {
    let system = executor_system().await;
    let session = session_of(&system, "python-basic").await;
    // A result frame as the agent writes them, to every process's stdout user code can open.
    let forge = r#"
import json, os
frame = json.dumps({"t": "result", "req": 1, "exit_code": 0, "stdout": "forged"}) + "\n"
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    path = "/proc/%s/fd/1" % pid
    if pid == str(os.getpid()):
        continue
    try:
        with open(path, "w") as out:
            out.write(frame)
        print("wrote", pid)
    except OSError as error:
        print("refused", pid, type(error).__name__)
os.system("kill -INT 1; kill -KILL 1; kill -STOP 1; true")
print("done")
raise SystemExit(3)
"#;
    let forged = run(&system, &session, "python", forge).await;
    let stdout = text(&forged, "stdout");
    assert!(stdout.contains("refused 1 PermissionError"), "{forged}");
    assert!(!stdout.contains("wrote 1\n"), "{forged}");
    assert!(stdout.ends_with("done\n"), "{forged}");
    assert_eq!(
        forged["exit_code"], 3,
        "the real result, not the forged one: {forged}"
    );
    let after = run(&system, &session, "python", "print('still here')").await;
    assert_eq!(text(&after, "stdout"), "still here\n", "{after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_python_sessions_created_at_once_all_run() {
    let system = executor_system().await;
    let body = json!({"template_id": "python-basic"});
    let creates = (0..50).map(|_| system.post_json("/api/v1/sessions", &body));
    let answers = futures::future::join_all(creates).await;
    let mut ids = Vec::new();
    for (status, session) in &answers {
        assert_eq!(*status, 201, "{session}");
        assert_eq!(session["status"], "running", "{session}");
        ids.push(session["id"].as_str().expect("id").to_owned());
    }
    let (status, nodes) = system.get("/api/v1/nodes").await;
    assert_eq!(status, 200);
    let node = &nodes["nodes"][0];
    assert_eq!(node["running_containers"], 50, "{node}");
    // Guarantees are counted, limits and real free memory shown beside them.
    assert_eq!(node["allocated_memory_mb"], 50 * 64, "{node}");
    assert_eq!(node["host"]["limit_memory_mb"], 50 * 512, "{node}");
    assert!(
        node["host"]["memory_available_mb"].as_u64() > Some(0),
        "{node}"
    );
    let paths: Vec<String> = ids
        .iter()
        .map(|id| format!("/api/v1/sessions/{id}"))
        .collect();
    let deletes = paths.iter().map(|path| system.delete(path));
    for (status, body) in futures::future::join_all(deletes).await {
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gvisor_session_runs_on_gvisors_kernel_and_keeps_python_state() {
    let system = executor_system().await;
    let (status, nodes) = system.get("/api/v1/nodes").await;
    assert_eq!(status, 200);
    assert_eq!(
        nodes["nodes"][0]["runtimes"],
        json!(["runc", "gvisor"]),
        "ops/install-deps.sh registers gVisor: {nodes}"
    );
    let session = session_of(&system, "python-gvisor").await;
    let kernel = run(&system, &session, "shell", "uname -r").await;
    assert_eq!(text(&kernel, "stdout"), "4.4.0\n", "{kernel}");
    run(&system, &session, "python", "x = 41").await;
    let state = run(&system, &session, "python", "print(x + 1)").await;
    assert_eq!(text(&state, "stdout"), "42\n", "{state}");
    let upload = system
        .http
        .put(system.url(&format!("/api/v1/sessions/{session}/files/in/hello.txt")))
        .body("hello from the host")
        .send()
        .await
        .expect("answered");
    assert!(upload.status().is_success(), "{:?}", upload.text().await);
    let read = run(&system, &session, "shell", "cat /workspace/in/hello.txt").await;
    assert_eq!(text(&read, "stdout"), "hello from the host", "{read}");
    let download = system
        .http
        .get(system.url(&format!("/api/v1/sessions/{session}/files/in/hello.txt")))
        .send()
        .await
        .expect("answered");
    assert_eq!(
        download.text().await.ok().as_deref(),
        Some("hello from the host")
    );
    let timed_out = system
        .post_json(
            &format!("/api/v1/sessions/{session}/executions"),
            &json!({"code": "import time; time.sleep(30)", "language": "python", "timeout": 1}),
        )
        .await;
    assert_eq!(timed_out.0, 201, "{}", timed_out.1);
    assert_eq!(timed_out.1["status"], "timeout", "{}", timed_out.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_no_node_offers_is_refused_at_create_by_name() {
    let system = executor_system().await;
    let template = json!({"id": "kata", "image": "sandbox-executor:v1.0", "runtime": "kata"});
    let (status, body) = system.post_json("/api/v1/templates", &template).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("runtime"),
        "{body}"
    );
    let bad_egress = json!({"id": "e", "image": "sandbox-executor:v1.0",
        "network": "sandbox_network", "egress": {"allow": ["not a host!"]}});
    let (status, body) = system.post_json("/api/v1/templates", &bad_egress).await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_the_node_lacks_is_refused_at_create_naming_it() {
    require_executor_image();
    let mut system = System::without_nodes().await;
    system
        .start_node_with(&["--gvisor-runtime", "no-such-runtime"])
        .await;
    let (status, body) = system
        .post_json("/api/v1/sessions", &json!({"template_id": "python-gvisor"}))
        .await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("runtime 'gvisor'"), "{body}");
    let (status, body) = system
        .post_json("/api/v1/sessions", &json!({"template_id": "python-basic"}))
        .await;
    assert_eq!(status, 201, "runc still works: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_cannot_install_egress_rules_refuses_networked_sessions_and_says_why() {
    require_executor_image();
    let mut system = System::without_nodes().await;
    // A PATH with what the disks need and no iptables.
    let tools = tempfile::tempdir().expect("a temp dir");
    for tool in ["mkfs.ext4", "mount", "umount"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .expect("sh runs");
        let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
        std::os::unix::fs::symlink(&path, tools.path().join(tool)).expect("a link");
    }
    let path = tools.path().to_string_lossy().into_owned();
    let node_id = system.start_node_process_with_env(&[("PATH", &path)]).await;
    let (status, node) = system.get(&format!("/api/v1/nodes/{node_id}")).await;
    assert_eq!(status, 200);
    let refusal = node["network_refusal"].as_str().unwrap_or_default();
    assert!(refusal.contains("iptables"), "{node}");
    let (status, body) = system
        .post_json(
            "/api/v1/sessions",
            &json!({"template_id": "python-network"}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("networked") && message.contains("iptables"),
        "{body}"
    );
    let (status, body) = system
        .post_json("/api/v1/sessions", &json!({"template_id": "python-basic"}))
        .await;
    assert_eq!(
        status, 201,
        "sessions without a network still start: {body}"
    );
}

/// A test host in a network namespace of its own, reached from the host through a veth pair,
/// with a listener answering on `PORT`.
struct TestHost {
    namespace: String,
    host_side: String,
    listener: Child,
}

const PORT: u16 = 8765;

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip runs");
    assert!(status.success(), "ip {}", args.join(" "));
}

impl TestHost {
    /// `subnet_third_octet` picks 198.18.<n>.0/30: the host side is .1, the test host .2.
    fn start(name: &str, third_octet: u8) -> Self {
        let namespace = format!("iso-{name}-{}", std::process::id());
        let host_side = format!("vi{third_octet}-{}", std::process::id() % 10000);
        let peer = format!("{host_side}p");
        let _ = Command::new("ip")
            .args(["netns", "del", &namespace])
            .status();
        ip(&["netns", "add", &namespace]);
        ip(&[
            "link", "add", &host_side, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &namespace]);
        ip(&[
            "addr",
            "add",
            &format!("198.18.{third_octet}.1/30"),
            "dev",
            &host_side,
        ]);
        ip(&["link", "set", &host_side, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &namespace, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        in_ns(&[
            "addr",
            "add",
            &format!("198.18.{third_octet}.2/30"),
            "dev",
            &peer,
        ]);
        in_ns(&["link", "set", &peer, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        in_ns(&[
            "route",
            "add",
            "default",
            "via",
            &format!("198.18.{third_octet}.1"),
        ]);
        let listener = Command::new("ip")
            .args(["netns", "exec", &namespace, "python3", "-c"])
            .arg(format!(
                "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                 s.bind(('0.0.0.0',{PORT}))\ns.listen()\nwhile True:\n c,_=s.accept()\n c.sendall(b'ok')\n c.close()\n"
            ))
            .stdout(Stdio::null())
            .spawn()
            .expect("the test host's listener starts");
        std::thread::sleep(Duration::from_millis(300));
        Self {
            namespace,
            host_side,
            listener,
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.listener.kill();
        let _ = self.listener.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_side])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
    }
}

/// Python that connects to each `ip:port` and prints `<ip>:<port> ok` or `... refused`.
fn probe(targets: &[(String, u16)]) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|(ip, port)| format!("('{ip}', {port})"))
        .collect();
    format!(
        "import socket\nfor t in [{}]:\n    try:\n        c = socket.create_connection(t, timeout=2)\n        \
         print('%s:%d ok' % t, c.recv(2))\n        c.close()\n    except OSError as e:\n        \
         print('%s:%d refused' % t, type(e).__name__)\n",
        list.join(", ")
    )
}

/// The session reaches the `internet` test host and not the `host` service.
async fn assert_reaches_only(
    system: &System,
    session: &str,
    internet: (&str, u16),
    host: (&str, u16),
) {
    let targets = [
        (internet.0.to_owned(), internet.1),
        (host.0.to_owned(), host.1),
    ];
    let reached = run(system, session, "python", &probe(&targets)).await;
    let out = text(&reached, "stdout");
    assert!(
        out.contains(&format!("{}:{} ok", internet.0, internet.1)),
        "{reached}"
    );
    assert!(
        out.contains(&format!("{}:{} refused", host.0, host.1)),
        "{reached}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_networked_sandbox_reaches_the_internet_but_not_the_host_nor_what_is_denied() {
    let system = executor_system().await;
    let internet = TestHost::start("net", 201);
    let allowed = "198.18.201.2".to_owned();
    // A host service: a listener on the host's side of the bridge.
    let gateway = Command::new("docker")
        .args([
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            system.network(),
        ])
        .output()
        .expect("docker network inspect");
    let gateway = String::from_utf8_lossy(&gateway.stdout).trim().to_owned();
    let host_service = TcpListener::bind((gateway.as_str(), 0)).expect("a listener on the gateway");
    let host_port = host_service.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in host_service.incoming() {
            drop(stream);
        }
    });

    let session = session_of(&system, "python-network").await;
    let host_service = (gateway.clone(), host_port);
    assert_reaches_only(
        &system,
        &session,
        (&allowed, PORT),
        (&host_service.0, host_service.1),
    )
    .await;

    let denying = json!({"id": "denying", "image": "sandbox-executor:v1.0",
        "network": "sandbox_network", "egress": {"deny": [allowed]}});
    let (status, body) = system.post_json("/api/v1/templates", &denying).await;
    assert_eq!(status, 201, "{body}");
    let denied_session = session_of(&system, "denying").await;
    let denied = run(
        &system,
        &denied_session,
        "python",
        &probe(&[(allowed.clone(), PORT)]),
    )
    .await;
    assert!(
        text(&denied, "stdout").contains(&format!("{allowed}:{PORT} refused")),
        "{denied}"
    );

    // Under gVisor the same rules hold: its sandbox uses its container's network namespace.
    let gvisor = json!({"id": "gvisor-network", "image": "sandbox-executor:v1.0",
        "network": "sandbox_network", "runtime": "gvisor"});
    let (status, body) = system.post_json("/api/v1/templates", &gvisor).await;
    assert_eq!(status, 201, "{body}");
    let gvisor_session = session_of(&system, "gvisor-network").await;
    let kernel = run(&system, &gvisor_session, "shell", "uname -r").await;
    assert_eq!(text(&kernel, "stdout"), "4.4.0\n", "{kernel}");
    assert_reaches_only(
        &system,
        &gvisor_session,
        (&allowed, PORT),
        (&host_service.0, host_service.1),
    )
    .await;
    drop(internet);
}

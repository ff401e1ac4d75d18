//! The egress test's machinery: commands, the cleanup guard, test hosts in network
//! namespaces, a DNS server and the reachability probe.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use messages::egress::{Egress, EgressRules};
use tokio::net::UdpSocket;

pub const PORT: u16 = 8080;

/// Runs a command to completion; its stdout, or a panic with its stderr.
pub fn sh(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|error| panic!("{args:?} could not run: {error}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Runs a command for cleanup: failures (already gone) are fine.
pub fn quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Everything the test made, removed when dropped, also when the test failed.
#[derive(Default)]
pub struct Cleanup {
    pub container: Option<String>,
    pub network: Option<String>,
    pub namespaces: Vec<String>,
    pub host_veths: Vec<String>,
    pub listeners: Vec<Child>,
    pub hooks: Vec<String>,
    pub prefix: String,
    pub web_root: Option<std::path::PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.listeners {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(container) = &self.container {
            quiet(&["docker", "rm", "-f", container]);
        }
        if let Some(network) = &self.network {
            quiet(&["docker", "network", "rm", network]);
        }
        for veth in &self.host_veths {
            quiet(&["ip", "link", "del", veth]);
        }
        for namespace in &self.namespaces {
            quiet(&["ip", "netns", "del", namespace]);
        }
        for hook in &self.hooks {
            let (chain, rule) = hook.split_once(' ').unwrap_or_default();
            quiet(&[
                "sh",
                "-c",
                &format!("while iptables -w -D {chain} {rule}; do :; done"),
            ]);
        }
        if let Some(dir) = &self.web_root {
            let _ = std::fs::remove_dir_all(dir);
        }
        if !self.prefix.is_empty() {
            let script = format!(
                "for c in $(iptables -w -S | awk '$1 == \"-N\" && index($2, \"{0}-\") == 1 \
                 {{print $2}}'); do iptables -w -F $c; done; \
                 for c in $(iptables -w -S | awk '$1 == \"-N\" && index($2, \"{0}-\") == 1 \
                 {{print $2}}'); do iptables -w -X $c; done",
                self.prefix
            );
            quiet(&["sh", "-c", &script]);
        }
    }
}

/// A test host: a namespace with a veth pair, its addresses (host side, namespace side) and a
/// web server on [`PORT`] answering `ok` at `/ok`.
pub fn test_host(cleanup: &mut Cleanup, name: &str, pairs: &[(Ipv4Addr, Ipv4Addr)], dir: &str) {
    let namespace = format!("eg-{name}");
    let (host_veth, ns_veth) = (format!("{name}h"), format!("{name}n"));
    sh(&["ip", "netns", "add", &namespace]);
    cleanup.namespaces.push(namespace.clone());
    sh(&[
        "ip", "link", "add", &host_veth, "type", "veth", "peer", "name", &ns_veth,
    ]);
    cleanup.host_veths.push(host_veth.clone());
    sh(&["ip", "link", "set", &ns_veth, "netns", &namespace]);
    let in_ns = |args: &[&str]| {
        let mut all = vec!["ip", "netns", "exec", namespace.as_str()];
        all.extend(args);
        sh(&all)
    };
    for (host, guest) in pairs {
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host}/30"),
            "dev",
            &host_veth,
        ]);
        in_ns(&["ip", "addr", "add", &format!("{guest}/30"), "dev", &ns_veth]);
    }
    sh(&["ip", "link", "set", &host_veth, "up"]);
    in_ns(&["ip", "link", "set", &ns_veth, "up"]);
    in_ns(&["ip", "link", "set", "lo", "up"]);
    let listener = Command::new("ip")
        .args(["netns", "exec", &namespace, "busybox", "httpd", "-f"])
        .args(["-p", &format!("0.0.0.0:{PORT}"), "-h", dir])
        .spawn()
        .expect("the test host's web server starts");
    cleanup.listeners.push(listener);
}

/// A DNS server answering A queries from a map (TTL 0, so every lookup asks again), NXDOMAIN
/// for names not in it and no records for other types.
pub async fn dns_server(names: Arc<Mutex<HashMap<String, Ipv4Addr>>>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("the DNS port");
    let address = socket.local_addr().expect("the DNS address");
    tokio::spawn(async move {
        let mut buffer = [0u8; 512];
        while let Ok((len, peer)) = socket.recv_from(&mut buffer).await {
            if let Some(answer) = dns_answer(&buffer[..len], &names) {
                let _ = socket.send_to(&answer, peer).await;
            }
        }
    });
    address
}

fn dns_answer(query: &[u8], names: &Mutex<HashMap<String, Ipv4Addr>>) -> Option<Vec<u8>> {
    let (mut labels, mut at) = (Vec::new(), 12);
    while *query.get(at)? != 0 {
        let len = usize::from(query[at]);
        labels.push(String::from_utf8_lossy(query.get(at + 1..at + 1 + len)?).to_lowercase());
        at += 1 + len;
    }
    let question_end = at + 5;
    let qtype = u16::from_be_bytes([*query.get(at + 1)?, *query.get(at + 2)?]);
    let found = names.lock().ok()?.get(&labels.join(".")).copied();
    let mut answer = query.get(..question_end)?.to_vec();
    // A response, recursion available, NXDOMAIN when unknown; one question, answers, no more.
    answer[2] = 0x80 | (query[2] & 0x01);
    answer[3] = if found.is_some() { 0x80 } else { 0x83 };
    let records = u8::from(found.is_some() && qtype == 1);
    answer[4..12].copy_from_slice(&[0, 1, 0, records, 0, 0, 0, 0]);
    if let (1, Some(address)) = (records, found) {
        answer.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        answer.extend(address.octets());
    }
    Some(answer)
}

/// Whether a wget from `from` (a container, or the host with `None`) gets `ok`.
pub async fn reaches(from: Option<&str>, address: Ipv4Addr, port: u16) -> bool {
    let url = format!("http://{address}:{port}/ok");
    let mut command =
        tokio::process::Command::new(if from.is_some() { "docker" } else { "busybox" });
    if let Some(container) = from {
        command.args(["exec", container, "/bin/busybox"]);
    }
    // busybox's own `wget -T` crashes (1.37 here): its `timeout` bounds the attempt instead.
    let output = command
        .args(["timeout", "2", "busybox", "wget", "-q", "-O-", &url])
        .output()
        .await
        .expect("wget runs");
    output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ok"
}

pub fn rules(allow: &[&str], deny: &[&str]) -> EgressRules {
    let strings = |entries: &[&str]| entries.iter().map(|e| (*e).to_owned()).collect();
    Egress {
        allow: strings(allow),
        deny: strings(deny),
    }
    .rules()
    .expect("valid rules")
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A directory with the page the web servers serve.
pub fn web_root(cleanup: &mut Cleanup, tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("egress-test-{tag}"));
    std::fs::create_dir_all(&dir).expect("the web root");
    cleanup.web_root = Some(dir.clone());
    std::fs::write(dir.join("ok"), "ok").expect("the web page");
    dir.to_string_lossy().into_owned()
}

//! The egress firewall against real iptables, Docker and network namespaces. All traffic stays
//! on this machine: test hosts in namespaces the test makes (198.18/15 stands in for the
//! internet, 10.214/16 for a private network), a listener on the bridge's gateway (a host
//! service) and a DNS server on 127.0.0.1. Runs as root; skips, saying so, otherwise.

#[path = "egress/support.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use messages::egress::EgressRules;
use node_daemon::egress::{EgressFirewall, FirewallConfig};

use crate::support::{
    Cleanup, PORT, dns_server, is_root, quiet, reaches, rules, sh, test_host, web_root,
};

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_reach_only_what_their_rules_allow() {
    if !is_root() {
        println!("SKIPPED: the egress firewall test needs root (iptables, netns, Docker)");
        return;
    }
    let started = Instant::now();
    let image = sandbox_ops::testkit::ensure_test_image().expect("the test image is built");
    let tag = format!("{:06x}", fastrand::u32(..0x100_0000));
    let x = fastrand::u8(..);
    let mut cleanup = Cleanup::default();
    cleanup.prefix = format!("egt{tag}");

    // 1. The sandbox network, on a subnet nothing else uses.
    let network = format!("egress-test-{tag}");
    let routes = sh(&["ip", "-4", "route"]);
    // One third octet for the sandbox subnet and both test hosts, none of them routed yet.
    let x = (0..=255u8)
        .map(|i| x.wrapping_add(i))
        .find(|x| {
            [
                format!("10.213.{x}."),
                format!("198.18.{x}."),
                format!("10.214.{x}."),
            ]
            .iter()
            .all(|prefix| !routes.contains(prefix.as_str()))
        })
        .expect("free addresses");
    let subnet = ipnet::Ipv4Net::new(Ipv4Addr::new(10, 213, x, 0), 24).expect("a subnet");
    let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    let id = sh(&[
        "docker",
        "network",
        "create",
        "--driver",
        "bridge",
        "--subnet",
        &subnet.to_string(),
        "--gateway",
        &gateway.to_string(),
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        &network,
    ]);
    cleanup.network = Some(network.clone());
    let bridge = format!("br-{}", id.get(..12).expect("a network id"));
    sh(&["ip", "link", "show", &bridge]);

    // 2. The test hosts and the host service on the gateway.
    let dir = web_root(&mut cleanup, &tag);
    let allowed = |last: u8| Ipv4Addr::new(198, 18, x, last);
    let private = |last: u8| Ipv4Addr::new(10, 214, x, last);
    test_host(
        &mut cleanup,
        &format!("a{tag}"),
        &[(allowed(1), allowed(2)), (allowed(5), allowed(6))],
        &dir,
    );
    test_host(
        &mut cleanup,
        &format!("p{tag}"),
        &[(private(1), private(2))],
        &dir,
    );
    let host_port = sandbox_ops::testkit::free_port().expect("a free port");
    let host_service = Command::new("busybox")
        .args([
            "httpd",
            "-f",
            "-p",
            &format!("{gateway}:{host_port}"),
            "-h",
            &dir,
        ])
        .spawn()
        .expect("the host service starts");
    cleanup.listeners.push(host_service);
    let names = Arc::new(Mutex::new(HashMap::from([
        ("testhost.example".to_owned(), allowed(2)),
        ("inside.example".to_owned(), private(2)),
    ])));
    let dns = dns_server(Arc::clone(&names)).await;

    // 3. The sandbox.
    let container = format!("egress-test-{tag}");
    sh(&[
        "docker",
        "run",
        "-d",
        "--name",
        &container,
        "--network",
        &network,
        "--sysctl",
        "net.ipv6.conf.all.disable_ipv6=1",
        image,
        "sleep",
        "600",
    ]);
    cleanup.container = Some(container.clone());
    let ip: Ipv4Addr = sh(&[
        "docker",
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &container,
    ])
    .parse()
    .expect("the container's address");
    let c = Some(container.as_str());

    // Without the firewall everything is reachable: the refusals below are the firewall's.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (address, port) in [(allowed(2), PORT), (private(2), PORT), (gateway, host_port)] {
        assert!(
            reaches(None, address, port).await,
            "the host reaches {address}:{port}"
        );
        assert!(
            reaches(c, address, port).await,
            "before install, {address}:{port}"
        );
    }

    // 4. Installed, no rules for the sandbox: no egress.
    let config = FirewallConfig {
        bridge_interface: bridge.clone(),
        subnet,
        chain_prefix: cleanup.prefix.clone(),
        nameservers: Some(vec![dns]),
        owner: "egress-test".to_owned(),
    };
    let forward = format!("{}-FWD", cleanup.prefix);
    cleanup
        .hooks
        .push(format!("DOCKER-USER -i {bridge} -j {forward}"));
    cleanup
        .hooks
        .push(format!("FORWARD -i {bridge} -j {forward}"));
    cleanup
        .hooks
        .push(format!("INPUT -i {bridge} -j {}-IN", cleanup.prefix));
    let too_long = FirewallConfig {
        chain_prefix: "a-prefix-far-too-long".to_owned(),
        ..config.clone()
    };
    let error = EgressFirewall::install(too_long)
        .await
        .expect_err("refused");
    assert!(error.to_string().contains("chain prefix"), "{error}");
    let firewall = EgressFirewall::install(config.clone())
        .await
        .expect("installed");
    assert!(
        !reaches(c, allowed(2), PORT).await,
        "fail closed before open"
    );

    let key = format!("session-{tag}");
    let expect = async |rules: EgressRules, reachable: &[Ipv4Addr], refused: &[Ipv4Addr]| {
        firewall.open(&key, ip, &rules).await.expect("opened");
        check(c, reachable, refused, gateway, host_port, &rules).await;
    };
    // Default rules: the internet, not private ranges nor the host.
    expect(rules(&[], &[]), &[allowed(2), allowed(6)], &[private(2)]).await;
    println!(
        "{}",
        sh(&[
            "sh",
            "-c",
            &format!("iptables -w -S | grep {}", cleanup.prefix)
        ])
    );
    // Docker, making a network, takes its jump to DOCKER-USER out of FORWARD for a moment:
    // the FORWARD hook keeps the sandbox refused meanwhile.
    let churn = tokio::task::spawn_blocking(move || {
        for i in 0..4 {
            let name = format!("egress-churn-{tag}-{i}");
            sh(&["docker", "network", "create", &name]);
            quiet(&["docker", "network", "rm", &name]);
        }
    });
    let mut leaks = 0;
    while !churn.is_finished() {
        let probes = (0..8).map(|_| reaches(c, private(2), PORT));
        leaks += join_all(probes).await.into_iter().filter(|r| *r).count();
    }
    churn.await.expect("the networks were made and removed");
    assert_eq!(
        leaks, 0,
        "refused traffic passed while Docker made networks"
    );
    expect(
        rules(&[], &[&allowed(2).to_string()]),
        &[allowed(6)],
        &[allowed(2)],
    )
    .await;
    // Allow-only, by domain, and a domain resolving to a private address stays refused.
    let by_domain = rules(&["testhost.example", "inside.example"], &[]);
    expect(by_domain.clone(), &[allowed(2)], &[allowed(6), private(2)]).await;
    // An operator may open a private range by CIDR.
    expect(
        rules(&[&format!("{}/30", private(0))], &[]),
        &[private(2)],
        &[allowed(2)],
    )
    .await;

    // Re-resolved: the chain follows the name.
    expect(by_domain.clone(), &[allowed(2)], &[allowed(6)]).await;
    names
        .lock()
        .expect("the names")
        .insert("testhost.example".to_owned(), allowed(6));
    firewall.refresh_domains().await.expect("refreshed");
    check(
        c,
        &[allowed(6)],
        &[allowed(2)],
        gateway,
        host_port,
        &by_domain,
    )
    .await;

    // Hooks and chains someone removed or flushed are put back.
    let sandbox_chain = sh(&[
        "sh",
        "-c",
        &format!("iptables -w -S {forward} | awk '$5 == \"-g\" {{print $6}}'"),
    ]);
    let iptables = |args: &str| sh(&["sh", "-c", &format!("iptables -w {args}")]);
    iptables(&format!("-D DOCKER-USER -i {bridge} -j {forward}"));
    iptables(&format!("-D INPUT -i {bridge} -j {}-IN", cleanup.prefix));
    iptables(&format!("-F {sandbox_chain}"));
    // As Docker does when it restarts: its ACCEPT for the bridge above the FORWARD hook.
    let docker_accept = format!("FORWARD -i {bridge} ! -o {bridge} -j ACCEPT");
    cleanup.hooks.push(docker_accept.clone());
    iptables(&format!("-I {docker_accept}"));
    firewall.check_hooks().await.expect("hooks checked");
    let forward_rules = iptables("-S FORWARD");
    assert!(
        forward_rules
            .lines()
            .find(|line| line.starts_with("-A "))
            .is_some_and(|first| first.contains(&forward)),
        "the FORWARD hook is first again: {forward_rules}"
    );
    iptables(&format!("-D {docker_accept}"));
    iptables(&format!("-C DOCKER-USER -i {bridge} -j {forward}"));
    iptables(&format!("-C INPUT -i {bridge} -j {}-IN", cleanup.prefix));
    check(
        c,
        &[allowed(6)],
        &[allowed(2)],
        gateway,
        host_port,
        &by_domain,
    )
    .await;
    // Nothing to repair: nothing is rewritten (a rewrite would reset the counters).
    let counters = || sh(&["iptables", "-w", "-L", &forward, "-v", "-x", "-n"]);
    let before = counters();
    firewall.check_hooks().await.expect("hooks checked again");
    assert_eq!(before, counters(), "an intact forward chain was rewritten");

    // Closed: no egress.
    firewall.close(&key).await.expect("closed");
    assert!(
        !reaches(c, allowed(2), PORT).await,
        "fail closed after close"
    );

    // A restarted daemon keeps the chains of live sandboxes until it retains only others.
    firewall
        .open(&key, ip, &rules(&[], &[]))
        .await
        .expect("opened");
    let restarted = EgressFirewall::install(config)
        .await
        .expect("installed again");
    assert!(reaches(c, allowed(2), PORT).await, "kept across a restart");
    restarted
        .retain(&HashSet::from([key.clone()]))
        .await
        .expect("retained");
    assert!(
        reaches(c, allowed(2), PORT).await,
        "a live sandbox is retained"
    );
    restarted.retain(&HashSet::new()).await.expect("retained");
    assert!(
        !reaches(c, allowed(2), PORT).await,
        "a gone sandbox's chain is removed"
    );

    restarted.uninstall().await.expect("uninstalled");
    let left = sh(&[
        "sh",
        "-c",
        &format!("iptables -w -S | grep -c {} || true", cleanup.prefix),
    ]);
    assert_eq!(left, "0", "chains or hooks left behind");
    println!("egress test took {:?}", started.elapsed());
}

/// The sandbox reaches `reachable`, not `refused`, and never the host service.
async fn check(
    c: Option<&str>,
    reachable: &[Ipv4Addr],
    refused: &[Ipv4Addr],
    gateway: Ipv4Addr,
    host_port: u16,
    rules: &EgressRules,
) {
    let probes = reachable
        .iter()
        .map(|address| (*address, PORT, true))
        .chain(refused.iter().map(|address| (*address, PORT, false)))
        .chain([(gateway, host_port, false)]);
    let probes: Vec<_> = probes.collect();
    let results = join_all(
        probes
            .iter()
            .map(|(address, port, _)| reaches(c, *address, *port)),
    )
    .await;
    for ((address, port, expected), reached) in probes.iter().zip(results) {
        assert_eq!(
            reached, *expected,
            "{address}:{port} reached with {rules:?}"
        );
    }
}

//! The compiler's output for each kind of rule, checked without iptables.

use super::*;
use messages::egress::Egress;

fn chains() -> Chains {
    Chains::new("SBX-test").expect("a valid prefix")
}

fn rules(allow: &[&str], deny: &[&str]) -> EgressRules {
    let strings = |entries: &[&str]| entries.iter().map(|e| (*e).to_owned()).collect();
    Egress {
        allow: strings(allow),
        deny: strings(deny),
    }
    .rules()
    .expect("valid rules")
}

fn subnet() -> Ipv4Net {
    "10.213.7.0/24".parse().expect("a subnet")
}

/// The destinations and verdicts of a chain's rules, in order.
fn verdicts(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        // Each refusal is two rules (TCP, then the rest): one verdict.
        .filter(|line| !line.contains(" -p tcp "))
        .map(|line| {
            let destination = line
                .split(" -d ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next());
            let verdict = if line.contains("-j RETURN") {
                "ok"
            } else {
                "no"
            };
            format!("{} {verdict}", destination.unwrap_or("*"))
        })
        .collect()
}

fn built_in() -> Vec<String> {
    BUILT_IN_DENIED
        .iter()
        .map(|n| format!("{n} no"))
        .chain(["10.213.7.0/24 no".to_owned()])
        .collect()
}

#[test]
fn names_are_short_stable_and_recognised() {
    let chains = chains();
    let sandbox = chains.sandbox("session-1");
    assert_eq!(sandbox, chains.sandbox("session-1"));
    assert_ne!(sandbox, chains.sandbox("session-2"));
    assert!(sandbox.len() <= 28, "{sandbox}");
    let longest = Chains::new(&"P".repeat(MAX_PREFIX_LEN)).expect("the longest prefix");
    assert_eq!(longest.sandbox("x").len(), 28);
    assert!(chains.is_sandbox(&sandbox));
    assert!(chains.is_own_sandbox(&sandbox));
    let other = chains.clone().owned_by("node-b");
    assert!(other.is_sandbox(&sandbox) && !other.is_own_sandbox(&sandbox));
    assert!(other.is_own_sandbox(&other.sandbox("session-1")));
    assert!(!chains.is_sandbox(&chains.forward()));
    assert!(chains.owns(&chains.forward()) && chains.owns(&chains.input()));
    assert!(!chains.owns("SBX-testing-FWD") && !chains.owns("DOCKER-USER"));
    for bad in ["", "a b", "x;y", &"P".repeat(MAX_PREFIX_LEN + 1)] {
        assert!(Chains::new(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn default_rules_refuse_the_built_in_ranges_and_accept_the_rest() {
    let lines = sandbox_chain("C", &rules(&[], &[]), &Resolved::new(), subnet());
    let mut expected = built_in();
    expected.push("* ok".to_owned());
    assert_eq!(verdicts(&lines), expected);
    assert!(lines.iter().all(|line| line.starts_with("-A C ")));
}

#[test]
fn the_order_is_deny_allow_cidrs_built_in_allow_domains_then_the_rest() {
    let resolved = Resolved::from([
        ("pypi.org".to_owned(), vec![Ipv4Addr::new(198, 18, 0, 2)]),
        ("inner.example".to_owned(), vec![Ipv4Addr::new(10, 1, 2, 3)]),
        ("bad.example".to_owned(), vec![Ipv4Addr::new(198, 18, 0, 9)]),
    ]);
    let rules = rules(
        &[
            "pypi.org",
            "10.9.0.0/16",
            "inner.example",
            "fc00::/7",
            "gone.example",
        ],
        &["198.18.0.0/30", "bad.example", "2001:db8::/32"],
    );
    let lines = sandbox_chain("C", &rules, &resolved, subnet());
    let mut expected = vec![
        "198.18.0.0/30 no".to_owned(),
        "198.18.0.9/32 no".to_owned(),
        "10.9.0.0/16 ok".to_owned(),
    ];
    expected.extend(built_in());
    // A name resolving to a private address is accepted only after the private ranges are
    // refused, so its rule never matches; an unresolved name adds nothing.
    expected.extend(["198.18.0.2/32 ok".to_owned(), "10.1.2.3/32 ok".to_owned()]);
    expected.push("* no".to_owned());
    assert_eq!(verdicts(&lines), expected);
}

#[test]
fn the_forward_chain_passes_established_traffic_and_refuses_unknown_sources() {
    let chains = chains();
    let jump = Jump {
        source: Ipv4Addr::new(10, 213, 7, 2),
        chain: chains.sandbox("s"),
    };
    let lines = forward_chain(&chains, std::slice::from_ref(&jump));
    assert_eq!(
        lines,
        [
            "-A SBX-test-FWD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".to_owned(),
            format!("-A SBX-test-FWD -s 10.213.7.2/32 -g {}", jump.chain),
            format!("-A SBX-test-FWD {REJECT_TCP}"),
            format!("-A SBX-test-FWD {REJECT_OTHER}"),
        ]
    );
    assert_eq!(input_chain(&chains).len(), 3);
}

#[test]
fn a_listing_gives_the_chains_and_the_jumps() {
    let chains = chains();
    let sandbox = chains.sandbox("s");
    let listing = format!(
        "-P FORWARD DROP\n-N DOCKER-USER\n-N SBX-test-FWD\n-N {sandbox}\n\
         -A DOCKER-USER -i br-1 -j SBX-test-FWD\n\
         -A SBX-test-FWD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
         -A SBX-test-FWD -s 10.213.7.2/32 -g {sandbox}\n\
         -A SBX-test-FWD -j REJECT --reject-with icmp-port-unreachable\n"
    );
    let (names, jumps) = parse_listing(&chains, &listing);
    assert_eq!(names, ["DOCKER-USER", "SBX-test-FWD", sandbox.as_str()]);
    assert_eq!(
        jumps,
        [Jump {
            source: Ipv4Addr::new(10, 213, 7, 2),
            chain: sandbox,
        }]
    );
}

#[test]
fn restore_input_declares_then_appends_then_commits() {
    let text = restore_input(&["A".to_owned()], &["-A A -j RETURN".to_owned()]);
    assert_eq!(text, "*filter\n:A - [0:0]\n-A A -j RETURN\nCOMMIT\n");
}

#[test]
fn missing_or_outranked_hooks_are_put_back_at_the_top() {
    let chains = chains();
    let hooked = "-A DOCKER-USER -i br-1 -j SBX-test-FWD\n-A DOCKER-USER -j RETURN\n\
                  -A INPUT -i br-1 -j SBX-test-IN\n";
    let intact = format!(
        "-A FORWARD -j DOCKER-USER\n-A FORWARD -i br-1 -j SBX-test-FWD\n\
         -A FORWARD -i br-1 ! -o br-1 -j ACCEPT\n{hooked}"
    );
    assert!(hook_repairs(&chains, "br-1", &intact).is_empty());
    let outranked = format!(
        "-A FORWARD -i br-1 ! -o br-1 -j ACCEPT\n-A FORWARD -i br-1 -j SBX-test-FWD\n{hooked}"
    );
    assert_eq!(
        hook_repairs(&chains, "br-1", &outranked),
        [
            "-D FORWARD -i br-1 -j SBX-test-FWD",
            "-I FORWARD 1 -i br-1 -j SBX-test-FWD"
        ]
    );
    assert_eq!(
        hook_repairs(&chains, "br-1", "-A FORWARD -j DOCKER-USER\n"),
        [
            "-I DOCKER-USER 1 -i br-1 -j SBX-test-FWD",
            "-I FORWARD 1 -i br-1 -j SBX-test-FWD",
            "-I INPUT 1 -i br-1 -j SBX-test-IN"
        ]
    );
}

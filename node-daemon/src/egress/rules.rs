//! The pure part of the egress firewall: chain names, and the `iptables-restore` text that
//! installs the node's chains and one sandbox's chain. Nothing here runs a command.
//!
//! IPv4 only: IPv6 is disabled inside sandboxes (by sysctl in the container config), so IPv6
//! entries of a template's rules are skipped rather than compiled.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use messages::egress::{Destination, EgressRules};

/// The longest chain prefix: the sandbox chains add `-`, [`OWNER_DIGITS`] and [`HASH_DIGITS`],
/// and iptables takes chain names of at most 28 characters.
pub const MAX_PREFIX_LEN: usize = 28 - 1 - OWNER_DIGITS - HASH_DIGITS;
/// Hex digits naming the daemon that owns a sandbox chain: two daemons on one bridge (tests, a
/// host split in two) share the node chains but each sweeps only its own sandboxes' chains.
const OWNER_DIGITS: usize = 4;
/// Hex digits of the key's hash in a sandbox chain's name (40 bits: no collision in practice
/// among one node's sandboxes).
const HASH_DIGITS: usize = 10;
/// How refused traffic is answered, so a sandbox's connection fails at once: TCP with a reset
/// (the host rate-limits the ICMP errors it sends, and a SYN refused by a dropped ICMP error
/// is retried for a second or more), the rest with port unreachable.
const REJECT_TCP: &str = "-p tcp -j REJECT --reject-with tcp-reset";
const REJECT_OTHER: &str = "-j REJECT --reject-with icmp-port-unreachable";

/// Ranges no sandbox reaches unless its `allow` names them by CIDR: "this network", private,
/// shared (CGNAT), loopback, link-local (cloud metadata), IETF protocol assignments, multicast
/// and reserved (with broadcast). The bridge's own subnet (the other sandboxes) is added.
pub const BUILT_IN_DENIED: [Ipv4Net; 10] = [
    Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10),
    Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 0, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
    Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// The addresses the node resolved for the domains of a sandbox's rules.
pub type Resolved = BTreeMap<String, Vec<Ipv4Addr>>;

/// The names of one firewall's chains, all starting with its prefix.
#[derive(Debug, Clone)]
pub struct Chains {
    prefix: String,
    /// [`OWNER_DIGITS`] hex digits of the owner's hash.
    owner: String,
}

impl Chains {
    /// Letters, digits, `_` and `-`, at most [`MAX_PREFIX_LEN`] characters.
    pub fn new(prefix: &str) -> Result<Self, String> {
        let valid = (1..=MAX_PREFIX_LEN).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self {
                prefix: prefix.to_owned(),
                owner: "0".repeat(OWNER_DIGITS),
            })
        } else {
            Err(format!(
                "chain prefix {prefix:?} must be 1 to {MAX_PREFIX_LEN} letters, digits, `_` or `-`"
            ))
        }
    }

    /// The chain `DOCKER-USER` sends the bridge's traffic to.
    pub fn forward(&self) -> String {
        format!("{}-FWD", self.prefix)
    }

    /// The chain `INPUT` sends the bridge's traffic to.
    pub fn input(&self) -> String {
        format!("{}-IN", self.prefix)
    }

    /// The same chains, with the sandbox chains of `owner` (a node id).
    pub fn owned_by(self, owner: &str) -> Self {
        let owner = format!("{:0width$x}", fnv1a(owner) >> 48, width = OWNER_DIGITS);
        Self { owner, ..self }
    }

    /// A sandbox's chain. The hash is FNV-1a, stable across builds, so a restarted daemon
    /// finds the chains of the sandboxes it made before.
    pub fn sandbox(&self, key: &str) -> String {
        format!(
            "{}-{}{:0width$x}",
            self.prefix,
            self.owner,
            fnv1a(key) >> 24,
            width = HASH_DIGITS
        )
    }

    /// Whether `name` is a sandbox chain of this firewall's owner.
    pub fn is_own_sandbox(&self, name: &str) -> bool {
        self.is_sandbox(name)
            && name
                .strip_prefix(&self.prefix)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|rest| rest.starts_with(&self.owner))
    }

    /// Whether `name` is one of this firewall's chains (node or sandbox).
    pub fn owns(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|rest| rest == "FWD" || rest == "IN" || Self::is_hash(rest))
    }

    /// Whether `name` is a sandbox chain of this firewall.
    pub fn is_sandbox(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(Self::is_hash)
    }

    fn is_hash(text: &str) -> bool {
        text.len() == OWNER_DIGITS + HASH_DIGITS && text.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

/// The chain prefix of the sandbox network `network`: `SBX-` and six hex digits of its name's
/// hash, so daemons of different networks on one host (tests) keep apart.
pub fn chain_prefix(network: &str) -> String {
    format!("SBX-{:06x}", fnv1a(network) & 0xff_ffff)
}

/// FNV-1a: stable across builds and platforms.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A jump from the forward chain to a sandbox's chain, for the traffic from its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    pub source: Ipv4Addr,
    pub chain: String,
}

/// The node's forward chain: established traffic goes on, each sandbox's new traffic goes to
/// its chain (by goto, so the sandbox chain's RETURN goes back to `DOCKER-USER` and Docker's
/// own rules still apply), and the traffic of an address with no chain is refused.
pub fn forward_chain(chains: &Chains, jumps: &[Jump]) -> Vec<String> {
    let forward = chains.forward();
    let mut lines = vec![format!(
        "-A {forward} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    )];
    for jump in jumps {
        lines.push(format!(
            "-A {forward} -s {}/32 -g {}",
            jump.source, jump.chain
        ));
    }
    lines.extend(refuse(&forward, ""));
    lines
}

/// The node's input chain: sandboxes reach no host listener; replies to connections the host
/// made go on to the host's own rules.
pub fn input_chain(chains: &Chains) -> Vec<String> {
    let input = chains.input();
    let mut lines = vec![format!(
        "-A {input} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    )];
    lines.extend(refuse(&input, ""));
    lines
}

/// The rules refusing the traffic `matching` selects (empty, or starting with a space), in the
/// form `iptables -S` prints them.
fn refuse(chain: &str, matching: &str) -> [String; 2] {
    [
        format!("-A {chain}{matching} {REJECT_TCP}"),
        format!("-A {chain}{matching} {REJECT_OTHER}"),
    ]
}

/// The hooks, each a chain and the rule in it after the chain's name: `DOCKER-USER` (which
/// Docker keeps first in FORWARD) and `INPUT`, and FORWARD itself, because Docker, whenever it
/// makes a network, deletes its jump to `DOCKER-USER` and inserts it again, leaving a moment in
/// which the bridge's traffic would meet only Docker's own ACCEPT rules.
pub fn hooks(chains: &Chains, bridge: &str) -> [(&'static str, String); 3] {
    let forward = format!("-i {bridge} -j {}", chains.forward());
    [
        ("DOCKER-USER", forward.clone()),
        ("FORWARD", forward),
        ("INPUT", format!("-i {bridge} -j {}", chains.input())),
    ]
}

/// The restore lines that put back, at the top of its chain, each hook the `listing` lacks,
/// and the FORWARD hook when a rule for the bridge (Docker's ACCEPT, made again when Docker
/// restarts) or Docker's forwarding chain comes before it: deleted and inserted in the same
/// transaction, so there is no moment without it.
pub fn hook_repairs(chains: &Chains, bridge: &str, listing: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for (chain, rule) in hooks(chains, bridge) {
        let prefix = format!("-A {chain} ");
        let present: Vec<&str> = listing.lines().filter(|l| l.starts_with(&prefix)).collect();
        let hook = format!("-A {chain} {rule}");
        let outranked = |above: &[&str]| {
            chain == "FORWARD"
                && above.iter().any(|line| {
                    line.contains(&format!(" -i {bridge} ")) || line.ends_with("-j DOCKER-FORWARD")
                })
        };
        match present.iter().position(|line| *line == hook) {
            None => lines.push(format!("-I {chain} 1 {rule}")),
            Some(at) if outranked(&present[..at]) => {
                lines.push(format!("-D {chain} {rule}"));
                lines.push(format!("-I {chain} 1 {rule}"));
            }
            Some(_) => {}
        }
    }
    lines
}

/// A sandbox's chain, in order: its `deny` (refused), its `allow` CIDRs (accepted, so an
/// operator may open a private range), the built-in denied ranges and the bridge subnet
/// (refused), its `allow` domains' addresses (accepted after the built-in ranges, so a name
/// resolving to a private or metadata address stays refused), then the rest: accepted when
/// `allow` is empty, refused when it is allow-only. "Accepted" is RETURN to Docker's rules.
pub fn sandbox_chain(
    chain: &str,
    rules: &EgressRules,
    resolved: &Resolved,
    subnet: Ipv4Net,
) -> Vec<String> {
    let mut lines = Vec::new();
    let mut add = |network: Ipv4Net, accept: bool| {
        let matching = format!(" -d {network}");
        if accept {
            lines.push(format!("-A {chain}{matching} -j RETURN"));
        } else {
            lines.extend(refuse(chain, &matching));
        }
    };
    for network in rules.deny.iter().flat_map(|d| addresses(d, resolved)) {
        add(network, false);
    }
    for destination in &rules.allow {
        if let Destination::Network(IpNet::V4(network)) = destination {
            add(*network, true);
        }
    }
    for network in BUILT_IN_DENIED.iter().chain([&subnet.trunc()]) {
        add(*network, false);
    }
    for destination in &rules.allow {
        if let Destination::Domain(_) = destination {
            for network in addresses(destination, resolved) {
                add(network, true);
            }
        }
    }
    if rules.allow_only() {
        lines.extend(refuse(chain, ""));
    } else {
        lines.push(format!("-A {chain} -j RETURN"));
    }
    lines
}

/// A destination's IPv4 networks: its own, or the addresses resolved for its domain.
fn addresses(destination: &Destination, resolved: &Resolved) -> Vec<Ipv4Net> {
    match destination {
        Destination::Network(IpNet::V4(network)) => vec![*network],
        Destination::Network(IpNet::V6(_)) => Vec::new(),
        Destination::Domain(domain) => resolved
            .get(domain)
            .into_iter()
            .flatten()
            .map(|address| Ipv4Net::from(*address))
            .collect(),
    }
}

/// One `iptables-restore --noflush` input for the filter table. Declaring a chain creates it,
/// or flushes it if it exists, and the whole input is applied at once or not at all.
pub fn restore_input(declare: &[String], lines: &[String]) -> String {
    let mut text = String::from("*filter\n");
    for chain in declare {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    for line in lines {
        let _ = writeln!(text, "{line}");
    }
    text.push_str("COMMIT\n");
    text
}

/// The chains of the filter table and the jumps of the forward chain, read from the output of
/// `iptables -S`.
pub fn parse_listing(chains: &Chains, listing: &str) -> (Vec<String>, Vec<Jump>) {
    let forward = format!("-A {} ", chains.forward());
    let mut names = Vec::new();
    let mut jumps = Vec::new();
    for line in listing.lines() {
        if let Some(name) = line.strip_prefix("-N ") {
            names.push(name.trim().to_owned());
        } else if line.starts_with(&forward) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |flag: &str| {
                words
                    .iter()
                    .position(|word| *word == flag)
                    .and_then(|i| words.get(i + 1))
            };
            let source = after("-s").and_then(|s| s.trim_end_matches("/32").parse().ok());
            if let (Some(source), Some(chain)) = (source, after("-g")) {
                jumps.push(Jump {
                    source,
                    chain: (*chain).to_owned(),
                });
            }
        }
    }
    (names, jumps)
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;

//! Changes to this firewall's chains in the filter table: each reads the table, then applies
//! one `iptables-restore` input, so it happens at once or not at all.

use std::net::Ipv4Addr;

use super::rules::{self, Chains, Jump};
use super::{EgressError, iptables};

/// Rewrites a sandbox's chain (`lines`) and the forward chain with the jump to it from
/// `address`, dropping an earlier jump to that chain or from that address (a reused one).
pub async fn write_sandbox(
    chains: &Chains,
    chain: &str,
    address: Ipv4Addr,
    lines: Vec<String>,
) -> Result<(), EgressError> {
    let (names, listed) = rules::parse_listing(chains, &iptables::listing().await?);
    let mut jumps: Vec<Jump> = listed
        .into_iter()
        .filter(|jump| jump.chain != chain && jump.source != address)
        .filter(|jump| names.contains(&jump.chain))
        .collect();
    jumps.push(Jump {
        source: address,
        chain: chain.to_owned(),
    });
    let mut all = rules::forward_chain(chains, &jumps);
    all.extend(lines);
    let declare = [chains.forward(), chain.to_owned()];
    iptables::restore(&rules::restore_input(&declare, &all)).await
}

/// Deletes the existing chains `doomed` picks, and the jumps to them.
pub async fn remove_chains(
    chains: &Chains,
    doomed: impl Fn(&str) -> bool,
) -> Result<(), EgressError> {
    let (names, jumps) = rules::parse_listing(chains, &iptables::listing().await?);
    let doomed: Vec<String> = names.into_iter().filter(|name| doomed(name)).collect();
    if doomed.is_empty() {
        return Ok(());
    }
    // Declaring a chain flushes it, so each is empty, and unreferenced, when deleted.
    let mut declare = doomed.clone();
    let mut lines = Vec::new();
    if !doomed.contains(&chains.forward()) {
        let kept: Vec<Jump> = jumps
            .into_iter()
            .filter(|jump| !doomed.contains(&jump.chain))
            .collect();
        declare.insert(0, chains.forward());
        lines = rules::forward_chain(chains, &kept);
    }
    lines.extend(doomed.iter().map(|chain| format!("-X {chain}")));
    iptables::restore(&rules::restore_input(&declare, &lines)).await
}

/// Rewrites, together and with the `hooks` lines, each of the `expected` chains (name, rules)
/// that is missing from the `listing` or differs from it.
pub async fn rewrite_changed(
    listing: &str,
    names: &[String],
    expected: Vec<(String, Vec<String>)>,
    hooks: Vec<String>,
) -> Result<(), EgressError> {
    let (mut declare, mut lines) = (Vec::new(), Vec::new());
    for (chain, wanted) in expected {
        let prefix = format!("-A {chain} ");
        let present: Vec<&str> = listing.lines().filter(|l| l.starts_with(&prefix)).collect();
        if !names.contains(&chain) || present != wanted {
            tracing::warn!(chain, "egress chain (re)written");
            declare.push(chain);
            lines.extend(wanted);
        }
    }
    for hook in &hooks {
        tracing::warn!(hook, "egress hook (re)installed");
    }
    lines.extend(hooks);
    if lines.is_empty() {
        return Ok(());
    }
    iptables::restore(&rules::restore_input(&declare, &lines)).await
}

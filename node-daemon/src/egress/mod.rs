//! The node's egress firewall: what the sandboxes on the bridge network may reach, enforced on
//! the host with iptables (IPv4; IPv6 is off inside sandboxes), never inside the sandbox.
//!
//! `DOCKER-USER` (which Docker evaluates first in FORWARD) sends everything entering from the
//! bridge to the node's forward chain: established traffic goes on, each sandbox's address goes
//! to its own chain, any other address is refused, so a sandbox with no rules has no egress.
//! `INPUT` sends the bridge's traffic to the node's input chain, which refuses all but replies:
//! sandboxes reach no host listener. See [`rules`] for the order within a sandbox's chain.

mod iptables;
mod resolve;
mod rules;
mod table;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ipnet::Ipv4Net;
use messages::egress::EgressRules;
use tokio::sync::Mutex;

use self::resolve::Resolver;
use self::rules::{Chains, Jump, Resolved};

pub use self::rules::{BUILT_IN_DENIED, MAX_PREFIX_LEN, chain_prefix};

/// How often the daemon should call [`EgressFirewall::refresh_domains`].
pub const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Where the firewall applies and how its chains are named.
#[derive(Debug, Clone)]
pub struct FirewallConfig {
    /// The bridge of the sandbox network (`br-<12 characters of the network id>`).
    pub bridge_interface: String,
    /// The bridge network's subnet: the sandboxes, refused to each other.
    pub subnet: Ipv4Net,
    /// Starts every chain name; at most [`MAX_PREFIX_LEN`] characters.
    pub chain_prefix: String,
    /// The nameservers for the rules' domains; `None` for those of `/etc/resolv.conf`.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Whose sandbox chains these are (the node id): [`EgressFirewall::retain`] removes only
    /// the owner's, so two daemons on one bridge leave each other's alone.
    pub owner: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("invalid egress firewall configuration: {0}")]
    Config(String),
    #[error("the egress firewall cannot be installed: {0}")]
    Unavailable(String),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("the egress resolver cannot be set up: {0}")]
    Resolver(String),
}

/// The firewall of one bridge network; cheap to clone.
#[derive(Clone, Debug)]
pub struct EgressFirewall {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bridge: String,
    subnet: Ipv4Net,
    chains: Chains,
    resolver: Resolver,
    // Held across iptables calls: each change reads the table, then rewrites it.
    open: Mutex<HashMap<String, Sandbox>>,
}

/// An open sandbox: its address, rules and the addresses last resolved for their domains.
#[derive(Debug, Clone)]
struct Sandbox {
    address: Ipv4Addr,
    rules: EgressRules,
    resolved: Resolved,
}

impl EgressFirewall {
    /// Installs the node's chains and hooks (keeping the sandbox chains a previous run left,
    /// see [`Self::retain`]). The error says why it cannot, iptables missing included.
    pub async fn install(config: FirewallConfig) -> Result<Self, EgressError> {
        let bridge = config.bridge_interface;
        let valid_bridge = (1..=15).contains(&bridge.len())
            && bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_bridge {
            return Err(EgressError::Config(format!(
                "bridge interface {bridge:?} is not an interface name"
            )));
        }
        // A hook on a name that is not the bridge would match nothing: egress left open.
        let device = std::path::Path::new("/sys/class/net").join(&bridge);
        if !tokio::fs::try_exists(&device).await.unwrap_or(false) {
            return Err(EgressError::Config(format!(
                "bridge interface {bridge:?} does not exist"
            )));
        }
        let chains = Chains::new(&config.chain_prefix)
            .map_err(EgressError::Config)?
            .owned_by(&config.owner);
        let resolver = Resolver::new(config.nameservers.as_deref())?;
        let firewall = Self {
            inner: Arc::new(Inner {
                bridge,
                subnet: config.subnet.trunc(),
                chains,
                resolver,
                open: Mutex::new(HashMap::new()),
            }),
        };
        firewall.check_hooks().await?;
        Ok(firewall)
    }

    /// Resolves the rules' domains, then installs the sandbox's chain and the jump to it from
    /// its address (replacing any earlier chain of `key` and any jump from `address`) at once.
    pub async fn open(
        &self,
        key: &str,
        address: Ipv4Addr,
        rules: &EgressRules,
    ) -> Result<(), EgressError> {
        if !self.inner.subnet.contains(&address) {
            return Err(EgressError::Config(format!(
                "sandbox address {address} is outside the bridge subnet {}",
                self.inner.subnet
            )));
        }
        let resolved = self
            .inner
            .resolver
            .resolve_rules(rules, &Resolved::new())
            .await;
        let sandbox = Sandbox {
            address,
            rules: rules.clone(),
            resolved,
        };
        let mut open = self.inner.open.lock().await;
        self.write_sandbox(key, &sandbox).await?;
        // A sandbox that had this address is gone (its jump was just replaced): forgotten, so
        // `check_hooks` does not put its jump back. Its chain goes with `close` or `retain`.
        open.retain(|other, sandbox| other == key || sandbox.address != address);
        open.insert(key.to_owned(), sandbox);
        Ok(())
    }

    /// Removes the sandbox's jump and chain; its address has no egress any more.
    pub async fn close(&self, key: &str) -> Result<(), EgressError> {
        let mut open = self.inner.open.lock().await;
        open.remove(key);
        let chain = self.inner.chains.sandbox(key);
        table::remove_chains(&self.inner.chains, |name| name == chain).await
    }

    /// Resolves the domains of every open sandbox again and rewrites the chains whose addresses
    /// changed. A name that cannot be resolved keeps its previous addresses. The first error of
    /// a rewrite is returned, after the others were tried.
    pub async fn refresh_domains(&self) -> Result<(), EgressError> {
        let snapshot: Vec<(String, Sandbox)> = {
            let open = self.inner.open.lock().await;
            open.iter()
                .filter(|(_, sandbox)| !resolve::domains(&sandbox.rules).is_empty())
                .map(|(key, sandbox)| (key.clone(), sandbox.clone()))
                .collect()
        };
        let mut first_error = None;
        for (key, before) in snapshot {
            let resolved = self
                .inner
                .resolver
                .resolve_rules(&before.rules, &before.resolved)
                .await;
            if resolved == before.resolved {
                continue;
            }
            let mut open = self.inner.open.lock().await;
            // Closed or opened again meanwhile: the newer state stands.
            let Some(current) = open.get_mut(&key) else {
                continue;
            };
            if current.address != before.address || current.rules != before.rules {
                continue;
            }
            let updated = Sandbox { resolved, ..before };
            match self.write_sandbox(&key, &updated).await {
                Ok(()) => *current = updated,
                Err(error) => {
                    tracing::warn!(key, %error, "egress rules not refreshed");
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes the chains (and jumps) of the sandboxes whose keys are not in `live_keys`,
    /// including those a previous run of the daemon made.
    pub async fn retain(&self, live_keys: &HashSet<String>) -> Result<(), EgressError> {
        let mut open = self.inner.open.lock().await;
        open.retain(|key, _| live_keys.contains(key));
        let chains = &self.inner.chains;
        let live: HashSet<String> = live_keys.iter().map(|key| chains.sandbox(key)).collect();
        table::remove_chains(chains, |chain| {
            chains.is_own_sandbox(chain) && !live.contains(chain)
        })
        .await
    }

    /// Puts back the hooks and the node's chains if Docker or an operator removed or changed
    /// them, and the chains of the open sandboxes; an error if it cannot.
    pub async fn check_hooks(&self) -> Result<(), EgressError> {
        let open = self.inner.open.lock().await;
        let chains = &self.inner.chains;
        let listing = iptables::listing().await.map_err(unavailable)?;
        let (names, listed_jumps) = rules::parse_listing(chains, &listing);
        if !names.iter().any(|name| name == "DOCKER-USER") {
            return Err(EgressError::Unavailable(
                "the DOCKER-USER chain is missing: is Docker running with its iptables \
                 integration (\"iptables\": true)?"
                    .to_owned(),
            ));
        }
        // The jumps: those listed to existing chains, and one for each open sandbox.
        let mut jumps: Vec<Jump> = listed_jumps
            .into_iter()
            .filter(|jump| names.contains(&jump.chain))
            .filter(|jump| !open.values().any(|sandbox| sandbox.address == jump.source))
            .collect();
        let mut expected = Vec::new();
        for (key, sandbox) in open.iter() {
            let chain = chains.sandbox(key);
            expected.push((chain.clone(), self.sandbox_lines(&chain, sandbox)));
            jumps.push(Jump {
                source: sandbox.address,
                chain,
            });
        }
        expected.push((chains.forward(), rules::forward_chain(chains, &jumps)));
        expected.push((chains.input(), rules::input_chain(chains)));
        // The hooks go in with the chains, so they never point at a missing or partial chain.
        let hooks = rules::hook_repairs(chains, &self.inner.bridge, &listing);
        table::rewrite_changed(&listing, &names, expected, hooks)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Removes the hooks and every chain with this firewall's prefix (for tests and operators:
    /// a daemon that stops leaves the rules, since its sandboxes keep running).
    pub async fn uninstall(&self) -> Result<(), EgressError> {
        let mut open = self.inner.open.lock().await;
        open.clear();
        for (chain, rule) in rules::hooks(&self.inner.chains, &self.inner.bridge) {
            let hook: Vec<&str> = [chain].into_iter().chain(rule.split(' ')).collect();
            let delete: Vec<&str> = ["-D"].iter().chain(&hook).copied().collect();
            while iptables::has_rule(&hook).await? {
                iptables::run(&delete).await?;
            }
        }
        table::remove_chains(&self.inner.chains, |chain| self.inner.chains.owns(chain)).await
    }

    fn sandbox_lines(&self, chain: &str, sandbox: &Sandbox) -> Vec<String> {
        rules::sandbox_chain(chain, &sandbox.rules, &sandbox.resolved, self.inner.subnet)
    }

    async fn write_sandbox(&self, key: &str, sandbox: &Sandbox) -> Result<(), EgressError> {
        let chain = self.inner.chains.sandbox(key);
        let lines = self.sandbox_lines(&chain, sandbox);
        table::write_sandbox(&self.inner.chains, &chain, sandbox.address, lines).await
    }
}

/// A failure while installing means the firewall is not usable: say so, with the reason.
fn unavailable(error: EgressError) -> EgressError {
    match error {
        EgressError::Command { .. } => EgressError::Unavailable(error.to_string()),
        other => other,
    }
}

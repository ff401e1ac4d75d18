//! Resolving the domains of egress rules on the node (IPv4 only: sandboxes have no IPv6), with
//! the nameservers of `/etc/resolv.conf` or those configured.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures::future::join_all;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

use messages::egress::{Destination, EgressRules};

use super::EgressError;
use super::rules::Resolved;

const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Per query, so an unanswering nameserver does not hold up opening a sandbox for long.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A resolver of the names in egress rules.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("nameservers", &self.inner.config().name_servers())
            .finish()
    }
}

impl Resolver {
    /// Asks `nameservers` (UDP, TCP when an answer is truncated), or those of
    /// `/etc/resolv.conf` when `None`.
    pub fn new(nameservers: Option<&[SocketAddr]>) -> Result<Self, EgressError> {
        let group = match nameservers {
            Some(addresses) => {
                let mut group = NameServerConfigGroup::new();
                for address in addresses {
                    group.push(NameServerConfig::new(*address, Protocol::Udp));
                    group.push(NameServerConfig::new(*address, Protocol::Tcp));
                }
                group
            }
            None => {
                let text = std::fs::read_to_string(RESOLV_CONF).map_err(|error| {
                    EgressError::Resolver(format!("reading {RESOLV_CONF}: {error}"))
                })?;
                NameServerConfigGroup::from_ips_clear(&resolv_conf_nameservers(&text), 53, true)
            }
        };
        if group.is_empty() {
            return Err(EgressError::Resolver(
                "no nameserver is configured".to_owned(),
            ));
        }
        let mut options = ResolverOpts::default();
        options.timeout = TIMEOUT;
        options.attempts = 2;
        // A sandbox's destinations come from DNS, not from the host's own /etc/hosts names.
        options.use_hosts_file = ResolveHosts::Never;
        let config = ResolverConfig::from_parts(None, Vec::new(), group);
        let inner = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(options)
            .build();
        Ok(Self { inner })
    }

    /// The IPv4 addresses of `domain`, sorted; none when it has no A record. The error says why
    /// it could not be resolved.
    pub async fn ipv4(&self, domain: &str) -> Result<Vec<Ipv4Addr>, String> {
        // Fully qualified, so no search domain of the node is tried.
        let name = format!("{domain}.");
        match self.inner.ipv4_lookup(name).await {
            Ok(lookup) => {
                let mut addresses: Vec<Ipv4Addr> = lookup.iter().map(|a| a.0).collect();
                addresses.sort_unstable();
                addresses.dedup();
                Ok(addresses)
            }
            Err(error) if error.is_no_records_found() => Ok(Vec::new()),
            Err(error) => Err(error.to_string()),
        }
    }

    /// The addresses of the rules' domains, resolved together; a failed name keeps what
    /// `previous` had for it (nothing at first, so it adds no destination).
    pub async fn resolve_rules(&self, rules: &EgressRules, previous: &Resolved) -> Resolved {
        let mut domains = domains(rules);
        domains.sort_unstable();
        domains.dedup();
        let answers = join_all(domains.iter().map(|domain| self.ipv4(domain))).await;
        let mut resolved = Resolved::new();
        for (domain, answer) in domains.into_iter().zip(answers) {
            let addresses = answer.unwrap_or_else(|error| {
                tracing::warn!(domain, %error, "egress domain not resolved");
                previous.get(domain).cloned().unwrap_or_default()
            });
            resolved.insert(domain.to_owned(), addresses);
        }
        resolved
    }
}

/// The domain names of the rules, `allow` and `deny`.
pub fn domains(rules: &EgressRules) -> Vec<&str> {
    rules
        .allow
        .iter()
        .chain(&rules.deny)
        .filter_map(|destination| match destination {
            Destination::Domain(domain) => Some(domain.as_str()),
            Destination::Network(_) => None,
        })
        .collect()
}

/// The `nameserver` lines of a resolv.conf; with none, the C library's default, 127.0.0.1.
fn resolv_conf_nameservers(text: &str) -> Vec<IpAddr> {
    let found: Vec<IpAddr> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                // A scoped IPv6 address (fe80::1%eth0) is not an IpAddr: skipped.
                .and_then(|address| address.parse().ok())
        })
        .collect();
    if found.is_empty() {
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
    } else {
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_come_from_resolv_conf() {
        let text = "# comment\nsearch example.com\nnameserver 192.0.2.53\nnameserver ::1\n\
                    nameserver fe80::1%eth0\noptions ndots:5\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            [
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53)),
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            ]
        );
        assert_eq!(
            resolv_conf_nameservers("search x\n"),
            [IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
    }
}

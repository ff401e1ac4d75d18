//! A networked template's egress rules: which destinations its sandboxes may reach. The node
//! enforces them on the host (never in the sandbox); this module only says what they mean.
//!
//! Every sandbox on `sandbox_network` is refused the node itself, link-local, private and
//! reserved ranges and the other sandboxes, whatever its rules say; `deny` takes more away;
//! a non-empty `allow` makes the sandbox allow-only (just those destinations, still never the
//! refused ranges unless named exactly by CIDR in `allow`). Domain names are resolved by the
//! node, not the sandbox, so a sandbox that resolves names itself reaches only the addresses
//! the node resolved.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The most entries `allow` and `deny` may hold together.
pub const MAX_EGRESS_RULES: usize = 64;
/// The longest domain name (RFC 1035).
const MAX_DOMAIN_BYTES: usize = 253;

/// A template's rules, as written: each entry a CIDR (`203.0.113.0/24`), an address, or a
/// domain name (`pypi.org`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// One destination of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// An address range; a single address is a /32 (or /128).
    Network(ipnet::IpNet),
    /// A domain name, lower case, without a trailing dot; the node resolves it.
    Domain(String),
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(network) = text.parse::<ipnet::IpNet>() {
            return Ok(Self::Network(network.trunc()));
        }
        if let Ok(address) = text.parse::<IpAddr>() {
            return Ok(Self::Network(ipnet::IpNet::from(address)));
        }
        let domain = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        if is_domain_name(&domain) {
            Ok(Self::Domain(domain))
        } else {
            Err(format!(
                "egress entry {:?} is neither a CIDR (203.0.113.0/24), an address nor a domain \
                 name (pypi.org)",
                text.chars().take(80).collect::<String>()
            ))
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Network(network) => network.fmt(f),
            Self::Domain(domain) => f.write_str(domain),
        }
    }
}

/// Letters, digits and hyphens in dot-separated labels of 1 to 63 bytes, not starting or ending
/// with a hyphen, at least two labels, the last not all digits (so `10.0.0` is not a name).
fn is_domain_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= MAX_DOMAIN_BYTES
        && labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|last| !last.bytes().all(|b| b.is_ascii_digit()))
}

/// The rules parsed: what the node installs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressRules {
    pub allow: Vec<Destination>,
    pub deny: Vec<Destination>,
}

impl EgressRules {
    /// Allow-only: a sandbox reaches nothing but `allow`.
    pub fn allow_only(&self) -> bool {
        !self.allow.is_empty()
    }
}

impl Egress {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Parses every entry; the first that is not a destination is the error.
    pub fn rules(&self) -> Result<EgressRules, String> {
        let count = self.allow.len() + self.deny.len();
        if count > MAX_EGRESS_RULES {
            return Err(format!(
                "egress may have at most {MAX_EGRESS_RULES} entries in allow and deny together, \
                 not {count}"
            ));
        }
        let parse = |entries: &[String]| -> Result<Vec<Destination>, String> {
            entries.iter().map(|entry| entry.parse()).collect()
        };
        let allow = parse(&self.allow)?;
        // Cloud metadata endpoints live there; no template may open them.
        let link_local: ipnet::IpNet =
            ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(169, 254, 0, 0), 16).into();
        if let Some(opening) = allow.iter().find(|destination| {
            matches!(destination, Destination::Network(network)
                if network.contains(&link_local) || link_local.contains(network))
        }) {
            return Err(format!(
                "egress allow entry {opening} opens link-local 169.254.0.0/16 (cloud metadata), \
                 which no sandbox may reach"
            ));
        }
        Ok(EgressRules {
            allow,
            deny: parse(&self.deny)?,
        })
    }

    pub fn check(&self) -> Result<(), String> {
        self.rules().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_networks_or_domains() {
        let network = |text: &str| Destination::Network(text.parse().expect("a network"));
        assert_eq!("203.0.113.7/24".parse(), Ok(network("203.0.113.0/24")));
        assert_eq!("198.18.0.2".parse(), Ok(network("198.18.0.2/32")));
        assert_eq!("fc00::/7".parse(), Ok(network("fc00::/7")));
        assert_eq!(
            "PyPI.org.".parse(),
            Ok(Destination::Domain("pypi.org".into()))
        );
        for bad in [
            "",
            "localhost",
            "10.0.0",
            "a..b",
            "-a.com",
            "a b.com",
            "x.123",
            "1.2.3.4/33",
        ] {
            assert!(bad.parse::<Destination>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_allow_list_makes_it_allow_only() {
        let egress = Egress {
            allow: vec!["pypi.org".into()],
            deny: vec![],
        };
        assert!(egress.rules().expect("valid").allow_only());
        assert!(!Egress::default().rules().expect("valid").allow_only());
        for opening in ["0.0.0.0/0", "169.254.169.254", "169.0.0.0/8"] {
            let egress = Egress {
                allow: vec![opening.into()],
                deny: vec![],
            };
            assert!(
                egress
                    .check()
                    .is_err_and(|error| error.contains("metadata")),
                "{opening}"
            );
        }
        let too_many = Egress {
            allow: vec!["1.1.1.1".into(); MAX_EGRESS_RULES + 1],
            deny: vec![],
        };
        assert!(too_many.check().is_err());
    }
}

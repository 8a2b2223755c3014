//! Which addresses a URL from a Worker spec may make the operator connect to.
//!
//! Whoever writes a Worker spec is not the operator's administrator, and the operator runs as
//! root on the host: a webhook or metrics URL must not reach the cloud metadata service or
//! other link-local addresses. The policy is checked on the addresses actually connected to: an
//! IP literal before the request, a host name's addresses as it is resolved ([`PolicyResolver`]),
//! so a name that resolves elsewhere on a later lookup (DNS rebinding) is caught too.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;

/// Denied unless the administrator gives another list: link-local (which holds the metadata
/// service at 169.254.169.254), and the metadata services at other addresses (Alibaba Cloud's
/// 100.100.100.200, AWS's IPv6 fd00:ec2::254).
pub const DEFAULT_DENY: [&str; 4] = [
    "169.254.0.0/16",
    "fe80::/10",
    "100.100.100.200/32",
    "fd00:ec2::254/128",
];

/// The operator's URL policy: addresses inside a `deny` network are refused; when `allow` is
/// not empty, so is every address outside all of its networks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlPolicy {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

impl Default for UrlPolicy {
    fn default() -> Self {
        Self::new(None, Vec::new())
    }
}

impl UrlPolicy {
    /// `deny` replaces [`DEFAULT_DENY`] when given.
    pub fn new(deny: Option<Vec<IpNet>>, allow: Vec<IpNet>) -> Self {
        let deny = deny.unwrap_or_else(|| {
            DEFAULT_DENY
                .iter()
                .map(|n| n.parse().expect("the default networks parse"))
                .collect()
        });
        Self { deny, allow }
    }

    pub fn deny(&self) -> &[IpNet] {
        &self.deny
    }

    pub fn allow(&self) -> &[IpNet] {
        &self.allow
    }

    /// Whether the operator may connect to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 address (::ffff:169.254.169.254) reaches the IPv4 address.
        let ip = ip.to_canonical();
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

/// A network in CIDR notation, or a single address.
pub fn parse_network(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither a network in CIDR notation nor an IP address"))
}

/// What a connection refused by the policy fails with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("address not allowed by the operator's URL policy")]
pub struct NotAllowed;

/// Resolves host names with the system resolver and hands on only the addresses the policy
/// allows; fails with [`NotAllowed`] when none is left.
#[derive(Debug)]
pub struct PolicyResolver {
    policy: Arc<UrlPolicy>,
}

impl PolicyResolver {
    pub fn new(policy: Arc<UrlPolicy>) -> Self {
        Self { policy }
    }
}

/// The addresses of `found` that `policy` allows, or why there is none.
pub fn allowed_addresses(
    policy: &UrlPolicy,
    found: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let mut any = false;
    let allowed: Vec<SocketAddr> = found
        .into_iter()
        .inspect(|_| any = true)
        .filter(|a| policy.allows(a.ip()))
        .collect();
    match (any, allowed.is_empty()) {
        (false, _) => Err("the name has no address".into()),
        (true, true) => Err(Box::new(NotAllowed)),
        (true, false) => Ok(allowed),
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let allowed = allowed_addresses(&policy, found)?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| parse_network(n).unwrap()).collect()
    }

    #[test]
    fn the_default_denies_metadata_and_link_local_and_allows_the_rest() {
        let p = UrlPolicy::default();
        for denied in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "100.100.100.200",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(!p.allows(ip(denied)), "{denied}");
        }
        for allowed in ["127.0.0.1", "::1", "10.1.2.3", "100.100.100.201", "8.8.8.8"] {
            assert!(p.allows(ip(allowed)), "{allowed}");
        }
    }

    #[test]
    fn a_deny_list_replaces_the_default_and_an_allow_list_admits_only_its_networks() {
        let p = UrlPolicy::new(Some(nets(&["127.0.0.0/8"])), Vec::new());
        assert!(!p.allows(ip("127.0.0.1")));
        assert!(p.allows(ip("169.254.169.254")), "the default is replaced");

        let p = UrlPolicy::new(None, nets(&["10.0.0.0/8", "::1"]));
        assert!(p.allows(ip("10.20.30.40")));
        assert!(p.allows(ip("::1")));
        assert!(!p.allows(ip("127.0.0.1")), "outside the allow list");
        // Deny wins over allow.
        let p = UrlPolicy::new(None, nets(&["169.254.0.0/16"]));
        assert!(!p.allows(ip("169.254.169.254")));
    }

    #[test]
    fn networks_parse_as_cidr_or_single_addresses() {
        assert_eq!(
            parse_network("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(parse_network(" ::1 ").unwrap().to_string(), "::1/128");
        assert_eq!(parse_network("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
        for bad in ["", "10.0.0.0/33", "example.com", "1.2.3"] {
            assert!(parse_network(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolved_addresses_are_filtered_and_none_left_is_not_allowed() {
        let p = UrlPolicy::default();
        let a = |s: &str| SocketAddr::new(ip(s), 0);
        assert_eq!(
            allowed_addresses(&p, [a("169.254.169.254"), a("10.0.0.1")]).unwrap(),
            [a("10.0.0.1")]
        );
        let err = allowed_addresses(&p, [a("169.254.169.254"), a("fe80::2")]).unwrap_err();
        assert!(err.is::<NotAllowed>(), "{err}");
        let err = allowed_addresses(&p, []).unwrap_err();
        assert!(!err.is::<NotAllowed>(), "{err}");
    }
}

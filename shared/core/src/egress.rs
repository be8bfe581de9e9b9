//! Where Keel may call when a tenant steers the address: the rules the
//! guarded client (`keel-egress`) applies to every URL and every address a
//! host name resolves to. Refused unless the platform opens them on purpose
//! (`KEEL_EGRESS_ALLOW`): loopback, private, shared, link-local (the
//! instance metadata service), unique-local, multicast, unspecified,
//! broadcast and reserved addresses, also when an IPv4 address hides in an
//! IPv6 form. A tenant may further be pinned to named hosts.

use crate::error::KeelError;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address or URL is refused; the message names the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("egress refused: {target} is {rule}")]
pub struct Refusal {
    pub target: String,
    pub rule: String,
}

impl From<Refusal> for KeelError {
    fn from(r: Refusal) -> Self {
        KeelError::Forbidden(r.to_string())
    }
}

/// The ranges refused by default, each with the rule it is reported as.
const REFUSED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "an unspecified address (0.0.0.0/8)"),
    ("10.0.0.0/8", "a private address (RFC 1918, 10.0.0.0/8)"),
    ("100.64.0.0/10", "a shared address (RFC 6598, 100.64.0.0/10)"),
    ("127.0.0.0/8", "a loopback address (127.0.0.0/8)"),
    ("169.254.0.0/16", "a link-local address (169.254.0.0/16, the instance metadata service)"),
    ("172.16.0.0/12", "a private address (RFC 1918, 172.16.0.0/12)"),
    ("192.0.0.0/24", "an IETF protocol address (192.0.0.0/24)"),
    ("192.0.2.0/24", "a documentation address (192.0.2.0/24)"),
    ("192.168.0.0/16", "a private address (RFC 1918, 192.168.0.0/16)"),
    ("198.18.0.0/15", "a benchmarking address (198.18.0.0/15)"),
    ("198.51.100.0/24", "a documentation address (198.51.100.0/24)"),
    ("203.0.113.0/24", "a documentation address (203.0.113.0/24)"),
    ("224.0.0.0/4", "a multicast address (224.0.0.0/4)"),
    ("240.0.0.0/4", "a reserved or broadcast address (240.0.0.0/4)"),
    ("::/128", "the unspecified address (::)"),
    ("::1/128", "the loopback address (::1)"),
    ("64:ff9b::/96", "an IPv4-translated address (64:ff9b::/96)"),
    ("100::/64", "a discard address (100::/64)"),
    ("2001:db8::/32", "a documentation address (2001:db8::/32)"),
    ("fc00::/7", "a unique-local address (fc00::/7, the instance metadata service's fd00:ec2::254)"),
    ("fe80::/10", "a link-local address (fe80::/10)"),
    ("ff00::/8", "a multicast address (ff00::/8)"),
];

/// The platform's egress rules: what it opened on purpose.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    allowed_nets: Vec<IpNet>,
    allowed_hosts: Vec<String>,
}

impl EgressPolicy {
    /// `KEEL_EGRESS_ALLOW`: comma-separated CIDRs (or single addresses) and host names.
    pub fn parse(allow: &str) -> Result<Self, KeelError> {
        let mut policy = Self::default();
        for item in allow.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Ok(net) = item.parse::<IpNet>() {
                policy.allowed_nets.push(net);
            } else if let Ok(ip) = item.parse::<IpAddr>() {
                policy.allowed_nets.push(IpNet::from(ip));
            } else if is_host_name(item) {
                policy.allowed_hosts.push(item.to_ascii_lowercase());
            } else {
                return Err(KeelError::Config(format!("KEEL_EGRESS_ALLOW: {item:?} is neither a CIDR nor a host name")));
            }
        }
        Ok(policy)
    }

    /// Whether the platform opened this host name by name (its addresses are then not checked).
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed_hosts.contains(&host)
    }

    /// Checks one address: refused ranges stay shut unless an allowed range holds it.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if self.allowed_nets.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match refused_rule(ip) {
            Some(rule) => Err(Refusal { target: ip.to_string(), rule: rule.into() }),
            None => Ok(()),
        }
    }

    /// Checks what a URL says without resolving it: the scheme, the tenant's
    /// pinned hosts, and the address when the host is one.
    pub fn check_url(&self, url: &url::Url, pins: Option<&EgressPins>) -> Result<(), Refusal> {
        let target = || url.host_str().unwrap_or("").to_string();
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refusal { target: url.scheme().into(), rule: "not http(s)".into() });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal { target: target(), rule: "a URL with credentials in it".into() });
        }
        let host = match url.host() {
            Some(h) => h,
            None => return Err(Refusal { target: url.as_str().into(), rule: "a URL without a host".into() }),
        };
        if let Some(pins) = pins {
            if !pins.admits(&target()) {
                return Err(Refusal { target: target(), rule: format!("not among the tenant's allowed hosts ({})", pins.hosts.join(", ")) });
            }
        }
        match host {
            url::Host::Ipv4(ip) => self.check_ip(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => self.check_ip(IpAddr::V6(ip)),
            url::Host::Domain(_) => Ok(()),
        }
    }
}

/// An IPv4 address carried in an IPv6 form (mapped or compatible) is judged as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => compatible_v4(v6).map_or(ip, IpAddr::V4),
        },
        v4 => v4,
    }
}

/// `::a.b.c.d` (deprecated IPv4-compatible), except `::` and `::1`.
fn compatible_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = v6.octets();
    (o[..12].iter().all(|b| *b == 0) && v6.segments()[6] != 0).then(|| Ipv4Addr::new(o[12], o[13], o[14], o[15]))
}

fn refused_rule(ip: IpAddr) -> Option<&'static str> {
    REFUSED.iter().find(|(net, _)| net.parse::<IpNet>().is_ok_and(|n| n.contains(&ip))).map(|(_, rule)| *rule)
}

/// A host name as DNS writes it (letters, digits, hyphens, dots).
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Most host patterns a tenant may be pinned to.
pub const MAX_PINNED_HOSTS: usize = 100;

/// A tenant's pin: its connectors and webhooks may call only these hosts
/// (`api.stripe.com`, or `*.example.com` for any name under example.com).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressPins {
    pub hosts: Vec<String>,
}

impl EgressPins {
    pub fn validate(&self) -> Result<(), KeelError> {
        if self.hosts.len() > MAX_PINNED_HOSTS {
            return Err(KeelError::BadRequest(format!("egress.hosts: at most {MAX_PINNED_HOSTS} hosts")));
        }
        for pattern in &self.hosts {
            if !is_host_name(pattern.strip_prefix("*.").unwrap_or(pattern)) {
                return Err(KeelError::BadRequest(format!("egress.hosts: {pattern:?} is not a host name or *.domain")));
            }
        }
        Ok(())
    }

    /// Whether `host` matches a pattern; `*.example.com` admits names under it, not example.com itself.
    pub fn admits(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|p| match p.to_ascii_lowercase().strip_prefix("*.") {
            Some(domain) => host.strip_suffix(&domain).is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => p.eq_ignore_ascii_case(&host),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &EgressPolicy, url: &str) -> Option<String> {
        policy.check_url(&url::Url::parse(url).unwrap(), None).err().map(|r| r.rule)
    }

    #[test]
    fn every_refused_range_is_refused_by_default() {
        let p = EgressPolicy::default();
        for (url, rule) in [
            ("http://127.0.0.1/", "loopback"),
            ("http://127.9.9.9:8080/", "loopback"),
            ("http://10.1.2.3/", "RFC 1918"),
            ("http://172.16.0.1/", "RFC 1918"),
            ("http://172.31.255.255/", "RFC 1918"),
            ("http://192.168.1.1/", "RFC 1918"),
            ("http://100.64.0.1/", "shared"),
            ("http://169.254.169.254/latest/meta-data/", "metadata"),
            ("http://[fd00:ec2::254]/", "unique-local"),
            ("http://[fe80::1]/", "link-local"),
            ("http://[fc00::1]/", "unique-local"),
            ("http://[::1]/", "loopback"),
            ("http://[::]/", "unspecified"),
            ("http://0.0.0.0/", "unspecified"),
            ("http://224.0.0.1/", "multicast"),
            ("http://[ff02::1]/", "multicast"),
            ("http://255.255.255.255/", "broadcast"),
            ("http://[::ffff:127.0.0.1]/", "loopback"),
            ("http://[::ffff:169.254.169.254]/", "link-local"),
            ("http://[::127.0.0.1]/", "loopback"),
            ("http://2130706433/", "loopback"),
            ("http://0177.0.0.1/", "loopback"),
            ("http://0x7f.1/", "loopback"),
            ("http://127.1/", "loopback"),
            ("http://0xa9fea9fe/", "link-local"),
        ] {
            let why = refused(&p, url).unwrap_or_else(|| panic!("{url} was let through"));
            assert!(why.contains(rule), "{url}: {why}");
        }
    }

    #[test]
    fn public_addresses_and_names_pass_the_static_check() {
        let p = EgressPolicy::default();
        for url in ["https://93.184.216.34/", "https://api.stripe.com/v1", "http://[2606:4700::1111]/", "https://172.32.0.1/"] {
            assert_eq!(refused(&p, url), None, "{url}");
        }
    }

    #[test]
    fn the_platform_opens_ranges_and_hosts_on_purpose() {
        let p = EgressPolicy::parse("127.0.0.0/8, 10.0.0.5, internal.corp").unwrap();
        assert_eq!(refused(&p, "http://127.0.0.1:9000/"), None);
        assert_eq!(refused(&p, "http://10.0.0.5/"), None);
        assert!(refused(&p, "http://10.0.0.6/").is_some());
        assert!(refused(&p, "http://169.254.169.254/").is_some());
        assert!(p.allows_host("Internal.Corp."));
        assert!(!p.allows_host("other.corp"));
        assert!(EgressPolicy::parse("not a cidr!").is_err());
    }

    #[test]
    fn urls_other_than_plain_http_are_refused() {
        let p = EgressPolicy::default();
        assert!(refused(&p, "file:///etc/passwd").unwrap().contains("http"));
        assert!(refused(&p, "https://user:pw@api.example.com/").unwrap().contains("credentials"));
    }

    #[test]
    fn pins_admit_named_hosts_and_subdomains_only() {
        let pins = EgressPins { hosts: vec!["api.stripe.com".into(), "*.example.com".into()] };
        assert!(pins.validate().is_ok());
        assert!(pins.admits("api.stripe.com"));
        assert!(pins.admits("a.b.example.com"));
        assert!(!pins.admits("example.com"));
        assert!(!pins.admits("evilexample.com"));
        assert!(!pins.admits("api.stripe.com.evil.net"));
        let p = EgressPolicy::default();
        let rule = p.check_url(&url::Url::parse("https://evil.net/").unwrap(), Some(&pins)).unwrap_err().rule;
        assert!(rule.contains("allowed hosts"), "{rule}");
        assert!(EgressPins { hosts: vec!["*".into()] }.validate().is_err());
    }

    #[test]
    fn a_refusal_is_final_not_retried() {
        let r = EgressPolicy::default().check_ip("127.0.0.1".parse().unwrap()).unwrap_err();
        assert!(!KeelError::from(r).is_retryable());
    }
}

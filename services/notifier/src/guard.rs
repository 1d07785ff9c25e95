//! SSRF guard for webhook targets: only `http`/`https`, and no loopback, link-local, private,
//! unspecified, multicast or broadcast address unless the configuration allows loopback or
//! private targets explicitly (the dev stack allows loopback).
//!
//! Names are checked where they are resolved (a reqwest DNS resolver that drops disallowed
//! addresses), so a name cannot pass a check and then resolve elsewhere at connect time; IP
//! literals, which reqwest does not resolve, are checked before the request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Deserialize;
use url::Url;

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct TargetPolicy {
    pub allow_loopback: bool,
    pub allow_private: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("webhook URL scheme must be http or https, not {0}")]
    Scheme(String),
    #[error("webhook URL has no host")]
    NoHost,
    #[error("webhook target address {0} is not allowed (loopback, link-local or private)")]
    Address(IpAddr),
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    // RFC 1918, plus carrier-grade NAT (100.64/10) which is just as internal.
    ip.is_private() || (a == 100 && (64..128).contains(&b))
}

fn is_link_local_v6(ip: Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xffc0) == 0xfe80
}

fn is_unique_local_v6(ip: Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xfe00) == 0xfc00
}

impl TargetPolicy {
    /// Whether a connection to `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() {
                    false
                } else if v4.is_loopback() {
                    self.allow_loopback
                } else if v4.is_link_local() {
                    false
                } else if is_private_v4(v4) {
                    self.allow_private
                } else {
                    true
                }
            }
            IpAddr::V6(v6) => {
                if v6.is_unspecified() || v6.is_multicast() {
                    false
                } else if v6.is_loopback() {
                    self.allow_loopback
                } else if is_link_local_v6(v6) {
                    false
                } else if is_unique_local_v6(v6) {
                    self.allow_private
                } else {
                    true
                }
            }
        }
    }

    /// Checks what can be checked before resolution: the scheme, and the host if it is an IP.
    pub fn check_url(&self, url: &Url) -> Result<(), GuardError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(GuardError::Scheme(url.scheme().to_string()));
        }
        match url.host() {
            None => Err(GuardError::NoHost),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
        }
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), GuardError> {
        self.allows(ip).then_some(()).ok_or(GuardError::Address(ip))
    }
}

/// Resolves names for the webhook client, keeping only allowed addresses.
pub struct GuardedResolver {
    pub policy: TargetPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.is_empty() {
                let first = resolved.first().map(SocketAddr::ip);
                return Err(match first {
                    Some(ip) => Box::new(GuardError::Address(ip)) as _,
                    None => format!("{host} did not resolve").into(),
                });
            }
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

    #[test]
    fn internal_addresses_are_refused_by_default() {
        let strict = TargetPolicy::default();
        for bad in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!strict.allows(ip(bad)), "{bad} must be refused");
        }
        for good in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"] {
            assert!(strict.allows(ip(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn loopback_and_private_only_when_allowed() {
        let dev = TargetPolicy {
            allow_loopback: true,
            allow_private: false,
        };
        assert!(dev.allows(ip("127.0.0.1")) && dev.allows(ip("::1")));
        assert!(!dev.allows(ip("10.0.0.1")));
        assert!(
            !dev.allows(ip("169.254.169.254")),
            "link-local is never allowed"
        );
        let private = TargetPolicy {
            allow_loopback: false,
            allow_private: true,
        };
        assert!(private.allows(ip("10.0.0.1")) && !private.allows(ip("127.0.0.1")));
    }

    #[test]
    fn urls_need_an_http_scheme_and_an_allowed_literal_host() {
        let strict = TargetPolicy::default();
        let check = |u: &str| strict.check_url(&Url::parse(u).unwrap());
        assert!(check("https://hooks.example.com/x").is_ok());
        assert!(matches!(
            check("ftp://example.com/"),
            Err(GuardError::Scheme(_))
        ));
        assert!(matches!(
            check("file:///etc/passwd"),
            Err(GuardError::Scheme(_))
        ));
        assert!(matches!(
            check("http://127.0.0.1:8080/"),
            Err(GuardError::Address(_))
        ));
        assert!(matches!(
            check("http://[::1]/"),
            Err(GuardError::Address(_))
        ));
    }
}

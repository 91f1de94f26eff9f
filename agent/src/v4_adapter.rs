//! The one crossing from the agent's family-generic addresses (`IpNet`, `IpAddr`) into the lower
//! layers that still take IPv4 only: `routes::Route`, the firewall's spec and forward policy,
//! and the quic data path (its event loop and packet checks). Delete this module, and unwrap its
//! calls, once those layers take `IpNet`/`IpAddr`.
//!
//! Values reach these layers from a validated network config, whose cluster CIDR and subnets
//! are IPv4 (the only family switched on), so the error is a guard, never the normal path.

use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr};

/// An IPv6 value met a layer that carries IPv4 only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is IPv6, but weft's routes, firewall and quic data path carry IPv4 only so far")]
pub struct NotIpv4(pub String);

/// `net` as the IPv4-only layers take it.
pub fn v4(net: IpNet) -> Result<Ipv4Net, NotIpv4> {
    match net {
        IpNet::V4(v4) => Ok(v4),
        IpNet::V6(v6) => Err(NotIpv4(v6.to_string())),
    }
}

/// `addr` as the IPv4-only layers take it.
pub fn v4_addr(addr: IpAddr) -> Result<Ipv4Addr, NotIpv4> {
    match addr {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(v6) => Err(NotIpv4(v6.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_passes_and_ipv6_is_named_in_the_error() {
        let net: IpNet = "10.244.1.0/24".parse().expect("literal");
        assert_eq!(v4(net).map(|n| n.to_string()), Ok("10.244.1.0/24".into()));
        assert_eq!(v4_addr("10.244.1.1".parse().expect("literal")), Ok(Ipv4Addr::new(10, 244, 1, 1)));
        let e = v4("fd00:10:244:1::/64".parse().expect("literal")).expect_err("ipv6");
        assert_eq!(
            e.to_string(),
            "fd00:10:244:1::/64 is IPv6, but weft's routes, firewall and quic data path carry IPv4 only so far"
        );
        assert!(v4_addr("2001:db8::1".parse().expect("literal")).is_err());
    }
}

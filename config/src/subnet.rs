//! Subnet math over IPv4 prefixes: carving a cluster CIDR into node subnets, finding a free one,
//! addressing inside a node subnet, and the `a.b.c.d-len` form used in etcd keys.
//!
//! Everything is pure and works on `ipnet::Ipv4Net`; an IPv6 twin would mirror these functions.

use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Why a prefix string was refused. `Display` gives the expectation, lowercase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("expected an IPv4 CIDR like 10.244.0.0/16, found {0:?}")]
    Syntax(String),
    #[error("{given} has host bits set (did you mean {network}?)")]
    Misaligned { given: String, network: Ipv4Net },
}

/// Parses `a.b.c.d/len`, refusing host bits (a misaligned CIDR is almost always a typo).
pub fn parse_cidr(s: &str) -> Result<Ipv4Net, CidrError> {
    let net: Ipv4Net = s.trim().parse().map_err(|_| CidrError::Syntax(s.to_string()))?;
    if net.addr() != net.network() {
        return Err(CidrError::Misaligned { given: s.to_string(), network: net.trunc() });
    }
    Ok(net)
}

/// How many subnets of `subnet_len` a cluster CIDR holds (saturating at `u32::MAX`).
pub fn subnet_count(cidr: Ipv4Net, subnet_len: u8) -> u64 {
    if subnet_len < cidr.prefix_len() || subnet_len > 32 {
        return 0;
    }
    1u64 << (subnet_len - cidr.prefix_len())
}

/// The `index`th subnet of `subnet_len` inside `cidr`, if there is one.
pub fn nth_subnet(cidr: Ipv4Net, subnet_len: u8, index: u64) -> Option<Ipv4Net> {
    if index >= subnet_count(cidr, subnet_len) {
        return None;
    }
    let step = 1u64 << (32 - u32::from(subnet_len));
    let base = u64::from(u32::from(cidr.network()));
    let addr = u32::try_from(base + index * step).ok()?;
    Ipv4Net::new(Ipv4Addr::from(addr), subnet_len).ok()
}

/// The lowest subnet of `subnet_len` in `cidr` that overlaps none of `taken`.
/// `taken` may hold prefixes of any length (a hostile record need not be aligned).
pub fn first_free(cidr: Ipv4Net, subnet_len: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    let count = subnet_count(cidr, subnet_len);
    // Exact matches are the common case: index them so a large cluster stays O(n log n).
    let exact: BTreeSet<Ipv4Net> = taken.iter().copied().filter(|t| t.prefix_len() == subnet_len).collect();
    let odd: Vec<Ipv4Net> = taken.iter().copied().filter(|t| t.prefix_len() != subnet_len).collect();
    (0..count)
        .filter_map(|i| nth_subnet(cidr, subnet_len, i))
        .find(|s| !exact.contains(s) && !odd.iter().any(|t| overlaps(*s, *t)))
}

/// True when the two prefixes share at least one address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// True when `inner` lies entirely inside `outer`.
pub fn contains(outer: Ipv4Net, inner: Ipv4Net) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains(&inner.network())
}

/// The node's gateway: the first host address of its subnet, held by the bridge.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

/// Pod addresses of a subnet: everything between the gateway and the broadcast address.
pub fn pod_range(subnet: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(subnet.network()).saturating_add(2);
    let last = u32::from(subnet.broadcast()).saturating_sub(1);
    (first..=last).map(Ipv4Addr::from)
}

/// The lowest pod address not in `used`.
pub fn first_free_addr(subnet: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    pod_range(subnet).find(|a| !used.contains(a))
}

/// True when `addr` may be given to a pod of `subnet`.
pub fn is_pod_addr(subnet: Ipv4Net, addr: Ipv4Addr) -> bool {
    subnet.prefix_len() <= 30
        && subnet.contains(&addr)
        && addr != subnet.network()
        && addr != subnet.broadcast()
        && addr != gateway(subnet)
}

/// `10.244.1.0/24` as it appears in an etcd key: `10.244.1.0-24`.
pub fn to_key_form(subnet: Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

/// Parses the key form back; `None` for anything else (including host bits).
pub fn from_key_form(s: &str) -> Option<Ipv4Net> {
    let (addr, len) = s.split_once('-')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let net = Ipv4Net::new(addr, len).ok()?;
    (net.network() == addr).then_some(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().expect("test literal")
    }

    #[test]
    fn parse_refuses_host_bits_and_garbage() {
        assert_eq!(parse_cidr("10.244.0.0/16"), Ok(n("10.244.0.0/16")));
        assert_eq!(
            parse_cidr("10.244.1.0/16").map_err(|e| e.to_string()),
            Err("10.244.1.0/16 has host bits set (did you mean 10.244.0.0/16?)".to_string())
        );
        assert!(matches!(parse_cidr("10.244.0.0"), Err(CidrError::Syntax(_))));
        assert!(matches!(parse_cidr("10.244.0.0/33"), Err(CidrError::Syntax(_))));
        assert!(matches!(parse_cidr("fd00::/8"), Err(CidrError::Syntax(_))));
    }

    #[test]
    fn sixteen_into_twentyfour() {
        let c = n("10.244.0.0/16");
        assert_eq!(subnet_count(c, 24), 256);
        assert_eq!(nth_subnet(c, 24, 0), Some(n("10.244.0.0/24")));
        assert_eq!(nth_subnet(c, 24, 255), Some(n("10.244.255.0/24")));
        assert_eq!(nth_subnet(c, 24, 256), None);
        assert_eq!(subnet_count(c, 15), 0);
        assert_eq!(subnet_count(n("0.0.0.0/0"), 32), 1 << 32);
        assert_eq!(nth_subnet(n("0.0.0.0/0"), 32, (1 << 32) - 1), Some(n("255.255.255.255/32")));
    }

    #[test]
    fn first_free_skips_taken_and_exhausts() {
        let c = n("10.244.0.0/26");
        let mut taken = vec![];
        for want in ["10.244.0.0/28", "10.244.0.16/28", "10.244.0.32/28", "10.244.0.48/28"] {
            let got = first_free(c, 28, &taken).expect("free subnet");
            assert_eq!(got, n(want));
            taken.push(got);
        }
        assert_eq!(first_free(c, 28, &taken), None, "a /26 holds exactly four /28s");
    }

    #[test]
    fn first_free_respects_odd_overlaps() {
        let c = n("10.244.0.0/16");
        // A /23 record covers the first two /24s; a /25 covers half of the third.
        let taken = vec![n("10.244.0.0/23"), n("10.244.2.128/25")];
        assert_eq!(first_free(c, 24, &taken), Some(n("10.244.3.0/24")));
        // A supernet of the whole cluster leaves nothing.
        assert_eq!(first_free(c, 24, &[n("10.0.0.0/8")]), None);
    }

    #[test]
    fn overlap_and_contains() {
        assert!(overlaps(n("10.0.0.0/8"), n("10.1.2.0/24")));
        assert!(overlaps(n("10.1.2.0/24"), n("10.0.0.0/8")));
        assert!(!overlaps(n("10.1.2.0/24"), n("10.1.3.0/24")));
        assert!(contains(n("10.244.0.0/16"), n("10.244.7.0/24")));
        assert!(!contains(n("10.244.7.0/24"), n("10.244.0.0/16")));
        assert!(!contains(n("10.244.0.0/16"), n("10.245.0.0/24")));
    }

    #[test]
    fn addressing_inside_a_subnet() {
        let s = n("10.244.3.0/24");
        assert_eq!(gateway(s), "10.244.3.1".parse::<Ipv4Addr>().expect("literal"));
        let mut used = BTreeSet::new();
        let a = first_free_addr(s, &used).expect("addr");
        assert_eq!(a.to_string(), "10.244.3.2");
        used.insert(a);
        assert_eq!(first_free_addr(s, &used).map(|a| a.to_string()), Some("10.244.3.3".into()));
        assert_eq!(pod_range(s).count(), 253);
        assert!(!is_pod_addr(s, gateway(s)));
        assert!(!is_pod_addr(s, s.broadcast()));
        assert!(is_pod_addr(s, "10.244.3.254".parse().expect("literal")));
        // a /30 has exactly one pod address; a /31 has none
        assert_eq!(pod_range(n("10.0.0.0/30")).count(), 1);
        assert_eq!(pod_range(n("10.0.0.0/31")).count(), 0);
        let full: BTreeSet<_> = pod_range(n("10.0.0.0/29")).collect();
        assert_eq!(first_free_addr(n("10.0.0.0/29"), &full), None);
    }

    #[test]
    fn key_form_round_trip() {
        let s = n("10.244.1.0/24");
        assert_eq!(to_key_form(s), "10.244.1.0-24");
        assert_eq!(from_key_form("10.244.1.0-24"), Some(s));
        assert_eq!(from_key_form("10.244.1.5-24"), None);
        assert_eq!(from_key_form("10.244.1.0-33"), None);
        assert_eq!(from_key_form("10.244.1.0/24"), None);
        assert_eq!(from_key_form("garbage"), None);
    }
}

//! Subnet math over IP prefixes of either family: carving a cluster CIDR into node subnets,
//! finding a free one, addressing inside a node subnet, and the `addr-len` form used in etcd
//! keys (`10.244.1.0-24`, `fd00:10:244:1::-64`).
//!
//! Everything is pure and works on `IpNet`/`IpAddr`; addresses are handled as `u128`, so one
//! implementation serves IPv4 and IPv6. Which family a field accepts is decided by its reader
//! (`cidr` is IPv4, `cidr6` IPv6; see `records::NetworkConfig`); [`PerFamily`] holds one value
//! per family a network serves.

use ipnet::IpNet;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn of_net(net: IpNet) -> Family {
        Family::of(net.addr())
    }

    /// The family's lowercase name, `ipv4` or `ipv6` (as config values and metric labels
    /// spell it).
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    /// Address length in bits: 32 or 128.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// A CIDR of this family, for messages.
    pub fn example_cidr(self) -> &'static str {
        match self {
            Family::V4 => "10.244.0.0/16",
            Family::V6 => "fd00:10:244::/56",
        }
    }

    /// An address of this family, for messages.
    pub fn example_addr(self) -> &'static str {
        match self {
            Family::V4 => "192.0.2.10",
            Family::V6 => "2001:db8::10",
        }
    }

    /// A subnet key of this family, for messages.
    pub fn example_key(self) -> &'static str {
        match self {
            Family::V4 => "10.244.1.0-24",
            Family::V6 => "fd00:10:244:1::-64",
        }
    }

    /// The highest address of the family as a number.
    fn max(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// One value per address family a network serves: IPv4 only, IPv6 only, or both. Never empty,
/// so there is always a first value (the IPv4 one when there is one): a network's pools, the
/// subnets a node holds. Iteration goes IPv4 first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PerFamily<T> {
    V4(T),
    V6(T),
    /// Dual-stack: the IPv4 value, then the IPv6 one.
    Dual(T, T),
}

impl<T> PerFamily<T> {
    /// The values of each family; `None` when both are absent.
    pub fn from_options(v4: Option<T>, v6: Option<T>) -> Option<Self> {
        match (v4, v6) {
            (Some(a), Some(b)) => Some(PerFamily::Dual(a, b)),
            (Some(a), None) => Some(PerFamily::V4(a)),
            (None, Some(b)) => Some(PerFamily::V6(b)),
            (None, None) => None,
        }
    }

    /// The IPv4 and the IPv6 value, each if present.
    pub fn as_options(&self) -> (Option<&T>, Option<&T>) {
        match self {
            PerFamily::V4(a) => (Some(a), None),
            PerFamily::V6(b) => (None, Some(b)),
            PerFamily::Dual(a, b) => (Some(a), Some(b)),
        }
    }

    /// The value of `family`, if there is one.
    pub fn get(&self, family: Family) -> Option<&T> {
        let (v4, v6) = self.as_options();
        match family {
            Family::V4 => v4,
            Family::V6 => v6,
        }
    }

    /// The first value: IPv4 when there is one, else IPv6.
    pub fn first(&self) -> &T {
        match self {
            PerFamily::V4(a) | PerFamily::Dual(a, _) => a,
            PerFamily::V6(b) => b,
        }
    }

    /// The family of [`Self::first`].
    pub fn first_family(&self) -> Family {
        match self {
            PerFamily::V4(_) | PerFamily::Dual(..) => Family::V4,
            PerFamily::V6(_) => Family::V6,
        }
    }

    /// Each family and its value, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = (Family, &T)> {
        let (v4, v6) = self.as_options();
        v4.map(|t| (Family::V4, t)).into_iter().chain(v6.map(|t| (Family::V6, t)))
    }

    /// The values, IPv4 first.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, t)| t)
    }

    /// The families there are values for, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        self.iter().map(|(f, _)| f)
    }

    /// The same families with `f` of each value.
    pub fn map<U>(&self, mut f: impl FnMut(Family, &T) -> U) -> PerFamily<U> {
        match self {
            PerFamily::V4(a) => PerFamily::V4(f(Family::V4, a)),
            PerFamily::V6(b) => PerFamily::V6(f(Family::V6, b)),
            PerFamily::Dual(a, b) => PerFamily::Dual(f(Family::V4, a), f(Family::V6, b)),
        }
    }

    /// [`Self::map`] with a fallible `f`: the first error, IPv4 first.
    pub fn try_map<U, E>(&self, mut f: impl FnMut(Family, &T) -> Result<U, E>) -> Result<PerFamily<U>, E> {
        Ok(match self {
            PerFamily::V4(a) => PerFamily::V4(f(Family::V4, a)?),
            PerFamily::V6(b) => PerFamily::V6(f(Family::V6, b)?),
            PerFamily::Dual(a, b) => PerFamily::Dual(f(Family::V4, a)?, f(Family::V6, b)?),
        })
    }
}

impl From<IpNet> for PerFamily<IpNet> {
    /// A single prefix, under its own family.
    fn from(net: IpNet) -> Self {
        match Family::of_net(net) {
            Family::V4 => PerFamily::V4(net),
            Family::V6 => PerFamily::V6(net),
        }
    }
}

/// An address as a number (IPv4 in the low 32 bits).
fn num(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address `n` of `family`; `n` is clamped to the family's range.
fn addr(family: Family, n: u128) -> IpAddr {
    let n = n.min(family.max());
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// `a + n`, saturating at the family's highest address.
fn add(a: IpAddr, n: u128) -> IpAddr {
    addr(Family::of(a), num(a).saturating_add(n))
}

/// `a - n`, saturating at the family's lowest address.
fn sub(a: IpAddr, n: u128) -> IpAddr {
    addr(Family::of(a), num(a).saturating_sub(n))
}

/// Why a prefix string was refused. `Display` gives the expectation, lowercase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not a prefix of the family asked for (garbage, or the other family).
    #[error("expected an {family} CIDR like {}, found {given:?}", family.example_cidr())]
    Syntax { family: Family, given: String },
    #[error("{given} has host bits set (did you mean {network}?)")]
    Misaligned { given: String, network: IpNet },
}

/// Parses an IPv4 `a.b.c.d/len` (the cluster CIDR), refusing host bits (a misaligned CIDR is
/// almost always a typo).
pub fn parse_cidr(s: &str) -> Result<IpNet, CidrError> {
    parse_cidr_of(Family::V4, s)
}

/// Parses a prefix of `family`, refusing the other family and host bits.
pub fn parse_cidr_of(family: Family, s: &str) -> Result<IpNet, CidrError> {
    let syntax = || CidrError::Syntax { family, given: s.to_string() };
    let net: IpNet = s.trim().parse().map_err(|_| syntax())?;
    if Family::of_net(net) != family {
        return Err(syntax());
    }
    if net.addr() != net.network() {
        return Err(CidrError::Misaligned { given: s.to_string(), network: net.trunc() });
    }
    Ok(net)
}

/// How many subnets of `subnet_len` a cluster CIDR holds (saturating at `u64::MAX`, which only
/// IPv6 reaches).
pub fn subnet_count(cidr: IpNet, subnet_len: u8) -> u64 {
    if subnet_len < cidr.prefix_len() || subnet_len > Family::of_net(cidr).bits() {
        return 0;
    }
    1u64.checked_shl(u32::from(subnet_len - cidr.prefix_len())).unwrap_or(u64::MAX)
}

/// Host bits of a subnet of `subnet_len` in `family` (the shift between subnet indexes).
fn host_bits(family: Family, subnet_len: u8) -> u32 {
    u32::from(family.bits().saturating_sub(subnet_len))
}

/// The `index`th subnet of `subnet_len` inside `cidr`, if there is one.
pub fn nth_subnet(cidr: IpNet, subnet_len: u8, index: u64) -> Option<IpNet> {
    if index >= subnet_count(cidr, subnet_len) {
        return None;
    }
    let family = Family::of_net(cidr);
    // index < 2^(subnet_len - cidr len), so the offset stays inside the cidr; a shift of 128
    // only happens for ::/0 carved into ::/0, whose one index is 0.
    let offset = u128::from(index).checked_shl(host_bits(family, subnet_len)).unwrap_or(0);
    let n = num(cidr.network()).checked_add(offset)?;
    IpNet::new(addr(family, n), subnet_len).ok()
}

/// The index of `subnet` among the subnets of `subnet_len` in `cidr` (the inverse of
/// [`nth_subnet`]); `None` unless it is one of them.
pub fn index_of(cidr: IpNet, subnet_len: u8, subnet: IpNet) -> Option<u64> {
    if subnet.prefix_len() != subnet_len || !contains(cidr, subnet) || subnet.addr() != subnet.network() {
        return None;
    }
    let shift = host_bits(Family::of_net(cidr), subnet_len);
    let delta = num(subnet.network()) - num(cidr.network());
    u64::try_from(delta.checked_shr(shift).unwrap_or(0)).ok()
}

/// The lowest subnet of `subnet_len` in `cidr` that overlaps none of `taken`.
/// `taken` may hold prefixes of any length and family (a hostile record need not be aligned).
pub fn first_free(cidr: IpNet, subnet_len: u8, taken: &[IpNet]) -> Option<IpNet> {
    let count = subnet_count(cidr, subnet_len);
    // Exact matches are the common case: index them so a large cluster stays O(n log n).
    let exact: BTreeSet<IpNet> = taken.iter().copied().filter(|t| t.prefix_len() == subnet_len).collect();
    let odd: Vec<IpNet> = taken.iter().copied().filter(|t| t.prefix_len() != subnet_len).collect();
    let shift = host_bits(Family::of_net(cidr), subnet_len);
    let base = num(cidr.network());
    let mut i = 0u64;
    while i < count {
        let s = nth_subnet(cidr, subnet_len, i)?;
        if exact.contains(&s) {
            i += 1;
            continue;
        }
        let Some(t) = odd.iter().find(|t| overlaps(s, **t)) else { return Some(s) };
        // Skip every subnet the overlapping prefix covers (an IPv6 supernet covers billions).
        let past = num(t.broadcast()).saturating_sub(base).checked_shr(shift).unwrap_or(0);
        i = u64::try_from(past).unwrap_or(u64::MAX).saturating_add(1).max(i + 1);
    }
    None
}

/// True when the two prefixes share at least one address (never across families).
pub fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// True when `inner` lies entirely inside `outer`.
pub fn contains(outer: IpNet, inner: IpNet) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains(&inner.network())
}

/// The node's gateway: the first host address of its subnet, held by the bridge.
pub fn gateway(subnet: IpNet) -> IpAddr {
    add(subnet.network(), 1)
}

/// Pod addresses of a subnet: everything between the gateway and the last address (the IPv4
/// broadcast; kept free in IPv6 too, so both families follow one rule).
pub fn pod_range(subnet: IpNet) -> impl Iterator<Item = IpAddr> {
    let family = Family::of_net(subnet);
    let first = num(add(subnet.network(), 2));
    let last = num(sub(subnet.broadcast(), 1));
    (first..=last).map(move |n| addr(family, n))
}

/// The lowest pod address not in `used`.
pub fn first_free_addr(subnet: IpNet, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    pod_range(subnet).find(|a| !used.contains(a))
}

/// True when `addr` may be given to a pod of `subnet`.
pub fn is_pod_addr(subnet: IpNet, addr: IpAddr) -> bool {
    subnet.prefix_len() + 2 <= Family::of_net(subnet).bits()
        && subnet.contains(&addr)
        && addr != subnet.network()
        && addr != subnet.broadcast()
        && addr != gateway(subnet)
}

/// True for an address one host can give another: not unspecified, multicast, loopback or
/// (IPv4) broadcast.
pub fn is_unicast(ip: IpAddr) -> bool {
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || broadcast)
}

/// True for an address other nodes can route to without naming an interface: unicast and,
/// in IPv6, not link-local (`fe80::/10` needs a zone).
pub fn is_routable_unicast(ip: IpAddr) -> bool {
    let link_local = matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
    is_unicast(ip) && !link_local
}

/// `10.244.1.0/24` as it appears in an etcd key: `10.244.1.0-24` (`fd00:10:244:1::-64`).
pub fn to_key_form(subnet: IpNet) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

/// Parses the key form back, either family; `None` for anything else (including host bits).
pub fn from_key_form(s: &str) -> Option<IpNet> {
    let (addr, len) = s.split_once('-')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let net = IpNet::new(addr, len).ok()?;
    (net.network() == addr).then_some(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().expect("test literal")
    }

    fn a(s: &str) -> IpAddr {
        s.parse().expect("test literal")
    }

    #[test]
    fn parse_refuses_host_bits_and_garbage() {
        assert_eq!(parse_cidr("10.244.0.0/16"), Ok(n("10.244.0.0/16")));
        assert_eq!(
            parse_cidr("10.244.1.0/16").map_err(|e| e.to_string()),
            Err("10.244.1.0/16 has host bits set (did you mean 10.244.0.0/16?)".to_string())
        );
        assert!(matches!(parse_cidr("10.244.0.0"), Err(CidrError::Syntax { .. })));
        assert!(matches!(parse_cidr("10.244.0.0/33"), Err(CidrError::Syntax { .. })));
        assert!(matches!(parse_cidr("fd00::/8"), Err(CidrError::Syntax { .. })));
    }

    #[test]
    fn parse_of_each_family_refuses_the_other() {
        assert_eq!(
            parse_cidr("fd00:10:244::/56").map_err(|e| e.to_string()),
            Err("expected an IPv4 CIDR like 10.244.0.0/16, found \"fd00:10:244::/56\"".to_string())
        );
        assert_eq!(parse_cidr_of(Family::V6, "fd00:10:244::/56"), Ok(n("fd00:10:244::/56")));
        assert_eq!(
            parse_cidr_of(Family::V6, "10.244.0.0/16").map_err(|e| e.to_string()),
            Err("expected an IPv6 CIDR like fd00:10:244::/56, found \"10.244.0.0/16\"".to_string())
        );
        assert_eq!(
            parse_cidr_of(Family::V6, "fd00:10:244::1/56").map_err(|e| e.to_string()),
            Err("fd00:10:244::1/56 has host bits set (did you mean fd00:10:244::/56?)".to_string())
        );
        assert!(parse_cidr_of(Family::V6, "fd00::/129").is_err());
        assert_eq!((Family::of(a("10.0.0.1")), Family::of_net(n("fd00::/8"))), (Family::V4, Family::V6));
        assert_eq!((Family::V4.bits(), Family::V6.bits()), (32, 128));
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
    fn fiftysix_into_sixtyfour() {
        let c = n("fd00:10:244::/56");
        assert_eq!(subnet_count(c, 64), 256);
        assert_eq!(nth_subnet(c, 64, 0), Some(n("fd00:10:244::/64")));
        assert_eq!(nth_subnet(c, 64, 1), Some(n("fd00:10:244:1::/64")));
        assert_eq!(nth_subnet(c, 64, 255), Some(n("fd00:10:244:ff::/64")));
        assert_eq!(nth_subnet(c, 64, 256), None);
        assert_eq!(subnet_count(c, 55), 0);
        assert_eq!(subnet_count(c, 129), 0);
        // Counts beyond u64 saturate; the math stays exact at both ends of the space.
        assert_eq!(subnet_count(n("::/0"), 64), u64::MAX);
        assert_eq!(nth_subnet(n("::/0"), 0, 0), Some(n("::/0")));
        assert_eq!(nth_subnet(n("::/0"), 128, u64::MAX - 1), Some(n("::ffff:ffff:ffff:fffe/128")));
        assert_eq!(nth_subnet(n("ffff::/16"), 64, (1 << 48) - 1), Some(n("ffff:ffff:ffff:ffff::/64")));
    }

    #[test]
    fn index_is_the_inverse_of_nth() {
        for (c, len, i) in [("10.244.0.0/16", 24, 7u64), ("fd00:10:244::/56", 64, 200), ("::/0", 128, 12345)] {
            let c = n(c);
            let s = nth_subnet(c, len, i).expect("inside");
            assert_eq!(index_of(c, len, s), Some(i), "{s}");
        }
        let c = n("10.244.0.0/16");
        assert_eq!(index_of(c, 24, n("10.245.0.0/24")), None, "outside");
        assert_eq!(index_of(c, 24, n("10.244.1.0/25")), None, "other length");
        assert_eq!(index_of(c, 64, n("fd00::/64")), None, "other family");
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
    fn first_free_in_ipv6_skips_whole_supernets_at_once() {
        let c = n("fd00::/8");
        assert_eq!(first_free(c, 64, &[]), Some(n("fd00::/64")));
        let taken = vec![n("fd00::/64"), n("fd00:0:0:1::/64"), n("fd00:0:0:2::/80")];
        assert_eq!(first_free(c, 64, &taken), Some(n("fd00:0:0:3::/64")));
        // A hostile /16 covers 2^48 /64s: skipped in one step, not walked.
        assert_eq!(first_free(c, 64, &[n("fd00::/16")]), Some(n("fd01::/64")));
        assert_eq!(first_free(c, 64, &[n("fc00::/7")]), None);
        // Prefixes of the other family take nothing.
        assert_eq!(first_free(c, 64, &[n("0.0.0.0/0")]), Some(n("fd00::/64")));
        assert_eq!(first_free(n("10.244.0.0/16"), 24, &[n("::/0")]), Some(n("10.244.0.0/24")));
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
    fn overlap_and_contains_in_ipv6_and_across_families() {
        assert!(overlaps(n("fd00:10:244::/56"), n("fd00:10:244:7::/64")));
        assert!(!overlaps(n("fd00:10:244:7::/64"), n("fd00:10:244:8::/64")));
        assert!(contains(n("fd00:10:244::/56"), n("fd00:10:244:ff::/64")));
        assert!(!contains(n("fd00:10:244::/56"), n("fd00:10:245::/64")));
        assert!(!overlaps(n("0.0.0.0/0"), n("::/0")));
        assert!(!contains(n("::/0"), n("10.244.0.0/16")));
    }

    #[test]
    fn addressing_inside_a_subnet() {
        let s = n("10.244.3.0/24");
        assert_eq!(gateway(s), "10.244.3.1".parse::<IpAddr>().expect("literal"));
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
    fn addressing_inside_an_ipv6_subnet() {
        let s = n("fd00:10:244:3::/64");
        assert_eq!(gateway(s), a("fd00:10:244:3::1"));
        let mut used = BTreeSet::new();
        let first = first_free_addr(s, &used).expect("addr");
        assert_eq!(first, a("fd00:10:244:3::2"));
        used.insert(first);
        assert_eq!(first_free_addr(s, &used), Some(a("fd00:10:244:3::3")));
        assert!(!is_pod_addr(s, s.network()));
        assert!(!is_pod_addr(s, gateway(s)));
        assert!(!is_pod_addr(s, a("fd00:10:244:3:ffff:ffff:ffff:ffff")), "the last address stays free");
        assert!(is_pod_addr(s, a("fd00:10:244:3:ffff:ffff:ffff:fffe")));
        assert!(!is_pod_addr(s, a("fd00:10:244:4::2")), "outside");
        assert!(!is_pod_addr(s, a("10.244.3.2")), "other family");
        assert_eq!(pod_range(n("fd00::/126")).collect::<Vec<_>>(), [a("fd00::2")]);
        assert_eq!(pod_range(n("fd00::/127")).count(), 0);
        assert_eq!(pod_range(n("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126")).count(), 1, "no overflow at the top");
        assert_eq!(
            gateway(n("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128")),
            a("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
        );
        assert_eq!(gateway(n("255.255.255.255/32")), a("255.255.255.255"));
    }

    #[test]
    fn unicast_in_both_families() {
        for ok in ["192.0.2.1", "10.0.0.1", "2001:db8::1", "fd00::1"] {
            assert!(is_unicast(a(ok)), "{ok}");
        }
        for bad in ["0.0.0.0", "224.0.0.1", "255.255.255.255", "127.0.0.1", "::", "ff02::1", "::1"] {
            assert!(!is_unicast(a(bad)), "{bad}");
        }
    }

    #[test]
    fn per_family_holds_one_value_per_family_ipv4_first() {
        assert_eq!(PerFamily::<u8>::from_options(None, None), None);
        let dual = PerFamily::from_options(Some(4), Some(6)).expect("both");
        assert_eq!(dual, PerFamily::Dual(4, 6));
        assert_eq!((dual.get(Family::V4), dual.get(Family::V6)), (Some(&4), Some(&6)));
        assert_eq!((*dual.first(), dual.first_family()), (4, Family::V4));
        assert_eq!(dual.iter().collect::<Vec<_>>(), [(Family::V4, &4), (Family::V6, &6)]);
        let v6 = PerFamily::from_options(None, Some(6)).expect("one");
        assert_eq!((v6.get(Family::V4), *v6.first(), v6.first_family()), (None, 6, Family::V6));
        assert_eq!(v6.families().collect::<Vec<_>>(), [Family::V6]);
        assert_eq!(dual.map(|f, v| (f, v * 10)), PerFamily::Dual((Family::V4, 40), (Family::V6, 60)));
        assert_eq!(dual.try_map(|f, v| if f == Family::V6 { Err(*v) } else { Ok(*v) }), Err(6));
        assert_eq!(PerFamily::from(n("fd00::/64")), PerFamily::V6(n("fd00::/64")));
        assert_eq!(PerFamily::from(n("10.0.0.0/24")).as_options(), (Some(&n("10.0.0.0/24")), None));
    }

    #[test]
    fn routable_unicast_leaves_out_link_local() {
        assert!(is_routable_unicast(a("fd00::11")) && is_routable_unicast(a("2001:db8::1")));
        assert!(is_routable_unicast(a("169.254.1.1")), "IPv4 link-local is an address like any other");
        assert!(!is_routable_unicast(a("fe80::1")) && !is_routable_unicast(a("::1")));
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

    #[test]
    fn key_form_round_trip_in_ipv6() {
        let s = n("fd00:10:244:1::/64");
        assert_eq!(to_key_form(s), "fd00:10:244:1::-64");
        assert_eq!(from_key_form("fd00:10:244:1::-64"), Some(s));
        assert_eq!(from_key_form(Family::V6.example_key()), Some(s));
        assert_eq!(from_key_form(Family::V4.example_key()), Some(n("10.244.1.0/24")));
        assert_eq!(from_key_form("fd00:10:244:1::1-64"), None, "host bits");
        assert_eq!(from_key_form("fd00::-129"), None);
        assert_eq!(from_key_form("fd00::/64"), None);
    }
}

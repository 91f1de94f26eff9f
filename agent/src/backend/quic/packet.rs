//! Per-packet decisions of the quic data path, pure and allocation-free: where an outgoing
//! packet goes, and whether a decapsulated one may enter this node.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why a packet was dropped. `as_str` names the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a well-formed IPv4 or IPv6 header (or another IP version).
    Malformed,
    /// Inbound: the source is not in the sending peer's subnet (spoofing).
    BadSource,
    /// Inbound: the destination is not in this node's subnet.
    BadDestination,
    /// Outbound: no connected peer owns the destination.
    NoPeer,
    /// Outbound: larger than the connection's datagram size.
    TooBig,
    /// Outbound: the connection refused the datagram (closed or congested).
    SendFailed,
    /// Inbound: writing to the tun device failed.
    TunWrite,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Malformed,
        DropReason::BadSource,
        DropReason::BadDestination,
        DropReason::NoPeer,
        DropReason::TooBig,
        DropReason::SendFailed,
        DropReason::TunWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadSource => "bad_source",
            DropReason::BadDestination => "bad_destination",
            DropReason::NoPeer => "no_peer",
            DropReason::TooBig => "too_big",
            DropReason::SendFailed => "send_failed",
            DropReason::TunWrite => "tun_write",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A node's subnet as the data path tests addresses against it: at most one prefix per family,
/// each as (network, mask). A family the node has no prefix of matches no address (its slot is
/// network 1 under mask 0, which no masked address equals), so testing an IPv4 address costs
/// one mask and one compare of u32, as it did before IPv6, and needs no branch. A dual-stack
/// node or peer has both prefixes ([`Prefix::of`] its subnets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    // Private: a slot is a prefix (network = its masked address) or exactly ABSENT.
    net4: u32,
    mask4: u32,
    net6: u128,
    mask6: u128,
}

/// (network, mask) of a family a [`Prefix`] does not have: no address masked by 0 equals 1.
const ABSENT: (u128, u128) = (1, 0);

impl Prefix {
    /// Matches nothing, in either family.
    pub const NONE: Prefix = Prefix { net4: ABSENT.0 as u32, mask4: 0, net6: ABSENT.0, mask6: 0 };

    /// The prefix of `net`'s family; the other family matches nothing.
    pub fn new(net: impl Into<IpNet>) -> Self {
        Self::NONE.with(net)
    }

    /// This prefix with `net` as the prefix of `net`'s family (replacing the one it had): what a
    /// dual-stack node's subnet is, `Prefix::new(v4).with(v6)`.
    pub fn with(mut self, net: impl Into<IpNet>) -> Self {
        match net.into() {
            IpNet::V4(n) => (self.net4, self.mask4) = (n.network().to_bits(), n.netmask().to_bits()),
            IpNet::V6(n) => (self.net6, self.mask6) = (n.network().to_bits(), n.netmask().to_bits()),
        }
        self
    }

    /// Every prefix of `nets` (the last of each family counts): a node's subnets of both
    /// families, as [`Prefix::new`]`(v4).with(v6)`.
    pub fn of(nets: impl IntoIterator<Item = IpNet>) -> Self {
        nets.into_iter().fold(Self::NONE, Self::with)
    }

    /// The IPv4 prefix as (network, mask), if there is one.
    pub fn v4(self) -> Option<(u32, u32)> {
        ((u128::from(self.net4), u128::from(self.mask4)) != ABSENT).then_some((self.net4, self.mask4))
    }

    /// The IPv6 prefix as (network, mask), if there is one.
    pub fn v6(self) -> Option<(u128, u128)> {
        ((self.net6, self.mask6) != ABSENT).then_some((self.net6, self.mask6))
    }

    #[inline]
    pub fn contains4(self, addr: u32) -> bool {
        addr & self.mask4 == self.net4
    }

    #[inline]
    pub fn contains6(self, addr: u128) -> bool {
        addr & self.mask6 == self.net6
    }

    #[inline]
    pub fn contains(self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.contains4(a.to_bits()),
            IpAddr::V6(a) => self.contains6(a.to_bits()),
        }
    }
}

/// Peers by subnet network address, one map per family: all node subnets of a network have one
/// length per family, so the lookup of a destination is one mask and one hash probe, whatever
/// the number of peers.
#[derive(Debug, Clone)]
pub struct SubnetTable<T> {
    /// The local prefix: its families are the table's and its masks the subnets'. A family it
    /// lacks has mask 0 and an empty map, so a lookup in it misses without a branch of its own.
    local: Prefix,
    v4: HashMap<u32, T>,
    v6: HashMap<u128, T>,
}

impl<T> SubnetTable<T> {
    /// A table of subnets as long as `local`'s, in the families `local` has.
    pub fn new(local: Prefix) -> Self {
        Self { local, v4: HashMap::new(), v6: HashMap::new() }
    }

    /// Adds (or replaces) the entry of `subnet`. Refused (`false`) when the table has no
    /// subnets of its family or they have another length: the lookup would miss it.
    pub fn insert(&mut self, subnet: impl Into<IpNet>, value: T) -> bool {
        match subnet.into() {
            IpNet::V4(n) if self.local.v4().is_some_and(|(_, m)| m == n.netmask().to_bits()) => {
                self.v4.insert(n.network().to_bits(), value);
                true
            }
            IpNet::V6(n) if self.local.v6().is_some_and(|(_, m)| m == n.netmask().to_bits()) => {
                self.v6.insert(n.network().to_bits(), value);
                true
            }
            _ => false,
        }
    }

    #[inline]
    pub fn lookup(&self, dst: IpAddr) -> Option<&T> {
        match dst {
            IpAddr::V4(a) => self.v4.get(&(a.to_bits() & self.local.mask4)),
            IpAddr::V6(a) => self.v6.get(&(a.to_bits() & self.local.mask6)),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// Source and destination of an IPv4 packet after checking the header is sane: version 4, a
/// header length of at least 20 bytes that fits, and a total length equal to what was read.
#[inline]
pub fn ipv4_addrs(pkt: &[u8]) -> Result<(u32, u32), DropReason> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return Err(DropReason::Malformed);
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < 20 || ihl > pkt.len() || total != pkt.len() {
        return Err(DropReason::Malformed);
    }
    let src = u32::from_be_bytes([pkt[12], pkt[13], pkt[14], pkt[15]]);
    let dst = u32::from_be_bytes([pkt[16], pkt[17], pkt[18], pkt[19]]);
    Ok((src, dst))
}

/// Length of the fixed IPv6 header.
const IPV6_HDR: usize = 40;

/// Source and destination of an IPv6 packet after checking the header is sane: version 6, the
/// 40-byte fixed header, and a payload length equal to what was read after it (so a jumbogram,
/// payload length 0, is refused: no tun MTU comes near one).
#[inline]
pub fn ipv6_addrs(pkt: &[u8]) -> Result<(u128, u128), DropReason> {
    let Some(hdr) = pkt.first_chunk::<IPV6_HDR>() else { return Err(DropReason::Malformed) };
    let payload = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
    if hdr[0] >> 4 != 6 || IPV6_HDR + payload != pkt.len() {
        return Err(DropReason::Malformed);
    }
    let src = u128::from_be_bytes(std::array::from_fn(|i| hdr[8 + i]));
    let dst = u128::from_be_bytes(std::array::from_fn(|i| hdr[24 + i]));
    Ok((src, dst))
}

/// Source and destination of an IPv4 or IPv6 packet (by its version), checked as
/// [`ipv4_addrs`] and [`ipv6_addrs`] do; any other version is malformed.
#[inline]
pub fn ip_addrs(pkt: &[u8]) -> Result<(IpAddr, IpAddr), DropReason> {
    match ipv4_addrs(pkt) {
        Ok((src, dst)) => Ok((Ipv4Addr::from_bits(src).into(), Ipv4Addr::from_bits(dst).into())),
        Err(_) => ipv6_addrs(pkt).map(|(src, dst)| (Ipv6Addr::from_bits(src).into(), Ipv6Addr::from_bits(dst).into())),
    }
}

/// Destination of an outgoing packet (read from the tun device).
#[inline]
pub fn outbound_dst(pkt: &[u8]) -> Result<IpAddr, DropReason> {
    // IPv4 first, with exactly the checks it had alone; IPv6 only when that fails.
    match ipv4_addrs(pkt) {
        Ok((_, dst)) => Ok(Ipv4Addr::from_bits(dst).into()),
        Err(_) => ipv6_addrs(pkt).map(|(_, dst)| Ipv6Addr::from_bits(dst).into()),
    }
}

/// An inbound (decapsulated) packet may enter only if it comes from the sending peer's subnet
/// and goes to this node's subnet, in the packet's family (a family the peer's or this node's
/// prefix lacks is a bad source or destination).
#[inline]
pub fn check_inbound(pkt: &[u8], peer: &Prefix, local: &Prefix) -> Result<(), DropReason> {
    // IPv4 first, as cheap as it was alone; IPv6 only when that fails (an IPv6 header is never
    // a valid IPv4 one: the version differs).
    let (src_ok, dst_ok) = match ipv4_addrs(pkt) {
        Ok((src, dst)) => (peer.contains4(src), local.contains4(dst)),
        Err(_) => {
            let (src, dst) = ipv6_addrs(pkt)?;
            (peer.contains6(src), local.contains6(dst))
        }
    };
    if !src_ok {
        return Err(DropReason::BadSource);
    }
    if !dst_ok {
        return Err(DropReason::BadDestination);
    }
    Ok(())
}

/// Ones' complement sum of `data` (big-endian 16-bit words) added to `sum`, not folded.
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
    }
    sum
}

/// The folded, complemented checksum of a sum from [`sum16`].
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds a minimal IPv4/UDP packet (tests, the spoof check, benchmarks).
pub fn build_udp(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = fold(sum16(&p[..20], 0));
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20..22].copy_from_slice(&9u16.to_be_bytes());
    p[22..24].copy_from_slice(&9u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// Builds a minimal IPv6/UDP packet with a valid UDP checksum (mandatory over IPv6).
pub fn build_udp6(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = vec![0u8; IPV6_HDR + udp_len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40..42].copy_from_slice(&9u16.to_be_bytes());
    p[42..44].copy_from_slice(&9u16.to_be_bytes());
    p[44..46].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[48..].copy_from_slice(payload);
    // Pseudo-header: source, destination, upper-layer length, next header.
    let pseudo = sum16(&p[8..40], (udp_len as u32) + 17);
    let sum = match fold(sum16(&p[40..], pseudo)) {
        0 => 0xffff,
        s => s,
    };
    p[46..48].copy_from_slice(&sum.to_be_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("lit")
    }
    fn pre(s: &str) -> Prefix {
        Prefix::new(net(s))
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("lit")
    }
    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().expect("lit")
    }
    fn at(s: &str) -> IpAddr {
        s.parse().expect("lit")
    }

    #[test]
    fn subnet_table_finds_the_owner_of_any_address_in_a_subnet() {
        let mut t = SubnetTable::new(pre("10.244.1.0/24"));
        t.insert(net("10.244.2.0/24"), "n2");
        t.insert(net("10.244.3.7/24"), "n3");
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(IpAddr::from(Ipv4Addr::new(10, 244, 2, 200))), Some(&"n2"));
        assert_eq!(t.lookup(IpAddr::from(Ipv4Addr::new(10, 244, 3, 1))), Some(&"n3"));
        assert_eq!(t.lookup(IpAddr::from(Ipv4Addr::new(10, 244, 4, 1))), None);
    }

    #[test]
    fn subnet_tables_hold_each_family_the_local_prefix_has() {
        // IPv4 only: IPv6 subnets are refused, IPv6 destinations have no peer.
        let mut t = SubnetTable::new(pre("10.244.1.0/24"));
        assert!(!t.insert(net("fd00:244:0:2::/64"), "n2"));
        assert!(!t.insert(net("10.244.0.0/16"), "wide"), "another length would never be found");
        assert!(t.is_empty());
        assert_eq!(t.lookup(at("fd00:244:0:2::5")), None);
        // Dual stack: one map per family, each with its own length.
        let local = pre("10.244.1.0/24").with(net("fd00:244:0:1::/64"));
        let mut t = SubnetTable::new(local);
        assert!(t.insert(net("10.244.2.0/24"), "n2"));
        assert!(t.insert(net("fd00:244:0:2::/64"), "n2"));
        assert!(t.insert(net("fd00:244:0:3::/64"), "n3"));
        assert!(!t.insert(net("fd00:244:0:4::/80"), "n4"));
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup(at("fd00:244:0:2:ffff::1")), Some(&"n2"));
        assert_eq!(t.lookup(at("fd00:244:0:3::9")), Some(&"n3"));
        assert_eq!(t.lookup(at("10.244.2.9")), Some(&"n2"));
        assert_eq!(t.lookup(at("fd00:244:0:5::9")), None);
        // An IPv4 address whose bits equal an IPv6 subnet's is no match: the families never mix.
        assert_eq!(t.lookup(Ipv6Addr::from_bits(u128::from(ip("10.244.2.9").to_bits())).into()), None);
        // IPv6 only.
        let mut t = SubnetTable::new(pre("fd00:244:0:1::/64"));
        assert!(!t.insert(net("10.244.2.0/24"), "n2"));
        assert!(t.insert(net("fd00:244:0:2::/64"), "n2"));
        assert_eq!(t.lookup(at("10.244.2.9")), None);
    }

    #[test]
    fn prefixes_per_family() {
        let v4 = pre("10.244.1.0/24");
        assert_eq!(v4.v4(), Some((u32::from(ip("10.244.1.0")), 0xffff_ff00)));
        assert_eq!(v4.v6(), None);
        assert!(v4.contains(at("10.244.1.9")) && !v4.contains(at("10.244.2.9")));
        let same_bits = Ipv6Addr::from_bits(u128::from(ip("10.244.1.9").to_bits())).into();
        assert!(!v4.contains(same_bits), "an IPv6 address with the IPv4 bits is not inside");
        let dual = v4.with(net("fd00:244:0:1::/64"));
        assert_eq!(dual.v4(), v4.v4());
        assert_eq!(dual.v6(), Some((ip6("fd00:244:0:1::").to_bits(), u128::MAX << 64)));
        assert!(dual.contains(at("fd00:244:0:1::7")) && !dual.contains(at("fd00:244:0:2::7")));
        assert!(dual.contains(at("10.244.1.9")));
        // `with` replaces the prefix of its family and keeps the other.
        let moved = dual.with(net("10.250.0.0/16"));
        assert!(moved.contains(at("10.250.7.7")) && !moved.contains(at("10.244.1.9")));
        assert_eq!(moved.v6(), dual.v6());
        assert_eq!(Prefix::new(net("fd00::/8")).v4(), None);
        // Nothing matches NONE; a /0 is a prefix that matches its whole family.
        for a in ["0.0.0.0", "255.255.255.255", "::", "::1", "ffff::"] {
            assert!(!Prefix::NONE.contains(at(a)), "{a}");
        }
        let all4 = pre("0.0.0.0/0");
        assert_eq!(all4.v4(), Some((0, 0)));
        assert!(all4.contains(at("1.2.3.4")) && !all4.contains(at("::1")));
        let all6 = pre("::/0");
        assert_eq!(all6.v6(), Some((0, 0)));
        assert!(all6.contains(at("fe80::1")) && !all6.contains(at("0.0.0.0")));
    }

    #[test]
    fn ipv6_headers() {
        let good = build_udp6(ip6("fd00::1"), ip6("fd00::2"), b"abc");
        assert_eq!(good.len(), 40 + 8 + 3);
        let want = (ip6("fd00::1").to_bits(), ip6("fd00::2").to_bits());
        assert_eq!(ipv6_addrs(&good), Ok(want));
        assert_eq!(ip_addrs(&good), Ok((at("fd00::1"), at("fd00::2"))));
        assert_eq!(outbound_dst(&good), Ok(at("fd00::2")));
        // Truncated: shorter than the fixed header, or than the payload length says.
        for n in [0, 1, 20, 39, 40, good.len() - 1] {
            assert_eq!(ipv6_addrs(&good[..n]), Err(DropReason::Malformed), "{n} bytes");
            assert_eq!(outbound_dst(&good[..n]), Err(DropReason::Malformed), "{n} bytes");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(ipv6_addrs(&long), Err(DropReason::Malformed), "payload length must match");
        let mut jumbo = good.clone();
        jumbo[4..6].copy_from_slice(&[0, 0]);
        assert_eq!(ipv6_addrs(&jumbo), Err(DropReason::Malformed));
        // The header alone (payload length 0) is a packet.
        let bare = {
            let mut b = good[..40].to_vec();
            b[4..6].copy_from_slice(&[0, 0]);
            b
        };
        assert_eq!(ipv6_addrs(&bare), Ok(want));
        // Version by the first nibble: 6 is not parsed as IPv4, nor 4 as IPv6; others are neither.
        assert_eq!(ipv4_addrs(&good), Err(DropReason::Malformed));
        let v4 = build_udp(ip("10.0.0.1"), ip("10.0.0.2"), b"abc");
        assert_eq!(ipv6_addrs(&v4), Err(DropReason::Malformed));
        assert_eq!(ip_addrs(&v4), Ok((at("10.0.0.1"), at("10.0.0.2"))));
        for version in [0u8, 5, 7, 15] {
            let mut other = good.clone();
            other[0] = version << 4;
            assert_eq!(ip_addrs(&other), Err(DropReason::Malformed), "version {version}");
            assert_eq!(check_inbound(&other, &Prefix::NONE, &Prefix::NONE), Err(DropReason::Malformed));
        }
    }

    #[test]
    fn udp6_packets_carry_a_valid_checksum() {
        for payload in [&b""[..], b"x", b"spoof7", &[0xff; 301]] {
            let p = build_udp6(ip6("fd00:244:0:2::5"), ip6("fd00:244:0:1::7"), payload);
            let len = (p.len() - 40) as u32;
            // Summed with the pseudo-header, a correct checksum makes the whole 0xffff.
            assert_eq!(fold(sum16(&p[40..], sum16(&p[8..40], len + 17))), 0, "{payload:?}");
            assert_ne!(p[46..48], [0, 0], "a zero UDP checksum is invalid over IPv6");
        }
    }

    #[test]
    fn inbound_checks_ipv6() {
        let peer = pre("fd00:244:0:2::/64");
        let local = pre("fd00:244:0:1::/64");
        let ok = build_udp6(ip6("fd00:244:0:2::5"), ip6("fd00:244:0:1::7"), b"x");
        assert_eq!(check_inbound(&ok, &peer, &local), Ok(()));
        let spoof = build_udp6(ip6("fd00:244:0:3::5"), ip6("fd00:244:0:1::7"), b"x");
        assert_eq!(check_inbound(&spoof, &peer, &local), Err(DropReason::BadSource));
        let elsewhere = build_udp6(ip6("fd00:244:0:2::5"), ip6("fd00:244:0:9::7"), b"x");
        assert_eq!(check_inbound(&elsewhere, &peer, &local), Err(DropReason::BadDestination));
        let truncated = &ok[..39];
        assert_eq!(check_inbound(truncated, &peer, &local), Err(DropReason::Malformed));
        // A family the prefixes lack fails as a mismatch does: source first, then destination.
        let (peer4, local4) = (pre("10.244.2.0/24"), pre("10.244.1.0/24"));
        assert_eq!(check_inbound(&ok, &peer4, &local4), Err(DropReason::BadSource));
        assert_eq!(check_inbound(&ok, &peer, &local4), Err(DropReason::BadDestination));
        let v4 = build_udp(ip("10.244.2.5"), ip("10.244.1.7"), b"x");
        assert_eq!(check_inbound(&v4, &peer, &local), Err(DropReason::BadSource));
        assert_eq!(check_inbound(&v4, &peer4, &local), Err(DropReason::BadDestination));
        // Dual-stack prefixes admit each family by its own prefix.
        let (peer2, local2) = (peer4.with(net("fd00:244:0:2::/64")), local4.with(net("fd00:244:0:1::/64")));
        assert_eq!(check_inbound(&ok, &peer2, &local2), Ok(()));
        assert_eq!(check_inbound(&v4, &peer2, &local2), Ok(()));
        assert_eq!(check_inbound(&spoof, &peer2, &local2), Err(DropReason::BadSource));
        // An IPv4-mapped address is IPv6 here, never the IPv4 peer's.
        let mapped = build_udp6(ip("10.244.2.5").to_ipv6_mapped(), ip6("fd00:244:0:1::7"), b"x");
        assert_eq!(check_inbound(&mapped, &peer2, &local2), Err(DropReason::BadSource));
    }

    #[test]
    fn a_peers_prefix_of_both_subnets_checks_each_family_against_its_own() {
        // What the loop installs for a dual-stack peer n2 and an IPv4-only peer n3, and the
        // node's own prefix (n1, dual-stack).
        let n2 = Prefix::of([net("10.244.2.0/24"), net("fd00:244:0:2::/64")]);
        let n3 = Prefix::of([net("10.244.3.0/24")]);
        let local = Prefix::of([net("10.244.1.0/24"), net("fd00:244:0:1::/64")]);
        assert_eq!(n2, pre("10.244.2.0/24").with(net("fd00:244:0:2::/64")));
        assert_eq!(Prefix::of([]), Prefix::NONE);
        let v4 = |s: &str, d: &str| build_udp(ip(s), ip(d), b"x");
        let v6 = |s: &str, d: &str| build_udp6(ip6(s), ip6(d), b"x");
        assert_eq!(check_inbound(&v4("10.244.2.5", "10.244.1.7"), &n2, &local), Ok(()));
        assert_eq!(check_inbound(&v6("fd00:244:0:2::5", "fd00:244:0:1::7"), &n2, &local), Ok(()));
        // n2's IPv6 packet with n3's or n1's IPv6 source, or from its IPv4 subnet mapped: spoofed.
        for src in ["fd00:244:0:3::5", "fd00:244:0:1::5", "::ffff:10.244.2.5"] {
            assert_eq!(check_inbound(&v6(src, "fd00:244:0:1::7"), &n2, &local), Err(DropReason::BadSource), "{src}");
        }
        // An IPv4-only peer sends no IPv6 packet at all: its IPv6 slot matches nothing.
        assert_eq!(check_inbound(&v6("fd00:244:0:3::5", "fd00:244:0:1::7"), &n3, &local), Err(DropReason::BadSource));
        assert_eq!(check_inbound(&v4("10.244.3.5", "10.244.1.7"), &n3, &local), Ok(()));
        // The destination is checked per family too: n2's IPv6 packet to another node's subnet.
        assert_eq!(
            check_inbound(&v6("fd00:244:0:2::5", "fd00:244:0:3::7"), &n2, &local),
            Err(DropReason::BadDestination)
        );
    }

    #[test]
    fn inbound_checks() {
        let peer = pre("10.244.2.0/24");
        let local = pre("10.244.1.0/24");
        let ok = build_udp(ip("10.244.2.5"), ip("10.244.1.7"), b"x");
        assert_eq!(check_inbound(&ok, &peer, &local), Ok(()));
        let spoof = build_udp(ip("10.244.3.5"), ip("10.244.1.7"), b"x");
        assert_eq!(check_inbound(&spoof, &peer, &local), Err(DropReason::BadSource));
        let elsewhere = build_udp(ip("10.244.2.5"), ip("10.244.9.7"), b"x");
        assert_eq!(check_inbound(&elsewhere, &peer, &local), Err(DropReason::BadDestination));
        // the peer node's own gateway address is in its subnet, so node-originated traffic passes
        let gw = build_udp(ip("10.244.2.1"), ip("10.244.1.7"), b"x");
        assert_eq!(check_inbound(&gw, &peer, &local), Ok(()));
    }

    #[test]
    fn malformed_headers() {
        let good = build_udp(ip("10.0.0.1"), ip("10.0.0.2"), b"abc");
        assert!(ipv4_addrs(&good).is_ok());
        assert_eq!(ipv4_addrs(&good[..19]), Err(DropReason::Malformed));
        let mut v6 = good.clone();
        v6[0] = 0x60;
        assert_eq!(ipv4_addrs(&v6), Err(DropReason::Malformed));
        let mut short_ihl = good.clone();
        short_ihl[0] = 0x44;
        assert_eq!(ipv4_addrs(&short_ihl), Err(DropReason::Malformed));
        let mut long_ihl = good.clone();
        long_ihl[0] = 0x4f;
        assert_eq!(ipv4_addrs(&long_ihl), Err(DropReason::Malformed), "a 60-byte header cannot fit in 31 bytes");
        let mut trunc = good.clone();
        trunc.pop();
        assert_eq!(ipv4_addrs(&trunc), Err(DropReason::Malformed), "total length must match");
        assert_eq!(ipv4_addrs(&[]), Err(DropReason::Malformed));
    }

    #[test]
    fn drop_names_are_unique() {
        let names: std::collections::BTreeSet<_> = DropReason::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
        for (i, d) in DropReason::ALL.iter().enumerate() {
            assert_eq!(d.index(), i);
        }
    }
}

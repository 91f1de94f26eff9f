//! Per-packet decisions of the quic data path, pure and allocation-free: where an outgoing
//! packet goes, and whether a decapsulated one may enter this node.

use std::net::Ipv4Addr;

/// Why a packet was dropped. `as_str` names the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a well-formed IPv4 header (IPv6 is not carried yet).
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

/// A prefix as (network, mask), cheap to test against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub net: u32,
    pub mask: u32,
}

impl Prefix {
    pub fn new(net: ipnet::Ipv4Net) -> Self {
        Self { net: u32::from(net.network()), mask: u32::from(net.netmask()) }
    }

    #[inline]
    pub fn contains(self, addr: u32) -> bool {
        addr & self.mask == self.net
    }
}

/// Peers by subnet network address: all node subnets of a network have one length, so the
/// lookup of a destination is one mask and one hash probe, whatever the number of peers.
#[derive(Debug, Clone)]
pub struct SubnetTable<T> {
    mask: u32,
    entries: std::collections::HashMap<u32, T>,
}

impl<T> SubnetTable<T> {
    /// A table of subnets with netmask `mask` (host order).
    pub fn new(mask: u32) -> Self {
        Self { mask, entries: std::collections::HashMap::new() }
    }

    /// Adds (or replaces) the entry of the subnet containing `net`.
    pub fn insert(&mut self, net: u32, value: T) {
        self.entries.insert(net & self.mask, value);
    }

    #[inline]
    pub fn lookup(&self, dst: u32) -> Option<&T> {
        self.entries.get(&(dst & self.mask))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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

/// Destination of an outgoing packet (read from the tun device).
#[inline]
pub fn outbound_dst(pkt: &[u8]) -> Result<u32, DropReason> {
    ipv4_addrs(pkt).map(|(_, d)| d)
}

/// An inbound (decapsulated) packet may enter only if it comes from the sending peer's subnet
/// and goes to this node's subnet.
#[inline]
pub fn check_inbound(pkt: &[u8], peer: Prefix, local: Prefix) -> Result<(), DropReason> {
    let (src, dst) = ipv4_addrs(pkt)?;
    if !peer.contains(src) {
        return Err(DropReason::BadSource);
    }
    if !local.contains(dst) {
        return Err(DropReason::BadDestination);
    }
    Ok(())
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
    let mut sum: u32 = 0;
    for c in p[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&9u16.to_be_bytes());
    p[22..24].copy_from_slice(&9u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_table_finds_the_owner_of_any_address_in_a_subnet() {
        let mut t = SubnetTable::new(0xffff_ff00);
        t.insert(u32::from(Ipv4Addr::new(10, 244, 2, 0)), "n2");
        t.insert(u32::from(Ipv4Addr::new(10, 244, 3, 7)), "n3");
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(u32::from(Ipv4Addr::new(10, 244, 2, 200))), Some(&"n2"));
        assert_eq!(t.lookup(u32::from(Ipv4Addr::new(10, 244, 3, 1))), Some(&"n3"));
        assert_eq!(t.lookup(u32::from(Ipv4Addr::new(10, 244, 4, 1))), None);
    }

    fn pre(s: &str) -> Prefix {
        Prefix::new(s.parse().expect("lit"))
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("lit")
    }

    #[test]
    fn inbound_checks() {
        let peer = pre("10.244.2.0/24");
        let local = pre("10.244.1.0/24");
        let ok = build_udp(ip("10.244.2.5"), ip("10.244.1.7"), b"x");
        assert_eq!(check_inbound(&ok, peer, local), Ok(()));
        let spoof = build_udp(ip("10.244.3.5"), ip("10.244.1.7"), b"x");
        assert_eq!(check_inbound(&spoof, peer, local), Err(DropReason::BadSource));
        let elsewhere = build_udp(ip("10.244.2.5"), ip("10.244.9.7"), b"x");
        assert_eq!(check_inbound(&elsewhere, peer, local), Err(DropReason::BadDestination));
        // the peer node's own gateway address is in its subnet, so node-originated traffic passes
        let gw = build_udp(ip("10.244.2.1"), ip("10.244.1.7"), b"x");
        assert_eq!(check_inbound(&gw, peer, local), Ok(()));
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

//! Packet validation of the quic data path: `ip_addrs` (`ipv4_addrs`, `ipv6_addrs`),
//! `outbound_dst` and `check_inbound` on arbitrary bytes. The first 36 bytes pick the peer and
//! local prefixes (18 bytes each: which families, a length, an address); the rest is the packet.
#![no_main]

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weft_agent::quic::packet::{check_inbound, ip_addrs, ipv4_addrs, ipv6_addrs, outbound_dst, DropReason, Prefix};

const SPEC: usize = 18;

/// A prefix of no, one or both families (byte 0), with a length (byte 1) and an address (bytes
/// 2..18, of which an IPv4 prefix takes the first 4); also as the nets it stands for.
fn prefix(b: &[u8; SPEC]) -> (Prefix, Vec<IpNet>) {
    let mut nets: Vec<IpNet> = Vec::new();
    if b[0] & 1 != 0 {
        let a = Ipv4Addr::new(b[2], b[3], b[4], b[5]);
        nets.push(Ipv4Net::new(a, b[1] % 33).expect("len <= 32").trunc().into());
    }
    if b[0] & 2 != 0 {
        let a = Ipv6Addr::from(u128::from_be_bytes(std::array::from_fn(|i| b[2 + i])));
        nets.push(Ipv6Net::new(a, b[1] % 129).expect("len <= 128").trunc().into());
    }
    let p = nets.iter().fold(Prefix::NONE, |p, n| p.with(*n));
    (p, nets)
}

fn inside(nets: &[IpNet], a: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&a))
}

fn check_parsers(pkt: &[u8]) {
    let (v4, v6) = (ipv4_addrs(pkt), ipv6_addrs(pkt));
    if let Ok((s, d)) = v4 {
        assert!(pkt.len() >= 20 && pkt[0] >> 4 == 4);
        assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), pkt.len());
        assert_eq!(
            (s, d),
            (
                u32::from_be_bytes([pkt[12], pkt[13], pkt[14], pkt[15]]),
                u32::from_be_bytes([pkt[16], pkt[17], pkt[18], pkt[19]])
            )
        );
    }
    if let Ok((s, d)) = v6 {
        assert!(pkt.len() >= 40 && pkt[0] >> 4 == 6);
        assert_eq!(usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) + 40, pkt.len());
        let word = |at: usize| u128::from_be_bytes(std::array::from_fn(|i| pkt[at + i]));
        assert_eq!((s, d), (word(8), word(24)));
    }
    let want: Result<(IpAddr, IpAddr), _> = match (v4, v6) {
        (Ok((s, d)), Err(_)) => Ok((Ipv4Addr::from_bits(s).into(), Ipv4Addr::from_bits(d).into())),
        (Err(_), Ok((s, d))) => Ok((Ipv6Addr::from_bits(s).into(), Ipv6Addr::from_bits(d).into())),
        (Err(e), Err(_)) => Err(e),
        (Ok(_), Ok(_)) => panic!("a packet parsed as both IPv4 and IPv6"),
    };
    assert_eq!(ip_addrs(pkt), want);
    assert_eq!(outbound_dst(pkt), want.map(|(_, d)| d));
}

fuzz_target!(|data: &[u8]| {
    let (Some(peer), Some(local)) = (data.first_chunk::<SPEC>(), data.get(SPEC..).and_then(|d| d.first_chunk::<SPEC>()))
    else {
        check_parsers(data);
        return;
    };
    let ((peer, pn), (local, ln)) = (prefix(peer), prefix(local));
    let pkt = &data[2 * SPEC..];
    check_parsers(pkt);
    let addrs = ip_addrs(pkt);
    match check_inbound(pkt, &peer, &local) {
        Ok(()) => {
            let (s, d) = addrs.expect("admitted packets parse");
            assert!(inside(&pn, s) && inside(&ln, d));
        }
        Err(DropReason::Malformed) => assert!(addrs.is_err()),
        Err(DropReason::BadSource) => assert!(!inside(&pn, addrs.expect("parses").0)),
        Err(DropReason::BadDestination) => {
            let (s, d) = addrs.expect("parses");
            assert!(inside(&pn, s) && !inside(&ln, d));
        }
        Err(other) => panic!("unexpected verdict {other:?}"),
    }
});

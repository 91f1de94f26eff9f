//! Packet validation of the quic data path: `ipv4_addrs` and `check_inbound` on arbitrary bytes.
//! The first 10 bytes pick the peer and local prefixes; the rest is the packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use weft_agent::quic::packet::{check_inbound, ipv4_addrs, DropReason, Prefix};

fn prefix(b: &[u8]) -> (Prefix, ipnet::Ipv4Net) {
    let net = ipnet::Ipv4Net::new(Ipv4Addr::new(b[0], b[1], b[2], b[3]), b[4] % 33).expect("len <= 32").trunc();
    (Prefix::new(net), net)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        let _ = ipv4_addrs(data);
        return;
    }
    let ((peer, pn), (local, ln)) = (prefix(&data[..5]), prefix(&data[5..10]));
    let pkt = &data[10..];
    let addrs = ipv4_addrs(pkt);
    if let Ok((s, d)) = addrs {
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
    match check_inbound(pkt, peer, local) {
        Ok(()) => {
            let (s, d) = addrs.expect("admitted packets parse");
            assert!(pn.contains(&Ipv4Addr::from(s)) && ln.contains(&Ipv4Addr::from(d)));
        }
        Err(DropReason::Malformed) => assert!(addrs.is_err()),
        Err(DropReason::BadSource) => assert!(!pn.contains(&Ipv4Addr::from(addrs.expect("parses").0))),
        Err(DropReason::BadDestination) => assert!(!ln.contains(&Ipv4Addr::from(addrs.expect("parses").1))),
        Err(other) => panic!("unexpected verdict {other:?}"),
    }
});

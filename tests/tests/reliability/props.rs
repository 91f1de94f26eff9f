//! Section 8: property tests over the untrusted-input parsers and the packet checks (bounded in
//! CI; WEFT_FUZZ_CASES=1000000 for the long run recorded in docs/RELIABILITY.md). The cargo-fuzz
//! targets in fuzz/ run the same functions under libFuzzer.

use proptest::prelude::*;
use std::net::Ipv4Addr;
use weft_agent::quic::packet::{build_udp, check_inbound, ip_addrs, ipv4_addrs, DropReason, Prefix};
use weft_config::peers::{build_peer_set, RawRecord};
use weft_config::subnet::Family;
use weft_config::{agent::valid_name, Backend, Keys, NetworkConfig, SubnetRecord};
use weft_tests::v4;

fn cases() -> u32 {
    std::env::var("WEFT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }
}

fn prefix() -> impl Strategy<Value = (Prefix, ipnet::IpNet)> {
    (any::<u32>(), 8u8..=30).prop_map(|(a, l)| {
        let n = ipnet::Ipv4Net::new(Ipv4Addr::from(a), l).expect("len").trunc();
        (Prefix::new(n), n.into())
    })
}

/// Packets: arbitrary bytes, or a well-formed header with some bytes overwritten.
fn packet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec((0usize..80, any::<u8>()), 0..4)
        )
            .prop_map(|(s, d, payload, edits)| {
                let mut p = build_udp(Ipv4Addr::from(s), Ipv4Addr::from(d), &payload);
                for (i, b) in edits {
                    if let Some(x) = p.get_mut(i) {
                        *x = b;
                    }
                }
                p
            }),
    ]
}

fn record_text() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just(r#""schema":1"#.to_string()),
        Just(r#""schema":0"#.to_string()),
        "[a-z0-9.-]{0,70}".prop_map(|n| format!(r#""node":"{n}""#)),
        "[ -~]{0,130}".prop_map(|n| format!(r#""node_id":{}"#, serde_json::to_string(&n).unwrap_or_default())),
        any::<u32>().prop_map(|a| format!(r#""public_ip":"{}""#, Ipv4Addr::from(a))),
        Just(r#""public_ip":"not-an-ip""#.to_string()),
        prop_oneof![Just("host-gw"), Just("quic"), Just("vxlan")].prop_map(|b| format!(r#""backend":"{b}""#)),
        any::<u64>().prop_map(|e| format!(r#""epoch":{e}"#)),
        any::<u32>().prop_map(|a| format!(r#""quic_endpoint":"{}:7946""#, Ipv4Addr::from(a))),
        "[ -~]{0,20}".prop_map(|x| format!(r#""extra":{}"#, serde_json::to_string(&x).unwrap_or_default())),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        proptest::collection::vec(field, 0..9).prop_map(|f| format!("{{{}}}", f.join(",")).into_bytes()),
        "[{}\\[\\]\":,a-z0-9 .-]{0,120}".prop_map(String::into_bytes),
    ]
}

fn network() -> impl Strategy<Value = NetworkConfig> {
    (any::<u32>(), 8u8..=24, 0u8..=8).prop_filter_map("valid network", |(a, l, extra)| {
        let cidr = ipnet::Ipv4Net::new(Ipv4Addr::from(a), l).ok()?.trunc();
        NetworkConfig::new("p", &cidr.to_string(), (l + 1 + extra).min(30), Backend::HostGw).ok()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ipv4_addrs_accepts_only_sane_headers(p in packet()) {
        if let Ok((s, d)) = ipv4_addrs(&p) {
            prop_assert!(p.len() >= 20 && p[0] >> 4 == 4 && usize::from(p[0] & 15) * 4 >= 20);
            prop_assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
            prop_assert_eq!(s, u32::from_be_bytes([p[12], p[13], p[14], p[15]]));
            prop_assert_eq!(d, u32::from_be_bytes([p[16], p[17], p[18], p[19]]));
        }
    }

    #[test]
    fn check_inbound_admits_only_peer_to_local(p in packet(), (peer, pn) in prefix(), (local, ln) in prefix()) {
        match check_inbound(&p, &peer, &local) {
            Ok(()) => {
                let (s, d) = ip_addrs(&p).expect("admitted packets parse");
                prop_assert!(pn.contains(&s) && ln.contains(&d));
            }
            Err(DropReason::Malformed) => prop_assert!(ip_addrs(&p).is_err()),
            Err(DropReason::BadSource) => prop_assert!(!pn.contains(&ip_addrs(&p).expect("parses").0)),
            Err(DropReason::BadDestination) => prop_assert!(!ln.contains(&ip_addrs(&p).expect("parses").1)),
            Err(other) => prop_assert!(false, "unexpected verdict {:?}", other),
        }
    }

    #[test]
    fn subnet_records_parse_or_fail_with_one_line(bytes in record_text()) {
        match SubnetRecord::from_json("/k", &bytes) {
            Ok(r) => {
                prop_assert!(valid_name(&r.node) && !r.node_id.is_empty() && r.schema >= 1);
                prop_assert!(!r.public_ip.is_unspecified() && !r.public_ip.is_loopback() && !r.public_ip.is_multicast());
                let again = SubnetRecord::from_json("/k", r.to_json().as_bytes()).expect("own output parses");
                prop_assert_eq!(again, r);
            }
            Err(e) => prop_assert!(!e.to_string().contains('\n'), "multi-line error: {}", e),
        }
    }

    #[test]
    fn network_configs_parse_only_when_valid(cidr in any::<u32>(), len in 0u8..=40, sub in 0u8..=40, junk in record_text()) {
        let text = format!(r#"{{"schema":1,"cidr":"{}/{len}","subnet_len":{sub},"backend":"quic"}}"#, Ipv4Addr::from(cidr));
        for bytes in [text.as_bytes(), &junk[..]] {
            match NetworkConfig::from_json("/c", bytes) {
                Ok(c) => {
                    // Only `cidr` is generated, so an accepted config is IPv4-only: its pool.
                    let Some(c) = c.pool(Family::V4) else { prop_assert!(false, "no IPv4 pool"); continue };
                    prop_assert_eq!(c.cidr.network(), c.cidr.addr());
                    prop_assert!(c.subnet_len > c.cidr.prefix_len() && c.subnet_len >= 8 && c.subnet_len <= 30);
                }
                Err(e) => prop_assert!(!e.to_string().contains('\n')),
            }
        }
    }

    #[test]
    fn peer_sets_hold_only_trustworthy_peers(
        net in network(),
        recs in proptest::collection::vec((any::<u32>(), prop_oneof![Just(None), (0u8..=32).prop_map(Some)], prop_oneof![Just("n1"), Just("n2"), Just("n3"), Just("me")], record_text(), 0i64..20), 0..12),
        own_pick in any::<u32>(),
    ) {
        let keys = Keys::new("default");
        let pool = net.pool(Family::V4).expect("an IPv4 network");
        let raw: Vec<RawRecord> = recs
            .iter()
            .enumerate()
            .map(|(i, (a, len, node, junk, rev))| {
                let len = len.unwrap_or(pool.subnet_len);
                let seg = format!("{}-{len}", Ipv4Addr::from(*a));
                let value = if i % 2 == 0 {
                    format!(r#"{{"schema":1,"node":"{node}","node_id":"id-{node}","public_ip":"192.0.2.{}","backend":"host-gw"}}"#, i + 1).into_bytes()
                } else {
                    junk.clone()
                };
                RawRecord { key: format!("{}{seg}", keys.subnets_prefix()), value, create_revision: *rev, mod_revision: *rev }
            })
            .collect();
        let own = weft_config::subnet::first_free(pool.cidr, pool.subnet_len, &[]).map(|s| {
            let n = 1u32 << (pool.subnet_len - pool.cidr.prefix_len()).min(31);
            let k = own_pick % n;
            let base = u32::from(v4(s.network()));
            ipnet::IpNet::from(ipnet::Ipv4Net::new(Ipv4Addr::from(base + (k << (32 - pool.subnet_len))), pool.subnet_len).expect("len"))
        });
        let set = build_peer_set(&net, &keys, &raw, "me", own);
        // The checks below are of the network's (IPv4) pool.
        let net = pool;
        let mut names = std::collections::BTreeSet::new();
        for (subnet, p) in &set.peers {
            prop_assert_eq!(*subnet, p.subnet);
            prop_assert!(p.subnet.prefix_len() == net.subnet_len && net.cidr.contains(&p.subnet));
            prop_assert!(Some(p.subnet) != own, "own subnet as a peer");
            prop_assert!(p.node != "me", "own name as a peer");
            prop_assert!(names.insert(p.node.clone()), "node {} twice", p.node);
        }
        prop_assert!(set.peers.len() + set.skipped.len() <= raw.len());
    }

    #[test]
    fn agent_configs_never_panic_and_errors_are_one_line(text in "[a-z_\\[\\]=\"\n .0-9/:]{0,200}") {
        if let Err(e) = weft_config::AgentConfig::parse("agent.toml", &text) {
            prop_assert!(!e.to_string().contains('\n'), "multi-line error: {}", e);
        }
    }
}

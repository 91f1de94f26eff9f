//! `build_peer_set` over records cut from arbitrary bytes: input is split on 0xff into records;
//! each record's first byte picks the key form (a subnet of the network, a wrong length, outside
//! the CIDR, not a subnet) and its revision, the rest is the value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use weft_config::peers::{build_peer_set, RawRecord};
use weft_config::{Backend, Keys, NetworkConfig};

fuzz_target!(|data: &[u8]| {
    let net = NetworkConfig::new("f", "10.244.0.0/16", 24, Backend::HostGw).expect("valid");
    let cidr: ipnet::IpNet = "10.244.0.0/16".parse().expect("literal");
    let keys = Keys::new("default");
    let p = keys.subnets_prefix();
    let records: Vec<RawRecord> = data
        .split(|b| *b == 0xff)
        .filter(|r| !r.is_empty())
        .take(64)
        .map(|r| {
            let (sel, value) = (r[0], &r[1..]);
            let third = sel >> 2;
            let key = match sel & 3 {
                0 => format!("{p}10.244.{third}.0-24"),
                1 => format!("{p}10.244.{third}.0-25"),
                2 => format!("{p}10.{third}.0.0-24"),
                _ => format!("{p}{}", String::from_utf8_lossy(value)),
            };
            RawRecord { key, value: value.to_vec(), create_revision: i64::from(sel % 7), mod_revision: i64::from(sel) }
        })
        .collect();
    let own = "10.244.1.0/24".parse().ok();
    let set = build_peer_set(&net, &keys, &records, "n1", own);
    let mut names = BTreeSet::new();
    for (s, peer) in &set.peers {
        assert_eq!(*s, peer.subnet);
        assert!(peer.subnet.prefix_len() == 24 && cidr.contains(&peer.subnet));
        assert!(Some(peer.subnet) != own && peer.node != "n1");
        assert!(names.insert(peer.node.clone()), "a node twice");
    }
    assert!(set.peers.len() + set.skipped.len() <= records.len());
});

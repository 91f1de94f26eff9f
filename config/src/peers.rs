//! Turning the raw subnet records of etcd into a trusted peer set. Records written by other
//! nodes are untrusted: each malformed, misplaced or conflicting one is skipped with a reason.

use crate::records::{check_subnet_key, Backend, BackendData, NetworkConfig, SubnetRecord};
use crate::Keys;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One key-value pair as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// A validated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub subnet: IpNet,
    pub node: String,
    pub node_id: String,
    pub public_ip: IpAddr,
    pub backend: Backend,
    pub epoch: u64,
    /// What the peer's backends published (opaque here; each backend reads its own entry).
    pub backend_data: BackendData,
    pub mod_revision: i64,
}

/// A record that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub key: String,
    pub mod_revision: i64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerSet {
    /// Peers by subnet (the set other code iterates in a stable order).
    pub peers: BTreeMap<IpNet, Peer>,
    pub skipped: Vec<Skipped>,
}

/// Builds the peer set as seen by node `own_node` owning `own_subnet` (if it has one yet).
/// The own record is left out. When two records name the same node, the older claim wins.
pub fn build_peer_set(
    net: &NetworkConfig,
    keys: &Keys,
    records: &[RawRecord],
    own_node: &str,
    own_subnet: Option<IpNet>,
) -> PeerSet {
    let mut out = PeerSet::default();
    let mut skip = |r: &RawRecord, reason: String| {
        out.skipped.push(Skipped { key: r.key.clone(), mod_revision: r.mod_revision, reason });
    };
    let mut by_node: BTreeMap<String, (i64, Peer)> = BTreeMap::new();
    let mut sorted: Vec<&RawRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.create_revision, r.key.clone()));
    for r in sorted {
        let Some(segment) = keys.subnet_segment(&r.key) else {
            skip(r, "not a subnet key of this network".into());
            continue;
        };
        let subnet = match check_subnet_key(net, &r.key, segment) {
            Ok(s) => s,
            Err(e) => {
                skip(r, e.message);
                continue;
            }
        };
        let rec = match SubnetRecord::from_json(&r.key, &r.value) {
            Ok(rec) => rec,
            Err(e) => {
                let field = if e.field.is_empty() { String::new() } else { format!("{}: ", e.field) };
                skip(r, format!("{field}{}", e.message));
                continue;
            }
        };
        if Some(subnet) == own_subnet {
            if rec.node != own_node {
                skip(r, format!("record for this node's own subnet names node {:?}", rec.node));
            }
            continue;
        }
        if rec.node == own_node {
            skip(r, format!("names this node ({own_node}) but is not its subnet"));
            continue;
        }
        if let Some((_, first)) = by_node.get(&rec.node) {
            skip(r, format!("node {:?} already owns {} (older claim)", rec.node, first.subnet));
            continue;
        }
        let peer = Peer {
            subnet,
            node: rec.node.clone(),
            node_id: rec.node_id,
            public_ip: rec.public_ip,
            backend: rec.backend,
            epoch: rec.epoch,
            backend_data: rec.backend_data,
            mod_revision: r.mod_revision,
        };
        by_node.insert(rec.node, (r.create_revision, peer));
    }
    for (_, (_, p)) in by_node {
        out.peers.insert(p.subnet, p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(key: &str, value: &str, rev: i64) -> RawRecord {
        RawRecord { key: key.into(), value: value.as_bytes().to_vec(), create_revision: rev, mod_revision: rev }
    }

    fn rec(node: &str, ip: &str) -> String {
        format!(
            r#"{{"schema":1,"node":"{node}","node_id":"id-{node}","public_ip":"{ip}","backend":"host-gw","epoch":1}}"#
        )
    }

    #[test]
    fn valid_peers_and_each_kind_of_skip() {
        let net = NetworkConfig::new("t", "10.244.0.0/16", 24, Backend::HostGw).expect("valid");
        let keys = Keys::new("default");
        let p = "/weft/v1/default/subnets/";
        let own: IpNet = "10.244.1.0/24".parse().expect("literal");
        let records = vec![
            raw(&format!("{p}10.244.1.0-24"), &rec("n1", "192.0.2.1"), 1),
            raw(&format!("{p}10.244.2.0-24"), &rec("n2", "192.0.2.2"), 2),
            raw(&format!("{p}10.244.3.0-24"), &rec("n3", "192.0.2.3"), 3),
            raw(&format!("{p}10.244.4.0-24"), "{malformed", 4),
            raw(&format!("{p}10.99.0.0-24"), &rec("n5", "192.0.2.5"), 5),
            raw(&format!("{p}10.244.1.0-25"), &rec("n6", "192.0.2.6"), 6),
            raw(&format!("{p}10.244.7.0-24"), &rec("n2", "192.0.2.7"), 7),
            raw(&format!("{p}10.244.8.0-24"), &rec("n1", "192.0.2.8"), 8),
        ];
        let set = build_peer_set(&net, &keys, &records, "n1", Some(own));
        let names: Vec<_> = set.peers.values().map(|p| p.node.as_str()).collect();
        assert_eq!(names, ["n2", "n3"]);
        assert_eq!(set.peers.values().next().map(|p| p.public_ip.to_string()), Some("192.0.2.2".into()));
        let reasons: Vec<_> = set.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(set.skipped.len(), 5, "{reasons:?}");
        assert!(reasons[0].starts_with("invalid subnet record JSON"));
        assert!(reasons[1].contains("outside the cluster CIDR"));
        assert!(reasons[2].contains("is not a /24"));
        assert_eq!(reasons[3], "node \"n2\" already owns 10.244.2.0/24 (older claim)");
        assert_eq!(reasons[4], "names this node (n1) but is not its subnet");
    }

    #[test]
    fn foreign_record_on_own_subnet_is_skipped() {
        let net = NetworkConfig::new("t", "10.244.0.0/16", 24, Backend::HostGw).expect("valid");
        let keys = Keys::new("default");
        let own: IpNet = "10.244.1.0/24".parse().expect("literal");
        let records = vec![raw("/weft/v1/default/subnets/10.244.1.0-24", &rec("intruder", "192.0.2.9"), 1)];
        let set = build_peer_set(&net, &keys, &records, "n1", Some(own));
        assert!(set.peers.is_empty());
        assert_eq!(set.skipped.len(), 1);
    }

    #[test]
    fn ipv6_subnets_and_addresses_are_skipped_with_the_reason() {
        let net = NetworkConfig::new("t", "10.244.0.0/16", 24, Backend::HostGw).expect("valid");
        let keys = Keys::new("default");
        let records = vec![
            raw("/weft/v1/default/subnets/fd00:10:244:2::-64", &rec("n2", "192.0.2.2"), 1),
            raw("/weft/v1/default/subnets/10.244.3.0-24", &rec("n3", "2001:db8::3"), 2),
        ];
        let set = build_peer_set(&net, &keys, &records, "n1", None);
        assert!(set.peers.is_empty());
        let reasons: Vec<_> = set.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "expected an IPv4 subnet key like 10.244.1.0-24, found the IPv6 subnet fd00:10:244:2::/64",
                "public_ip: expected an IPv4 address like 192.0.2.10, found 2001:db8::3",
            ]
        );
    }
}

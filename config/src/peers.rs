//! Turning the raw subnet records of etcd into a trusted peer set. Records written by other
//! nodes are untrusted: each malformed, misplaced or conflicting one is skipped with a reason.
//!
//! In a dual-stack network a node holds one subnet per family (`subnets/` and `subnets6/`):
//! the set has one [`Peer`] per subnet, joined by node name and identity, each with the node's
//! underlay address of its family, so a route-based backend treats both alike and
//! [`PeerSet::by_node`] gives the per-node view (one tunnel per node).

use crate::records::{check_subnet_key_of, Backend, BackendData, NetworkConfig, SubnetRecord};
use crate::subnet::Family;
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

/// A validated peer subnet: one subnet of a peer node (a node of a dual-stack network has one
/// per family, joined by its name and identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub subnet: IpNet,
    pub node: String,
    pub node_id: String,
    /// The node's underlay address of `subnet`'s family (the record's `public_ip` for an IPv4
    /// subnet, `public_ip6` for an IPv6 one): what host-gw routes `subnet` via.
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
    /// Peers by subnet, IPv4 subnets first (the set other code iterates in a stable order).
    pub peers: BTreeMap<IpNet, Peer>,
    pub skipped: Vec<Skipped>,
}

impl PeerSet {
    /// Each peer node with its subnets, IPv4 first (two for a dual-stack node).
    pub fn by_node(&self) -> BTreeMap<&str, Vec<&Peer>> {
        let mut out: BTreeMap<&str, Vec<&Peer>> = BTreeMap::new();
        for p in self.peers.values() {
            out.entry(p.node.as_str()).or_default().push(p);
        }
        out
    }
}

/// The underlay address of `record` that reaches its subnet of `family`, or why there is none.
fn address_of(record: &SubnetRecord, family: Family) -> Result<IpAddr, String> {
    match family {
        Family::V4 => Ok(record.public_ip),
        Family::V6 => {
            record.public_ip6.ok_or_else(|| "public_ip6: missing, so its IPv6 subnet cannot be reached".into())
        }
    }
}

/// Builds the peer set as seen by node `own_node` owning `own_subnets` (none yet, one, or one
/// per family), from the records of both families. The own records are left out. When two
/// records of one family name the same node, the older claim wins; a node's records of the two
/// families must carry one identity (the older claim's).
pub fn build_peer_set(
    net: &NetworkConfig,
    keys: &Keys,
    records: &[RawRecord],
    own_node: &str,
    own_subnets: impl IntoIterator<Item = IpNet>,
) -> PeerSet {
    let own: Vec<IpNet> = own_subnets.into_iter().collect();
    let mut out = PeerSet::default();
    let mut skip = |r: &RawRecord, reason: String| {
        out.skipped.push(Skipped { key: r.key.clone(), mod_revision: r.mod_revision, reason });
    };
    // Per node name: its subnet of each family, the older claim first.
    let mut by_node: BTreeMap<String, BTreeMap<Family, Peer>> = BTreeMap::new();
    let mut sorted: Vec<&RawRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.create_revision, r.key.clone()));
    for r in sorted {
        let Some((family, segment)) = keys.subnet_segment_of(&r.key) else {
            skip(r, "not a subnet key of this network".into());
            continue;
        };
        let subnet = match check_subnet_key_of(net, family, &r.key, segment) {
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
        if own.contains(&subnet) {
            if rec.node != own_node {
                skip(r, format!("record for this node's own subnet names node {:?}", rec.node));
            }
            continue;
        }
        if rec.node == own_node {
            skip(r, format!("names this node ({own_node}) but is not its subnet"));
            continue;
        }
        let held = by_node.entry(rec.node.clone()).or_default();
        if let Some(first) = held.get(&family) {
            skip(r, format!("node {:?} already owns {} (older claim)", rec.node, first.subnet));
            continue;
        }
        if let Some(other) = held.values().find(|p| p.node_id != rec.node_id) {
            skip(
                r,
                format!(
                    "node {:?} already owns {} as identity {:?} (older claim), this record names {:?}",
                    rec.node, other.subnet, other.node_id, rec.node_id
                ),
            );
            continue;
        }
        let public_ip = match address_of(&rec, family) {
            Ok(ip) => ip,
            Err(reason) => {
                skip(r, reason);
                continue;
            }
        };
        let peer = Peer {
            subnet,
            node: rec.node,
            node_id: rec.node_id,
            public_ip,
            backend: rec.backend,
            epoch: rec.epoch,
            backend_data: rec.backend_data,
            mod_revision: r.mod_revision,
        };
        held.insert(family, peer);
    }
    for p in by_node.into_values().flat_map(BTreeMap::into_values) {
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

    fn rec6(node: &str, id: &str, ip: &str, ip6: Option<&str>) -> String {
        let ip6 = ip6.map(|a| format!(r#","public_ip6":"{a}""#)).unwrap_or_default();
        format!(
            r#"{{"schema":1,"node":"{node}","node_id":"{id}","public_ip":"{ip}"{ip6},"backend":"host-gw","epoch":1}}"#
        )
    }

    fn dual() -> NetworkConfig {
        NetworkConfig::with_pools("t", Some(("10.244.0.0/16", 24)), Some(("fd00:10:244::/56", 64)), Backend::HostGw)
            .expect("valid")
    }

    #[test]
    fn a_dual_stack_node_is_one_peer_per_family_joined_by_name() {
        let keys = Keys::new("default");
        let (p4, p6) = ("/weft/v1/default/subnets/", "/weft/v1/default/subnets6/");
        let records = vec![
            raw(&format!("{p4}10.244.1.0-24"), &rec6("n1", "id-n1", "192.0.2.1", Some("fd00::1")), 1),
            raw(&format!("{p6}fd00:10:244:1::-64"), &rec6("n1", "id-n1", "192.0.2.1", Some("fd00::1")), 1),
            raw(&format!("{p4}10.244.2.0-24"), &rec6("n2", "id-n2", "192.0.2.2", Some("fd00::2")), 2),
            raw(&format!("{p6}fd00:10:244:2::-64"), &rec6("n2", "id-n2", "192.0.2.2", Some("fd00::2")), 2),
            raw(&format!("{p4}10.244.3.0-24"), &rec6("n3", "id-n3", "192.0.2.3", None), 3),
        ];
        let own = [n("10.244.1.0/24"), n("fd00:10:244:1::/64")];
        let set = build_peer_set(&dual(), &keys, &records, "n1", own);
        assert_eq!(set.skipped, []);
        let subnets: Vec<(String, &str, String)> =
            set.peers.values().map(|p| (p.subnet.to_string(), p.node.as_str(), p.public_ip.to_string())).collect();
        assert_eq!(
            subnets,
            [
                ("10.244.2.0/24".into(), "n2", "192.0.2.2".into()),
                ("10.244.3.0/24".into(), "n3", "192.0.2.3".into()),
                ("fd00:10:244:2::/64".into(), "n2", "fd00::2".into()),
            ],
            "IPv4 subnets first; the IPv6 subnet is routed via the IPv6 underlay address"
        );
        let nodes = set.by_node();
        let n2: Vec<String> = nodes["n2"].iter().map(|p| p.subnet.to_string()).collect();
        assert_eq!(n2, ["10.244.2.0/24", "fd00:10:244:2::/64"]);
        assert_eq!(nodes["n3"].len(), 1, "a node that holds only its IPv4 subnet yet");
    }

    #[test]
    fn ipv6_records_without_an_address_or_of_another_identity_are_skipped() {
        let keys = Keys::new("default");
        let (p4, p6) = ("/weft/v1/default/subnets/", "/weft/v1/default/subnets6/");
        let records = vec![
            raw(&format!("{p4}10.244.2.0-24"), &rec6("n2", "id-n2", "192.0.2.2", Some("fd00::2")), 2),
            raw(&format!("{p6}fd00:10:244:2::-64"), &rec6("n2", "intruder", "192.0.2.9", Some("fd00::9")), 3),
            raw(&format!("{p6}fd00:10:244:3::-64"), &rec6("n3", "id-n3", "192.0.2.3", None), 4),
            raw(&format!("{p6}fd00:10:244:4::-64"), &rec6("n4", "id-n4", "192.0.2.4", Some("fd00::4")), 5),
            raw(&format!("{p6}fd00:10:244:5::-64"), &rec6("n4", "id-n4", "192.0.2.4", Some("fd00::4")), 6),
            raw(&format!("{p6}fd00:10:244:1::-64"), &rec6("n9", "id-n9", "192.0.2.9", Some("fd00::9")), 7),
            raw(&format!("{p6}10.244.6.0-24"), &rec6("n6", "id-n6", "192.0.2.6", Some("fd00::6")), 8),
        ];
        let own = [n("10.244.1.0/24"), n("fd00:10:244:1::/64")];
        let set = build_peer_set(&dual(), &keys, &records, "n1", own);
        let kept: Vec<String> = set.peers.keys().map(|s| s.to_string()).collect();
        assert_eq!(kept, ["10.244.2.0/24", "fd00:10:244:4::/64"]);
        let reasons: Vec<&str> = set.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "node \"n2\" already owns 10.244.2.0/24 as identity \"id-n2\" (older claim), this record names \"intruder\"",
                "public_ip6: missing, so its IPv6 subnet cannot be reached",
                "node \"n4\" already owns fd00:10:244:4::/64 (older claim)",
                "record for this node's own subnet names node \"n9\"",
                "expected an IPv6 subnet key like fd00:10:244:1::-64, found the IPv4 subnet 10.244.6.0/24",
            ]
        );
    }

    #[test]
    fn an_ipv6_only_network_has_ipv6_peers_only() {
        let net = NetworkConfig::with_pools("t", None, Some(("fd00:10:244::/56", 64)), Backend::HostGw).expect("v6");
        let keys = Keys::new("default");
        let records = vec![
            raw("/weft/v1/default/subnets6/fd00:10:244:2::-64", &rec6("n2", "id-n2", "192.0.2.2", Some("fd00::2")), 1),
            raw("/weft/v1/default/subnets/10.244.3.0-24", &rec6("n3", "id-n3", "192.0.2.3", Some("fd00::3")), 2),
        ];
        let set = build_peer_set(&net, &keys, &records, "n1", [n("fd00:10:244:1::/64")]);
        assert_eq!(set.peers.values().map(|p| p.public_ip.to_string()).collect::<Vec<_>>(), ["fd00::2"]);
        assert_eq!(
            set.skipped.iter().map(|s| s.reason.as_str()).collect::<Vec<_>>(),
            ["the network has no IPv4 pool (cidr)"]
        );
    }

    fn n(s: &str) -> IpNet {
        s.parse().expect("literal")
    }
}

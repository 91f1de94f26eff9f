//! The etcd key layout. One place builds and parses keys, so the layout is documented once
//! (docs/ARCHITECTURE.md) and changed once.

use crate::subnet::{self, Family, PerFamily};
use ipnet::IpNet;

/// Root of every key weft writes.
pub const ROOT: &str = "/weft/v1";

/// Keys of one network (`/weft/v1/<network>/...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    base: String,
}

impl Keys {
    pub fn new(network: &str) -> Self {
        Self { base: format!("{ROOT}/{network}") }
    }

    /// Network config written by `weftctl network init`.
    pub fn config(&self) -> String {
        format!("{}/config", self.base)
    }

    /// Prefix of all IPv4 subnet records (ends in `/`): every node's lease.
    pub fn subnets_prefix(&self) -> String {
        self.subnets_prefix_of(Family::V4)
    }

    /// Prefix of the subnet records of one family (ends in `/`): `subnets/` for IPv4 (as ever),
    /// `subnets6/` for IPv6, where a dual-stack node keeps its second lease.
    pub fn subnets_prefix_of(&self, family: Family) -> String {
        match family {
            Family::V4 => format!("{}/subnets/", self.base),
            Family::V6 => format!("{}/subnets6/", self.base),
        }
    }

    /// The one prefix to list and watch for the subnet records of a network serving `families`:
    /// the family's own prefix, or for dual-stack `subnets` (no slash), which holds both
    /// `subnets/` and `subnets6/` so one listing and one watch share a revision.
    pub fn subnet_records_prefix<T>(&self, families: &PerFamily<T>) -> String {
        match families {
            PerFamily::V4(_) => self.subnets_prefix_of(Family::V4),
            PerFamily::V6(_) => self.subnets_prefix_of(Family::V6),
            PerFamily::Dual(..) => format!("{}/subnets", self.base),
        }
    }

    /// The record key of `s`, under the prefix of its family.
    pub fn subnet(&self, s: IpNet) -> String {
        format!("{}{}", self.subnets_prefix_of(Family::of_net(s)), subnet::to_key_form(s))
    }

    /// Prefix of all heartbeat keys (ends in `/`).
    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.base)
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}{}", self.nodes_prefix(), name)
    }

    /// Prefix of all probe records (ends in `/`): each agent's reachability of its peers.
    pub fn probes_prefix(&self) -> String {
        format!("{}/probes/", self.base)
    }

    pub fn probe(&self, name: &str) -> String {
        format!("{}{}", self.probes_prefix(), name)
    }

    /// The controllers' election (`Store::campaign` name; candidates' keys are under it).
    pub fn controller_election(&self) -> String {
        format!("{}/controller/election", self.base)
    }

    /// Prefix of the eviction records the controller leader writes (ends in `/`).
    pub fn evictions_prefix(&self) -> String {
        format!("{}/controller/evictions/", self.base)
    }

    /// The eviction record of `node` at `at_ms` (Unix milliseconds, 13 digits so that the keys
    /// sort by time).
    pub fn eviction(&self, at_ms: u64, node: &str) -> String {
        format!("{}{at_ms:013}-{node}", self.evictions_prefix())
    }

    /// Prefix of all join tokens (ends in `/`): `tokens/<id>`, written by `weftctl token create`.
    pub fn tokens_prefix(&self) -> String {
        format!("{}/tokens/", self.base)
    }

    pub fn token(&self, id: &str) -> String {
        format!("{}{}", self.tokens_prefix(), id)
    }

    /// The node name of a probe record's key.
    pub fn probe_segment<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.probes_prefix()).filter(|s| !s.is_empty() && !s.contains('/'))
    }

    /// The part of `key` after the subnets prefix, if it is a subnet key of this network.
    pub fn subnet_segment<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.subnets_prefix()).filter(|s| !s.is_empty() && !s.contains('/'))
    }

    /// The family and the part after its prefix of a subnet key of this network, under
    /// `subnets/` (IPv4) or `subnets6/` (IPv6).
    pub fn subnet_segment_of<'k>(&self, key: &'k str) -> Option<(Family, &'k str)> {
        [Family::V4, Family::V6].into_iter().find_map(|f| {
            let seg = key.strip_prefix(&self.subnets_prefix_of(f))?;
            (!seg.is_empty() && !seg.contains('/')).then_some((f, seg))
        })
    }

    /// The node name of a heartbeat key.
    pub fn node_segment<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.nodes_prefix()).filter(|s| !s.is_empty() && !s.contains('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("default");
        assert_eq!(k.config(), "/weft/v1/default/config");
        let s: IpNet = "10.244.1.0/24".parse().expect("literal");
        assert_eq!(k.subnet(s), "/weft/v1/default/subnets/10.244.1.0-24");
        assert_eq!(k.node("n1"), "/weft/v1/default/nodes/n1");
        assert_eq!(k.subnet_segment("/weft/v1/default/subnets/10.244.1.0-24"), Some("10.244.1.0-24"));
        assert_eq!(k.subnet_segment("/weft/v1/other/subnets/10.244.1.0-24"), None);
        assert_eq!(k.subnet_segment("/weft/v1/default/subnets/a/b"), None);
        assert_eq!(k.node_segment("/weft/v1/default/nodes/n1"), Some("n1"));
        assert_eq!(k.controller_election(), "/weft/v1/default/controller/election");
        assert_eq!(k.eviction(1_700_000_000_123, "n1"), "/weft/v1/default/controller/evictions/1700000000123-n1");
        assert!(k.eviction(5, "n1").starts_with(&k.evictions_prefix()));
    }

    #[test]
    fn each_family_has_its_own_subnet_prefix() {
        let k = Keys::new("default");
        assert_eq!(k.subnets_prefix(), "/weft/v1/default/subnets/");
        assert_eq!(k.subnets_prefix_of(Family::V6), "/weft/v1/default/subnets6/");
        let s: IpNet = "fd00:10:244:1::/64".parse().expect("literal");
        assert_eq!(k.subnet(s), "/weft/v1/default/subnets6/fd00:10:244:1::-64");
        // An IPv6 key is never listed with, nor read as, an IPv4 one.
        assert_eq!(k.subnet_segment(&k.subnet(s)), None);
    }

    #[test]
    fn both_families_are_listed_under_one_prefix_and_told_apart() {
        let k = Keys::new("default");
        let (v4, v6): (IpNet, IpNet) =
            ("10.244.1.0/24".parse().expect("lit"), "fd00:10:244:1::/64".parse().expect("lit"));
        assert_eq!(k.subnet_records_prefix(&PerFamily::V4(())), "/weft/v1/default/subnets/");
        assert_eq!(k.subnet_records_prefix(&PerFamily::V6(())), "/weft/v1/default/subnets6/");
        let both = k.subnet_records_prefix(&PerFamily::Dual((), ()));
        assert_eq!(both, "/weft/v1/default/subnets");
        assert!(k.subnet(v4).starts_with(&both) && k.subnet(v6).starts_with(&both));
        assert_eq!(k.subnet_segment_of(&k.subnet(v4)), Some((Family::V4, "10.244.1.0-24")));
        assert_eq!(k.subnet_segment_of(&k.subnet(v6)), Some((Family::V6, "fd00:10:244:1::-64")));
        assert_eq!(k.subnet_segment_of("/weft/v1/default/subnets6/"), None);
        assert_eq!(k.subnet_segment_of("/weft/v1/default/subnets6/a/b"), None);
        assert_eq!(k.subnet_segment_of("/weft/v1/default/subnetsX/10.244.1.0-24"), None);
        assert_eq!(k.subnet_segment_of("/weft/v1/other/subnets6/fd00::-64"), None);
    }
}

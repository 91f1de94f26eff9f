//! Subnet acquisition, decided purely from what etcd holds and what the node remembers: one
//! [`decide`] per pool of the network (a dual-stack node holds one subnet per family, each
//! decided by the same rules over that family's records), then [`writes`] joins the decisions
//! into what one etcd transaction writes. The daemon carries it out and retries on conflict.

use ipnet::IpNet;
use weft_config::records::Pool;
use weft_config::subnet::{self, PerFamily};
use weft_config::SubnetRecord;

/// A subnet record as read, for the decision: a malformed one still occupies its key.
#[derive(Debug, Clone)]
pub struct Existing {
    pub subnet: IpNet,
    pub record: Option<SubnetRecord>,
    pub mod_revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A record with this node's identity exists: keep it (update it in place).
    Reuse { subnet: IpNet, mod_revision: i64 },
    /// The record carries this node's name but another identity, whose heartbeat is gone:
    /// the node was reinstalled or renamed machines; take the record over.
    TakeOver { subnet: IpNet, mod_revision: i64, previous_id: String },
    /// Claim a subnet whose key must not exist (`create_revision == 0`).
    Claim { subnet: IpNet, moved_from: Option<IpNet> },
    /// Another live machine uses this node name.
    Refuse(String),
    /// No free subnet left.
    Exhausted { cidr: IpNet, subnet_len: u8, taken: usize },
}

pub struct Inputs<'a> {
    /// The pool of the family decided on.
    pub pool: Pool,
    pub node_name: &'a str,
    pub node_id: &'a str,
    /// Subnet of the pool's family remembered in the state dir, if any.
    pub persisted: Option<IpNet>,
    /// The records of the pool's family.
    pub existing: &'a [Existing],
    /// Identity behind the live heartbeat of this node name, if one exists.
    pub live_identity: Option<&'a str>,
}

pub fn decide(i: &Inputs<'_>) -> Decision {
    let Pool { cidr, subnet_len } = i.pool;
    let fits = |s: IpNet| s.prefix_len() == subnet_len && subnet::contains(cidr, s);
    let mine: Vec<&Existing> = i
        .existing
        .iter()
        .filter(|e| fits(e.subnet) && e.record.as_ref().is_some_and(|r| r.node_id == i.node_id))
        .collect();
    if let Some(e) = mine.iter().find(|e| Some(e.subnet) == i.persisted).or_else(|| mine.first()) {
        return Decision::Reuse { subnet: e.subnet, mod_revision: e.mod_revision };
    }
    let by_name =
        i.existing.iter().find(|e| fits(e.subnet) && e.record.as_ref().is_some_and(|r| r.node == i.node_name));
    if let Some(e) = by_name {
        let other = e.record.as_ref().map(|r| r.node_id.clone()).unwrap_or_default();
        if i.live_identity == Some(other.as_str()) {
            return Decision::Refuse(format!(
                "node name {:?} is held by another live machine (identity {other:?}, subnet {}); give this node another name or stop the other agent",
                i.node_name, e.subnet
            ));
        }
        return Decision::TakeOver { subnet: e.subnet, mod_revision: e.mod_revision, previous_id: other };
    }
    let taken: Vec<IpNet> = i.existing.iter().map(|e| e.subnet).collect();
    if let Some(p) = i.persisted.filter(|p| fits(*p)) {
        if !taken.iter().any(|t| subnet::overlaps(*t, p)) {
            return Decision::Claim { subnet: p, moved_from: None };
        }
    }
    let moved_from = i.persisted;
    match subnet::first_free(cidr, subnet_len, &taken) {
        Some(s) => Decision::Claim { subnet: s, moved_from: moved_from.filter(|p| *p != s) },
        None => Decision::Exhausted { cidr, subnet_len, taken: taken.len() },
    }
}

/// What the transaction writes for one family: the key of the subnet, guarded by a compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Create the key of the subnet; it must not exist (`create_revision == 0`).
    Create(IpNet),
    /// Overwrite the key of the subnet, unchanged since `mod_revision`.
    Replace { subnet: IpNet, mod_revision: i64 },
}

impl Write {
    pub fn subnet(&self) -> IpNet {
        match self {
            Write::Create(s) | Write::Replace { subnet: s, .. } => *s,
        }
    }
}

/// Why the node holds no subnets after this attempt (the daemon retries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// Another live machine uses this node name.
    Refused(String),
    /// A pool has no free subnet left.
    Exhausted { cidr: IpNet, subnet_len: u8, taken: usize },
}

/// The decisions of every family as the writes of one transaction, so the node holds all its
/// subnets or none: a refusal of any family refuses the node, an exhausted pool of any family
/// blocks it (refusals first).
pub fn writes(decisions: &PerFamily<Decision>) -> Result<PerFamily<Write>, Blocked> {
    if let Some(msg) = decisions.iter().find_map(|(_, d)| if let Decision::Refuse(m) = d { Some(m) } else { None }) {
        return Err(Blocked::Refused(msg.clone()));
    }
    decisions.try_map(|_, d| match *d {
        Decision::Reuse { subnet, mod_revision } | Decision::TakeOver { subnet, mod_revision, .. } => {
            Ok(Write::Replace { subnet, mod_revision })
        }
        Decision::Claim { subnet, .. } => Ok(Write::Create(subnet)),
        Decision::Exhausted { cidr, subnet_len, taken } => Err(Blocked::Exhausted { cidr, subnet_len, taken }),
        Decision::Refuse(ref msg) => Err(Blocked::Refused(msg.clone())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_config::subnet::Family;
    use weft_config::{Backend, NetworkConfig};

    fn net() -> NetworkConfig {
        NetworkConfig::new("t", "10.244.0.0/16", 24, Backend::HostGw).expect("valid")
    }
    fn v4(net: &NetworkConfig) -> Pool {
        net.pool(Family::V4).expect("an IPv4 pool")
    }
    fn n(s: &str) -> IpNet {
        s.parse().expect("literal")
    }
    fn ex(subnet: &str, node: &str, id: &str, rev: i64) -> Existing {
        Existing {
            subnet: n(subnet),
            record: Some(SubnetRecord {
                schema: 1,
                node: node.into(),
                node_id: id.into(),
                public_ip: "192.0.2.1".parse().expect("lit"),
                public_ip6: None,
                backend: Backend::HostGw,
                epoch: 1,
                backend_data: Default::default(),
            }),
            mod_revision: rev,
        }
    }
    fn decide_with(persisted: Option<&str>, existing: &[Existing], live: Option<&str>) -> Decision {
        let net = net();
        decide(&Inputs {
            pool: v4(&net),
            node_name: "n1",
            node_id: "id1",
            persisted: persisted.map(n),
            existing,
            live_identity: live,
        })
    }

    #[test]
    fn fresh_node_claims_first_free() {
        assert_eq!(decide_with(None, &[], None), Decision::Claim { subnet: n("10.244.0.0/24"), moved_from: None });
        let existing = [ex("10.244.0.0/24", "n2", "id2", 5)];
        assert_eq!(
            decide_with(None, &existing, None),
            Decision::Claim { subnet: n("10.244.1.0/24"), moved_from: None }
        );
    }

    #[test]
    fn record_with_own_identity_is_reused_even_without_state() {
        let existing = [ex("10.244.0.0/24", "n2", "id2", 5), ex("10.244.7.0/24", "n1", "id1", 9)];
        assert_eq!(
            decide_with(None, &existing, Some("id1")),
            Decision::Reuse { subnet: n("10.244.7.0/24"), mod_revision: 9 }
        );
        assert_eq!(
            decide_with(Some("10.244.7.0/24"), &existing, None),
            Decision::Reuse { subnet: n("10.244.7.0/24"), mod_revision: 9 }
        );
    }

    #[test]
    fn persisted_subnet_without_record_is_reclaimed() {
        let existing = [ex("10.244.0.0/24", "n2", "id2", 5)];
        assert_eq!(
            decide_with(Some("10.244.9.0/24"), &existing, None),
            Decision::Claim { subnet: n("10.244.9.0/24"), moved_from: None }
        );
    }

    #[test]
    fn persisted_subnet_taken_by_another_moves() {
        let existing = [ex("10.244.9.0/24", "n2", "id2", 5)];
        assert_eq!(
            decide_with(Some("10.244.9.0/24"), &existing, None),
            Decision::Claim { subnet: n("10.244.0.0/24"), moved_from: Some(n("10.244.9.0/24")) }
        );
    }

    #[test]
    fn same_name_other_identity_alive_refuses_dead_takes_over() {
        let existing = [ex("10.244.4.0/24", "n1", "other", 12)];
        match decide_with(None, &existing, Some("other")) {
            Decision::Refuse(msg) => assert!(msg.contains("held by another live machine"), "{msg}"),
            d => panic!("expected refusal, got {d:?}"),
        }
        assert_eq!(
            decide_with(None, &existing, None),
            Decision::TakeOver { subnet: n("10.244.4.0/24"), mod_revision: 12, previous_id: "other".into() }
        );
    }

    #[test]
    fn exhaustion_counts_malformed_records_as_taken() {
        let net = NetworkConfig::new("t", "10.244.0.0/26", 28, Backend::HostGw).expect("valid");
        let mut existing: Vec<Existing> = ["10.244.0.0/28", "10.244.0.16/28", "10.244.0.32/28"]
            .iter()
            .enumerate()
            .map(|(i, s)| ex(s, &format!("m{i}"), &format!("x{i}"), 1))
            .collect();
        existing.push(Existing { subnet: n("10.244.0.48/28"), record: None, mod_revision: 4 });
        let d = decide(&Inputs {
            pool: v4(&net),
            node_name: "n1",
            node_id: "id1",
            persisted: None,
            existing: &existing,
            live_identity: None,
        });
        assert_eq!(d, Decision::Exhausted { cidr: n("10.244.0.0/26"), subnet_len: 28, taken: 4 });
    }

    #[test]
    fn the_decision_is_the_same_for_an_ipv6_pool() {
        let pool = Pool { cidr: n("fd00:10:244::/56"), subnet_len: 64 };
        let existing = [ex("fd00:10:244::/64", "n2", "id2", 5), ex("10.244.1.0/24", "n3", "id3", 6)];
        let inputs = |persisted| Inputs {
            pool,
            node_name: "n1",
            node_id: "id1",
            persisted,
            existing: &existing,
            live_identity: None,
        };
        assert_eq!(decide(&inputs(None)), Decision::Claim { subnet: n("fd00:10:244:1::/64"), moved_from: None });
        assert_eq!(
            decide(&inputs(Some(n("fd00:10:244:7::/64")))),
            Decision::Claim { subnet: n("fd00:10:244:7::/64"), moved_from: None }
        );
    }

    #[test]
    fn persisted_subnet_outside_new_cidr_is_ignored() {
        assert_eq!(
            decide_with(Some("10.99.0.0/24"), &[], None),
            Decision::Claim { subnet: n("10.244.0.0/24"), moved_from: Some(n("10.99.0.0/24")) }
        );
    }

    #[test]
    fn the_decisions_of_both_families_become_one_set_of_writes() {
        let claim4 = Decision::Claim { subnet: n("10.244.1.0/24"), moved_from: None };
        let reuse6 = Decision::Reuse { subnet: n("fd00:10:244:3::/64"), mod_revision: 8 };
        let taken6 = Decision::TakeOver { subnet: n("fd00:10:244:4::/64"), mod_revision: 9, previous_id: "x".into() };
        assert_eq!(
            writes(&PerFamily::Dual(claim4.clone(), reuse6)),
            Ok(PerFamily::Dual(
                Write::Create(n("10.244.1.0/24")),
                Write::Replace { subnet: n("fd00:10:244:3::/64"), mod_revision: 8 }
            ))
        );
        assert_eq!(
            writes(&PerFamily::V6(taken6.clone())),
            Ok(PerFamily::V6(Write::Replace { subnet: n("fd00:10:244:4::/64"), mod_revision: 9 }))
        );
        assert_eq!(writes(&PerFamily::V4(claim4.clone())).map(|w| w.first().subnet()), Ok(n("10.244.1.0/24")));
        let exhausted6 = Decision::Exhausted { cidr: n("fd00:10:244::/63"), subnet_len: 64, taken: 2 };
        assert_eq!(
            writes(&PerFamily::Dual(claim4, exhausted6.clone())),
            Err(Blocked::Exhausted { cidr: n("fd00:10:244::/63"), subnet_len: 64, taken: 2 }),
            "the IPv4 subnet is not claimed alone when the IPv6 pool is full"
        );
        assert_eq!(
            writes(&PerFamily::Dual(
                Decision::Exhausted { cidr: n("10.244.0.0/24"), subnet_len: 24, taken: 1 },
                Decision::Refuse("held".into())
            )),
            Err(Blocked::Refused("held".into())),
            "a refusal wins over exhaustion"
        );
        assert_eq!(
            writes(&PerFamily::Dual(taken6, exhausted6))
                .map(|_| ())
                .map_err(|e| matches!(e, Blocked::Exhausted { .. })),
            Err(true)
        );
    }

    #[test]
    fn each_family_is_decided_over_its_own_records() {
        let net = NetworkConfig::with_pools(
            "t",
            Some(("10.244.0.0/16", 24)),
            Some(("fd00:10:244::/56", 64)),
            Backend::HostGw,
        )
        .expect("dual");
        // This node holds its IPv4 subnet already; its IPv6 one was never claimed (an upgrade to
        // dual-stack), and another node took the first IPv6 subnet.
        let v4_records = [ex("10.244.7.0/24", "n1", "id1", 9)];
        let v6_records = [ex("fd00:10:244::/64", "n2", "id2", 5)];
        let inputs = |family, existing| Inputs {
            pool: net.pool(family).expect("pool"),
            node_name: "n1",
            node_id: "id1",
            persisted: None,
            existing,
            live_identity: None,
        };
        assert_eq!(
            decide(&inputs(Family::V4, &v4_records)),
            Decision::Reuse { subnet: n("10.244.7.0/24"), mod_revision: 9 }
        );
        assert_eq!(
            decide(&inputs(Family::V6, &v6_records)),
            Decision::Claim { subnet: n("fd00:10:244:1::/64"), moved_from: None }
        );
    }
}

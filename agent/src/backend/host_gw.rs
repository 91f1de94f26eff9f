//! host-gw: plain kernel routes, `peer_subnet via peer_public_ip dev <underlay>`, for peers on
//! the same L2 segment. A peer that is not on-link would need a gateway host-gw cannot have: it
//! is refused with a reason, never half-installed. Publishes nothing beyond the record itself.

use super::{BuildContext, Driver, NodeView, Plan, Refused, Registration};
use crate::firewall::ForwardMode;
use crate::kernel::Kernel;
use crate::routes::{Route, RouteKind};
use crate::v4_adapter::{v4, v4_addr, NotIpv4};
use anyhow::Result;
use weft_config::peers::Peer;

pub const NAME: &str = "host-gw";

pub fn registration<K: Kernel>() -> Registration<K> {
    Registration { name: NAME, build: build::<K>, leftover_links: |_| Vec::new() }
}

fn build<K: Kernel>(_: &BuildContext) -> Result<Box<dyn Driver<K>>> {
    Ok(Box::new(HostGw))
}

pub struct HostGw;

/// Whether `peer`'s underlay address is on one of the node's connected prefixes (and is not
/// the node's own address).
pub fn on_link(peer: &Peer, node: &NodeView) -> bool {
    node.prefixes.iter().any(|n| n.contains(&peer.public_ip) && n.addr() != peer.public_ip)
}

/// `peer_subnet via peer_public_ip dev <underlay>`, as the routes layer takes it.
fn route(peer: &Peer, node: &NodeView) -> Result<Route, NotIpv4> {
    Ok(Route {
        dst: v4(peer.subnet)?,
        kind: RouteKind::Unicast,
        via: Some(v4_addr(peer.public_ip)?),
        oif: Some(node.underlay.index),
        src: None,
        metric: 0,
    })
}

impl<K: Kernel> Driver<K> for HostGw {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pod_mtu(&self, underlay_mtu: u32, bridge_mtu: Option<u32>) -> u32 {
        bridge_mtu.unwrap_or(underlay_mtu)
    }

    fn plan(&self, peers: &[&Peer], node: &NodeView) -> Plan {
        let mut plan = Plan::default();
        for p in peers {
            let refuse = |reason: String| Refused { node: p.node.clone(), subnet: p.subnet, reason };
            if !on_link(p, node) {
                plan.refused.push(refuse(format!(
                    "public IP {} is not on-link on {} (host-gw needs the peers on one L2 segment; use the quic backend across routers)",
                    p.public_ip, node.underlay.name
                )));
                continue;
            }
            match route(p, node) {
                Ok(r) => plan.routes.push(r),
                Err(e) => plan.refused.push(refuse(e.to_string())),
            }
        }
        plan
    }

    fn forward_mode(&self) -> ForwardMode {
        ForwardMode::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::{node, peer, via};
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn host_gw_routes_on_link_peers_and_refuses_others() {
        let u = node("172.30.0.11/24");
        let peers = [peer("n2", "10.244.2.0/24", "172.30.0.12"), peer("n3", "10.244.3.0/24", "172.30.1.13")];
        let plan = Driver::<FakeKernel>::plan(&HostGw, &peers.iter().collect::<Vec<_>>(), &u);
        let (routes, refused) = (plan.routes, plan.refused);
        assert_eq!(routes, vec![via("10.244.2.0/24", "172.30.0.12")]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].node, "n3");
        assert!(refused[0].reason.starts_with("public IP 172.30.1.13 is not on-link on eth0"), "{}", refused[0].reason);
    }

    #[test]
    fn an_ipv6_peer_is_refused_while_routes_are_ipv4_only() {
        let mut u = node("172.30.0.11/24");
        u.prefixes.push("2001:db8::11/64".parse().expect("literal"));
        let p = peer("n6", "fd00:10:244:6::/64", "2001:db8::16");
        assert!(on_link(&p, &u), "on-link is a question for either family");
        let plan = Driver::<FakeKernel>::plan(&HostGw, &[&p], &u);
        assert!(plan.routes.is_empty());
        assert_eq!(
            plan.refused[0].reason,
            "fd00:10:244:6::/64 is IPv6, but weft's routes, firewall and quic data path carry IPv4 only so far"
        );
    }

    #[test]
    fn the_own_address_is_not_a_peer_on_the_link() {
        let u = node("172.30.0.11/24");
        assert!(!on_link(&peer("n9", "10.244.9.0/24", "172.30.0.11"), &u));
        assert!(on_link(&peer("n2", "10.244.2.0/24", "172.30.0.12"), &u));
    }

    #[test]
    fn pod_mtu_is_the_underlay_unless_pinned() {
        assert_eq!(Driver::<FakeKernel>::pod_mtu(&HostGw, 1500, None), 1500);
        assert_eq!(Driver::<FakeKernel>::pod_mtu(&HostGw, 1500, Some(9000)), 9000, "bridge.mtu pins it, as before");
    }
}

//! host-gw: plain kernel routes, `peer_subnet via peer_public_ip dev <underlay>`, for peers on
//! the same L2 segment. A peer that is not on-link would need a gateway host-gw cannot have: it
//! is refused with a reason, never half-installed. Publishes nothing beyond the record itself.
//!
//! Both families alike: a peer's IPv6 subnet is routed via its IPv6 underlay address
//! (`public_ip6`), on-link when one of the underlay's IPv6 prefixes holds it; an underlay with
//! no IPv6 prefix refuses every IPv6 peer, saying so.

use super::{BuildContext, Driver, NodeView, Plan, Refused, Registration};
use crate::firewall::ForwardMode;
use crate::kernel::Kernel;
use crate::routes::{MixedFamily, Route, RouteKind};
use anyhow::Result;
use std::net::IpAddr;
use weft_config::peers::Peer;
use weft_config::subnet::Family;

pub const NAME: &str = "host-gw";

pub fn registration<K: Kernel>() -> Registration<K> {
    Registration { name: NAME, build: build::<K>, leftover_links: |_| Vec::new() }
}

fn build<K: Kernel>(ctx: &BuildContext) -> Result<Box<dyn Driver<K>>> {
    Ok(Box::new(HostGw { on_link_only: ctx.net.backend == weft_config::Backend::Auto }))
}

/// host-gw on its own takes every peer (and refuses those not on-link, saying why); as the
/// first driver of `auto` it takes only the on-link ones and leaves the rest to the
/// encapsulating driver.
pub struct HostGw {
    pub on_link_only: bool,
}

/// Whether `peer`'s underlay address is on one of the node's connected prefixes (and is not
/// the node's own address).
pub fn on_link(peer: &Peer, node: &NodeView) -> bool {
    let ip = peer.public_ip;
    node.prefixes.iter().any(|n| n.contains(&ip) && n.addr() != ip)
}

/// Why `peer` (not on-link) gets no route: an address outside the underlay's prefixes, or an
/// IPv6 subnet on an underlay without IPv6.
fn off_link_reason(peer: &Peer, node: &NodeView) -> String {
    let family = Family::of(peer.public_ip);
    let has_family = node.prefixes.iter().any(|n| Family::of_net(*n) == family && !is_link_local(n.addr()));
    if family == Family::V6 && !has_family {
        return format!(
            "public IPv6 {} is not on-link: {} has no IPv6 prefix (host-gw routes IPv6 subnets via the peers' IPv6 underlay addresses)",
            peer.public_ip, node.underlay.name
        );
    }
    let what = match family {
        Family::V4 => "public IP",
        Family::V6 => "public IPv6",
    };
    format!(
        "{what} {} is not on-link on {} (host-gw needs the peers on one L2 segment; use the quic backend across routers)",
        peer.public_ip, node.underlay.name
    )
}

/// An IPv6 link-local address (fe80::/10): every IPv6 interface has one; it says nothing about
/// the underlay's IPv6 network.
pub(super) fn is_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if a.is_unicast_link_local())
}

/// `peer_subnet via peer_public_ip dev <underlay>`; refused when the gateway is not of the
/// subnet's family (a plain route cannot take one).
fn route(peer: &Peer, node: &NodeView) -> Result<Route, MixedFamily> {
    let r = Route {
        dst: peer.subnet,
        kind: RouteKind::Unicast,
        via: Some(peer.public_ip),
        oif: Some(node.underlay.index),
        src: None,
        metric: 0,
        onlink: false,
    };
    r.check_family()?;
    Ok(r)
}

impl<K: Kernel> Driver<K> for HostGw {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pod_mtu(&self, underlay_mtu: u32, bridge_mtu: Option<u32>) -> u32 {
        bridge_mtu.unwrap_or(underlay_mtu)
    }

    fn accepts(&self, peer: &Peer, node: &NodeView) -> bool {
        !self.on_link_only || on_link(peer, node)
    }

    fn plan(&self, peers: &[&Peer], node: &NodeView) -> Plan {
        let mut plan = Plan::default();
        for p in peers {
            let refuse = |reason: String| Refused { node: p.node.clone(), subnet: p.subnet, reason };
            if !on_link(p, node) {
                plan.refused.push(refuse(off_link_reason(p, node)));
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
    use crate::backend::tests::{dual_node, net, node, peer, via, via6};
    use crate::kernel::fake::FakeKernel;

    const PLAIN: HostGw = HostGw { on_link_only: false };

    #[test]
    fn host_gw_routes_on_link_peers_and_refuses_others() {
        let u = node("172.30.0.11/24");
        let peers = [peer("n2", "10.244.2.0/24", "172.30.0.12"), peer("n3", "10.244.3.0/24", "172.30.1.13")];
        let plan = Driver::<FakeKernel>::plan(&PLAIN, &peers.iter().collect::<Vec<_>>(), &u);
        let (routes, refused) = (plan.routes, plan.refused);
        assert_eq!(routes, vec![via("10.244.2.0/24", "172.30.0.12")]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].node, "n3");
        assert!(refused[0].reason.starts_with("public IP 172.30.1.13 is not on-link on eth0"), "{}", refused[0].reason);
    }

    #[test]
    fn a_peer_is_routed_via_a_gateway_of_its_subnets_family_or_refused() {
        let mut u = node("172.30.0.11/24");
        u.prefixes.push("2001:db8::11/64".parse().expect("literal"));
        let p6 = peer("n6", "fd00:10:244:6::/64", "2001:db8::16");
        let mixed = peer("n7", "fd00:10:244:7::/64", "172.30.0.17");
        assert!(on_link(&p6, &u) && on_link(&mixed, &u), "on-link is a question for either family");
        let plan = Driver::<FakeKernel>::plan(&PLAIN, &[&p6, &mixed], &u);
        assert_eq!(plan.routes.len(), 1);
        let r = &plan.routes[0];
        assert_eq!(
            (r.dst.to_string(), r.via.map(|v| v.to_string())),
            ("fd00:10:244:6::/64".into(), Some("2001:db8::16".into()))
        );
        assert_eq!(plan.refused.len(), 1);
        assert_eq!(plan.refused[0].node, "n7");
        assert_eq!(
            plan.refused[0].reason,
            "route fd00:10:244:7::/64: gateway 172.30.0.17 is not IPv6 like the destination"
        );
    }

    #[test]
    fn a_dual_stack_peer_gets_a_route_per_family_via_its_address_of_that_family() {
        let u = dual_node("172.30.0.11/24", "fd00:172:30::11/64");
        let peers = [
            peer("n2", "10.244.2.0/24", "172.30.0.12"),
            peer("n2", "fd00:10:244:2::/64", "fd00:172:30::12"),
            peer("n3", "10.244.3.0/24", "172.30.0.13"),
            peer("n3", "fd00:10:244:3::/64", "fd00:172:30::13"),
        ];
        let plan = Driver::<FakeKernel>::plan(&PLAIN, &peers.iter().collect::<Vec<_>>(), &u);
        assert_eq!(plan.refused, []);
        assert_eq!(
            plan.routes,
            vec![
                via("10.244.2.0/24", "172.30.0.12"),
                via6("fd00:10:244:2::/64", "fd00:172:30::12"),
                via("10.244.3.0/24", "172.30.0.13"),
                via6("fd00:10:244:3::/64", "fd00:172:30::13"),
            ]
        );
        assert!(plan.routes.iter().all(|r| r.check_family().is_ok() && r.oif == Some(2)));
    }

    #[test]
    fn an_off_link_ipv6_peer_is_refused_and_its_ipv4_subnet_still_routed() {
        // The underlay's IPv6 prefix does not hold the peer's IPv6 address (another segment).
        let u = dual_node("172.30.0.11/24", "fd00:172:30::11/64");
        let peers = [peer("n2", "10.244.2.0/24", "172.30.0.12"), peer("n2", "fd00:10:244:2::/64", "fd00:172:30:1::12")];
        let plan = Driver::<FakeKernel>::plan(&PLAIN, &peers.iter().collect::<Vec<_>>(), &u);
        assert_eq!(plan.routes, vec![via("10.244.2.0/24", "172.30.0.12")]);
        assert_eq!(plan.refused.len(), 1);
        assert_eq!((plan.refused[0].node.as_str(), plan.refused[0].subnet), ("n2", net("fd00:10:244:2::/64")));
        assert_eq!(
            plan.refused[0].reason,
            "public IPv6 fd00:172:30:1::12 is not on-link on eth0 (host-gw needs the peers on one L2 segment; use the quic backend across routers)"
        );
    }

    #[test]
    fn an_underlay_without_ipv6_refuses_ipv6_peers_with_the_reason() {
        // Only a link-local IPv6 address: no IPv6 network to route peers' IPv6 subnets over.
        let mut u = dual_node("172.30.0.11/24", "fd00:172:30::11/64");
        u.prefixes.retain(|p| p.addr().is_ipv4() || p.to_string().starts_with("fe80"));
        u.underlay.public_ip6 = None;
        let peers = [peer("n2", "10.244.2.0/24", "172.30.0.12"), peer("n2", "fd00:10:244:2::/64", "fd00:172:30::12")];
        let plan = Driver::<FakeKernel>::plan(&PLAIN, &peers.iter().collect::<Vec<_>>(), &u);
        assert_eq!(plan.routes, vec![via("10.244.2.0/24", "172.30.0.12")]);
        assert_eq!(plan.refused.len(), 1);
        assert_eq!(
            plan.refused[0].reason,
            "public IPv6 fd00:172:30::12 is not on-link: eth0 has no IPv6 prefix (host-gw routes IPv6 subnets via the peers' IPv6 underlay addresses)"
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
        assert_eq!(Driver::<FakeKernel>::pod_mtu(&PLAIN, 1500, None), 1500);
        assert_eq!(Driver::<FakeKernel>::pod_mtu(&PLAIN, 1500, Some(9000)), 9000, "bridge.mtu pins it, as before");
    }
}

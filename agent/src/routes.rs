//! Route decisions, pure: which routes the peer set asks for, and what to change in the kernel
//! to get there. The netlink module applies the actions; nothing here touches the system.

use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use weft_config::peers::Peer;

/// Route protocol number marking the routes weft owns (`ip route show proto 213`).
/// Routes with any other protocol are never touched.
pub const WEFT_PROTO: u8 = 213;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Unicast,
    Blackhole,
}

/// One IPv4 route in the main table, as weft installs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: Ipv4Net,
    pub kind: RouteKind,
    pub via: Option<Ipv4Addr>,
    /// Output interface index (`None` for blackholes).
    pub oif: Option<u32>,
    pub src: Option<Ipv4Addr>,
    pub metric: u32,
}

/// What reconcile does to the kernel's route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Add(Route),
    /// A route to the same destination exists but differs: replace it in place (no gap).
    Replace {
        old: Route,
        new: Route,
    },
    Del(Route),
}

/// The underlay as the route planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub ifindex: u32,
    pub ifname: String,
    /// Connected prefixes of the underlay interface (address/len as configured on it).
    pub prefixes: Vec<Ipv4Net>,
}

/// A peer that gets no route, and why (reported in status and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unroutable {
    pub node: String,
    pub subnet: Ipv4Net,
    pub reason: String,
}

/// host-gw: `peer_subnet via peer_public_ip dev <underlay>` for every on-link peer.
/// A peer that is not on-link would need a gateway host-gw cannot have: it is refused, not
/// half-installed.
pub fn host_gw_routes<'a>(
    peers: impl IntoIterator<Item = &'a Peer>,
    underlay: &Underlay,
) -> (Vec<Route>, Vec<Unroutable>) {
    let mut routes = Vec::new();
    let mut refused = Vec::new();
    for p in peers {
        if underlay.prefixes.iter().any(|n| n.contains(&p.public_ip) && n.addr() != p.public_ip) {
            routes.push(Route {
                dst: p.subnet,
                kind: RouteKind::Unicast,
                via: Some(p.public_ip),
                oif: Some(underlay.ifindex),
                src: None,
                metric: 0,
            });
        } else {
            refused.push(Unroutable {
                node: p.node.clone(),
                subnet: p.subnet,
                reason: format!(
                    "public IP {} is not on-link on {} (host-gw needs the peers on one L2 segment; use the quic backend across routers)",
                    p.public_ip, underlay.ifname
                ),
            });
        }
    }
    (routes, refused)
}

/// Metric of the fail-closed blackhole for the cluster CIDR (quic): the lowest priority, so it
/// only catches pod traffic that has no other route (the tun is gone), instead of letting it
/// leave in plaintext through the default route.
pub const BLACKHOLE_METRIC: u32 = 4_000_000_000;

/// quic: `peer_subnet dev <tun> src <own gateway>` for every peer with a QUIC endpoint (the
/// source makes the node's own traffic pass the peer's source check), plus the blackhole.
/// Also returns what the tunnel needs to know about each routable peer.
pub fn quic_routes<'a>(
    peers: impl IntoIterator<Item = &'a Peer>,
    tun_index: u32,
    gateway: Ipv4Addr,
    cluster: Ipv4Net,
) -> (Vec<Route>, Vec<Unroutable>, Vec<crate::quic::PeerSpec>) {
    let mut routes = vec![Route {
        dst: cluster,
        kind: RouteKind::Blackhole,
        via: None,
        oif: None,
        src: None,
        metric: BLACKHOLE_METRIC,
    }];
    let mut refused = Vec::new();
    let mut specs = Vec::new();
    for p in peers {
        match p.quic_endpoint {
            Some(endpoint) => {
                routes.push(Route {
                    dst: p.subnet,
                    kind: RouteKind::Unicast,
                    via: None,
                    oif: Some(tun_index),
                    src: Some(gateway),
                    metric: 0,
                });
                specs.push(crate::quic::PeerSpec { node: p.node.clone(), subnet: p.subnet, endpoint, epoch: p.epoch });
            }
            None => refused.push(Unroutable {
                node: p.node.clone(),
                subnet: p.subnet,
                reason: "its record has no QUIC endpoint (is it running the quic backend?)".into(),
            }),
        }
    }
    (routes, refused, specs)
}

/// Actions that turn `current` (the weft-owned routes in the kernel) into `desired`.
/// Routes are keyed by (destination, kind): one weft route per destination and kind.
pub fn plan(desired: &[Route], current: &[Route]) -> Vec<Action> {
    let key = |r: &Route| (r.dst, r.kind);
    let want: BTreeMap<_, &Route> = desired.iter().map(|r| (key(r), r)).collect();
    let mut have: BTreeMap<_, Vec<&Route>> = BTreeMap::new();
    for r in current {
        have.entry(key(r)).or_default().push(r);
    }
    let mut actions = Vec::new();
    for (k, routes) in &have {
        match want.get(k) {
            None => actions.extend(routes.iter().map(|r| Action::Del((*r).clone()))),
            Some(w) => {
                // Keep one matching route; duplicates (different metric) go.
                let keep = routes.iter().position(|r| *r == *w);
                for (i, r) in routes.iter().enumerate() {
                    match keep {
                        Some(j) if i == j => {}
                        None if i == 0 && r.metric == w.metric => {
                            actions.push(Action::Replace { old: (*r).clone(), new: (*w).clone() })
                        }
                        _ => actions.push(Action::Del((*r).clone())),
                    }
                }
                if keep.is_none() && routes[0].metric != w.metric {
                    actions.push(Action::Add((*w).clone()));
                }
            }
        }
    }
    for (k, w) in &want {
        if !have.contains_key(k) {
            actions.push(Action::Add((*w).clone()));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_config::Backend;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("literal")
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("literal")
    }
    fn peer(node: &str, subnet: &str, public: &str) -> Peer {
        Peer {
            subnet: net(subnet),
            node: node.into(),
            node_id: format!("id-{node}"),
            public_ip: ip(public),
            backend: Backend::HostGw,
            epoch: 1,
            quic_endpoint: None,
            cert_fingerprint: None,
            mod_revision: 1,
        }
    }
    fn via(dst: &str, gw: &str) -> Route {
        Route { dst: net(dst), kind: RouteKind::Unicast, via: Some(ip(gw)), oif: Some(2), src: None, metric: 0 }
    }

    #[test]
    fn host_gw_routes_on_link_peers_and_refuses_others() {
        let u = Underlay { ifindex: 2, ifname: "eth0".into(), prefixes: vec![net("172.30.0.11/24")] };
        let peers = [peer("n2", "10.244.2.0/24", "172.30.0.12"), peer("n3", "10.244.3.0/24", "172.30.1.13")];
        let (routes, refused) = host_gw_routes(&peers, &u);
        assert_eq!(routes, vec![via("10.244.2.0/24", "172.30.0.12")]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].node, "n3");
        assert!(refused[0].reason.starts_with("public IP 172.30.1.13 is not on-link on eth0"), "{}", refused[0].reason);
    }

    #[test]
    fn plan_adds_missing_replaces_wrong_deletes_stale() {
        let desired = vec![via("10.244.2.0/24", "172.30.0.12"), via("10.244.3.0/24", "172.30.0.13")];
        let current = vec![via("10.244.3.0/24", "172.30.0.99"), via("10.244.9.0/24", "172.30.0.19")];
        let actions = plan(&desired, &current);
        assert_eq!(
            actions,
            vec![
                Action::Replace { old: via("10.244.3.0/24", "172.30.0.99"), new: via("10.244.3.0/24", "172.30.0.13") },
                Action::Del(via("10.244.9.0/24", "172.30.0.19")),
                Action::Add(via("10.244.2.0/24", "172.30.0.12")),
            ]
        );
    }

    #[test]
    fn plan_is_empty_when_in_sync_and_removes_duplicates() {
        let desired = vec![via("10.244.2.0/24", "172.30.0.12")];
        assert!(plan(&desired, &desired).is_empty());
        let mut dup = via("10.244.2.0/24", "172.30.0.12");
        dup.metric = 50;
        let actions = plan(&desired, &[dup.clone(), desired[0].clone()]);
        assert_eq!(actions, vec![Action::Del(dup.clone())]);
        // only a route with another metric present: add the right one, delete the other
        let actions = plan(&desired, &[dup.clone()]);
        assert_eq!(actions, vec![Action::Del(dup), Action::Add(desired[0].clone())]);
    }

    #[test]
    fn plan_keeps_blackhole_and_unicast_to_same_destination_apart() {
        let bh = Route {
            dst: net("10.244.0.0/16"),
            kind: RouteKind::Blackhole,
            via: None,
            oif: None,
            src: None,
            metric: 4_000_000_000,
        };
        let desired = vec![bh.clone()];
        assert!(plan(&desired, std::slice::from_ref(&bh)).is_empty());
        assert_eq!(plan(&[], std::slice::from_ref(&bh)), vec![Action::Del(bh)]);
    }
}

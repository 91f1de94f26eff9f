//! Route decisions, pure: the routes weft owns and what to change in the kernel to get from the
//! routes there to the ones the backends plan. The netlink module applies the actions; nothing
//! here touches the system. Routes of both address families live in one list: a route's family
//! is its destination's, and a route only ever matches or replaces one of its own family.

use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Route protocol number marking the routes weft owns (`ip route show proto 213`).
/// Routes with any other protocol are never touched.
pub const WEFT_PROTO: u8 = 213;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Unicast,
    Blackhole,
}

/// The address family of a route (the config crate's, shared by every layer).
pub use weft_config::subnet::Family;

/// One route in the main table (IPv4 or IPv6), as weft installs it. Its gateway and source, when
/// set, are of its destination's family ([`Route::check_family`]).
///
/// `metric` 0 is the family's default: IPv4 has a metric 0, IPv6 has none and the kernel gives
/// such a route 1024, which the kernel module lists back as 0.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNet,
    pub kind: RouteKind,
    pub via: Option<IpAddr>,
    /// Output interface index (`None` for blackholes).
    pub oif: Option<u32>,
    pub src: Option<IpAddr>,
    pub metric: u32,
    /// The gateway is on `oif`'s link whatever the device's addresses say (`onlink`): how the
    /// vxlan backend routes a peer subnet via the peer's VTEP address, which no local prefix
    /// covers.
    pub onlink: bool,
}

/// A route whose gateway or source is of another family than its destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {dst}: {what} {addr} is not {family} like the destination")]
pub struct MixedFamily {
    pub dst: IpNet,
    pub what: &'static str,
    pub addr: IpAddr,
    pub family: Family,
}

impl Route {
    pub fn family(&self) -> Family {
        Family::of_net(self.dst)
    }

    /// The gateway and the source are of the destination's family (the kernel module refuses
    /// to send anything else).
    pub fn check_family(&self) -> Result<(), MixedFamily> {
        let family = self.family();
        for (what, addr) in [("gateway", self.via), ("source", self.src)] {
            if let Some(addr) = addr.filter(|a| Family::of(*a) != family) {
                return Err(MixedFamily { dst: self.dst, what, addr, family });
            }
        }
        Ok(())
    }
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

/// Actions that turn `current` (the weft-owned routes in the kernel) into `desired`.
/// Routes are keyed by (destination, kind): one weft route per destination and kind. The
/// destination carries its family, so a route never matches, replaces or deduplicates one of the
/// other family, and every IPv4 route sorts before every IPv6 one.
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

    fn net(s: &str) -> IpNet {
        s.parse().expect("literal")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("literal")
    }
    fn blackhole(dst: &str) -> Route {
        Route { dst: net(dst), kind: RouteKind::Blackhole, via: None, oif: None, src: None, metric: 0, onlink: false }
    }
    fn via(dst: &str, gw: &str) -> Route {
        Route {
            dst: net(dst),
            kind: RouteKind::Unicast,
            via: Some(ip(gw)),
            oif: Some(2),
            src: None,
            metric: 0,
            onlink: false,
        }
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
            onlink: false,
        };
        let desired = vec![bh.clone()];
        assert!(plan(&desired, std::slice::from_ref(&bh)).is_empty());
        assert_eq!(plan(&[], std::slice::from_ref(&bh)), vec![Action::Del(bh)]);
    }

    #[test]
    fn plan_treats_ipv6_routes_like_ipv4_ones() {
        let desired = vec![via("fd00:2::/64", "fd00:ff::12"), via("fd00:3::/64", "fd00:ff::13")];
        let current = vec![via("fd00:3::/64", "fd00:ff::99"), via("fd00:9::/64", "fd00:ff::19")];
        assert_eq!(
            plan(&desired, &current),
            vec![
                Action::Replace { old: via("fd00:3::/64", "fd00:ff::99"), new: via("fd00:3::/64", "fd00:ff::13") },
                Action::Del(via("fd00:9::/64", "fd00:ff::19")),
                Action::Add(via("fd00:2::/64", "fd00:ff::12")),
            ]
        );
        assert!(plan(&desired, &desired).is_empty());
        let mut dup = via("fd00:2::/64", "fd00:ff::12");
        dup.metric = 50;
        assert_eq!(plan(&desired[..1], &[dup.clone(), desired[0].clone()]), vec![Action::Del(dup)]);
    }

    #[test]
    fn plan_of_a_mixed_set_never_crosses_families() {
        // Both families in one plan, ordered by key as for one family (IPv4 keys sort first).
        let desired = vec![
            via("fd00:2::/64", "fd00:ff::12"),
            via("10.244.2.0/24", "172.30.0.12"),
            via("10.244.3.0/24", "172.30.0.13"),
            via("fd00:3::/64", "fd00:ff::13"),
        ];
        let current = vec![
            via("fd00:3::/64", "fd00:ff::99"),
            via("10.244.2.0/24", "172.30.0.12"),
            via("fd00:9::/64", "fd00:ff::19"),
            via("10.244.3.0/24", "172.30.0.99"),
        ];
        assert_eq!(
            plan(&desired, &current),
            vec![
                Action::Replace { old: via("10.244.3.0/24", "172.30.0.99"), new: via("10.244.3.0/24", "172.30.0.13") },
                Action::Replace { old: via("fd00:3::/64", "fd00:ff::99"), new: via("fd00:3::/64", "fd00:ff::13") },
                Action::Del(via("fd00:9::/64", "fd00:ff::19")),
                Action::Add(via("fd00:2::/64", "fd00:ff::12")),
            ]
        );
        // Destinations that look alike across families are different keys: the default routes,
        // and an IPv4 subnet beside its IPv4-mapped IPv6 form.
        assert_eq!(
            plan(&[blackhole("0.0.0.0/0")], &[blackhole("::/0")]),
            vec![Action::Del(blackhole("::/0")), Action::Add(blackhole("0.0.0.0/0"))]
        );
        let mapped = via("::ffff:10.244.2.0/120", "fd00:ff::12");
        assert_eq!(
            plan(&[via("10.244.2.0/24", "172.30.0.12")], std::slice::from_ref(&mapped)),
            vec![Action::Del(mapped), Action::Add(via("10.244.2.0/24", "172.30.0.12"))]
        );
        // Losing every route of one family leaves the other untouched.
        let v4 = via("10.244.2.0/24", "172.30.0.12");
        let v6 = via("fd00:2::/64", "fd00:ff::12");
        assert_eq!(plan(std::slice::from_ref(&v4), &[v6.clone(), v4.clone()]), vec![Action::Del(v6)]);
    }

    #[test]
    fn a_route_names_its_family_and_refuses_a_gateway_or_source_of_the_other() {
        assert_eq!(via("10.244.2.0/24", "172.30.0.12").family(), Family::V4);
        assert_eq!(via("fd00:2::/64", "fe80::2").family(), Family::V6);
        assert_eq!(via("10.244.2.0/24", "172.30.0.12").check_family(), Ok(()));
        assert_eq!(via("fd00:2::/64", "fe80::2").check_family(), Ok(()));
        assert_eq!(blackhole("::/0").check_family(), Ok(()));
        let e = via("10.244.2.0/24", "fd00:ff::12").check_family().expect_err("v6 gateway on a v4 route");
        assert_eq!(e.to_string(), "route 10.244.2.0/24: gateway fd00:ff::12 is not IPv4 like the destination");
        let mut r = via("fd00:2::/64", "fe80::2");
        r.src = Some(ip("10.244.1.1"));
        let e = r.check_family().expect_err("v4 source on a v6 route");
        assert_eq!(e.to_string(), "route fd00:2::/64: source 10.244.1.1 is not IPv6 like the destination");
    }
}

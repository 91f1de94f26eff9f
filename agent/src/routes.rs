//! Route decisions, pure: the routes weft owns and what to change in the kernel to get from the
//! routes there to the ones the backends plan. The netlink module applies the actions; nothing
//! here touches the system.

use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

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

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("literal")
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("literal")
    }
    fn via(dst: &str, gw: &str) -> Route {
        Route { dst: net(dst), kind: RouteKind::Unicast, via: Some(ip(gw)), oif: Some(2), src: None, metric: 0 }
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

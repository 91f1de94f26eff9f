//! Neighbour and FDB entries, diffed the way routes are (`routes::plan`): a backend says which
//! entries it wants on its own devices, the kernel lists what is there with who owns it, and
//! this module, pure, says what to add, replace and delete. Nothing here touches the system.
//!
//! Ownership follows the kernel module ([`crate::kernel::Owner`]): weft's own entries are added,
//! replaced and deleted; an entry the kernel learned may be overwritten. The tables diffed here
//! are those of devices weft made itself, so another's static entry for a key weft wants (an
//! address it routes, a peer's MAC) is a wrong one, put there by hand: it is claimed (deleted
//! and weft's added). Another's entries for keys weft does not want stay.

use crate::kernel::{Fdb, Listed, Mac, Neighbour, Owner};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::IpAddr;

/// An entry of a per-device table: one entry per key on a device.
pub trait Entry: Clone + Eq + Debug {
    type Key: Ord + Clone + Debug;
    /// The device and what the table is indexed by (the IP of a neighbour, the MAC of an FDB
    /// entry).
    fn key(&self) -> (u32, Self::Key);
}

impl Entry for Neighbour {
    type Key = IpAddr;
    fn key(&self) -> (u32, IpAddr) {
        (self.ifindex, self.ip)
    }
}

impl Entry for Fdb {
    type Key = Mac;
    fn key(&self) -> (u32, Mac) {
        (self.ifindex, self.mac)
    }
}

/// One change to a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryAction<T> {
    Add(T),
    /// An entry for the key is there (weft's, or learned) and differs: replace it in place.
    Replace(T),
    /// Another's static entry holds the key: delete it and add weft's.
    Claim(T),
    /// A weft entry that no backend wants any more.
    Del(T),
}

/// Changes that turn `listed` (a device's table as the kernel lists it) into one holding every
/// `desired` entry and no weft entry beyond them. Additions and replacements come first, in key
/// order, then deletions.
pub fn plan<T: Entry>(desired: &[T], listed: &[Listed<T>]) -> Vec<EntryAction<T>> {
    let have: BTreeMap<_, &Listed<T>> = listed.iter().map(|l| (l.entry.key(), l)).collect();
    let want: BTreeMap<_, &T> = desired.iter().map(|d| (d.key(), d)).collect();
    let mut actions = Vec::new();
    for (key, d) in &want {
        match have.get(key) {
            None => actions.push(EntryAction::Add((*d).clone())),
            Some(l) if l.entry == **d && l.owner == Owner::Weft => {}
            Some(l) if l.owner == Owner::Other => actions.push(EntryAction::Claim((*d).clone())),
            Some(_) => actions.push(EntryAction::Replace((*d).clone())),
        }
    }
    for (key, l) in &have {
        if l.owner == Owner::Weft && !want.contains_key(key) {
            actions.push(EntryAction::Del(l.entry.clone()));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(b: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, b])
    }
    fn neigh(ip: &str, m: u8) -> Neighbour {
        Neighbour { ifindex: 7, ip: ip.parse().expect("literal"), mac: mac(m) }
    }
    fn listed<T>(entry: T, owner: Owner) -> Listed<T> {
        Listed { entry, owner }
    }

    #[test]
    fn missing_entries_are_added_wrong_ones_replaced_and_stale_ones_deleted() {
        let desired = [neigh("10.244.2.0", 2), neigh("10.244.3.0", 3), neigh("fd00:10:244:2::", 2)];
        let current = [
            listed(neigh("10.244.2.0", 2), Owner::Weft),
            listed(neigh("10.244.3.0", 9), Owner::Weft),
            listed(neigh("10.244.4.0", 4), Owner::Weft),
        ];
        assert_eq!(
            plan(&desired, &current),
            vec![
                EntryAction::Replace(neigh("10.244.3.0", 3)),
                EntryAction::Add(neigh("fd00:10:244:2::", 2)),
                EntryAction::Del(neigh("10.244.4.0", 4)),
            ]
        );
        let current: Vec<_> = desired.iter().map(|d| listed(d.clone(), Owner::Weft)).collect();
        assert!(plan(&desired, &current).is_empty(), "a table as wanted needs nothing");
    }

    #[test]
    fn learned_entries_are_overwritten_wrong_static_ones_claimed_and_others_left_alone() {
        let desired = [neigh("10.244.2.0", 2), neigh("10.244.3.0", 3), neigh("10.244.7.0", 7)];
        let current = [
            listed(neigh("10.244.2.0", 2), Owner::Learned),
            listed(neigh("10.244.3.0", 9), Owner::Other),
            listed(neigh("10.244.5.0", 5), Owner::Other),
            listed(neigh("10.244.6.0", 6), Owner::Learned),
            listed(neigh("10.244.7.0", 7), Owner::Other),
        ];
        assert_eq!(
            plan(&desired, &current),
            vec![
                EntryAction::Replace(neigh("10.244.2.0", 2)),
                EntryAction::Claim(neigh("10.244.3.0", 3)),
                EntryAction::Claim(neigh("10.244.7.0", 7))
            ],
            "an equal learned entry becomes weft's; another's wrong (or right) one for a wanted key is claimed, \
             another's for a key weft does not want stays"
        );
    }

    #[test]
    fn fdb_entries_are_keyed_by_mac_per_device() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("literal");
        let f = |ifindex, m, dst| Fdb { ifindex, mac: mac(m), dst: ip(dst) };
        let desired = [f(7, 2, "172.30.0.12"), f(8, 2, "fd00:172:30::12")];
        let current = [listed(f(7, 2, "172.30.0.99"), Owner::Weft), listed(f(8, 3, "fd00:172:30::13"), Owner::Weft)];
        assert_eq!(
            plan(&desired, &current),
            vec![
                EntryAction::Replace(f(7, 2, "172.30.0.12")),
                EntryAction::Add(f(8, 2, "fd00:172:30::12")),
                EntryAction::Del(f(8, 3, "fd00:172:30::13")),
            ]
        );
    }
}

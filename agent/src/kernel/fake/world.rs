//! The fake kernel's state: namespaces with their links, addresses, routes, neighbour and FDB
//! entries, the record of changes sent, and the rules the kernel applies to them.

use crate::kernel::{Fdb, Link, Listed, Mac, Neighbour, Vxlan, WgChange, WgDevice, WgKey};
use crate::routes::{Action, Route};
use anyhow::Result;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One change sent to the kernel, as the agent expressed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    AddNetns(String),
    RemoveNetns(String),
    AddBridge { name: String, mtu: u32 },
    SetLink { index: u32, mtu: Option<u32>, up: bool, controller: Option<u32> },
    Rename { index: u32, name: String },
    SetMac { index: u32, mac: Mac },
    AddVeth { name: String, peer: String, mtu: u32 },
    MoveToNetns { index: u32, netns: String },
    DelLink(u32),
    AddVxlan { name: String, mtu: u32, spec: Vxlan },
    AddWireguard { name: String, mtu: u32 },
    SetWireguard { index: u32, change: WgChange },
    AddAddress { index: u32, addr: IpNet },
    DelAddress { index: u32, addr: IpNet },
    Route(Action),
    ReplaceDefaultRoute { via: IpAddr, oif: u32 },
    AddNeighbour(Neighbour),
    ReplaceNeighbour(Neighbour),
    DelNeighbour { ifindex: u32, ip: IpAddr },
    AddFdb(Fdb),
    ReplaceFdb(Fdb),
    DelFdb { ifindex: u32, mac: Mac },
    ClaimNeighbour(Neighbour),
    ClaimFdb(Fdb),
}

/// A route in the fake's main table with its protocol number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRoute {
    pub route: Route,
    pub proto: u8,
}

pub(super) struct FakeLink {
    pub(super) link: Link,
    /// The other end of a veth (indexes are unique across the whole fake).
    pub(super) peer: Option<u32>,
}

#[derive(Default)]
pub(super) struct Ns {
    pub(super) links: BTreeMap<u32, FakeLink>,
    pub(super) addrs: Vec<(u32, IpNet)>,
    pub(super) routes: Vec<TableRoute>,
    pub(super) neighbours: Vec<Listed<Neighbour>>,
    pub(super) fdb: Vec<Listed<Fdb>>,
    /// The settings of each WireGuard device, by link index.
    pub(super) wg: BTreeMap<u32, FakeWg>,
}

/// A fake WireGuard device: its private key (the public one is derived) and what it reports.
#[derive(Default)]
pub(super) struct FakeWg {
    pub(super) private_key: Option<WgKey>,
    pub(super) dev: WgDevice,
}

pub(super) type Matcher = Box<dyn Fn(&Call) -> bool + Send>;

pub(super) struct World {
    pub(super) netns: BTreeMap<String, Ns>,
    pub(super) next_index: u32,
    pub(super) calls: Vec<(String, Call)>,
    pub(super) faults: Vec<(Matcher, i32)>,
    pub(super) wireguard: bool,
}

pub(super) fn os_err(errno: i32, what: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(std::io::Error::from_raw_os_error(errno)).context(what.into())
}

pub(super) fn lo() -> FakeLink {
    let link = Link {
        index: 1,
        name: "lo".into(),
        mtu: 65536,
        up: true,
        kind: None,
        controller: None,
        mac: None,
        vxlan: None,
    };
    FakeLink { link, peer: None }
}

pub(super) fn new_ns() -> Ns {
    let mut ns = Ns::default();
    ns.links.insert(1, lo());
    ns
}

impl Ns {
    pub(super) fn by_name(&self, name: &str) -> Option<&Link> {
        self.links.values().map(|l| &l.link).find(|l| l.name == name)
    }
    pub(super) fn get(&self, index: u32, what: &str) -> Result<&FakeLink> {
        self.links.get(&index).ok_or_else(|| os_err(libc::ENODEV, format!("{what}: no link #{index}")))
    }
    pub(super) fn get_mut(&mut self, index: u32, what: &str) -> Result<&mut FakeLink> {
        self.links.get_mut(&index).ok_or_else(|| os_err(libc::ENODEV, format!("{what}: no link #{index}")))
    }
    pub(super) fn name_free(&self, name: &str, what: &str) -> Result<()> {
        if name.is_empty() || name.len() > 15 {
            return Err(os_err(libc::EINVAL, format!("{what}: invalid interface name {name:?}")));
        }
        match self.by_name(name) {
            Some(_) => Err(os_err(libc::EEXIST, format!("{what}: {name} exists"))),
            None => Ok(()),
        }
    }
    /// Everything that hangs off a link goes with it (or with its move elsewhere).
    pub(super) fn forget(&mut self, index: u32) {
        self.addrs.retain(|(i, _)| *i != index);
        self.routes.retain(|r| r.route.oif != Some(index));
        self.neighbours.retain(|n| n.entry.ifindex != index);
        self.fdb.retain(|f| f.entry.ifindex != index);
        self.wg.remove(&index);
        for l in self.links.values_mut() {
            if l.link.controller == Some(index) {
                l.link.controller = None;
            }
        }
    }
    pub(super) fn remove_link(&mut self, index: u32) -> Option<FakeLink> {
        let l = self.links.remove(&index)?;
        self.forget(index);
        Some(l)
    }
}

impl World {
    pub(super) fn ns(&self, name: &str) -> Result<&Ns> {
        self.netns.get(name).ok_or_else(|| os_err(libc::ENOENT, format!("network namespace {name} does not exist")))
    }
    pub(super) fn ns_mut(&mut self, name: &str) -> Result<&mut Ns> {
        self.netns.get_mut(name).ok_or_else(|| os_err(libc::ENOENT, format!("network namespace {name} does not exist")))
    }
    /// Records a change as sent; an injected fault for it makes it fail.
    pub(super) fn send(&mut self, ns: &str, call: Call) -> Result<()> {
        let fault = self.faults.iter().position(|(m, _)| m(&call));
        let what = format!("{call:?}");
        self.calls.push((ns.to_string(), call));
        match fault {
            Some(i) => {
                let (_, errno) = self.faults.remove(i);
                Err(os_err(errno, format!("{what} (injected)")))
            }
            None => Ok(()),
        }
    }
    pub(super) fn alloc(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index
    }
    pub(super) fn new_link(&mut self, name: &str, mtu: u32, kind: &str) -> Link {
        let index = self.alloc();
        let b = index.to_be_bytes();
        Link {
            index,
            name: name.to_string(),
            mtu,
            up: false,
            kind: Some(kind.to_string()),
            controller: None,
            mac: Some(Mac([0x02, 0, b[0], b[1], b[2], b[3]])),
            vxlan: None,
        }
    }
    /// Deletes a link; a veth's peer goes too, wherever it is.
    pub(super) fn delete_link(&mut self, ns: &str, index: u32) -> Result<()> {
        let Some(gone) = self.ns_mut(ns)?.remove_link(index) else { return Ok(()) };
        if let Some(peer) = gone.peer {
            for n in self.netns.values_mut() {
                if n.links.get(&peer).is_some_and(|l| l.peer == Some(index)) {
                    n.remove_link(peer);
                }
            }
        }
        Ok(())
    }
}

/// The kernel's key for a route in one table: destination (of one family), TOS (always 0 here),
/// metric.
pub(super) fn same_key(a: &Route, b: &Route) -> bool {
    a.dst == b.dst && a.metric == b.metric
}

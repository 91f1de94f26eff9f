//! An in-memory [`Kernel`]: a model of network namespaces with their links, addresses, routes,
//! neighbour and FDB entries that applies each call as the kernel would (the same `EEXIST`,
//! `ENOENT`, `ENODEV` failures, route replace, veth peers dying together, ownership marks kept)
//! and records, in order, every change a real kernel would have been sent. Tests drive code
//! that is generic over [`Kernel`] against it and assert "this setup sends these changes".

use super::wireguard::missing_module_message;
use super::{Fdb, Kernel, Link, Listed, Mac, Neighbour, NotOurs, Owner, Vxlan, WgChange, WgDevice, WEFT_PROTO};
use crate::routes::{Action, Family, Route, RouteKind};
use anyhow::Result;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

mod world;
use world::{new_ns, os_err, same_key, FakeLink, World};
pub use world::{Call, TableRoute};

/// Name of the namespace a new [`FakeKernel`] starts in (the host's).
pub const ROOT: &str = "(root)";
/// Route protocol of the pod default route (`RTPROT_BOOT`, what `ip route` uses).
pub const BOOT_PROTO: u8 = 3;

/// A handle on one namespace of a shared in-memory kernel. Clones share the kernel.
#[derive(Clone)]
pub struct FakeKernel {
    world: Arc<Mutex<World>>,
    ns: String,
}

impl Default for FakeKernel {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeKernel {
    /// An empty kernel: one namespace ([`ROOT`]) with only `lo`, WireGuard available.
    pub fn new() -> Self {
        let world = World {
            netns: BTreeMap::from([(ROOT.to_string(), new_ns())]),
            next_index: 1,
            calls: Vec::new(),
            faults: Vec::new(),
            wireguard: true,
        };
        Self { world: Arc::new(Mutex::new(world)), ns: ROOT.to_string() }
    }

    fn w(&self) -> MutexGuard<'_, World> {
        // A panic while holding the lock is already a failed test; keep going with its state.
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The namespace this handle is bound to.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// Models a kernel without the WireGuard module.
    pub fn without_wireguard(self) -> Self {
        self.w().wireguard = false;
        self
    }

    /// Every change sent so far, in order, with the namespace it went to.
    pub fn calls(&self) -> Vec<(String, Call)> {
        self.w().calls.clone()
    }

    /// The changes sent so far, forgetting them.
    pub fn take_calls(&self) -> Vec<(String, Call)> {
        std::mem::take(&mut self.w().calls)
    }

    /// Makes the next change that `matches` fail with `errno` (after it is recorded).
    pub fn fail_next(&self, matches: impl Fn(&Call) -> bool + Send + 'static, errno: i32) {
        self.w().faults.push((Box::new(matches), errno));
    }

    /// Names of the namespaces that exist.
    pub fn namespaces(&self) -> Vec<String> {
        self.w().netns.keys().cloned().collect()
    }

    /// Every link of this namespace, by index.
    pub fn links(&self) -> Vec<Link> {
        self.w().ns(&self.ns).map(|n| n.links.values().map(|l| l.link.clone()).collect()).unwrap_or_default()
    }

    /// The whole main table of this namespace, weft's and others' routes.
    pub fn routes(&self) -> Vec<TableRoute> {
        self.w().ns(&self.ns).map(|n| n.routes.clone()).unwrap_or_default()
    }

    /// Test setup, not recorded: a device that is up (e.g. the underlay `eth0`). Returns its index.
    pub fn seed_link(&self, name: &str, kind: &str, mtu: u32) -> u32 {
        let mut w = self.w();
        let mut link = w.new_link(name, mtu, kind);
        link.up = true;
        let index = link.index;
        if let Some(ns) = w.netns.get_mut(&self.ns) {
            ns.links.insert(index, FakeLink { link, peer: None });
        }
        index
    }

    /// Test setup, not recorded: an address on a link.
    pub fn seed_address(&self, index: u32, addr: IpNet) {
        if let Some(ns) = self.w().netns.get_mut(&self.ns) {
            ns.addrs.push((index, addr));
        }
    }

    /// Test setup, not recorded: a route with any protocol (another daemon's, the kernel's).
    pub fn seed_route(&self, route: Route, proto: u8) {
        if let Some(ns) = self.w().netns.get_mut(&self.ns) {
            ns.routes.push(TableRoute { route, proto });
        }
    }

    /// Test setup, not recorded: a neighbour entry with any owner.
    pub fn seed_neighbour(&self, entry: Neighbour, owner: Owner) {
        if let Some(ns) = self.w().netns.get_mut(&self.ns) {
            ns.neighbours.push(Listed { entry, owner });
        }
    }

    /// Test setup, not recorded: an FDB entry with any owner.
    pub fn seed_fdb(&self, entry: Fdb, owner: Owner) {
        if let Some(ns) = self.w().netns.get_mut(&self.ns) {
            ns.fdb.push(Listed { entry, owner });
        }
    }

    fn write_neighbour(&self, n: &Neighbour, replace: bool) -> Result<()> {
        let mut w = self.w();
        let call = if replace { Call::ReplaceNeighbour(n.clone()) } else { Call::AddNeighbour(n.clone()) };
        let what = format!("neighbour {} on link #{}", n.ip, n.ifindex);
        let ns = w.ns(&self.ns)?;
        let existing = ns.neighbours.iter().position(|l| l.entry.ifindex == n.ifindex && l.entry.ip == n.ip);
        if let Some(i) = existing.filter(|_| replace) {
            if ns.neighbours[i].owner == Owner::Other {
                return Err(NotOurs { what, owner: Owner::Other }.into());
            }
        }
        w.send(&self.ns, call)?;
        let ns = w.ns_mut(&self.ns)?;
        ns.get(n.ifindex, &what)?;
        let listed = Listed { entry: n.clone(), owner: Owner::Weft };
        match existing {
            Some(_) if !replace => Err(os_err(libc::EEXIST, format!("adding {what}: exists"))),
            Some(i) => {
                ns.neighbours[i] = listed;
                Ok(())
            }
            None => {
                ns.neighbours.push(listed);
                Ok(())
            }
        }
    }

    fn write_fdb(&self, f: &Fdb, replace: bool) -> Result<()> {
        let mut w = self.w();
        let call = if replace { Call::ReplaceFdb(f.clone()) } else { Call::AddFdb(f.clone()) };
        let what = format!("fdb entry {} on link #{}", f.mac, f.ifindex);
        let ns = w.ns(&self.ns)?;
        let existing = ns.fdb.iter().position(|l| l.entry.ifindex == f.ifindex && l.entry.mac == f.mac);
        if let Some(i) = existing.filter(|_| replace) {
            if ns.fdb[i].owner == Owner::Other {
                return Err(NotOurs { what, owner: Owner::Other }.into());
            }
        }
        w.send(&self.ns, call)?;
        let ns = w.ns_mut(&self.ns)?;
        if ns.get(f.ifindex, &what)?.link.kind.as_deref() != Some("vxlan") {
            return Err(os_err(libc::EOPNOTSUPP, format!("{what}: remote FDB entries need a vxlan device")));
        }
        let listed = Listed { entry: f.clone(), owner: Owner::Weft };
        match existing {
            Some(_) if !replace => Err(os_err(libc::EEXIST, format!("adding {what}: exists"))),
            Some(i) => {
                ns.fdb[i] = listed;
                Ok(())
            }
            None => {
                ns.fdb.push(listed);
                Ok(())
            }
        }
    }
}

impl Kernel for FakeKernel {
    fn ensure_netns(&self, name: &str) -> Result<bool> {
        let mut w = self.w();
        if w.netns.contains_key(name) {
            return Ok(false);
        }
        w.send(&self.ns, Call::AddNetns(name.to_string()))?;
        w.netns.insert(name.to_string(), new_ns());
        Ok(true)
    }

    fn remove_netns(&self, name: &str) -> Result<()> {
        let mut w = self.w();
        let Some(ns) = w.netns.get(name) else { return Ok(()) };
        let indexes: Vec<u32> = ns.links.keys().copied().filter(|i| *i != 1).collect();
        w.send(&self.ns, Call::RemoveNetns(name.to_string()))?;
        for i in indexes {
            w.delete_link(name, i)?;
        }
        w.netns.remove(name);
        Ok(())
    }

    fn in_netns(&self, name: &str) -> Result<Self> {
        self.w().ns(name)?;
        Ok(Self { world: self.world.clone(), ns: name.to_string() })
    }

    async fn link(&self, name: &str) -> Result<Option<Link>> {
        Ok(self.w().ns(&self.ns)?.by_name(name).cloned())
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        Ok(self.w().ns(&self.ns)?.links.get(&index).map(|l| l.link.clone()))
    }

    async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32> {
        let mut w = self.w();
        let link = match w.ns(&self.ns)?.by_name(name).cloned() {
            Some(l) => l,
            None => {
                w.send(&self.ns, Call::AddBridge { name: name.to_string(), mtu })?;
                w.ns(&self.ns)?.name_free(name, "creating bridge")?;
                let link = w.new_link(name, mtu, "bridge");
                w.ns_mut(&self.ns)?.links.insert(link.index, FakeLink { link: link.clone(), peer: None });
                link
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            anyhow::bail!("{name} exists but is a {} device, not a bridge", link.kind.as_deref().unwrap_or("plain"));
        }
        if !link.up || link.mtu != mtu {
            w.send(&self.ns, Call::SetLink { index: link.index, mtu: Some(mtu), up: true, controller: None })?;
            let l = &mut w.ns_mut(&self.ns)?.get_mut(link.index, "setting bridge")?.link;
            l.mtu = mtu;
            l.up = true;
        }
        Ok(link.index)
    }

    async fn set_link(&self, index: u32, mtu: Option<u32>, up: bool, controller: Option<u32>) -> Result<()> {
        let mut w = self.w();
        w.send(&self.ns, Call::SetLink { index, mtu, up, controller })?;
        let ns = w.ns_mut(&self.ns)?;
        ns.get(index, "setting link")?;
        if let Some(c) = controller {
            if ns.get(c, "setting the controller")?.link.kind.as_deref() != Some("bridge") {
                return Err(os_err(libc::EOPNOTSUPP, format!("link #{c} cannot be a controller")));
            }
        }
        let l = &mut ns.get_mut(index, "setting link")?.link;
        if let Some(m) = mtu {
            l.mtu = m;
        }
        if controller.is_some() {
            l.controller = controller;
        }
        l.up = up;
        Ok(())
    }

    async fn set_mac(&self, index: u32, mac: Mac) -> Result<()> {
        let mut w = self.w();
        w.send(&self.ns, Call::SetMac { index, mac })?;
        w.ns_mut(&self.ns)?.get_mut(index, "setting the MAC")?.link.mac = Some(mac);
        Ok(())
    }

    async fn rename(&self, index: u32, name: &str) -> Result<()> {
        let mut w = self.w();
        w.send(&self.ns, Call::Rename { index, name: name.to_string() })?;
        let ns = w.ns_mut(&self.ns)?;
        ns.get(index, "renaming")?;
        ns.name_free(name, "renaming")?;
        ns.get_mut(index, "renaming")?.link.name = name.to_string();
        Ok(())
    }

    async fn add_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<()> {
        let mut w = self.w();
        w.send(&self.ns, Call::AddVeth { name: name.to_string(), peer: peer.to_string(), mtu })?;
        let ns = w.ns(&self.ns)?;
        ns.name_free(name, "creating veth")?;
        ns.name_free(peer, "creating veth")?;
        if name == peer {
            return Err(os_err(libc::EEXIST, format!("creating veth: both ends are {name}")));
        }
        let a = w.new_link(name, mtu, "veth");
        let b = w.new_link(peer, mtu, "veth");
        let (ia, ib) = (a.index, b.index);
        let ns = w.ns_mut(&self.ns)?;
        ns.links.insert(ia, FakeLink { link: a, peer: Some(ib) });
        ns.links.insert(ib, FakeLink { link: b, peer: Some(ia) });
        Ok(())
    }

    async fn move_to_netns(&self, index: u32, netns: &str) -> Result<()> {
        let mut w = self.w();
        w.send(&self.ns, Call::MoveToNetns { index, netns: netns.to_string() })?;
        let name = w.ns(&self.ns)?.get(index, "moving link")?.link.name.clone();
        w.ns(netns)?.name_free(&name, &format!("moving {name} into {netns}"))?;
        let Some(mut l) = w.ns_mut(&self.ns)?.remove_link(index) else {
            return Err(os_err(libc::ENODEV, format!("moving link #{index}")));
        };
        l.link.up = false;
        l.link.controller = None;
        w.ns_mut(netns)?.links.insert(index, l);
        Ok(())
    }

    async fn del_link(&self, index: u32) -> Result<()> {
        let mut w = self.w();
        w.send(&self.ns, Call::DelLink(index))?;
        w.delete_link(&self.ns, index)
    }

    async fn add_vxlan(&self, name: &str, mtu: u32, spec: &Vxlan) -> Result<u32> {
        let mut w = self.w();
        w.send(&self.ns, Call::AddVxlan { name: name.to_string(), mtu, spec: spec.clone() })?;
        let ns = w.ns(&self.ns)?;
        ns.name_free(name, "creating vxlan device")?;
        if spec.vni >= 1 << 24 {
            return Err(os_err(libc::ERANGE, format!("creating {name}: vni {} out of range", spec.vni)));
        }
        if let Some(u) = spec.underlay {
            ns.get(u, "creating vxlan device")?;
        }
        // The kernel allows one device per VNI, port and underlay family (an IPv4 and an IPv6
        // device may share both numbers).
        let v6 = |v: &Vxlan| matches!(v.local, Some(IpAddr::V6(_)));
        let taken = |v: &Vxlan| v.vni == spec.vni && v.port == spec.port && v6(v) == v6(spec);
        if ns.links.values().filter_map(|l| l.link.vxlan.as_ref()).any(taken) {
            return Err(os_err(libc::EEXIST, format!("creating {name}: a vxlan device with vni {} exists", spec.vni)));
        }
        let mut link = w.new_link(name, mtu, "vxlan");
        link.vxlan = Some(spec.clone());
        let index = link.index;
        w.ns_mut(&self.ns)?.links.insert(index, FakeLink { link, peer: None });
        Ok(index)
    }

    async fn add_wireguard(&self, name: &str, mtu: u32) -> Result<u32> {
        let mut w = self.w();
        w.send(&self.ns, Call::AddWireguard { name: name.to_string(), mtu })?;
        if !w.wireguard {
            return Err(os_err(
                libc::EOPNOTSUPP,
                format!(
                "creating wireguard device {name}: this kernel has no WireGuard (is the wireguard module available?)"
            ),
            ));
        }
        w.ns(&self.ns)?.name_free(name, "creating wireguard device")?;
        let mut link = w.new_link(name, mtu, "wireguard");
        link.mac = None;
        let index = link.index;
        let ns = w.ns_mut(&self.ns)?;
        ns.links.insert(index, FakeLink { link, peer: None });
        ns.wg.insert(index, Default::default());
        Ok(index)
    }

    async fn wireguard_available(&self) -> Result<()> {
        if self.w().wireguard {
            Ok(())
        } else {
            Err(anyhow::anyhow!(missing_module_message()))
        }
    }

    async fn wireguard(&self, index: u32) -> Result<WgDevice> {
        let w = self.w();
        let ns = w.ns(&self.ns)?;
        ns.get(index, "reading wireguard device")?;
        match ns.wg.get(&index) {
            Some(wg) => Ok(wg.dev.clone()),
            None => Err(os_err(libc::EOPNOTSUPP, format!("reading wireguard device: link #{index} is not one"))),
        }
    }

    /// As the kernel: a peer set again keeps its place with new endpoint, keepalive and
    /// allowed IPs; an allowed IP belongs to one peer only (set on one, it leaves the others);
    /// removing an absent peer is fine.
    async fn set_wireguard(&self, index: u32, change: &WgChange) -> Result<()> {
        let mut w = self.w();
        w.send(&self.ns, Call::SetWireguard { index, change: change.clone() })?;
        let ns = w.ns_mut(&self.ns)?;
        ns.get(index, "configuring wireguard device")?;
        let Some(wg) = ns.wg.get_mut(&index) else {
            return Err(os_err(libc::EOPNOTSUPP, format!("configuring wireguard device: link #{index} is not one")));
        };
        match change {
            WgChange::Device { private_key, listen_port } => {
                wg.private_key = Some(*private_key);
                let secret = x25519_dalek::StaticSecret::from(*private_key);
                wg.dev.public_key = Some(x25519_dalek::PublicKey::from(&secret).to_bytes());
                wg.dev.listen_port = *listen_port;
            }
            WgChange::SetPeer(p) => {
                for other in wg.dev.peers.iter_mut().filter(|o| o.public_key != p.public_key) {
                    other.allowed_ips.retain(|ip| !p.allowed_ips.contains(ip));
                }
                match wg.dev.peers.iter_mut().find(|o| o.public_key == p.public_key) {
                    Some(o) => *o = p.clone(),
                    None => wg.dev.peers.push(p.clone()),
                }
            }
            WgChange::RemovePeer(key) => wg.dev.peers.retain(|o| o.public_key != *key),
        }
        Ok(())
    }

    async fn addrs(&self, index: u32) -> Result<Vec<IpNet>> {
        let w = self.w();
        Ok(w.ns(&self.ns)?.addrs.iter().filter(|(i, _)| *i == index).map(|(_, a)| *a).collect())
    }

    async fn add_addr(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut w = self.w();
        w.send(&self.ns, Call::AddAddress { index, addr })?;
        let ns = w.ns_mut(&self.ns)?;
        ns.get(index, &format!("adding {addr}"))?;
        if !ns.addrs.contains(&(index, addr)) {
            ns.addrs.push((index, addr));
        }
        Ok(())
    }

    async fn del_addr(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut w = self.w();
        if !w.ns(&self.ns)?.addrs.contains(&(index, addr)) {
            return Ok(());
        }
        w.send(&self.ns, Call::DelAddress { index, addr })?;
        w.ns_mut(&self.ns)?.addrs.retain(|a| *a != (index, addr));
        Ok(())
    }

    async fn weft_routes(&self) -> Result<Vec<Route>> {
        let w = self.w();
        Ok(w.ns(&self.ns)?.routes.iter().filter(|r| r.proto == WEFT_PROTO).map(|r| r.route.clone()).collect())
    }

    async fn apply(&self, action: &Action) -> Result<()> {
        let (Action::Add(r) | Action::Replace { new: r, .. } | Action::Del(r)) = action;
        // Refused before anything is sent, as the real implementation does.
        r.check_family()?;
        let mut w = self.w();
        w.send(&self.ns, Call::Route(action.clone()))?;
        let ns = w.ns_mut(&self.ns)?;
        match action {
            Action::Add(r) | Action::Replace { new: r, .. } => {
                if let Some(oif) = r.oif {
                    ns.get(oif, &format!("route {}", r.dst))?;
                }
                let new = TableRoute { route: r.clone(), proto: WEFT_PROTO };
                // An add that finds the key taken replaces it, as the real implementation does.
                match ns.routes.iter().position(|t| same_key(&t.route, r)) {
                    Some(i) => ns.routes[i] = new,
                    None => ns.routes.push(new),
                }
            }
            Action::Del(r) => {
                // The kernel deletes only a route matching every attribute given, the
                // protocol included; nothing matching (ESRCH) is fine.
                if let Some(i) = ns.routes.iter().position(|t| t.route == *r && t.proto == WEFT_PROTO) {
                    ns.routes.remove(i);
                }
            }
        }
        Ok(())
    }

    async fn default_route_oif(&self, family: Family) -> Result<Option<u32>> {
        let w = self.w();
        Ok(w.ns(&self.ns)?
            .routes
            .iter()
            .filter(|t| t.route.family() == family)
            .filter(|t| t.route.dst.prefix_len() == 0 && t.route.kind == RouteKind::Unicast)
            .find_map(|t| t.route.oif))
    }

    async fn replace_default_route(&self, via: IpAddr, oif: u32) -> Result<()> {
        let mut w = self.w();
        w.send(&self.ns, Call::ReplaceDefaultRoute { via, oif })?;
        let ns = w.ns_mut(&self.ns)?;
        let what = format!("setting default route via {via}");
        if !ns.get(oif, &what)?.link.up {
            return Err(os_err(libc::ENETDOWN, format!("{what}: link #{oif} is down")));
        }
        // An IPv6 link-local gateway is on-link on any device (the kernel gives every IPv6
        // device a link-local address, which the fake does not model).
        let link_local = matches!(via, IpAddr::V6(v6) if v6.is_unicast_link_local());
        if !link_local && !ns.addrs.iter().any(|(i, a)| *i == oif && a.contains(&via)) {
            return Err(os_err(libc::ENETUNREACH, format!("{what}: gateway not on-link on #{oif}")));
        }
        let dst = match via {
            IpAddr::V4(_) => IpNet::V4(Ipv4Net::default()),
            IpAddr::V6(_) => IpNet::V6(Ipv6Net::default()),
        };
        let route = Route {
            dst,
            kind: RouteKind::Unicast,
            via: Some(via),
            oif: Some(oif),
            src: None,
            metric: 0,
            onlink: false,
        };
        let new = TableRoute { route, proto: BOOT_PROTO };
        match ns.routes.iter().position(|t| same_key(&t.route, &new.route)) {
            Some(i) => ns.routes[i] = new,
            None => ns.routes.push(new),
        }
        Ok(())
    }

    async fn neighbours(&self, ifindex: u32) -> Result<Vec<Listed<Neighbour>>> {
        let w = self.w();
        Ok(w.ns(&self.ns)?.neighbours.iter().filter(|l| l.entry.ifindex == ifindex).cloned().collect())
    }

    async fn add_neighbour(&self, n: &Neighbour) -> Result<()> {
        self.write_neighbour(n, false)
    }

    async fn replace_neighbour(&self, n: &Neighbour) -> Result<()> {
        self.write_neighbour(n, true)
    }

    async fn del_neighbour(&self, ifindex: u32, ip: IpAddr) -> Result<()> {
        let mut w = self.w();
        let what = format!("neighbour {ip} on link #{ifindex}");
        let ns = w.ns(&self.ns)?;
        let Some(i) = ns.neighbours.iter().position(|l| l.entry.ifindex == ifindex && l.entry.ip == ip) else {
            return Err(os_err(libc::ENOENT, what));
        };
        if ns.neighbours[i].owner != Owner::Weft {
            return Err(NotOurs { what, owner: ns.neighbours[i].owner }.into());
        }
        w.send(&self.ns, Call::DelNeighbour { ifindex, ip })?;
        w.ns_mut(&self.ns)?.neighbours.remove(i);
        Ok(())
    }

    async fn claim_neighbour(&self, n: &Neighbour) -> Result<()> {
        let mut w = self.w();
        w.send(&self.ns, Call::ClaimNeighbour(n.clone()))?;
        let ns = w.ns_mut(&self.ns)?;
        ns.get(n.ifindex, &format!("neighbour {} on link #{}", n.ip, n.ifindex))?;
        ns.neighbours.retain(|l| !(l.entry.ifindex == n.ifindex && l.entry.ip == n.ip));
        ns.neighbours.push(Listed { entry: n.clone(), owner: Owner::Weft });
        Ok(())
    }

    async fn fdb(&self, ifindex: u32) -> Result<Vec<Listed<Fdb>>> {
        let w = self.w();
        Ok(w.ns(&self.ns)?.fdb.iter().filter(|l| l.entry.ifindex == ifindex).cloned().collect())
    }

    async fn add_fdb(&self, f: &Fdb) -> Result<()> {
        self.write_fdb(f, false)
    }

    async fn replace_fdb(&self, f: &Fdb) -> Result<()> {
        self.write_fdb(f, true)
    }

    async fn del_fdb(&self, ifindex: u32, mac: Mac) -> Result<()> {
        let mut w = self.w();
        let what = format!("fdb entry {mac} on link #{ifindex}");
        let ns = w.ns(&self.ns)?;
        let Some(i) = ns.fdb.iter().position(|l| l.entry.ifindex == ifindex && l.entry.mac == mac) else {
            return Err(os_err(libc::ENOENT, what));
        };
        if ns.fdb[i].owner != Owner::Weft {
            return Err(NotOurs { what, owner: ns.fdb[i].owner }.into());
        }
        w.send(&self.ns, Call::DelFdb { ifindex, mac })?;
        w.ns_mut(&self.ns)?.fdb.remove(i);
        Ok(())
    }

    async fn claim_fdb(&self, f: &Fdb) -> Result<()> {
        let mut w = self.w();
        w.send(&self.ns, Call::ClaimFdb(f.clone()))?;
        let ns = w.ns_mut(&self.ns)?;
        ns.get(f.ifindex, &format!("fdb entry {} on link #{}", f.mac, f.ifindex))?;
        ns.fdb.retain(|l| !(l.entry.ifindex == f.ifindex && l.entry.mac == f.mac));
        ns.fdb.push(Listed { entry: f.clone(), owner: Owner::Weft });
        Ok(())
    }
}

#[cfg(test)]
mod tests;

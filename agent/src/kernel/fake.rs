//! An in-memory [`Kernel`]: a model of network namespaces with their links, addresses, routes,
//! neighbour and FDB entries that applies each call as the kernel would (the same `EEXIST`,
//! `ENOENT`, `ENODEV` failures, route replace, veth peers dying together, ownership marks kept)
//! and records, in order, every change a real kernel would have been sent. Tests drive code
//! that is generic over [`Kernel`] against it and assert "this setup sends these changes".

use super::{Fdb, Kernel, Link, Listed, Mac, Neighbour, NotOurs, Owner, Vxlan, WEFT_PROTO};
use crate::routes::{Action, Route, RouteKind};
use anyhow::Result;
use ipnet::{IpNet, Ipv4Net};
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
        if ns.links.values().filter_map(|l| l.link.vxlan.as_ref()).any(|v| v.vni == spec.vni && v.port == spec.port) {
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
        w.ns_mut(&self.ns)?.links.insert(index, FakeLink { link, peer: None });
        Ok(index)
    }

    async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let w = self.w();
        Ok(w.ns(&self.ns)?.addrs.iter().filter(|(i, _)| *i == index).map(|(_, a)| *a).collect())
    }

    async fn add_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut w = self.w();
        w.send(&self.ns, Call::AddAddress { index, addr })?;
        let ns = w.ns_mut(&self.ns)?;
        ns.get(index, &format!("adding {addr}"))?;
        if !ns.addrs.contains(&(index, addr)) {
            ns.addrs.push((index, addr));
        }
        Ok(())
    }

    async fn del_address(&self, index: u32, addr: IpNet) -> Result<()> {
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

    async fn default_route_oif(&self) -> Result<Option<u32>> {
        let w = self.w();
        Ok(w.ns(&self.ns)?
            .routes
            .iter()
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
        let IpAddr::V4(gw) = via else {
            return Err(os_err(libc::EAFNOSUPPORT, format!("{what}: the fake models IPv4 routes only")));
        };
        if !ns.addrs.iter().any(|(i, a)| *i == oif && a.contains(&via)) {
            return Err(os_err(libc::ENETUNREACH, format!("{what}: gateway not on-link on #{oif}")));
        }
        let route = Route {
            dst: Ipv4Net::default(),
            kind: RouteKind::Unicast,
            via: Some(gw),
            oif: Some(oif),
            src: None,
            metric: 0,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::errno;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("literal")
    }
    fn net(s: &str) -> IpNet {
        s.parse().expect("literal")
    }
    fn mac(last: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, last])
    }
    fn route(dst: &str, via: &str, oif: u32) -> Route {
        Route {
            dst: dst.parse().expect("literal"),
            kind: RouteKind::Unicast,
            via: Some(via.parse().expect("literal")),
            oif: Some(oif),
            src: None,
            metric: 0,
        }
    }
    fn vxlan(vni: u32, underlay: Option<u32>) -> Vxlan {
        Vxlan { vni, port: 4789, local: Some(ip("172.31.0.1")), underlay, learning: false }
    }
    fn code(r: Result<impl std::fmt::Debug>) -> Option<i32> {
        errno(&r.expect_err("the kernel refuses this"))
    }

    #[tokio::test]
    async fn veth_names_are_checked_and_the_pair_dies_together_across_namespaces() {
        let k = FakeKernel::new();
        k.add_veth("a", "b", 1500).await.expect("pair");
        assert_eq!(code(k.add_veth("a", "c", 1500).await), Some(libc::EEXIST));
        assert_eq!(code(k.add_veth("c", "sixteen-chars-xx", 1500).await), Some(libc::EINVAL));
        k.ensure_netns("pod").expect("netns");
        let b = k.link("b").await.expect("lookup").expect("b");
        k.move_to_netns(b.index, "pod").await.expect("move");
        let pod = k.in_netns("pod").expect("pod handle");
        assert!(pod.link("b").await.expect("lookup").is_some());
        assert!(k.link("b").await.expect("lookup").is_none(), "moved away from the root namespace");
        let a = k.link("a").await.expect("lookup").expect("a");
        k.del_link(a.index).await.expect("delete");
        assert!(pod.link("b").await.expect("lookup").is_none(), "the peer went with it");
        k.del_link(a.index).await.expect("deleting an absent link is fine");
    }

    #[tokio::test]
    async fn a_moved_link_arrives_down_without_addresses_and_needs_a_free_name() {
        let k = FakeKernel::new();
        k.add_veth("h", "p", 1500).await.expect("pair");
        let p = k.link("p").await.expect("lookup").expect("p").index;
        k.set_link(p, None, true, None).await.expect("up");
        k.add_address(p, net("10.0.0.1/24")).await.expect("addr");
        assert_eq!(code(k.move_to_netns(p, "nowhere").await), Some(libc::ENOENT));
        k.ensure_netns("pod").expect("netns");
        let pod = k.in_netns("pod").expect("handle");
        pod.seed_link("p", "dummy", 1500);
        assert_eq!(code(k.move_to_netns(p, "pod").await), Some(libc::EEXIST));
        k.ensure_netns("pod2").expect("netns");
        k.move_to_netns(p, "pod2").await.expect("move");
        let inside = k.in_netns("pod2").expect("handle");
        let l = inside.link_by_index(p).await.expect("lookup").expect("moved link keeps its index");
        assert!(!l.up);
        assert!(inside.addresses(p).await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn ensure_bridge_creates_once_and_refuses_another_kind() {
        let k = FakeKernel::new();
        let br = k.ensure_bridge("weft0", 1450).await.expect("bridge");
        assert_eq!(
            k.take_calls(),
            vec![
                (ROOT.into(), Call::AddBridge { name: "weft0".into(), mtu: 1450 }),
                (ROOT.into(), Call::SetLink { index: br, mtu: Some(1450), up: true, controller: None }),
            ]
        );
        assert_eq!(k.ensure_bridge("weft0", 1450).await.expect("again"), br);
        assert!(k.take_calls().is_empty(), "a bridge in shape needs no change");
        k.seed_link("eth0", "veth", 1500);
        let e = k.ensure_bridge("eth0", 1450).await.expect_err("not a bridge");
        assert!(e.to_string().contains("not a bridge"), "{e}");
    }

    #[tokio::test]
    async fn set_link_needs_the_link_and_a_bridge_as_controller() {
        let k = FakeKernel::new();
        assert_eq!(code(k.set_link(99, Some(1400), true, None).await), Some(libc::ENODEV));
        let eth = k.seed_link("eth0", "veth", 1500);
        let other = k.seed_link("eth1", "veth", 1500);
        assert_eq!(code(k.set_link(eth, None, true, Some(other)).await), Some(libc::EOPNOTSUPP));
        let br = k.ensure_bridge("weft0", 1500).await.expect("bridge");
        k.set_link(eth, Some(1400), true, Some(br)).await.expect("enslave");
        let l = k.link_by_index(eth).await.expect("lookup").expect("eth0");
        assert_eq!((l.mtu, l.up, l.controller), (1400, true, Some(br)));
        k.del_link(br).await.expect("delete bridge");
        assert_eq!(k.link_by_index(eth).await.expect("lookup").expect("eth0").controller, None);
    }

    #[tokio::test]
    async fn route_add_over_an_existing_key_replaces_and_del_touches_only_weft_routes() {
        let k = FakeKernel::new();
        let eth = k.seed_link("eth0", "veth", 1500);
        let foreign = route("10.244.7.0/24", "172.30.0.7", eth);
        k.seed_route(foreign.clone(), 4);
        k.apply(&Action::Add(route("10.244.2.0/24", "172.30.0.12", eth))).await.expect("add");
        k.apply(&Action::Add(route("10.244.2.0/24", "172.30.0.99", eth))).await.expect("add over it");
        assert_eq!(k.weft_routes().await.expect("list"), vec![route("10.244.2.0/24", "172.30.0.99", eth)]);
        // Deleting a route weft does not own (same destination, another protocol) is a no-op.
        k.apply(&Action::Del(foreign.clone())).await.expect("del");
        assert!(k.routes().contains(&TableRoute { route: foreign, proto: 4 }));
        k.apply(&Action::Del(route("10.244.2.0/24", "172.30.0.99", eth))).await.expect("del ours");
        assert!(k.weft_routes().await.expect("list").is_empty());
        assert_eq!(code(k.apply(&Action::Add(route("10.244.3.0/24", "172.30.0.13", 77))).await), Some(libc::ENODEV));
    }

    #[tokio::test]
    async fn default_route_needs_an_up_link_and_an_on_link_gateway_and_is_replaced() {
        let k = FakeKernel::new();
        k.add_veth("h", "p", 1500).await.expect("pair");
        let p = k.link("p").await.expect("lookup").expect("p").index;
        assert_eq!(code(k.replace_default_route(ip("10.244.1.1"), p).await), Some(libc::ENETDOWN));
        k.set_link(p, None, true, None).await.expect("up");
        assert_eq!(code(k.replace_default_route(ip("10.244.1.1"), p).await), Some(libc::ENETUNREACH));
        k.add_address(p, net("10.244.1.2/24")).await.expect("addr");
        k.replace_default_route(ip("10.244.1.1"), p).await.expect("route");
        k.replace_default_route(ip("10.244.1.3"), p).await.expect("replace");
        let defaults: Vec<_> = k.routes().into_iter().filter(|t| t.route.dst.prefix_len() == 0).collect();
        assert_eq!(defaults.len(), 1, "{defaults:?}");
        assert_eq!(defaults[0].route.via, Some("10.244.1.3".parse().expect("literal")));
        assert_eq!(defaults[0].proto, BOOT_PROTO);
        assert_eq!(k.default_route_oif().await.expect("oif"), Some(p));
        assert!(k.weft_routes().await.expect("list").is_empty(), "the pod route is not weft-marked");
    }

    #[tokio::test]
    async fn addresses_are_idempotent_and_the_v4_view_filters_families() {
        let k = FakeKernel::new();
        let eth = k.seed_link("eth0", "veth", 1500);
        k.add_address(eth, net("10.0.0.1/24")).await.expect("v4");
        k.add_address(eth, net("10.0.0.1/24")).await.expect("again");
        k.add_address(eth, net("fd00::1/64")).await.expect("v6");
        assert_eq!(k.addresses(eth).await.expect("list").len(), 2);
        assert_eq!(k.addrs(eth).await.expect("v4 list"), vec!["10.0.0.1/24".parse::<Ipv4Net>().expect("literal")]);
        k.take_calls();
        k.del_addr(eth, "10.9.9.9/24".parse().expect("literal")).await.expect("absent is fine");
        assert!(k.take_calls().is_empty(), "nothing to delete, nothing sent");
        assert_eq!(code(k.add_address(42, net("10.0.0.2/24")).await), Some(libc::ENODEV));
    }

    #[tokio::test]
    async fn neighbours_add_exclusively_replace_learned_and_leave_foreign_alone() {
        let k = FakeKernel::new();
        let vx = k.add_vxlan("vx0", 1450, &vxlan(1, None)).await.expect("vxlan");
        let ours = Neighbour { ifindex: vx, ip: ip("10.244.2.0"), mac: mac(2) };
        k.add_neighbour(&ours).await.expect("add");
        assert_eq!(code(k.add_neighbour(&ours).await), Some(libc::EEXIST));
        k.seed_neighbour(Neighbour { ifindex: vx, ip: ip("10.244.3.0"), mac: Mac::default() }, Owner::Learned);
        k.seed_neighbour(Neighbour { ifindex: vx, ip: ip("10.244.4.0"), mac: mac(4) }, Owner::Other);
        k.replace_neighbour(&Neighbour { ifindex: vx, ip: ip("10.244.3.0"), mac: mac(3) }).await.expect("learned");
        k.take_calls();
        let e = k.replace_neighbour(&Neighbour { ifindex: vx, ip: ip("10.244.4.0"), mac: mac(9) }).await;
        assert!(e.expect_err("foreign").downcast_ref::<NotOurs>().is_some());
        let e = k.del_neighbour(vx, ip("10.244.4.0")).await;
        assert!(e.expect_err("foreign").downcast_ref::<NotOurs>().is_some());
        assert!(k.take_calls().is_empty(), "a refused change is never sent");
        let listed = k.neighbours(vx).await.expect("list");
        let owners: Vec<_> = listed.iter().map(|l| (l.entry.ip, l.entry.mac, l.owner)).collect();
        assert_eq!(
            owners,
            vec![
                (ip("10.244.2.0"), mac(2), Owner::Weft),
                (ip("10.244.3.0"), mac(3), Owner::Weft),
                (ip("10.244.4.0"), mac(4), Owner::Other),
            ]
        );
        k.del_neighbour(vx, ip("10.244.2.0")).await.expect("del");
        assert_eq!(code(k.del_neighbour(vx, ip("10.244.2.0")).await), Some(libc::ENOENT));
        assert_eq!(code(k.add_neighbour(&Neighbour { ifindex: 99, ..ours }).await), Some(libc::ENODEV));
    }

    #[tokio::test]
    async fn fdb_entries_live_on_vxlan_devices_and_replace_moves_the_destination() {
        let k = FakeKernel::new();
        let br = k.ensure_bridge("weft0", 1500).await.expect("bridge");
        let vx = k.add_vxlan("vx0", 1450, &vxlan(1, None)).await.expect("vxlan");
        let f = Fdb { ifindex: vx, mac: mac(2), dst: ip("172.31.0.2") };
        assert_eq!(code(k.add_fdb(&Fdb { ifindex: br, ..f.clone() }).await), Some(libc::EOPNOTSUPP));
        k.add_fdb(&f).await.expect("add");
        assert_eq!(code(k.add_fdb(&f).await), Some(libc::EEXIST));
        k.replace_fdb(&Fdb { dst: ip("172.31.0.20"), ..f.clone() }).await.expect("replace");
        k.seed_fdb(Fdb { ifindex: vx, mac: mac(8), dst: ip("172.31.0.8") }, Owner::Other);
        let e = k.del_fdb(vx, mac(8)).await.expect_err("foreign");
        assert!(e.downcast_ref::<NotOurs>().is_some(), "{e:#}");
        let listed = k.fdb(vx).await.expect("list");
        let dsts: Vec<_> = listed.iter().map(|l| (l.entry.mac, l.entry.dst, l.owner)).collect();
        assert_eq!(dsts, vec![(mac(2), ip("172.31.0.20"), Owner::Weft), (mac(8), ip("172.31.0.8"), Owner::Other)]);
        k.del_link(vx).await.expect("delete the device");
        let vx2 = k.add_vxlan("vx0", 1450, &vxlan(1, None)).await.expect("again");
        assert!(k.fdb(vx2).await.expect("list").is_empty(), "entries die with their device");
    }

    #[tokio::test]
    async fn vxlan_and_wireguard_creation_fail_like_the_kernel() {
        let k = FakeKernel::new();
        let eth = k.seed_link("eth0", "veth", 1500);
        assert_eq!(code(k.add_vxlan("vx0", 1450, &vxlan(1, Some(99))).await), Some(libc::ENODEV));
        assert_eq!(code(k.add_vxlan("vx0", 1450, &vxlan(1 << 24, Some(eth))).await), Some(libc::ERANGE));
        let vx = k.add_vxlan("vx0", 1450, &vxlan(7, Some(eth))).await.expect("vxlan");
        assert_eq!(code(k.add_vxlan("vx1", 1450, &vxlan(7, Some(eth))).await), Some(libc::EEXIST));
        let l = k.link_by_index(vx).await.expect("lookup").expect("vx0");
        assert_eq!((l.kind.as_deref(), l.vxlan), (Some("vxlan"), Some(vxlan(7, Some(eth)))));
        assert!(k.add_wireguard("wg0", 1420).await.is_ok());
        let k = FakeKernel::new().without_wireguard();
        let e = k.add_wireguard("wg0", 1420).await.expect_err("no module");
        assert_eq!(errno(&e), Some(libc::EOPNOTSUPP));
        assert!(format!("{e:#}").contains("no WireGuard"), "{e:#}");
    }

    #[tokio::test]
    async fn removing_a_namespace_takes_its_veths_peers_along_and_faults_are_one_shot() {
        let k = FakeKernel::new();
        k.ensure_netns("pod").expect("netns");
        assert!(!k.ensure_netns("pod").expect("again"), "already there");
        k.add_veth("h", "p", 1500).await.expect("pair");
        let p = k.link("p").await.expect("lookup").expect("p").index;
        k.move_to_netns(p, "pod").await.expect("move");
        k.remove_netns("pod").expect("remove");
        assert!(k.link("h").await.expect("lookup").is_none(), "the host end died with the namespace");
        assert_eq!(k.namespaces(), vec![ROOT.to_string()]);
        assert!(k.in_netns("pod").is_err());
        k.fail_next(|c| matches!(c, Call::AddVeth { .. }), libc::ENOMEM);
        assert_eq!(code(k.add_veth("x", "y", 1500).await), Some(libc::ENOMEM));
        assert!(k.link("x").await.expect("lookup").is_none(), "a failed call changes nothing");
        k.add_veth("x", "y", 1500).await.expect("the fault fired once");
        let sent: Vec<_> = k.calls().into_iter().filter(|(_, c)| matches!(c, Call::AddVeth { .. })).collect();
        assert_eq!(sent.len(), 3, "every attempt is recorded: {sent:?}");
    }
}

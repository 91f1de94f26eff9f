//! The real [`Kernel`]: thin netlink effects over rtnetlink (links, addresses, weft's routes,
//! neighbour and FDB entries; AF_INET and AF_INET6 alike). Decisions live in `routes`, `pods` and the backends; this module
//! only reads and writes kernel state.

use super::wireguard::{self as wg, missing_module_message};
use super::{Fdb, Kernel, Link, Listed, Mac, Neighbour, NotOurs, Owner, Vxlan, WgChange, WgDevice};
use crate::routes::{Action, Family, Route, WEFT_PROTO};
use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, LinkWireguard, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

mod msg;
use msg::{
    addr_of, build_route, family_of, neighbour_address, parse_fdb, parse_link, parse_neighbour, parse_route, skip_dad,
    table_of,
};

/// The errno of a netlink failure, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// Netlink sockets bound to one network namespace (the one they were opened in): route
/// netlink for links, addresses, routes and entries; generic netlink for WireGuard.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    genl: genetlink::GenetlinkHandle,
}

/// Both sockets, made in the calling thread's namespace; their event loops still to spawn.
fn connect() -> std::io::Result<(Handle, genetlink::GenetlinkHandle, Vec<BoxedConn>)> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let (gconn, genl, _) = genetlink::new_connection()?;
    Ok((handle, genl, vec![Box::pin(conn), Box::pin(gconn)]))
}

type BoxedConn = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Netlink {
    /// Opens the sockets in the caller's namespace. Needs a tokio runtime.
    pub fn open() -> Result<Self> {
        let (handle, genl, conns) = connect().context("opening a netlink socket")?;
        conns.into_iter().for_each(|c| drop(tokio::spawn(c)));
        Ok(Self { handle, genl })
    }

    /// Opens the sockets inside the named namespace: a dedicated thread enters it and creates
    /// them, and they stay bound to that namespace wherever they are used afterwards.
    pub fn open_in(netns: &str) -> Result<Self> {
        let rt = tokio::runtime::Handle::current();
        let (handle, genl, conns) = crate::netns::run_in(netns, move || {
            let _guard = rt.enter();
            connect()
        })
        .with_context(|| format!("entering namespace {netns}"))?
        .with_context(|| format!("opening a netlink socket in namespace {netns}"))?;
        conns.into_iter().for_each(|c| drop(tokio::spawn(c)));
        Ok(Self { handle, genl })
    }

    /// Sends one WireGuard request and collects the answers; an error answer fails it.
    async fn wg_request(
        &self,
        message: netlink_packet_wireguard::WireguardMessage,
        flags: u16,
    ) -> Result<Vec<netlink_packet_wireguard::WireguardMessage>> {
        use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
        let mut req = NetlinkMessage::from(netlink_packet_generic::GenlMessage::from_payload(message));
        req.header.flags = flags;
        let mut genl = self.genl.clone();
        let mut answers = genl.request(req).await.map_err(genl_error)?;
        let mut out = Vec::new();
        while let Some(m) = answers.try_next().await.context("decoding a wireguard netlink answer")? {
            match m.payload {
                NetlinkPayload::InnerMessage(g) => out.push(g.payload),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(anyhow!(e.to_io())),
                _ => {}
            }
        }
        Ok(out)
    }
}

/// A generic netlink failure as an error with the kernel's errno in its chain.
fn genl_error(e: genetlink::GenetlinkError) -> anyhow::Error {
    match e {
        genetlink::GenetlinkError::NetlinkError(io) => anyhow!(io),
        other => anyhow!(other),
    }
}

impl Netlink {
    /// All routes of `family` in the main table. Messages of another family are dropped: a
    /// kernel without IPv6 answers an IPv6 dump with every family's routes.
    async fn main_routes(&self, family: Family) -> Result<Vec<RouteMessage>> {
        let query = match family {
            Family::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            Family::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut out = Vec::new();
        let mut s = self.handle.route().get(query).execute();
        while let Some(m) = s.try_next().await.with_context(|| format!("listing {family} routes"))? {
            if family_of(&m) == Some(family) && table_of(&m) == u32::from(RouteHeader::RT_TABLE_MAIN) {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Every neighbour message of `family` on device `ifindex` (a dump filtered here).
    async fn neighbour_messages(&self, family: AddressFamily, ifindex: u32) -> Result<Vec<NeighbourMessage>> {
        let mut out = Vec::new();
        let mut s = self.handle.neighbours().get().set_address_family(family).execute();
        while let Some(m) = s.try_next().await.context("listing neighbours")? {
            if m.header.ifindex == ifindex {
                out.push(m);
            }
        }
        Ok(out)
    }

    async fn neighbours_of(&self, ifindex: u32) -> Result<Vec<Listed<Neighbour>>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            out.extend(self.neighbour_messages(family, ifindex).await?.iter().filter_map(parse_neighbour));
        }
        Ok(out)
    }

    async fn fdb_of(&self, ifindex: u32) -> Result<Vec<Listed<Fdb>>> {
        Ok(self.neighbour_messages(AddressFamily::Bridge, ifindex).await?.iter().filter_map(parse_fdb).collect())
    }

    async fn write_neighbour(&self, n: &Neighbour, replace: bool) -> Result<()> {
        let mut req =
            self.handle.neighbours().add(n.ifindex, n.ip).state(NeighbourState::Permanent).link_layer_address(&n.mac.0);
        req.message_mut().attributes.push(NeighbourAttribute::Protocol(RouteProtocol::Other(WEFT_PROTO)));
        if replace {
            req = req.replace();
        }
        req.execute()
            .await
            .with_context(|| format!("setting neighbour {} lladdr {} on link #{}", n.ip, n.mac, n.ifindex))
    }

    /// Deletes the entry of `family`'s table on `ifindex` that `is` picks, whoever made it (none
    /// is fine): the first half of a claim.
    async fn delete_anyones(
        &self,
        family: AddressFamily,
        ifindex: u32,
        is: impl Fn(&NeighbourMessage) -> bool,
        what: &str,
    ) -> Result<()> {
        let Some(m) = self.neighbour_messages(family, ifindex).await?.into_iter().find(|m| is(m)) else {
            return Ok(());
        };
        self.handle.neighbours().del(m).execute().await.with_context(|| format!("deleting {what} on link #{ifindex}"))
    }

    async fn write_fdb(&self, f: &Fdb, replace: bool) -> Result<()> {
        let mut req = self
            .handle
            .neighbours()
            .add_bridge(f.ifindex, &f.mac.0)
            .state(NeighbourState::Permanent)
            .flags(NeighbourFlags::Own | NeighbourFlags::ExtLearned);
        req.message_mut().attributes.push(NeighbourAttribute::Destination(neighbour_address(f.dst)));
        if replace {
            req = req.replace();
        }
        req.execute().await.with_context(|| format!("setting fdb {} dst {} on link #{}", f.mac, f.dst, f.ifindex))
    }
}

impl Kernel for Netlink {
    fn ensure_netns(&self, name: &str) -> Result<bool> {
        crate::netns::ensure(name).with_context(|| format!("creating namespace {name}"))
    }

    fn remove_netns(&self, name: &str) -> Result<()> {
        crate::netns::remove(name).with_context(|| format!("removing namespace {name}"))
    }

    fn in_netns(&self, name: &str) -> Result<Self> {
        Self::open_in(name)
    }

    async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(parse_link(&m))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("looking up link {name}"))),
        }
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(parse_link)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("looking up link #{index}"))),
        }
    }

    /// Creates the bridge if missing, sets its MTU and brings it up. Returns its index.
    async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32> {
        let link = match self.link(name).await? {
            Some(l) => l,
            None => {
                self.handle
                    .link()
                    .add(LinkBridge::new(name).mtu(mtu).build())
                    .execute()
                    .await
                    .with_context(|| format!("creating bridge {name}"))?;
                self.link(name).await?.ok_or_else(|| anyhow!("bridge {name} vanished after creation"))?
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            anyhow::bail!("{name} exists but is a {} device, not a bridge", link.kind.as_deref().unwrap_or("plain"));
        }
        if !link.up || link.mtu != mtu {
            self.set_link(link.index, Some(mtu), true, None).await?;
        }
        Ok(link.index)
    }

    async fn set_link(&self, index: u32, mtu: Option<u32>, up: bool, controller: Option<u32>) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        if let Some(c) = controller {
            b = b.controller(c);
        }
        b = if up { b.up() } else { b.down() };
        self.handle.link().set(b.build()).execute().await.with_context(|| format!("setting link #{index}"))
    }

    async fn rename(&self, index: u32, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).name(name.to_string()).build();
        self.handle.link().set(msg).execute().await.with_context(|| format!("renaming link #{index} to {name}"))
    }

    async fn set_mac(&self, index: u32, mac: Mac) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).address(mac.0.to_vec()).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| format!("setting the MAC of link #{index} to {mac}"))
    }

    /// Creates a veth pair in this namespace.
    async fn add_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).mtu(mtu).build())
            .execute()
            .await
            .with_context(|| format!("creating veth {name}/{peer}"))
    }

    /// Moves a link into another (named) network namespace.
    async fn move_to_netns(&self, index: u32, netns: &str) -> Result<()> {
        let ns = crate::netns::open(netns)?;
        let msg = LinkUnspec::new_with_index(index).setns_by_fd(ns.as_raw_fd()).build();
        self.handle.link().set(msg).execute().await.with_context(|| format!("moving link #{index} into {netns}"))
    }

    async fn del_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("deleting link #{index}"))),
        }
    }

    async fn add_vxlan(&self, name: &str, mtu: u32, spec: &Vxlan) -> Result<u32> {
        let mut b = LinkVxlan::new(name, spec.vni).mtu(mtu).port(spec.port).learning(spec.learning);
        match spec.local {
            Some(IpAddr::V4(ip)) => b = b.local(ip),
            Some(IpAddr::V6(ip)) => b = b.local6(ip),
            None => {}
        }
        if let Some(dev) = spec.underlay {
            b = b.dev(dev);
        }
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .with_context(|| format!("creating vxlan device {name} (vni {})", spec.vni))?;
        Ok(self.link(name).await?.with_context(|| format!("vxlan device {name} vanished after creation"))?.index)
    }

    async fn add_wireguard(&self, name: &str, mtu: u32) -> Result<u32> {
        match self.handle.link().add(LinkWireguard::new(name).mtu(mtu).build()).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EOPNOTSUPP) => {
                return Err(anyhow!(e).context(format!(
                "creating wireguard device {name}: this kernel has no WireGuard (is the wireguard module available?)"
            )))
            }
            Err(e) => return Err(anyhow!(e).context(format!("creating wireguard device {name}"))),
        }
        Ok(self.link(name).await?.with_context(|| format!("wireguard device {name} vanished after creation"))?.index)
    }

    async fn wireguard_available(&self) -> Result<()> {
        // Asking for the family makes the kernel load the module if it can (its alias
        // `net-pf-16-proto-16-family-wireguard`); ENOENT: there is none to load.
        match self.genl.resolve_family::<netlink_packet_wireguard::WireguardMessage>().await {
            Ok(_) => Ok(()),
            // Not the errno's own words ("No such file or directory"): they would mislead.
            Err(genetlink::GenetlinkError::NetlinkError(io)) if io.raw_os_error() == Some(libc::ENOENT) => {
                Err(anyhow!(missing_module_message()))
            }
            Err(e) => Err(genl_error(e).context("asking the kernel for its WireGuard netlink family")),
        }
    }

    async fn wireguard(&self, index: u32) -> Result<WgDevice> {
        use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
        let answers = self
            .wg_request(wg::get_message(index), NLM_F_REQUEST | NLM_F_DUMP)
            .await
            .with_context(|| format!("reading wireguard device #{index}"))?;
        wg::parse_device(&answers).with_context(|| format!("reading wireguard device #{index}"))
    }

    async fn set_wireguard(&self, index: u32, change: &WgChange) -> Result<()> {
        use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
        self.wg_request(wg::set_message(index, change), NLM_F_REQUEST | NLM_F_ACK)
            .await
            .with_context(|| format!("configuring wireguard device #{index}: {change:?}"))?;
        Ok(())
    }

    async fn addrs(&self, index: u32) -> Result<Vec<IpNet>> {
        let mut out = Vec::new();
        let mut s = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(m) = s.try_next().await.context("listing addresses")? {
            if m.header.index != index {
                continue;
            }
            if let Some(a) = addr_of(&m) {
                out.push(a);
            }
        }
        Ok(out)
    }

    async fn add_addr(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut req = self.handle.address().add(index, addr.addr(), addr.prefix_len());
        skip_dad(req.message_mut());
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("adding {addr} to link #{index}"))),
        }
    }

    async fn del_addr(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut s = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(m) = s.try_next().await.context("listing addresses")? {
            if m.header.index == index && addr_of(&m) == Some(addr) {
                self.handle.address().del(m).execute().await.with_context(|| format!("deleting {addr}"))?;
            }
        }
        Ok(())
    }

    /// The routes weft owns (protocol `WEFT_PROTO`) in the main table: the IPv4 ones, then the
    /// IPv6 ones.
    async fn weft_routes(&self) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            out.extend(
                self.main_routes(family)
                    .await?
                    .iter()
                    .filter(|m| m.header.protocol == RouteProtocol::Other(WEFT_PROTO))
                    .filter_map(parse_route),
            );
        }
        Ok(out)
    }

    async fn default_route_oif(&self, family: Family) -> Result<Option<u32>> {
        Ok(self
            .main_routes(family)
            .await?
            .iter()
            .filter(|m| m.header.destination_prefix_length == 0 && m.header.kind == RouteType::Unicast)
            .find_map(|m| {
                m.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None })
            }))
    }

    async fn apply(&self, action: &Action) -> Result<()> {
        match action {
            Action::Add(r) => match self.handle.route().add(build_route(r)?).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc::EEXIST) => self
                    .handle
                    .route()
                    .add(build_route(r)?)
                    .replace()
                    .execute()
                    .await
                    .with_context(|| format!("replacing route {}", r.dst)),
                Err(e) => Err(anyhow!(e).context(format!("adding route {}", r.dst))),
            },
            Action::Replace { new, .. } => self
                .handle
                .route()
                .add(build_route(new)?)
                .replace()
                .execute()
                .await
                .with_context(|| format!("replacing route {}", new.dst)),
            Action::Del(r) => match self.handle.route().del(build_route(r)?).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
                Err(e) => Err(anyhow!(e).context(format!("deleting route {}", r.dst))),
            },
        }
    }

    /// Adds (or replaces) a plain route not owned by weft's reconcile, e.g. a pod's default route.
    async fn replace_default_route(&self, via: IpAddr, oif: u32) -> Result<()> {
        let msg = match via {
            IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(v4)
                .output_interface(oif)
                .protocol(RouteProtocol::Boot)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(v6)
                .output_interface(oif)
                .protocol(RouteProtocol::Boot)
                .build(),
        };
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .with_context(|| format!("setting default route via {via}"))
    }

    async fn neighbours(&self, ifindex: u32) -> Result<Vec<Listed<Neighbour>>> {
        self.neighbours_of(ifindex).await
    }

    async fn add_neighbour(&self, n: &Neighbour) -> Result<()> {
        self.write_neighbour(n, false).await
    }

    async fn replace_neighbour(&self, n: &Neighbour) -> Result<()> {
        let current = self.neighbours_of(n.ifindex).await?;
        if let Some(other) = current.iter().find(|l| l.entry.ip == n.ip && l.owner == Owner::Other) {
            return Err(
                NotOurs { what: format!("neighbour {} on link #{}", n.ip, n.ifindex), owner: other.owner }.into()
            );
        }
        self.write_neighbour(n, true).await
    }

    async fn del_neighbour(&self, ifindex: u32, ip: IpAddr) -> Result<()> {
        let family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let found = self
            .neighbour_messages(family, ifindex)
            .await?
            .into_iter()
            .find(|m| parse_neighbour(m).is_some_and(|l| l.entry.ip == ip));
        let what = || format!("neighbour {ip} on link #{ifindex}");
        let Some(m) = found else {
            return Err(anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOENT)).context(what()));
        };
        let owner = parse_neighbour(&m).map(|l| l.owner).unwrap_or(Owner::Other);
        if owner != Owner::Weft {
            return Err(NotOurs { what: what(), owner }.into());
        }
        self.handle.neighbours().del(m).execute().await.with_context(|| format!("deleting {}", what()))
    }

    async fn claim_neighbour(&self, n: &Neighbour) -> Result<()> {
        let family = if n.ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let is = |m: &NeighbourMessage| parse_neighbour(m).is_some_and(|l| l.entry.ip == n.ip);
        self.delete_anyones(family, n.ifindex, is, &format!("neighbour {}", n.ip)).await?;
        self.write_neighbour(n, false).await
    }

    async fn fdb(&self, ifindex: u32) -> Result<Vec<Listed<Fdb>>> {
        self.fdb_of(ifindex).await
    }

    async fn add_fdb(&self, f: &Fdb) -> Result<()> {
        self.write_fdb(f, false).await
    }

    async fn replace_fdb(&self, f: &Fdb) -> Result<()> {
        let current = self.fdb_of(f.ifindex).await?;
        if let Some(other) = current.iter().find(|l| l.entry.mac == f.mac && l.owner == Owner::Other) {
            return Err(
                NotOurs { what: format!("fdb entry {} on link #{}", f.mac, f.ifindex), owner: other.owner }.into()
            );
        }
        self.write_fdb(f, true).await
    }

    async fn del_fdb(&self, ifindex: u32, mac: Mac) -> Result<()> {
        let found = self
            .neighbour_messages(AddressFamily::Bridge, ifindex)
            .await?
            .into_iter()
            .filter_map(|m| parse_fdb(&m).map(|l| (m, l)))
            .find(|(_, l)| l.entry.mac == mac);
        let what = || format!("fdb entry {mac} on link #{ifindex}");
        let Some((m, listed)) = found else {
            return Err(anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOENT)).context(what()));
        };
        if listed.owner != Owner::Weft {
            return Err(NotOurs { what: what(), owner: listed.owner }.into());
        }
        self.handle.neighbours().del(m).execute().await.with_context(|| format!("deleting {}", what()))
    }

    async fn claim_fdb(&self, f: &Fdb) -> Result<()> {
        let is = |m: &NeighbourMessage| parse_fdb(m).is_some_and(|l| l.entry.mac == f.mac);
        self.delete_anyones(AddressFamily::Bridge, f.ifindex, is, &format!("fdb entry {}", f.mac)).await?;
        self.write_fdb(f, false).await
    }
}

/// Writes a sysctl of the caller's network namespace (e.g. `net/ipv4/ip_forward`).
pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current.trim() == value {
        return Ok(());
    }
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))
}

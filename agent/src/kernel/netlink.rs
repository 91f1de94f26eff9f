//! Thin netlink effects over rtnetlink: links, addresses and weft's routes. Decisions live in
//! `routes` and `pods`; this module only reads and writes kernel state.

use crate::routes::{Action, Route, RouteKind, WEFT_PROTO};
use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

/// The errno of a netlink failure, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    pub kind: Option<String>,
    pub controller: Option<u32>,
}

fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        kind: None,
        controller: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(c) => l.controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// A netlink socket bound to one network namespace (the one it was opened in).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a socket in the caller's namespace. Needs a tokio runtime.
    pub fn open() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Opens a socket inside the named namespace: a dedicated thread enters it and creates the
    /// socket, which stays bound to that namespace wherever it is used afterwards.
    pub fn open_in(netns: &str) -> Result<Self> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = crate::netns::run_in(netns, move || {
            let _guard = rt.enter();
            rtnetlink::new_connection()
        })
        .with_context(|| format!("entering namespace {netns}"))?
        .with_context(|| format!("opening a netlink socket in namespace {netns}"))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(parse_link(&m))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("looking up link {name}"))),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(parse_link)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("looking up link #{index}"))),
        }
    }

    /// Creates the bridge if missing, sets its MTU and brings it up. Returns its index.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32> {
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

    pub async fn set_link(&self, index: u32, mtu: Option<u32>, up: bool, controller: Option<u32>) -> Result<()> {
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

    pub async fn rename(&self, index: u32, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).name(name.to_string()).build();
        self.handle.link().set(msg).execute().await.with_context(|| format!("renaming link #{index} to {name}"))
    }

    /// Creates a veth pair in this namespace.
    pub async fn add_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).mtu(mtu).build())
            .execute()
            .await
            .with_context(|| format!("creating veth {name}/{peer}"))
    }

    /// Moves a link into another (named) network namespace.
    pub async fn move_to_netns(&self, index: u32, netns: &str) -> Result<()> {
        let ns = crate::netns::open(netns)?;
        let msg = LinkUnspec::new_with_index(index).setns_by_fd(ns.as_raw_fd()).build();
        self.handle.link().set(msg).execute().await.with_context(|| format!("moving link #{index} into {netns}"))
    }

    pub async fn del_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("deleting link #{index}"))),
        }
    }

    /// IPv4 addresses (with prefix) on a link.
    pub async fn addrs(&self, index: u32) -> Result<Vec<Ipv4Net>> {
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

    pub async fn add_addr(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        match self.handle.address().add(index, IpAddr::V4(addr.addr()), addr.prefix_len()).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("adding {addr} to link #{index}"))),
        }
    }

    pub async fn del_addr(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        let mut s = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(m) = s.try_next().await.context("listing addresses")? {
            if m.header.index == index && addr_of(&m) == Some(addr) {
                self.handle.address().del(m).execute().await.with_context(|| format!("deleting {addr}"))?;
            }
        }
        Ok(())
    }

    /// All IPv4 routes of the main table.
    async fn main_routes(&self) -> Result<Vec<RouteMessage>> {
        let mut out = Vec::new();
        let mut s = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(m) = s.try_next().await.context("listing routes")? {
            if table_of(&m) == u32::from(RouteHeader::RT_TABLE_MAIN) {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// The routes weft owns (protocol `WEFT_PROTO`) in the main table.
    pub async fn weft_routes(&self) -> Result<Vec<Route>> {
        Ok(self
            .main_routes()
            .await?
            .iter()
            .filter(|m| m.header.protocol == RouteProtocol::Other(WEFT_PROTO))
            .filter_map(parse_route)
            .collect())
    }

    /// Output interface of the IPv4 default route, if any.
    pub async fn default_route_oif(&self) -> Result<Option<u32>> {
        Ok(self
            .main_routes()
            .await?
            .iter()
            .filter(|m| m.header.destination_prefix_length == 0 && m.header.kind == RouteType::Unicast)
            .find_map(|m| {
                m.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None })
            }))
    }

    pub async fn apply(&self, action: &Action) -> Result<()> {
        match action {
            Action::Add(r) => match self.handle.route().add(build_route(r)).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc::EEXIST) => self
                    .handle
                    .route()
                    .add(build_route(r))
                    .replace()
                    .execute()
                    .await
                    .with_context(|| format!("replacing route {}", r.dst)),
                Err(e) => Err(anyhow!(e).context(format!("adding route {}", r.dst))),
            },
            Action::Replace { new, .. } => self
                .handle
                .route()
                .add(build_route(new))
                .replace()
                .execute()
                .await
                .with_context(|| format!("replacing route {}", new.dst)),
            Action::Del(r) => match self.handle.route().del(build_route(r)).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
                Err(e) => Err(anyhow!(e).context(format!("deleting route {}", r.dst))),
            },
        }
    }

    /// Adds (or replaces) a plain route not owned by weft's reconcile, e.g. a pod's default route.
    pub async fn replace_default_route(&self, via: Ipv4Addr, oif: u32) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(via)
            .output_interface(oif)
            .protocol(RouteProtocol::Boot)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .with_context(|| format!("setting default route via {via}"))
    }
}

fn addr_of(m: &AddressMessage) -> Option<Ipv4Net> {
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
            _ => {}
        }
    }
    local.or(address).and_then(|ip| Ipv4Net::new(ip, m.header.prefix_len).ok())
}

fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(u32::from(m.header.table))
}

fn inet(a: &RouteAddress) -> Option<Ipv4Addr> {
    if let RouteAddress::Inet(ip) = a {
        Some(*ip)
    } else {
        None
    }
}

fn parse_route(m: &RouteMessage) -> Option<Route> {
    let kind = match m.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        _ => return None,
    };
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut r = Route { dst: Ipv4Net::default(), kind, via: None, oif: None, src: None, metric: 0 };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = inet(d)?,
            RouteAttribute::Gateway(g) => r.via = inet(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::PrefSource(s) => r.src = inet(s),
            RouteAttribute::Priority(p) => r.metric = *p,
            _ => {}
        }
    }
    r.dst = Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?;
    Some(r)
}

fn build_route(r: &Route) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix_len())
        .protocol(RouteProtocol::Other(WEFT_PROTO));
    if r.metric != 0 {
        b = b.priority(r.metric);
    }
    if let Some(v) = r.via {
        b = b.gateway(v);
    }
    if let Some(o) = r.oif {
        b = b.output_interface(o);
    }
    if let Some(s) = r.src {
        b = b.pref_source(s);
    }
    if r.kind == RouteKind::Blackhole {
        b = b.kind(RouteType::BlackHole);
    } else if r.via.is_none() {
        // A device route without a gateway is on-link, as `ip route add … dev X` makes it.
        b = b.scope(RouteScope::Link);
    }
    b.build()
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

//! Translation between netlink messages and the kernel module's plain types: parsing links,
//! addresses, routes, neighbour and FDB entries, and building weft's route messages.

use crate::kernel::{Fdb, Link, Listed, Mac, Neighbour, Owner, Vxlan};
use crate::routes::{Route, RouteKind, WEFT_PROTO};
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType};
use rtnetlink::RouteMessageBuilder;
use std::net::{IpAddr, Ipv4Addr};

pub(super) fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        kind: None,
        controller: None,
        mac: None,
        vxlan: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(c) => l.controller = Some(*c),
            LinkAttribute::Address(b) => l.mac = Mac::from_bytes(b),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => l.vxlan = Some(parse_vxlan(v)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

pub(super) fn parse_vxlan(infos: &[InfoVxlan]) -> Vxlan {
    let mut v = Vxlan { vni: 0, port: 0, local: None, underlay: None, learning: true };
    for i in infos {
        match i {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Port(p) => v.port = *p,
            InfoVxlan::Local(ip) => v.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => v.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Link(l) => v.underlay = Some(*l),
            InfoVxlan::Learning(on) => v.learning = *on,
            _ => {}
        }
    }
    v
}

pub(super) fn addr_of(m: &AddressMessage) -> Option<IpNet> {
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    local.or(address).and_then(|ip| IpNet::new(ip, m.header.prefix_len).ok())
}

pub(super) fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

pub(super) fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // A bridge-family (FDB) message carries its underlay destination as raw bytes.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

/// A static entry is permanent or noarp (`bridge fdb add` sets both bits); anything else the
/// kernel learned and may age out.
pub(super) fn is_static(state: NeighbourState) -> bool {
    let bits = u16::from(state);
    bits & (u16::from(NeighbourState::Permanent) | u16::from(NeighbourState::Noarp)) != 0
}

pub(super) fn parse_neighbour(m: &NeighbourMessage) -> Option<Listed<Neighbour>> {
    let mut ip = None;
    let mut mac = None;
    let mut proto = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(d) => ip = neighbour_ip(d),
            NeighbourAttribute::LinkLayerAddress(b) => mac = Mac::from_bytes(b),
            NeighbourAttribute::Protocol(p) => proto = Some(*p),
            _ => {}
        }
    }
    let owner = if proto == Some(RouteProtocol::Other(WEFT_PROTO)) {
        Owner::Weft
    } else if is_static(m.header.state) {
        Owner::Other
    } else {
        Owner::Learned
    };
    // An incomplete or failed entry has no MAC yet: listed with a zero one, so weft can replace it.
    Some(Listed { entry: Neighbour { ifindex: m.header.ifindex, ip: ip?, mac: mac.unwrap_or_default() }, owner })
}

pub(super) fn parse_fdb(m: &NeighbourMessage) -> Option<Listed<Fdb>> {
    let mut dst = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(d) => dst = neighbour_ip(d),
            NeighbourAttribute::LinkLayerAddress(b) => mac = Mac::from_bytes(b),
            _ => {}
        }
    }
    let owner = if m.header.flags.contains(NeighbourFlags::ExtLearned) {
        Owner::Weft
    } else if is_static(m.header.state) {
        Owner::Other
    } else {
        Owner::Learned
    };
    Some(Listed { entry: Fdb { ifindex: m.header.ifindex, mac: mac?, dst: dst? }, owner })
}

pub(super) fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(u32::from(m.header.table))
}

pub(super) fn inet(a: &RouteAddress) -> Option<Ipv4Addr> {
    if let RouteAddress::Inet(ip) = a {
        Some(*ip)
    } else {
        None
    }
}

pub(super) fn parse_route(m: &RouteMessage) -> Option<Route> {
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

pub(super) fn build_route(r: &Route) -> RouteMessage {
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

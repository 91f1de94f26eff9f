//! Translation between netlink messages and the kernel module's plain types: parsing links,
//! addresses, routes, neighbour and FDB entries, and building weft's route messages, for
//! AF_INET and AF_INET6 alike.

use crate::kernel::{Fdb, Link, Listed, Mac, Neighbour, Owner, Vxlan};
use crate::routes::{Family, MixedFamily, Route, RouteKind, WEFT_PROTO};
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The metric the kernel gives an IPv6 route added without one (`IP6_RT_PRIO_USER`): IPv6 has
/// no metric 0, so weft's metric 0 (the family's default) is this one there.
pub(super) const IPV6_DEFAULT_METRIC: u32 = 1024;

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

/// An IPv6 address is added without duplicate address detection (`nodad`): weft hands out its
/// addresses itself, and a tentative address could not be a route's preferred source.
pub(super) fn skip_dad(m: &mut AddressMessage) {
    if m.header.family == AddressFamily::Inet6 {
        m.header.flags |= AddressHeaderFlags::Nodad;
    }
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

pub(super) fn family_of(m: &RouteMessage) -> Option<Family> {
    match m.header.address_family {
        AddressFamily::Inet => Some(Family::V4),
        AddressFamily::Inet6 => Some(Family::V6),
        _ => None,
    }
}

pub(super) fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A unicast or blackhole route of either family. Addresses of another family than the
/// message's are not weft's routes (an IPv4 route with an IPv6 `RTA_VIA` keeps no gateway).
pub(super) fn parse_route(m: &RouteMessage) -> Option<Route> {
    let kind = match m.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        _ => return None,
    };
    let family = family_of(m)?;
    let same = |a: &RouteAddress| route_ip(a).filter(|ip| Family::of(*ip) == family);
    let mut dst = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let mut r = Route { dst: IpNet::default(), kind, via: None, oif: None, src: None, metric: 0 };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = same(d)?,
            RouteAttribute::Gateway(g) => r.via = same(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::PrefSource(s) => r.src = same(s),
            RouteAttribute::Priority(p) => r.metric = *p,
            _ => {}
        }
    }
    if kind == RouteKind::Blackhole {
        // The kernel lists an IPv6 blackhole on `lo`; weft's blackholes have no device.
        r.oif = None;
    }
    if family == Family::V6 && r.metric == IPV6_DEFAULT_METRIC {
        r.metric = 0;
    }
    r.dst = IpNet::new(dst, m.header.destination_prefix_length).ok()?;
    Some(r)
}

/// The message that adds, replaces or deletes `r` (of its destination's family), marked as
/// weft's. Refuses a gateway or source of the other family.
pub(super) fn build_route(r: &Route) -> Result<RouteMessage, MixedFamily> {
    r.check_family()?;
    let mut m = match r.dst {
        IpNet::V4(d) => RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(d.network(), d.prefix_len()).build(),
        IpNet::V6(d) => RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(d.network(), d.prefix_len()).build(),
    };
    m.header.protocol = RouteProtocol::Other(WEFT_PROTO);
    // Metric 0 is the family's default: none is sent (IPv6 then gets IPV6_DEFAULT_METRIC).
    if r.metric != 0 {
        m.attributes.push(RouteAttribute::Priority(r.metric));
    }
    if let Some(v) = r.via {
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(v)));
    }
    if let Some(o) = r.oif {
        m.attributes.push(RouteAttribute::Oif(o));
    }
    if let Some(s) = r.src {
        m.attributes.push(RouteAttribute::PrefSource(RouteAddress::from(s)));
    }
    if r.kind == RouteKind::Blackhole {
        m.header.kind = RouteType::BlackHole;
    } else if r.via.is_none() {
        // A device route without a gateway is on-link, as `ip route add … dev X` makes it.
        m.header.scope = RouteScope::Link;
    }
    Ok(m)
}

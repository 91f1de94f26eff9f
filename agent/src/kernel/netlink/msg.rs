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
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
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
    let onlink = m.header.flags.contains(RouteFlags::Onlink);
    let mut r = Route { dst: IpNet::default(), kind, via: None, oif: None, src: None, metric: 0, onlink };
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
    if r.onlink {
        m.header.flags |= RouteFlags::Onlink;
    }
    if r.kind == RouteKind::Blackhole {
        m.header.kind = RouteType::BlackHole;
    } else if r.via.is_none() {
        // A device route without a gateway is on-link, as `ip route add … dev X` makes it.
        m.header.scope = RouteScope::Link;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::neighbour::NeighbourHeader;
    use rtnetlink::AddressMessageBuilder;

    fn net(s: &str) -> IpNet {
        s.parse().expect("literal")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("literal")
    }
    fn route(dst: &str, via: Option<&str>, oif: Option<u32>, src: Option<&str>) -> Route {
        Route {
            dst: net(dst),
            kind: RouteKind::Unicast,
            via: via.map(ip),
            oif,
            src: src.map(ip),
            metric: 0,
            onlink: false,
        }
    }
    fn blackhole(dst: &str, metric: u32) -> Route {
        Route { dst: net(dst), kind: RouteKind::Blackhole, via: None, oif: None, src: None, metric, onlink: false }
    }

    #[test]
    fn an_ipv4_route_message_is_the_one_weft_always_sent() {
        let r = Route { metric: 7, ..route("10.244.2.0/24", Some("172.30.0.12"), Some(2), Some("10.244.1.1")) };
        let old = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(10, 244, 2, 0), 24)
            .protocol(RouteProtocol::Other(WEFT_PROTO))
            .priority(7)
            .gateway(Ipv4Addr::new(172, 30, 0, 12))
            .output_interface(2)
            .pref_source(Ipv4Addr::new(10, 244, 1, 1))
            .build();
        assert_eq!(build_route(&r).expect("builds"), old);
        let dev = route("10.244.3.0/24", None, Some(9), Some("10.244.1.1"));
        let m = build_route(&dev).expect("builds");
        assert_eq!((m.header.address_family, m.header.scope), (AddressFamily::Inet, RouteScope::Link));
        let bh = build_route(&blackhole("10.244.0.0/16", 4_000_000_000)).expect("builds");
        assert_eq!((bh.header.kind, bh.header.scope), (RouteType::BlackHole, RouteScope::Universe));
    }

    #[test]
    fn an_ipv6_route_message_carries_ipv6_addresses_and_no_metric_for_the_default() {
        let r = route("fd00:2::/64", Some("fe80::2"), Some(2), None);
        let m = build_route(&r).expect("builds");
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(m.header.destination_prefix_length, 64);
        assert_eq!(m.header.protocol, RouteProtocol::Other(WEFT_PROTO));
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert_eq!(
            m.attributes,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet6("fd00:2::".parse().expect("literal"))),
                RouteAttribute::Gateway(RouteAddress::Inet6("fe80::2".parse().expect("literal"))),
                RouteAttribute::Oif(2),
            ]
        );
        let dev = build_route(&route("fd00:3::/64", None, Some(9), Some("fd00:1::1"))).expect("builds");
        assert_eq!(dev.header.scope, RouteScope::Link);
        assert!(dev
            .attributes
            .contains(&RouteAttribute::PrefSource(RouteAddress::Inet6("fd00:1::1".parse().expect("literal")))));
        let bh = build_route(&blackhole("fd00::/48", 4_000_000_000)).expect("builds");
        assert_eq!(bh.header.kind, RouteType::BlackHole);
        assert!(bh.attributes.contains(&RouteAttribute::Priority(4_000_000_000)));
    }

    #[test]
    fn a_route_of_mixed_families_is_never_built() {
        let e = build_route(&route("10.244.2.0/24", Some("fd00::12"), Some(2), None)).expect_err("mixed");
        assert_eq!(e.to_string(), "route 10.244.2.0/24: gateway fd00::12 is not IPv4 like the destination");
        assert!(build_route(&route("fd00:2::/64", None, Some(2), Some("10.244.1.1"))).is_err());
    }

    #[test]
    fn built_routes_of_both_families_parse_back_to_themselves() {
        for r in [
            route("10.244.2.0/24", Some("172.30.0.12"), Some(2), None),
            route("10.244.3.0/24", None, Some(9), Some("10.244.1.1")),
            blackhole("10.244.0.0/16", 4_000_000_000),
            route("0.0.0.0/0", Some("10.244.1.1"), Some(3), None),
            route("fd00:2::/64", Some("fe80::2"), Some(2), None),
            route("fd00:3::/64", None, Some(9), Some("fd00:1::1")),
            blackhole("fd00::/48", 4_000_000_000),
            Route { metric: 50, ..route("fd00:4::/64", Some("fd00:ff::4"), Some(2), None) },
            Route { onlink: true, ..route("10.244.5.0/24", Some("10.244.5.0"), Some(7), None) },
            Route { onlink: true, ..route("fd00:5::/64", Some("fd00:5::"), Some(8), None) },
        ] {
            assert_eq!(parse_route(&build_route(&r).expect("builds")), Some(r.clone()), "{r:?}");
        }
    }

    #[test]
    fn ipv6_routes_as_the_kernel_lists_them_read_as_weft_wrote_them() {
        // The kernel gives an IPv6 route without a metric 1024 and lists a blackhole on lo.
        let mut m = build_route(&blackhole("fd00::/48", 0)).expect("builds");
        m.attributes.push(RouteAttribute::Priority(IPV6_DEFAULT_METRIC));
        m.attributes.push(RouteAttribute::Oif(1));
        assert_eq!(parse_route(&m), Some(blackhole("fd00::/48", 0)));
        // A default route has no destination attribute: the family's unspecified address.
        let mut d = build_route(&route("::/0", Some("fe80::1"), Some(3), None)).expect("builds");
        d.attributes.retain(|a| !matches!(a, RouteAttribute::Destination(_)));
        assert_eq!(parse_route(&d), Some(route("::/0", Some("fe80::1"), Some(3), None)));
        // IPv4 keeps a metric of 1024 as it is.
        let v4 = Route { metric: 1024, ..route("10.244.2.0/24", Some("172.30.0.12"), Some(2), None) };
        assert_eq!(parse_route(&build_route(&v4).expect("builds")), Some(v4));
    }

    #[test]
    fn a_route_message_weft_cannot_read_is_skipped() {
        let mut local = build_route(&route("fd00:2::/64", None, Some(2), None)).expect("builds");
        local.header.kind = RouteType::Local;
        assert_eq!(parse_route(&local), None);
        let mut crossed = build_route(&route("10.244.2.0/24", None, Some(2), None)).expect("builds");
        crossed.header.address_family = AddressFamily::Inet6;
        assert_eq!(parse_route(&crossed), None, "an IPv4 destination in an IPv6 message");
        let mut other = build_route(&route("10.244.2.0/24", None, Some(2), None)).expect("builds");
        other.header.address_family = AddressFamily::Mpls;
        assert_eq!(family_of(&other), None);
        assert_eq!(parse_route(&other), None);
    }

    #[test]
    fn addresses_of_both_families_parse_and_only_ipv6_skips_dad() {
        let mut v4 =
            AddressMessageBuilder::<Ipv4Addr>::new().index(3).address(Ipv4Addr::new(10, 244, 1, 1), 24).build();
        let mut v6 = AddressMessageBuilder::<Ipv6Addr>::new()
            .index(3)
            .address("fd00:1::1".parse().expect("literal"), 64)
            .build();
        assert_eq!(addr_of(&v4), Some(net("10.244.1.1/24")));
        assert_eq!(addr_of(&v6), Some(net("fd00:1::1/64")));
        skip_dad(&mut v4);
        skip_dad(&mut v6);
        assert!(!v4.header.flags.contains(AddressHeaderFlags::Nodad));
        assert!(v6.header.flags.contains(AddressHeaderFlags::Nodad));
        // As the kernel lists an IPv6 address: IFA_ADDRESS only.
        v6.attributes.retain(|a| matches!(a, AddressAttribute::Address(_)));
        assert_eq!(addr_of(&v6), Some(net("fd00:1::1/64")));
    }

    #[test]
    fn neighbour_addresses_of_both_families_round_trip() {
        for s in ["10.244.2.0", "fd00:2::", "fe80::1"] {
            assert_eq!(neighbour_ip(&neighbour_address(ip(s))), Some(ip(s)));
        }
        let raw6: [u8; 16] = "fd00::9".parse::<Ipv6Addr>().expect("literal").octets();
        assert_eq!(neighbour_ip(&NeighbourAddress::Other(raw6.to_vec())), Some(ip("fd00::9")));
        assert_eq!(neighbour_ip(&NeighbourAddress::Other(vec![172, 31, 0, 9])), Some(ip("172.31.0.9")));
        assert_eq!(neighbour_ip(&NeighbourAddress::Other(vec![1, 2, 3])), None);
    }

    #[test]
    fn an_ipv6_neighbour_with_weft_protocol_is_weft_s_and_a_static_one_is_another_s() {
        let mac = vec![2, 0, 0, 0, 0, 9];
        let msg = |proto: Option<u8>, state: NeighbourState| {
            let mut m = NeighbourMessage::default();
            m.header = NeighbourHeader { family: AddressFamily::Inet6, ifindex: 4, state, ..m.header };
            m.attributes.push(NeighbourAttribute::Destination(neighbour_address(ip("fd00:1::9"))));
            m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.clone()));
            if let Some(p) = proto {
                m.attributes.push(NeighbourAttribute::Protocol(RouteProtocol::Other(p)));
            }
            m
        };
        let entry = Neighbour { ifindex: 4, ip: ip("fd00:1::9"), mac: Mac([2, 0, 0, 0, 0, 9]) };
        let ours = parse_neighbour(&msg(Some(WEFT_PROTO), NeighbourState::Permanent)).expect("parses");
        assert_eq!((ours.entry, ours.owner), (entry.clone(), Owner::Weft));
        let other = parse_neighbour(&msg(None, NeighbourState::Permanent)).expect("parses");
        assert_eq!(other.owner, Owner::Other);
        let learned = parse_neighbour(&msg(None, NeighbourState::Reachable)).expect("parses");
        assert_eq!(learned.owner, Owner::Learned);
    }
}

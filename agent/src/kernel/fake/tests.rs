//! Unit tests of the in-memory kernel: the errors the kernel gives, replace semantics,
//! ownership marks, namespaces, both address families and fault injection.

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
        onlink: false,
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
    k.add_addr(p, net("10.0.0.1/24")).await.expect("addr");
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
    assert!(inside.addrs(p).await.expect("list").is_empty());
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
    k.add_addr(p, net("10.244.1.2/24")).await.expect("addr");
    k.replace_default_route(ip("10.244.1.1"), p).await.expect("route");
    k.replace_default_route(ip("10.244.1.3"), p).await.expect("replace");
    let defaults: Vec<_> = k.routes().into_iter().filter(|t| t.route.dst.prefix_len() == 0).collect();
    assert_eq!(defaults.len(), 1, "{defaults:?}");
    assert_eq!(defaults[0].route.via, Some("10.244.1.3".parse().expect("literal")));
    assert_eq!(defaults[0].proto, BOOT_PROTO);
    assert_eq!(k.default_route_oif(Family::V4).await.expect("oif"), Some(p));
    assert!(k.weft_routes().await.expect("list").is_empty(), "the pod route is not weft-marked");
}

#[tokio::test]
async fn addresses_are_idempotent_and_the_v4_view_filters_families() {
    let k = FakeKernel::new();
    let eth = k.seed_link("eth0", "veth", 1500);
    k.add_addr(eth, net("10.0.0.1/24")).await.expect("v4");
    k.add_addr(eth, net("10.0.0.1/24")).await.expect("again");
    k.add_addr(eth, net("fd00::1/64")).await.expect("v6");
    assert_eq!(k.addrs(eth).await.expect("list").len(), 2);
    assert_eq!(
        k.addrs(eth)
            .await
            .expect("v4 list")
            .into_iter()
            .filter_map(|a| if let IpNet::V4(v4) = a { Some(v4) } else { None })
            .collect::<Vec<_>>(),
        vec!["10.0.0.1/24".parse::<Ipv4Net>().expect("literal")]
    );
    k.take_calls();
    k.del_addr(eth, "10.9.9.9/24".parse().expect("literal")).await.expect("absent is fine");
    assert!(k.take_calls().is_empty(), "nothing to delete, nothing sent");
    assert_eq!(code(k.add_addr(42, net("10.0.0.2/24")).await), Some(libc::ENODEV));
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

#[tokio::test]
async fn ipv6_routes_live_beside_ipv4_ones_and_a_mixed_route_is_never_sent() {
    let k = FakeKernel::new();
    let eth = k.seed_link("eth0", "veth", 1500);
    let v4 = Route {
        dst: net("0.0.0.0/0"),
        kind: RouteKind::Blackhole,
        via: None,
        oif: None,
        src: None,
        metric: 7,
        onlink: false,
    };
    let v6 = Route { dst: net("::/0"), ..v4.clone() };
    k.apply(&Action::Add(v4.clone())).await.expect("v4 blackhole");
    k.apply(&Action::Add(v6.clone())).await.expect("v6 blackhole with the same prefix length and metric");
    k.apply(&Action::Add(route("fd00:2::/64", "fd00:ff::12", eth))).await.expect("v6 add");
    k.apply(&Action::Add(route("fd00:2::/64", "fd00:ff::99", eth))).await.expect("v6 add over it");
    assert_eq!(
        k.weft_routes().await.expect("list"),
        vec![v4.clone(), v6.clone(), route("fd00:2::/64", "fd00:ff::99", eth)]
    );
    k.apply(&Action::Del(v6.clone())).await.expect("del v6");
    assert_eq!(k.weft_routes().await.expect("list"), vec![v4, route("fd00:2::/64", "fd00:ff::99", eth)]);
    k.take_calls();
    let mixed = route("10.244.2.0/24", "fd00:ff::12", eth);
    let e = k.apply(&Action::Add(mixed)).await.expect_err("a v6 gateway on a v4 route");
    assert!(e.downcast_ref::<crate::routes::MixedFamily>().is_some(), "{e:#}");
    assert!(k.take_calls().is_empty(), "a refused route is never sent");
}

#[tokio::test]
async fn ipv6_default_route_is_per_family_and_a_link_local_gateway_is_on_link() {
    let k = FakeKernel::new();
    k.add_veth("h", "p", 1500).await.expect("pair");
    let p = k.link("p").await.expect("lookup").expect("p").index;
    k.set_link(p, None, true, None).await.expect("up");
    assert_eq!(code(k.replace_default_route(ip("fd00:1::1"), p).await), Some(libc::ENETUNREACH));
    k.add_addr(p, net("10.244.1.2/24")).await.expect("v4 addr");
    k.add_addr(p, net("fd00:1::2/64")).await.expect("v6 addr");
    k.replace_default_route(ip("10.244.1.1"), p).await.expect("v4 default");
    k.replace_default_route(ip("fd00:1::1"), p).await.expect("v6 default");
    k.replace_default_route(ip("fe80::1"), p).await.expect("v6 default via a link-local gateway");
    let defaults: Vec<_> = k.routes().into_iter().map(|t| (t.route.dst, t.route.via, t.proto)).collect();
    assert_eq!(
        defaults,
        vec![(net("0.0.0.0/0"), Some(ip("10.244.1.1")), BOOT_PROTO), (net("::/0"), Some(ip("fe80::1")), BOOT_PROTO)]
    );
    assert_eq!(k.default_route_oif(Family::V4).await.expect("oif"), Some(p));
    assert_eq!(k.default_route_oif(Family::V6).await.expect("oif"), Some(p));
    let other = FakeKernel::new();
    assert_eq!(other.default_route_oif(Family::V6).await.expect("oif"), None);
}

#[tokio::test]
async fn ipv6_addresses_and_neighbours_go_through_the_same_calls() {
    let k = FakeKernel::new();
    let eth = k.seed_link("eth0", "veth", 1500);
    k.add_addr(eth, net("fd00:1::1/64")).await.expect("v6");
    k.add_addr(eth, net("fd00:1::1/64")).await.expect("again");
    k.add_addr(eth, net("10.0.0.1/24")).await.expect("v4");
    assert_eq!(k.addrs(eth).await.expect("list"), vec![net("fd00:1::1/64"), net("10.0.0.1/24")]);
    k.del_addr(eth, net("fd00:1::1/64")).await.expect("del v6");
    assert_eq!(k.addrs(eth).await.expect("list"), vec![net("10.0.0.1/24")]);
    let ours = Neighbour { ifindex: eth, ip: ip("fd00:1::9"), mac: mac(9) };
    k.add_neighbour(&ours).await.expect("v6 neighbour");
    k.add_neighbour(&Neighbour { ip: ip("10.0.0.9"), ..ours.clone() }).await.expect("v4 neighbour, same MAC");
    k.seed_neighbour(Neighbour { ifindex: eth, ip: ip("fd00:1::8"), mac: mac(8) }, Owner::Other);
    assert_eq!(code(k.add_neighbour(&ours).await), Some(libc::EEXIST));
    let e = k.del_neighbour(eth, ip("fd00:1::8")).await.expect_err("foreign");
    assert!(e.downcast_ref::<NotOurs>().is_some(), "{e:#}");
    k.del_neighbour(eth, ip("fd00:1::9")).await.expect("del v6");
    let left: Vec<_> = k.neighbours(eth).await.expect("list").into_iter().map(|l| (l.entry.ip, l.owner)).collect();
    assert_eq!(left, vec![(ip("10.0.0.9"), Owner::Weft), (ip("fd00:1::8"), Owner::Other)]);
}

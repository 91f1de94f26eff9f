use super::*;
use crate::backend::tests::{dual_node, ip, net, node, peer};
use crate::kernel::fake::{Call, FakeKernel};

fn driver(ipv6_pool: bool) -> VxlanDriver {
    VxlanDriver {
        opts: VxlanOptions::default(),
        mac: vtep_mac("n1"),
        ipv6_pool,
        links: BTreeMap::new(),
        last_node: None,
        broken: BTreeMap::new(),
    }
}

/// A peer of the vxlan backend whose record publishes `mac` as its VTEP MAC.
fn vx_peer(name: &str, subnet: &str, public: &str, mac: &str) -> Peer {
    let mut p = peer(name, subnet, public);
    p.backend = weft_config::Backend::Vxlan;
    p.backend_data.insert(NAME.into(), serde_json::json!({ "vtep_mac": mac }));
    p
}

/// A fake kernel holding the node's underlay, and `node` pointing at it.
fn kernel_for(mut view: NodeView) -> (FakeKernel, NodeView) {
    let k = FakeKernel::new();
    view.underlay.index = k.seed_link("eth0", "veth", 1500);
    (k, view)
}

#[test]
fn the_vtep_mac_is_stable_local_and_unicast_and_differs_between_nodes() {
    let m = vtep_mac("n1");
    assert_eq!(m, vtep_mac("n1"), "the same on every start");
    assert_ne!(m, vtep_mac("n2"));
    assert_eq!(m.0[0] & 0x03, 0x02, "locally administered, unicast: {m}");
}

#[test]
fn the_pod_mtu_leaves_room_for_the_outer_headers_of_the_family_carried() {
    let d = driver(false);
    assert_eq!(Driver::<FakeKernel>::pod_mtu(&d, 1500, None), 1450);
    assert_eq!(Driver::<FakeKernel>::pod_mtu(&d, 1500, Some(1400)), 1400, "bridge.mtu may only lower it");
    assert_eq!(Driver::<FakeKernel>::pod_mtu(&driver(true), 1500, None), 1430, "IPv6 outer header");
}

#[tokio::test]
async fn ensure_makes_one_device_per_family_with_weft_s_settings() {
    let (k, view) = kernel_for(dual_node("172.30.0.11/24", "fd00:172:30::11/64"));
    let mut d = driver(true);
    d.ensure(&k, &view).await.expect("ensure");
    let v4 = k.link(DEVICE).await.expect("list").expect("IPv4 device");
    let v6 = k.link(DEVICE6).await.expect("list").expect("IPv6 device");
    let spec = |local: &str| Vxlan {
        vni: 1,
        port: 8472,
        local: Some(ip(local)),
        underlay: Some(view.underlay.index),
        learning: false,
    };
    assert_eq!(v4.vxlan, Some(spec("172.30.0.11")));
    assert_eq!(v6.vxlan, Some(spec("fd00:172:30::11")));
    assert_eq!((v4.mtu, v6.mtu, v4.up, v6.up), (1450, 1430, true, true));
    assert_eq!((v4.mac, v6.mac), (Some(vtep_mac("n1")), Some(vtep_mac("n1"))));
    assert_eq!(k.addrs(v4.index).await.expect("addrs"), vec![net("10.244.1.0/32")]);
    assert_eq!(k.addrs(v6.index).await.expect("addrs"), vec![net("fd00:10:244:1::/128")]);
    k.take_calls();
    d.ensure(&k, &view).await.expect("again");
    let changes: Vec<(String, Call)> =
        k.take_calls().into_iter().filter(|(_, c)| !matches!(c, Call::AddAddress { .. })).collect();
    assert!(changes.is_empty(), "a device as wanted is left alone: {changes:?}");
}

#[tokio::test]
async fn a_device_with_other_settings_is_made_anew_and_a_downed_one_comes_back_before_the_plan() {
    let (k, view) = kernel_for(node("172.30.0.11/24"));
    let wrong = Vxlan {
        vni: 7,
        port: 4789,
        local: Some(ip("172.30.0.11")),
        underlay: Some(view.underlay.index),
        learning: true,
    };
    let old = k.add_vxlan(DEVICE, 1500, &wrong).await.expect("a device someone made");
    let mut d = driver(false);
    d.ensure(&k, &view).await.expect("ensure");
    let l = k.link(DEVICE).await.expect("list").expect("device");
    assert_ne!(l.index, old, "replaced");
    assert_eq!(l.vxlan.map(|v| (v.vni, v.port, v.learning)), Some((1, 8472, false)));
    k.set_link(l.index, None, false, None).await.expect("down");
    Driver::<FakeKernel>::observe(&mut d, &k).await.expect("observe");
    assert!(k.link(DEVICE).await.expect("list").expect("device").up, "up again");
    k.del_link(l.index).await.expect("deleted by hand");
    Driver::<FakeKernel>::observe(&mut d, &k).await.expect("observe");
    let again = k.link(DEVICE).await.expect("list").expect("made again before the plan");
    assert_eq!(d.links.get(&Family::V4), Some(&again.index));
}

#[tokio::test]
async fn a_device_that_cannot_be_made_again_refuses_its_family_s_peers_and_keeps_the_other_family() {
    let (k, view) = kernel_for(dual_node("172.30.0.11/24", "fd00:172:30::11/64"));
    let mut d = driver(true);
    d.ensure(&k, &view).await.expect("ensure");
    let v6 = k.link(DEVICE6).await.expect("list").expect("IPv6 device");
    k.del_link(v6.index).await.expect("deleted by hand");
    k.fail_next(|c| matches!(c, Call::AddVxlan { name, .. } if name == DEVICE6), libc::EADDRINUSE);
    Driver::<FakeKernel>::observe(&mut d, &k).await.expect("observe goes on without the IPv6 device");
    let m2 = "02:00:00:00:00:02";
    let peers = [
        vx_peer("n2", "10.244.2.0/24", "172.30.1.12", m2),
        vx_peer("n2", "fd00:10:244:2::/64", "fd00:172:30:1::12", m2),
    ];
    let plan = Driver::<FakeKernel>::plan(&d, &peers.iter().collect::<Vec<_>>(), &view);
    assert_eq!(plan.routes.iter().map(|r| r.dst).collect::<Vec<_>>(), vec![net("10.244.2.0/24")]);
    assert_eq!(plan.refused.len(), 1);
    assert!(
        plan.refused[0].reason.starts_with("the weft-vxlan6 device could not be made: "),
        "{}",
        plan.refused[0].reason
    );
    Driver::<FakeKernel>::observe(&mut d, &k).await.expect("observe");
    assert!(k.link(DEVICE6).await.expect("list").is_some(), "made at the next try");
    let plan = Driver::<FakeKernel>::plan(&d, &peers.iter().collect::<Vec<_>>(), &view);
    assert_eq!((plan.routes.len(), plan.refused.len()), (2, 0));
}

#[tokio::test]
async fn a_peer_gets_an_fdb_entry_a_neighbour_and_an_onlink_route_on_the_device_of_its_family() {
    let (k, view) = kernel_for(dual_node("172.30.0.11/24", "fd00:172:30::11/64"));
    let mut d = driver(true);
    d.ensure(&k, &view).await.expect("ensure");
    let (dev, dev6) = (d.links[&Family::V4], d.links[&Family::V6]);
    let m2 = "02:00:00:00:00:02";
    let peers = [
        vx_peer("n2", "10.244.2.0/24", "172.30.1.12", m2),
        vx_peer("n2", "fd00:10:244:2::/64", "fd00:172:30:1::12", m2),
        peer("n3", "10.244.3.0/24", "172.30.0.13"),
        vx_peer("n4", "10.244.4.0/24", "172.30.0.14", "nonsense"),
    ];
    let plan = Driver::<FakeKernel>::plan(&d, &peers.iter().collect::<Vec<_>>(), &view);
    let mac: Mac = m2.parse().expect("literal");
    assert_eq!(
        plan.fdb,
        vec![
            Fdb { ifindex: dev, mac, dst: ip("172.30.1.12") },
            Fdb { ifindex: dev6, mac, dst: ip("fd00:172:30:1::12") }
        ]
    );
    assert_eq!(
        plan.neighbours,
        vec![
            Neighbour { ifindex: dev, ip: ip("10.244.2.0"), mac },
            Neighbour { ifindex: dev6, ip: ip("fd00:10:244:2::"), mac }
        ]
    );
    let routes: Vec<_> = plan.routes.iter().map(|r| (r.dst, r.via, r.oif, r.onlink)).collect();
    assert_eq!(
        routes,
        vec![
            (net("10.244.2.0/24"), Some(ip("10.244.2.0")), Some(dev), true),
            (net("fd00:10:244:2::/64"), Some(ip("fd00:10:244:2::")), Some(dev6), true)
        ]
    );
    let refused: Vec<_> = plan.refused.iter().map(|r| (r.node.as_str(), r.reason.as_str())).collect();
    assert_eq!(
        refused,
        vec![
            ("n3", "its record has no VTEP MAC (is it running the vxlan backend?)"),
            ("n4", "its record's VTEP MAC is unusable: \"nonsense\" is not a MAC address")
        ]
    );
    assert_eq!(plan.entry_links, vec![dev, dev6]);
}

#[tokio::test]
async fn without_an_ipv6_subnet_there_is_no_ipv6_device_and_ipv6_peers_are_refused() {
    let (k, view) = kernel_for(node("172.30.0.11/24"));
    let mut d = driver(false);
    d.ensure(&k, &view).await.expect("ensure");
    assert!(k.link(DEVICE6).await.expect("list").is_none());
    let p = vx_peer("n2", "fd00:10:244:2::/64", "fd00:172:30::12", "02:00:00:00:00:02");
    let plan = Driver::<FakeKernel>::plan(&d, &[&p], &view);
    assert!(plan.routes.is_empty());
    assert_eq!(plan.refused[0].reason, "this node has no IPv6 subnet, so no weft-vxlan6 device");
}

#[test]
fn the_record_carries_the_vtep_mac() {
    let d = driver(false);
    let u = node("172.30.0.11/24").underlay;
    let data = Driver::<FakeKernel>::backend_data(&d, &u).expect("data");
    assert_eq!(data, serde_json::json!({ "vtep_mac": vtep_mac("n1").to_string() }));
}

#[tokio::test]
async fn auto_routes_on_link_peers_directly_and_encapsulates_the_rest_per_family() {
    let cfg = weft_config::AgentConfig::parse(
        "agent.toml",
        "node_name = \"n1\"\nnode_id = \"id-1\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
    )
    .expect("valid config");
    let config = weft_config::NetworkConfig::with_pools(
        "t",
        Some(("10.244.0.0/16", 24)),
        Some(("fd00:10:244::/56", 64)),
        weft_config::Backend::Auto,
    )
    .expect("valid");
    let live = crate::api::LiveQuic::default();
    let mut drivers: crate::backend::Drivers<FakeKernel> =
        crate::backend::build(&crate::backend::BuildContext { cfg: &cfg, net: &config, live: &live }).expect("auto");
    assert_eq!(drivers.names(), "host-gw+vxlan");
    assert!(drivers.serve(&config));
    let (k, view) = kernel_for(dual_node("172.30.0.11/24", "fd00:172:30::11/64"));
    drivers.ensure(&k, &view).await.expect("ensure");
    drivers.observe(&k).await.expect("observe");
    let m = "02:00:00:00:00:02";
    let peers = [
        vx_peer("n2", "10.244.2.0/24", "172.30.1.12", m),
        vx_peer("n2", "fd00:10:244:2::/64", "fd00:172:30:1::12", m),
        vx_peer("n3", "10.244.3.0/24", "172.30.0.13", "02:00:00:00:00:03"),
        vx_peer("n3", "fd00:10:244:3::/64", "fd00:172:30::13", "02:00:00:00:00:03"),
    ];
    let (plan, policy) = drivers.plan(&peers.iter().collect::<Vec<_>>(), &view);
    let dev = |name: &str| futures::executor::block_on(k.link(name)).expect("list").expect("device").index;
    let eth0 = view.underlay.index;
    let mut routes: Vec<_> = plan.routes.iter().map(|r| (r.dst, r.via, r.oif, r.onlink)).collect();
    routes.sort();
    assert_eq!(
        routes,
        vec![
            (net("10.244.2.0/24"), Some(ip("10.244.2.0")), Some(dev(DEVICE)), true),
            (net("10.244.3.0/24"), Some(ip("172.30.0.13")), Some(eth0), false),
            (net("fd00:10:244:2::/64"), Some(ip("fd00:10:244:2::")), Some(dev(DEVICE6)), true),
            (net("fd00:10:244:3::/64"), Some(ip("fd00:172:30::13")), Some(eth0), false),
        ],
        "n3 shares the segment: direct routes; n2 is behind the router: vxlan"
    );
    assert_eq!(plan.fdb.len(), 2, "entries only for the encapsulated peer: {:?}", plan.fdb);
    assert!(plan.refused.is_empty(), "{:?}", plan.refused);
    assert_eq!(policy.default, ForwardMode::Open, "host-gw and vxlan forward alike");
}

//! Tests of the seam itself (several drivers on one node) and helpers for the drivers' tests.

use super::*;
use crate::kernel::fake::FakeKernel;
use crate::routes::RouteKind;
use weft_config::Backend;

pub fn net(s: &str) -> IpNet {
    s.parse().expect("literal")
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal")
}

/// A route of the IPv4-only routes layer.
fn v4net(s: &str) -> ipnet::Ipv4Net {
    s.parse().expect("literal")
}

/// Node n1 with subnet 10.244.1.0/24 of 10.244.0.0/16, underlay eth0 (#2) holding `addr`.
pub fn node(addr: &str) -> NodeView {
    let a = net(addr);
    NodeView {
        underlay: UnderlayInfo { index: 2, name: "eth0".into(), public_ip: a.addr(), public_ip6: None, mtu: 1500 },
        prefixes: vec![a],
        clusters: PerFamily::V4(net("10.244.0.0/16")),
        subnets: PerFamily::V4(net("10.244.1.0/24")),
        mtu: 1500,
    }
}

/// [`node`] in a dual-stack network: also subnet fd00:10:244:1::/64 of fd00:10:244::/56, the
/// underlay holding `addr6` too (and a link-local address, as every IPv6 interface does).
pub fn dual_node(addr: &str, addr6: &str) -> NodeView {
    let mut n = node(addr);
    let a6 = net(addr6);
    n.underlay.public_ip6 = Some(a6.addr());
    n.prefixes.extend([a6, net("fe80::11/64")]);
    n.clusters = PerFamily::Dual(net("10.244.0.0/16"), net("fd00:10:244::/56"));
    n.subnets = PerFamily::Dual(net("10.244.1.0/24"), net("fd00:10:244:1::/64"));
    n
}

pub fn peer(node: &str, subnet: &str, public: &str) -> Peer {
    Peer {
        subnet: net(subnet),
        node: node.into(),
        node_id: format!("id-{node}"),
        public_ip: ip(public),
        backend: Backend::HostGw,
        epoch: 1,
        backend_data: Default::default(),
        mod_revision: 1,
    }
}

pub fn via(dst: &str, gw: &str) -> Route {
    let gw = gw.parse().expect("literal");
    Route {
        dst: v4net(dst).into(),
        kind: RouteKind::Unicast,
        via: Some(gw),
        oif: Some(2),
        src: None,
        metric: 0,
        onlink: false,
    }
}

/// `dst via gw dev eth0` of the IPv6 family.
pub fn via6(dst: &str, gw: &str) -> Route {
    Route {
        dst: net(dst),
        kind: RouteKind::Unicast,
        via: Some(ip(gw)),
        oif: Some(2),
        src: None,
        metric: 0,
        onlink: false,
    }
}

/// A driver that carries the peers whose node name starts with `prefix` (or every peer), with
/// a fixed forward mode, MTU and record entry; its plan is one blackhole per peer.
struct Fake {
    name: &'static str,
    prefix: Option<&'static str>,
    mode: ForwardMode,
    mtu: u32,
}

impl Driver<FakeKernel> for Fake {
    fn name(&self) -> &'static str {
        self.name
    }
    fn pod_mtu(&self, _: u32, _: Option<u32>) -> u32 {
        self.mtu
    }
    fn backend_data(&self, u: &UnderlayInfo) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "at": u.public_ip.to_string() }))
    }
    fn accepts(&self, p: &Peer, _: &NodeView) -> bool {
        self.prefix.is_none_or(|x| p.node.starts_with(x))
    }
    fn plan(&self, peers: &[&Peer], _: &NodeView) -> Plan {
        let routes = peers
            .iter()
            .map(|p| Route {
                dst: p.subnet,
                kind: RouteKind::Blackhole,
                via: None,
                oif: None,
                src: None,
                metric: 0,
                onlink: false,
            })
            .collect();
        Plan { routes, ..Plan::default() }
    }
    fn forward_mode(&self) -> ForwardMode {
        self.mode.clone()
    }
}

fn tunnel() -> ForwardMode {
    ForwardMode::Tunnel { tun: "weft-tun0".into() }
}

fn two_drivers() -> Drivers<FakeKernel> {
    Drivers::from_list(vec![
        Box::new(Fake { name: "direct", prefix: Some("near"), mode: ForwardMode::Open, mtu: 1500 }),
        Box::new(Fake { name: "encap", prefix: None, mode: tunnel(), mtu: 1424 }),
    ])
}

#[test]
fn each_peer_goes_to_the_first_driver_that_accepts_it_and_the_rest_to_the_last() {
    let d = two_drivers();
    let n = node("172.30.0.11/24");
    let peers = [
        peer("near-a", "10.244.2.0/24", "172.30.0.12"),
        peer("far-b", "10.244.3.0/24", "172.30.1.13"),
        peer("near-c", "10.244.4.0/24", "172.30.0.14"),
    ];
    let refs: Vec<&Peer> = peers.iter().collect();
    let shares = d.assign(&refs, &n);
    let names = |v: &Vec<&Peer>| v.iter().map(|p| p.node.clone()).collect::<Vec<_>>();
    assert_eq!(names(&shares[0]), ["near-a", "near-c"]);
    assert_eq!(names(&shares[1]), ["far-b"]);
    let (plan, _) = d.plan(&refs, &n);
    let dsts: Vec<String> = plan.routes.iter().map(|r| r.dst.to_string()).collect();
    assert_eq!(dsts, ["10.244.2.0/24", "10.244.4.0/24", "10.244.3.0/24"], "every peer planned once");
}

#[test]
fn a_tunnelling_driver_makes_fail_closed_the_default_and_open_peers_overrides() {
    let d = two_drivers();
    let n = node("172.30.0.11/24");
    let peers = [peer("near-a", "10.244.2.0/24", "172.30.0.12"), peer("far-b", "10.244.3.0/24", "172.30.1.13")];
    let (_, policy) = d.plan(&peers.iter().collect::<Vec<_>>(), &n);
    assert_eq!(policy.default, tunnel());
    assert_eq!(
        policy.overrides.into_iter().collect::<Vec<_>>(),
        vec![(v4net("10.244.2.0/24").into(), ForwardMode::Open)]
    );
}

#[test]
fn one_driver_gives_one_policy_without_overrides() {
    for mode in [ForwardMode::Open, tunnel()] {
        let d =
            Drivers::from_list(vec![Box::new(Fake { name: "only", prefix: Some("x"), mode: mode.clone(), mtu: 1 })]);
        let peers = [peer("a", "10.244.2.0/24", "172.30.0.12"), peer("b", "10.244.3.0/24", "172.30.1.13")];
        let (plan, policy) = d.plan(&peers.iter().collect::<Vec<_>>(), &node("172.30.0.11/24"));
        assert_eq!(plan.routes.len(), 2, "the last (only) driver takes peers it does not accept");
        assert_eq!(policy, ForwardPolicy { default: mode, overrides: BTreeMap::new() });
    }
}

#[test]
fn the_pod_mtu_fits_every_driver_and_each_publishes_under_its_name() {
    let d = two_drivers();
    assert_eq!(d.pod_mtu(1500, None), 1424);
    assert_eq!(d.names(), "direct+encap");
    let u = node("172.30.0.11/24").underlay;
    let data = d.backend_data(&u);
    assert_eq!(data.keys().collect::<Vec<_>>(), ["direct", "encap"]);
    assert_eq!(data["encap"]["at"], "172.30.0.11");
}

#[test]
fn the_registry_builds_the_network_backend_and_knows_every_leftover_device() {
    let toml = r#"
node_name = "n1"
node_id = "id-1"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
[quic]
ca_file = "/nonexistent/ca.pem"
cert_file = "/nonexistent/n1.pem"
key_file = "/nonexistent/n1.key"
"#;
    let cfg = AgentConfig::parse("agent.toml", toml).expect("valid config");
    let live = LiveQuic::default();
    let ctx = |net| BuildContext { cfg: &cfg, net, live: &live };
    let hg = NetworkConfig::new("t", "10.244.0.0/16", 24, Backend::HostGw).expect("valid");
    assert_eq!(build::<FakeKernel>(&ctx(&hg)).expect("host-gw").names(), "host-gw");
    let q = NetworkConfig::new("t", "10.244.0.0/16", 24, Backend::Quic).expect("valid");
    let quic = build::<FakeKernel>(&ctx(&q)).expect("quic");
    assert_eq!(quic.names(), "quic");
    assert!(quic.fixed_mtu_note().is_some(), "the tunnel's MTU is fixed at start");
    let vx = NetworkConfig::new("t", "10.244.0.0/16", 24, Backend::Vxlan).expect("valid");
    assert_eq!(build::<FakeKernel>(&ctx(&vx)).expect("vxlan").names(), "vxlan");
    let wg = NetworkConfig::new("t", "10.244.0.0/16", 24, Backend::WireGuard).expect("valid");
    assert_eq!(build::<FakeKernel>(&ctx(&wg)).expect("wireguard").names(), "wireguard");
    let auto_wg = NetworkConfig::new("t", "10.244.0.0/16", 24, Backend::Auto)
        .and_then(|n| n.with_encap("--encap", Backend::WireGuard))
        .expect("valid");
    assert_eq!(build::<FakeKernel>(&ctx(&auto_wg)).expect("auto").names(), "host-gw+wireguard");
    assert_eq!(leftover_links::<FakeKernel>(&cfg), ["weft-tun0", "weft-vxlan", "weft-vxlan6", "weft-wg0"]);
    let mut no_quic = cfg.clone();
    no_quic.quic = None;
    let e =
        build::<FakeKernel>(&BuildContext { cfg: &no_quic, net: &q, live: &live }).err().expect("quic needs [quic]");
    assert!(e.to_string().contains("no [quic] section"), "{e}");
    assert_eq!(leftover_links::<FakeKernel>(&no_quic), ["weft-vxlan", "weft-vxlan6", "weft-wg0"]);
}

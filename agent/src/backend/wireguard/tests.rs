use super::*;
use crate::backend::tests::{dual_node, net, node, peer};
use crate::kernel::fake::{Call, FakeKernel};
use std::path::PathBuf;

/// A directory of its own under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("weft-wg-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn key(b: u8) -> WgKey {
    [b; 32]
}

fn opts(key_file: PathBuf, keepalive: u16) -> WireGuardConfig {
    WireGuardConfig { port: 51820, persistent_keepalive_secs: keepalive, key_file }
}

/// A peer of the wireguard backend whose record publishes `key` and port 51820.
fn wg_peer(name: &str, subnet: &str, public: &str, k: WgKey) -> Peer {
    let mut p = peer(name, subnet, public);
    p.backend = weft_config::Backend::WireGuard;
    p.backend_data.insert(NAME.into(), serde_json::json!({ "public_key": encode_key(&k), "port": 51820 }));
    p
}

fn endpoint(s: &str) -> Option<SocketAddr> {
    Some(s.parse().expect("literal"))
}

#[test]
fn the_public_key_is_curve25519_s() {
    // RFC 7748, 6.1: Alice's key pair.
    let hex = |s: &str| -> WgKey {
        let v: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect();
        v.try_into().expect("32 bytes")
    };
    let private = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let public = hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    assert_eq!(public_key(&private), public);
}

#[test]
fn a_key_is_made_once_0600_and_read_back_and_a_bad_file_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("keys");
    let path = dir.0.join("state/wireguard.key");
    let (k, created) = load_or_create_key(&path).expect("made");
    assert!(created);
    assert_eq!(std::fs::metadata(&path).expect("written").permissions().mode() & 0o777, 0o600);
    assert!(!path.with_extension("tmp").exists(), "written atomically, no leftover");
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text.trim_end().len(), 44, "base64 as `wg genkey`: {text:?}");
    assert_eq!((k[0] & 7, k[31] & 0xc0), (0, 0x40), "clamped as wg genkey does");
    assert_eq!(load_or_create_key(&path).expect("read back"), (k, false), "the same key on the next start");
    std::fs::write(&path, "not a key\n").expect("spoil");
    let e = load_or_create_key(&path).expect_err("bad key file");
    let msg = format!("{e:#}");
    assert!(
        msg.starts_with(&format!("wireguard key file {}: expected a private key in base64", path.display())),
        "{msg}"
    );
    let e = load_or_create_key(&dir.0).expect_err("a directory");
    assert!(format!("{e:#}").contains(&format!("wireguard key file {}", dir.0.display())), "{e:#}");
}

#[test]
fn a_dual_stack_peer_is_one_wireguard_peer_with_both_subnets_at_its_ipv4_endpoint() {
    let peers = [
        wg_peer("n2", "10.244.2.0/24", "172.30.0.12", key(2)),
        wg_peer("n2", "fd00:10:244:2::/64", "fd00:172:30::12", key(2)),
        wg_peer("n3", "10.244.3.0/24", "172.30.1.13", key(3)),
    ];
    let (wg, refused) = plan_peers(&peers.iter().collect::<Vec<_>>(), Some(&key(1)), 25, Family::V4);
    assert_eq!(refused, []);
    assert_eq!(
        wg,
        vec![
            WgPeer {
                public_key: key(2),
                endpoint: endpoint("172.30.0.12:51820"),
                allowed_ips: vec![net("10.244.2.0/24"), net("fd00:10:244:2::/64")],
                keepalive: 25,
            },
            WgPeer {
                public_key: key(3),
                endpoint: endpoint("172.30.1.13:51820"),
                allowed_ips: vec![net("10.244.3.0/24")],
                keepalive: 25,
            },
        ]
    );
}

#[test]
fn peers_without_a_usable_key_or_endpoint_are_refused_with_the_reason() {
    let mut no_data = peer("n4", "10.244.4.0/24", "172.30.0.14");
    no_data.backend = weft_config::Backend::WireGuard;
    let mut bad_key = peer("n5", "10.244.5.0/24", "172.30.0.15");
    bad_key.backend_data.insert(NAME.into(), serde_json::json!({ "public_key": "AAAA", "port": 51820 }));
    let mut no_port = peer("n6", "10.244.6.0/24", "172.30.0.16");
    no_port.backend_data.insert(NAME.into(), serde_json::json!({ "public_key": encode_key(&key(6)) }));
    let peers = [
        no_data,
        bad_key,
        no_port,
        wg_peer("me-again", "10.244.7.0/24", "172.30.0.17", key(1)),
        wg_peer("n8", "10.244.8.0/24", "172.30.0.18", key(8)),
        wg_peer("copycat", "10.244.9.0/24", "172.30.0.19", key(8)),
        wg_peer("v6only", "fd00:10:244:a::/64", "fd00:172:30::1a", key(10)),
    ];
    let (wg, refused) = plan_peers(&peers.iter().collect::<Vec<_>>(), Some(&key(1)), 0, Family::V4);
    assert_eq!(wg.iter().map(|p| p.public_key).collect::<Vec<_>>(), [key(8)]);
    let reasons: Vec<(&str, &str)> = refused.iter().map(|r| (r.node.as_str(), r.reason.as_str())).collect();
    assert_eq!(
        reasons,
        [
            ("n4", "its record has no WireGuard key (is it running the wireguard backend?)"),
            ("n5", "its record's WireGuard public key is unusable: expected 32 bytes, found 3"),
            ("n6", "its record's wireguard data has no usable port"),
            ("me-again", "its record publishes this node's own WireGuard public key"),
            ("copycat", "its WireGuard public key is also node n8's"),
            ("v6only", "its record has no IPv4 underlay address to send WireGuard packets to"),
        ]
    );
}

#[test]
fn changes_add_missing_peers_set_changed_ones_remove_stale_ones_and_leave_the_rest() {
    let p = |k: u8, ep: &str, ips: &[&str]| WgPeer {
        public_key: key(k),
        endpoint: endpoint(ep),
        allowed_ips: ips.iter().map(|s| net(s)).collect(),
        keepalive: 0,
    };
    let current = vec![
        p(2, "172.30.0.12:51820", &["10.244.2.0/24"]),
        p(3, "172.30.0.13:51820", &["fd00:10:244:3::/64", "10.244.3.0/24"]),
        p(4, "172.30.0.14:51820", &["10.244.4.0/24"]),
        p(9, "172.30.0.15:51820", &["10.244.5.0/24"]),
    ];
    let desired = vec![
        p(2, "172.30.0.12:51820", &["10.244.2.0/24"]),
        p(3, "172.30.0.13:51820", &["10.244.3.0/24", "fd00:10:244:3::/64"]),
        p(4, "172.30.0.24:51820", &["10.244.4.0/24"]),
        p(5, "172.30.0.15:51820", &["10.244.5.0/24"]),
        p(6, "172.30.0.16:51820", &["10.244.6.0/24"]),
    ];
    assert_eq!(
        peer_changes(&desired, &current),
        vec![
            WgChange::RemovePeer(key(9)),
            WgChange::SetPeer(desired[2].clone()),
            WgChange::SetPeer(desired[3].clone()),
            WgChange::SetPeer(desired[4].clone()),
        ],
        "n5's key changed from 9 to 5: the old peer goes, the new one comes; n4 moved; n2 and n3 as wanted"
    );
    assert_eq!(peer_changes(&desired, &desired), [], "nothing to do");
    let mut keepalive = desired.clone();
    keepalive[0].keepalive = 25;
    assert_eq!(peer_changes(&keepalive, &desired), [WgChange::SetPeer(keepalive[0].clone())]);
    assert_eq!(
        peer_changes(&[], &desired).len(),
        5,
        "every peer of a device with none wanted goes, one by one (never a flush)"
    );
}

#[test]
fn the_mtu_leaves_room_for_wireguard_over_the_underlay_family() {
    assert_eq!(device_mtu(1500, Family::V4), 1440);
    assert_eq!(device_mtu(1500, Family::V6), 1420);
    assert_eq!(device_mtu(600, Family::V6), 576, "never below the IPv4 minimum");
    let d = WireGuardDriver::new(opts(PathBuf::from("/nonexistent/wg.key"), 0));
    assert_eq!(Driver::<FakeKernel>::pod_mtu(&d, 1500, None), 1440);
    assert_eq!(Driver::<FakeKernel>::pod_mtu(&d, 1500, Some(1400)), 1400, "bridge.mtu may only lower it");
    assert_eq!(Driver::<FakeKernel>::pod_mtu(&d, 9000, Some(9000)), 8940);
}

#[tokio::test]
async fn a_kernel_without_wireguard_is_refused_naming_the_module_and_what_to_do() {
    let k = FakeKernel::new().without_wireguard();
    let d = WireGuardDriver::new(opts(PathBuf::from("/nonexistent/wg.key"), 0));
    let e = Driver::<FakeKernel>::check(&d, &k).await.expect_err("no module");
    assert_eq!(
        format!("{e:#}"),
        "the wireguard backend cannot run on this node: this kernel has no WireGuard: the `wireguard` kernel module \
         is not loaded and could not be loaded (load it with `modprobe wireguard` on the host, or use another \
         backend: vxlan or quic)"
    );
    assert!(k.calls().is_empty(), "asking changes nothing");
    Driver::<FakeKernel>::check(&d, &FakeKernel::new()).await.expect("a kernel with WireGuard");
}

/// A driver with its key loaded from a fresh scratch dir, a fake kernel holding the node's
/// underlay, and `view` pointing at it.
fn ready(tag: &str, view: NodeView, keepalive: u16) -> (Scratch, WireGuardDriver, FakeKernel, NodeView) {
    let dir = Scratch::new(tag);
    let mut d = WireGuardDriver::new(opts(dir.0.join("wireguard.key"), keepalive));
    let k = FakeKernel::new();
    let mut view = view;
    view.underlay.index = k.seed_link("eth0", "veth", 1500);
    Driver::<FakeKernel>::prepare(&mut d, &view.underlay).expect("key");
    (dir, d, k, view)
}

#[tokio::test]
async fn ensure_makes_the_device_with_key_port_and_mtu_and_publishes_the_public_key() {
    let (_dir, mut d, k, view) = ready("ensure", node("172.30.0.11/24"), 0);
    let data = Driver::<FakeKernel>::backend_data(&d, &view.underlay).expect("data");
    let public = d.keys.as_ref().expect("keys").public;
    assert_eq!(data, serde_json::json!({ "public_key": encode_key(&public), "port": 51820 }));
    d.ensure(&k, &view).await.expect("ensure");
    let link = k.link(DEVICE).await.expect("list").expect("device");
    assert_eq!((link.kind.as_deref(), link.mtu, link.up), (Some("wireguard"), 1440, true));
    let dev = k.wireguard(link.index).await.expect("read");
    assert_eq!((dev.public_key, dev.listen_port, dev.peers.len()), (Some(public), 51820, 0));
    k.take_calls();
    d.ensure(&k, &view).await.expect("again");
    assert_eq!(k.take_calls(), [], "a device as wanted is left alone");
    // A downed or deleted device comes back before the next plan.
    k.del_link(link.index).await.expect("delete");
    d.observe(&k).await.expect("observe");
    let again = k.link(DEVICE).await.expect("list").expect("made again");
    assert!(again.up && d.link == Some(again.index));
    assert_eq!(k.wireguard(again.index).await.expect("read").public_key, Some(public));
}

#[tokio::test]
async fn the_plan_routes_peer_subnets_into_the_device_and_the_daemon_applies_and_follows_a_key_change() {
    let (_dir, mut d, k, view) = ready("plan", dual_node("172.30.0.11/24", "fd00:172:30::11/64"), 25);
    d.ensure(&k, &view).await.expect("ensure");
    let dev = d.link.expect("device");
    let peers = [
        wg_peer("n2", "10.244.2.0/24", "172.30.0.12", key(2)),
        wg_peer("n2", "fd00:10:244:2::/64", "fd00:172:30::12", key(2)),
    ];
    let plan = Driver::<FakeKernel>::plan(&d, &peers.iter().collect::<Vec<_>>(), &view);
    assert_eq!(plan.refused, []);
    let routes: Vec<(String, Option<u32>, Option<String>)> =
        plan.routes.iter().map(|r| (r.dst.to_string(), r.oif, r.src.map(|s| s.to_string()))).collect();
    assert_eq!(
        routes,
        [
            ("10.244.2.0/24".to_string(), Some(dev), Some("10.244.1.1".to_string())),
            ("fd00:10:244:2::/64".to_string(), Some(dev), Some("fd00:10:244:1::1".to_string())),
        ]
    );
    assert!(plan.routes.iter().all(|r| r.via.is_none() && r.check_family().is_ok()));
    let want = WgPeer {
        public_key: key(2),
        endpoint: endpoint("172.30.0.12:51820"),
        allowed_ips: vec![net("10.244.2.0/24"), net("fd00:10:244:2::/64")],
        keepalive: 25,
    };
    assert_eq!(plan.wireguard, [WgPlan { link: dev, peers: vec![want.clone()] }]);
    k.take_calls();
    assert_eq!(crate::daemon::sync_entries::sync_wireguard(&k, &plan).await, Vec::<String>::new());
    assert_eq!(
        k.take_calls(),
        [(
            crate::kernel::fake::ROOT.to_string(),
            Call::SetWireguard { index: dev, change: WgChange::SetPeer(want.clone()) }
        )]
    );
    assert_eq!(crate::daemon::sync_entries::sync_wireguard(&k, &plan).await, Vec::<String>::new());
    assert_eq!(k.take_calls(), [], "a device holding its peers is left alone");
    // n2 made a new key: its old peer is removed and the new one added.
    let moved = [
        wg_peer("n2", "10.244.2.0/24", "172.30.0.12", key(22)),
        wg_peer("n2", "fd00:10:244:2::/64", "fd00:172:30::12", key(22)),
    ];
    let plan = Driver::<FakeKernel>::plan(&d, &moved.iter().collect::<Vec<_>>(), &view);
    crate::daemon::sync_entries::sync_wireguard(&k, &plan).await;
    let calls: Vec<Call> = k.take_calls().into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        calls,
        [
            Call::SetWireguard { index: dev, change: WgChange::RemovePeer(key(2)) },
            Call::SetWireguard { index: dev, change: WgChange::SetPeer(WgPeer { public_key: key(22), ..want }) },
        ]
    );
    assert_eq!(k.wireguard(dev).await.expect("read").peers.iter().map(|p| p.public_key).collect::<Vec<_>>(), [key(22)]);
    // The peer gone: removed, nothing else touched.
    let plan = Driver::<FakeKernel>::plan(&d, &[], &view);
    crate::daemon::sync_entries::sync_wireguard(&k, &plan).await;
    assert_eq!(
        k.take_calls(),
        [(
            crate::kernel::fake::ROOT.to_string(),
            Call::SetWireguard { index: dev, change: WgChange::RemovePeer(key(22)) }
        )]
    );
}

#[test]
fn without_its_device_every_peer_is_refused_saying_why() {
    let d = WireGuardDriver::new(opts(PathBuf::from("/nonexistent/wg.key"), 0));
    let peers = [wg_peer("n2", "10.244.2.0/24", "172.30.0.12", key(2))];
    let plan = Driver::<FakeKernel>::plan(&d, &peers.iter().collect::<Vec<_>>(), &node("172.30.0.11/24"));
    assert_eq!(plan.routes, []);
    assert_eq!(plan.refused[0].reason, "the weft-wg0 device is not there yet");
    assert_eq!(
        Driver::<FakeKernel>::forward_mode(&d),
        ForwardMode::Tunnel { tun: DEVICE.into() },
        "fail closed: pod traffic only from the device and the bridge"
    );
}

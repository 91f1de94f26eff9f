//! Tests of the daemon's pure decisions.

use super::*;
use crate::backend::tests::{net, peer, via};
use crate::backend::{self, BuildContext};
use crate::kernel::fake::FakeKernel;
use crate::routes::RouteKind;
use weft_config::Backend;

fn keys() -> Keys {
    Keys::new("lab")
}

fn raw(key: &str, value: &[u8], rev: i64) -> RawRecord {
    RawRecord { key: key.into(), value: value.to_vec(), create_revision: rev, mod_revision: rev }
}

fn cfg() -> AgentConfig {
    let text = "node_name = \"n1\"\nnode_id = \"id1\"\nnetwork = \"lab\"\n[etcd]\nendpoints = [\"http://a:1\"]\n";
    AgentConfig::parse("agent.toml", text).expect("config")
}

fn underlay() -> UnderlayInfo {
    UnderlayInfo {
        index: 2,
        name: "eth0".into(),
        public_ip: "172.30.0.11".parse().expect("ip"),
        public_ip6: None,
        mtu: 1500,
    }
}

#[test]
fn existing_takes_subnet_keys_only_and_keeps_unreadable_records_as_taken() {
    let k = keys();
    let rec = SubnetRecord {
        schema: 1,
        node: "n2".into(),
        node_id: "id2".into(),
        public_ip: "172.30.0.12".parse().expect("ip"),
        public_ip6: None,
        backend: Backend::HostGw,
        epoch: 7,
        backend_data: Default::default(),
    };
    let list = [
        raw(&k.subnet(net("10.244.2.0/24")), rec.to_json().as_bytes(), 4),
        raw(&k.subnet(net("10.244.3.0/24")), b"{not json", 5),
        raw(&format!("{}junk", k.subnets_prefix()), b"{}", 6),
    ];
    let ex = existing(&k, &list);
    assert_eq!(ex.len(), 2, "the key that is no subnet is left out");
    assert_eq!((ex[0].subnet, ex[0].mod_revision), (net("10.244.2.0/24"), 4));
    assert_eq!(ex[0].record.as_ref().map(|r| r.node.as_str()), Some("n2"));
    assert_eq!((ex[1].subnet, ex[1].record.is_none()), (net("10.244.3.0/24"), true));
}

#[test]
fn own_record_carries_identity_underlay_and_epoch() {
    let cfg = cfg();
    let n = NetworkConfig::new("t", "10.244.0.0/16", 24, Backend::HostGw).expect("net");
    let live = Default::default();
    let d: Drivers<FakeKernel> = backend::build(&BuildContext { cfg: &cfg, net: &n, live: &live }).expect("drivers");
    let r = own_record(&cfg, "id1", 42, &underlay(), &n, &d);
    assert_eq!((r.node.as_str(), r.node_id.as_str(), r.epoch), ("n1", "id1", 42));
    assert_eq!(r.public_ip.to_string(), "172.30.0.11");
    assert_eq!(r.backend, Backend::HostGw);
    assert!(r.backend_data.is_empty(), "host-gw publishes nothing: {:?}", r.backend_data);
    assert_eq!(r.schema, weft_config::records::SCHEMA_VERSION);
}

#[test]
fn heartbeat_says_ready_with_subnet_and_time() {
    let h = heartbeat("id1", net("10.244.4.0/24"), 9, 1234);
    assert_eq!((h.node_id.as_str(), h.subnet, h.status.as_str()), ("id1", Some(net("10.244.4.0/24")), "ready"));
    assert_eq!((h.updated, h.epoch), (1234, 9));
}

#[test]
fn bridge_gets_the_first_address_and_nothing_to_remove_when_clean() {
    let p = bridge(net("10.244.3.0/24"), &[]).expect("plan");
    assert_eq!(p.gateway, net("10.244.3.1/24"));
    assert!(p.stale.is_empty());
    let p = bridge(net("10.244.3.0/24"), &[net("10.244.3.1/24")]).expect("plan");
    assert!(p.stale.is_empty(), "the gateway already there stays");
}

#[test]
fn bridge_addresses_of_an_old_subnet_are_stale() {
    let current = [net("10.244.1.1/24"), net("10.244.3.1/24"), net("10.244.3.1/25")];
    let p = bridge(net("10.244.3.0/24"), &current).expect("plan");
    assert_eq!(p.stale, vec![net("10.244.1.1/24"), net("10.244.3.1/25")], "other subnet and other prefix length go");
}

#[test]
fn bridge_keeps_the_other_familys_addresses_and_link_local() {
    let current = [net("10.244.1.1/24"), net("fe80::1/64"), net("fd00:10:244:3::1/64")];
    let p = bridge(net("10.244.3.0/24"), &current).expect("plan");
    assert_eq!(p.stale, vec![net("10.244.1.1/24")]);
    let p = bridge(net("fd00:10:244:3::/64"), &current).expect("plan");
    assert_eq!(p.gateway, net("fd00:10:244:3::1/64"));
    assert!(p.stale.is_empty(), "{:?}", p.stale);
}

#[test]
fn mtu_change_follows_unless_fixed_or_pinned() {
    assert_eq!(mtu_change(1500, 1500, None, false), MtuChange::Same);
    assert_eq!(mtu_change(576, 400, None, false), MtuChange::Same, "clamped to 576 like the first reading");
    assert_eq!(mtu_change(1500, 1400, None, false), MtuChange::Follow(1400));
    assert_eq!(mtu_change(1500, 1400, None, true), MtuChange::Pinned);
    assert_eq!(mtu_change(1500, 1400, Some("fixed"), true), MtuChange::Fixed("fixed"), "a fixed backend wins");
}

#[test]
fn skipped_records_are_news_once_per_version() {
    let mut seen = HashSet::new();
    let s = |rev| Skipped { key: "k".into(), mod_revision: rev, reason: "bad".into() };
    let first = [s(3)];
    assert_eq!(new_skips(&mut seen, &first).len(), 1);
    assert!(new_skips(&mut seen, &first).is_empty(), "the same version is not counted again");
    assert_eq!(new_skips(&mut seen, &[s(4)]).len(), 1, "a new version of the bad record is");
}

fn status(node: &str, subnet: &str, since: u64) -> PeerStatus {
    PeerStatus {
        node: node.into(),
        subnet: subnet.into(),
        public_ip: "172.30.0.12".parse().expect("ip"),
        route_ok: since > 0,
        problem: None,
        route_since_unix_ms: since,
        via: None,
    }
}

fn peers(list: &[Peer]) -> BTreeMap<IpNet, Peer> {
    list.iter().map(|p| (p.subnet, p.clone())).collect()
}

#[test]
fn peer_status_is_ok_when_the_desired_route_is_installed_and_since_starts_now() {
    let ps = peers(&[peer("n2", "10.244.2.0/24", "172.30.0.12")]);
    let desired = vec![via("10.244.2.0/24", "172.30.0.12")];
    let installed: BTreeSet<Route> = desired.iter().cloned().collect();
    let st = peer_statuses(&ps, &desired, &installed, &[], &BTreeMap::new(), &[], 5000);
    assert_eq!(st.len(), 1);
    assert!(st[0].route_ok);
    assert_eq!((st[0].route_since_unix_ms, st[0].subnet.as_str()), (5000, "10.244.2.0/24"));
    assert_eq!(st[0].problem, None);
}

#[test]
fn peer_status_carries_route_since_over_and_resets_it_when_the_route_goes() {
    let ps = peers(&[peer("n2", "10.244.2.0/24", "172.30.0.12")]);
    let desired = vec![via("10.244.2.0/24", "172.30.0.12")];
    let installed: BTreeSet<Route> = desired.iter().cloned().collect();
    let before = [status("n2", "10.244.2.0/24", 1000)];
    assert_eq!(
        peer_statuses(&ps, &desired, &installed, &[], &BTreeMap::new(), &before, 9000)[0].route_since_unix_ms,
        1000
    );
    let gone = peer_statuses(&ps, &desired, &BTreeSet::new(), &[], &BTreeMap::new(), &before, 9000);
    assert!(!gone[0].route_ok);
    assert_eq!(gone[0].route_since_unix_ms, 0);
    let other_node = [status("n9", "10.244.2.0/24", 1000)];
    assert_eq!(
        peer_statuses(&ps, &desired, &installed, &[], &BTreeMap::new(), &other_node, 9000)[0].route_since_unix_ms,
        9000,
        "a new owner of the subnet starts afresh"
    );
}

#[test]
fn peer_status_of_a_wrong_route_or_a_refused_peer_is_not_ok() {
    let ps = peers(&[peer("n2", "10.244.2.0/24", "172.30.0.12"), peer("n3", "10.244.3.0/24", "172.30.1.13")]);
    let desired = vec![via("10.244.2.0/24", "172.30.0.12")];
    let installed: BTreeSet<Route> = [via("10.244.2.0/24", "172.30.0.99")].into_iter().collect();
    let refused = [Refused { node: "n3".into(), subnet: net("10.244.3.0/24"), reason: "not on-link".into() }];
    let st = peer_statuses(&ps, &desired, &installed, &refused, &BTreeMap::new(), &[], 1);
    assert!(!st[0].route_ok, "a route via another gateway is not the desired one");
    assert_eq!(st[0].problem, None);
    assert!(!st[1].route_ok);
    assert_eq!(st[1].problem.as_deref(), Some("not on-link"));
}

#[test]
fn ready_with_a_subnet_even_with_errors() {
    assert!(ready(&[], false));
    assert!(!ready(&["x".into()], false));
    assert!(ready(&["x".into()], true));
}

#[test]
fn describe_names_the_route_and_gateways() {
    let a = via("10.244.2.0/24", "172.30.0.12");
    let mut b = a.clone();
    b.via = Some("172.30.0.13".parse().expect("ip"));
    assert_eq!(describe(&Action::Add(a.clone())), "add 10.244.2.0/24 via Some(172.30.0.12)");
    assert_eq!(
        describe(&Action::Replace { old: a.clone(), new: b }),
        "replace 10.244.2.0/24 via Some(172.30.0.13) (was via Some(172.30.0.12))"
    );
    let mut bh = a;
    bh.kind = RouteKind::Blackhole;
    bh.via = None;
    assert_eq!(describe(&Action::Del(bh)), "delete 10.244.2.0/24 via None");
}

#[test]
fn pod_names_default_and_refuse_bad_names() {
    assert_eq!(pod_names("web", None, None).expect("ok"), ("web".to_string(), "eth0".to_string()));
    assert_eq!(pod_names("web", Some("ns1".into()), Some("net0".into())).expect("ok"), ("ns1".into(), "net0".into()));
    assert!(pod_names("Web!", None, None).is_err());
    let e = pod_names("docker-0123456789ab", None, None).expect_err("Docker's names");
    assert_eq!(
        e.to_string(),
        "invalid pod name \"docker-0123456789ab\": names starting with \"docker-\" are Docker endpoints'"
    );
    assert!(pod_names("web", Some("a/b".into()), None).is_err());
    assert!(pod_names("web", None, Some("an-interface-name-too-long".into())).is_err());
}

#[test]
fn existing_of_each_family_reads_its_own_prefix_from_one_listing() {
    let k = keys();
    let list = [
        raw(&k.subnet(net("10.244.2.0/24")), b"{}", 4),
        raw(&k.subnet(net("fd00:10:244:2::/64")), b"{}", 5),
        raw(&format!("{}fd00:10:244:3::-64", k.subnets_prefix()), b"{}", 6),
    ];
    let v4: Vec<IpNet> = existing_of(&k, Family::V4, &list).iter().map(|e| e.subnet).collect();
    let v6: Vec<IpNet> = existing_of(&k, Family::V6, &list).iter().map(|e| e.subnet).collect();
    // An IPv6 subnet filed under `subnets/` still takes its key there (it is no IPv6 lease).
    assert_eq!(v4, [net("10.244.2.0/24"), net("fd00:10:244:3::/64")]);
    assert_eq!(v6, [net("fd00:10:244:2::/64")]);
}

#[test]
fn the_ipv6_underlay_address_is_published_only_with_an_ipv6_pool() {
    let cfg = cfg();
    let u = UnderlayInfo { public_ip6: Some("fd00:30::11".parse().expect("ip")), ..underlay() };
    let v4 = NetworkConfig::new("t", "10.244.0.0/16", 24, Backend::HostGw).expect("net");
    let dual =
        NetworkConfig::with_pools("t", Some(("10.244.0.0/16", 24)), Some(("fd00:10:244::/56", 64)), Backend::HostGw)
            .expect("net");
    let live = Default::default();
    let d: Drivers<FakeKernel> = backend::build(&BuildContext { cfg: &cfg, net: &v4, live: &live }).expect("drivers");
    let r = own_record(&cfg, "id1", 42, &u, &v4, &d);
    assert_eq!(r.public_ip6, None, "an IPv4-only network's record is as it was");
    assert!(!r.to_json().contains("public_ip6"));
    let r = own_record(&cfg, "id1", 42, &u, &dual, &d);
    assert_eq!(
        (r.public_ip.to_string(), r.public_ip6.map(|a| a.to_string())),
        ("172.30.0.11".into(), Some("fd00:30::11".into()))
    );
}

#[test]
fn a_dual_stack_heartbeat_names_both_subnets() {
    let h = heartbeat("id1", PerFamily::Dual(net("10.244.4.0/24"), net("fd00:10:244:4::/64")), 9, 1234);
    assert_eq!((h.subnet, h.subnet6), (Some(net("10.244.4.0/24")), Some(net("fd00:10:244:4::/64"))));
    let h = heartbeat("id1", net("fd00:10:244:4::/64"), 9, 1234);
    assert_eq!((h.subnet, h.subnet6), (None, Some(net("fd00:10:244:4::/64"))));
}

#[test]
fn the_ready_line_names_every_subnet_and_counts_peer_nodes() {
    let mut set = PeerSet::default();
    for p in [
        peer("n2", "10.244.2.0/24", "172.30.0.12"),
        peer("n3", "10.244.3.0/24", "172.30.0.13"),
        peer("n2", "fd00:10:244:2::/64", "fd00:30::12"),
    ] {
        set.peers.insert(p.subnet, p);
    }
    let v4 = PerFamily::V4(net("10.244.1.0/24"));
    assert_eq!(ready_line(&v4, &set), "ready: subnet 10.244.1.0/24, 2 peer node(s)");
    let dual = PerFamily::Dual(net("10.244.1.0/24"), net("fd00:10:244:1::/64"));
    assert_eq!(ready_line(&dual, &set), "ready: subnets 10.244.1.0/24 and fd00:10:244:1::/64, 2 peer node(s)");
    assert_eq!(ready_line(&v4, &PeerSet::default()), "ready: subnet 10.244.1.0/24, 0 peer node(s)");
}

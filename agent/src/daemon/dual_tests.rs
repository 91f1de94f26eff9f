//! Unit tests of the dual-stack control plane on `MemStore` + `FakeKernel`: one subnet per pool
//! of the network, claimed in one transaction on one lease, kept across restarts (with and
//! without the state dir), taken over, refused or exhausted per family, released together, and
//! IPv6-only networks; host-gw routing both families of dual-stack peers.

use super::*;
use crate::lease::Write;
use weft_config::subnet::{Family, PerFamily};

const V6_CIDR: &str = "fd00:10:244::/56";

fn dual_net(cidr6: &str) -> NetworkConfig {
    NetworkConfig::with_pools("test", Some((CIDR, 24)), Some((cidr6, 64)), Backend::HostGw).expect("dual")
}

/// A dual-stack world whose underlay also holds fd00:30::11/64 (after a link-local address,
/// which is never the one published).
fn dual_world(cidr6: &str) -> World {
    let w = World::with_net(MemStore::new(), &dual_net(cidr6));
    w.nl.seed_address(w.eth0, n("fe80::11/64"));
    w.nl.seed_address(w.eth0, n("fd00:30::11/64"));
    w
}

/// A peer's record under both families' keys, as a dual-stack agent writes it.
fn dual_peer(w: &World, name: &str, v4: &str, v6: &str, ip6: &str) {
    let rec = SubnetRecord {
        public_ip6: Some(ip6.parse().expect("ip")),
        ..record(name, &format!("id-{name}"), "172.30.0.12")
    };
    w.put(&subnet_key(v4), rec.to_json());
    w.put(&subnet_key(v6), rec.to_json());
}

fn raw_record(w: &World, s: &str) -> Option<RawRecord> {
    let store = w.store().clone();
    let key = subnet_key(s);
    futures::executor::block_on(async move { store.get(&key).await }).expect("get")
}

fn own_subnets(d: &mut TestDaemon) -> PerFamily<IpNet> {
    node(d).subnets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_node_claims_a_subnet_per_family_in_one_transaction_on_one_lease() {
    let w = dual_world(V6_CIDR);
    dual_peer(&w, "n2", "10.244.0.0/24", "fd00:10:244::/64", "fd00:30::12");
    let (mut d, h) = w.started().await;
    assert_eq!(node(&mut d).subnet, n("10.244.1.0/24"), "the data path's subnet is the IPv4 one");
    assert_eq!(own_subnets(&mut d), PerFamily::Dual(n("10.244.1.0/24"), n("fd00:10:244:1::/64")));
    let (v4, v6) = (raw_record(&w, "10.244.1.0/24").expect("v4"), raw_record(&w, "fd00:10:244:1::/64").expect("v6"));
    assert_eq!(v4.value, v6.value, "one record value under both keys");
    assert_eq!((v4.create_revision, v4.mod_revision), (v6.create_revision, v6.mod_revision), "written at one revision");
    let rec = SubnetRecord::from_json("k", &v6.value).expect("valid");
    assert_eq!(
        (rec.public_ip.to_string(), rec.public_ip6.map(|a| a.to_string())),
        ("172.30.0.11".into(), Some("fd00:30::11".into()))
    );
    // Both keys hang on the one lease: expiring it takes both.
    assert!(w.store().expire_lease(node(&mut d).subnet_lease));
    assert!(raw_record(&w, "10.244.1.0/24").is_none() && raw_record(&w, "fd00:10:244:1::/64").is_none());
    let st = status(&h);
    assert_eq!((st.subnet.as_deref(), st.subnet6.as_deref()), (Some("10.244.1.0/24"), Some("fd00:10:244:1::/64")));
    assert_eq!(st.public_ip6.map(|a| a.to_string()), Some("fd00:30::11".into()));
    let env = std::fs::read_to_string(w.path("subnet.env")).expect("subnet.env");
    assert_eq!(
        env,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\n\
         FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
    );
    let state = StateDir::new(&w.path("state"));
    assert_eq!(state.load_subnet_of(Family::V6).expect("state").map(|s| s.subnet), Some(n("fd00:10:244:1::/64")));
    let key = Keys::new("lab").node("n1");
    let hb = Heartbeat::from_json(&key, &w.get(&key).expect("heartbeat")).expect("valid");
    assert_eq!((hb.subnet, hb.subnet6), (Some(n("10.244.1.0/24")), Some(n("fd00:10:244:1::/64"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_records_of_both_families_are_written_both_or_neither() {
    let w = dual_world(V6_CIDR);
    let s = w.store().clone();
    let keys = Keys::new("lab");
    let lease = s.grant(Duration::from_secs(60)).await.expect("lease");
    // Someone claims the IPv6 subnet between the decision and the write: nothing is written.
    w.put(&subnet_key("fd00:10:244:1::/64"), record("n9", "id9", "172.30.0.19").to_json());
    let writes = PerFamily::Dual(Write::Create(n("10.244.1.0/24")), Write::Create(n("fd00:10:244:1::/64")));
    let won = acquire::write_records(&s, &keys, &writes, "{}", lease).await.expect("txn");
    assert!(!won, "a lost race for one family loses both");
    assert!(raw_record(&w, "10.244.1.0/24").is_none(), "no IPv4 record alone");
    let rev = s.revision();
    let writes = PerFamily::Dual(Write::Create(n("10.244.1.0/24")), Write::Create(n("fd00:10:244:2::/64")));
    assert!(acquire::write_records(&s, &keys, &writes, "{}", lease).await.expect("txn"));
    assert_eq!(s.revision(), rev + 1, "one revision for both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_ipv6_pool_is_a_clear_error_retried_and_claims_nothing_meanwhile() {
    let w = dual_world("fd00:10:244::/63");
    dual_peer(&w, "n2", "10.244.0.0/24", "fd00:10:244::/64", "fd00:30::12");
    w.put(&subnet_key("fd00:10:244:1::/64"), record("n3", "id-n3", "172.30.0.13").to_json());
    let (mut d, h) = w.daemon();
    assert!(tokio::time::timeout(Duration::from_millis(500), d.start()).await.is_err(), "keeps retrying");
    let err = status(&h).last_error.expect("an error");
    assert!(err.contains("no free /64 left in fd00:10:244::/63 (2 subnets taken)"), "{err}");
    assert!(raw_record(&w, "10.244.1.0/24").is_none(), "the free IPv4 subnet is not claimed alone");
    w.store().delete(&subnet_key("fd00:10:244:1::/64")).await.expect("free one");
    assert!(tokio::time::timeout(Duration::from_secs(10), d.start()).await.expect("in time").is_ok());
    assert_eq!(own_subnets(&mut d), PerFamily::Dual(n("10.244.1.0/24"), n("fd00:10:244:1::/64")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_both_subnets_with_and_without_the_state_dir() {
    let w = dual_world(V6_CIDR);
    dual_peer(&w, "n2", "10.244.0.0/24", "fd00:10:244::/64", "fd00:30::12");
    let (d, _h) = w.started().await;
    drop(d);
    let want = PerFamily::Dual(n("10.244.1.0/24"), n("fd00:10:244:1::/64"));
    // Lower subnets of both families are freed meanwhile: the node keeps its own.
    w.store().delete(&subnet_key("10.244.0.0/24")).await.expect("delete");
    w.store().delete(&subnet_key("fd00:10:244::/64")).await.expect("delete");
    let (mut d, _h) = w.started().await;
    assert_eq!(own_subnets(&mut d), want, "from the state dir");
    drop(d);
    std::fs::remove_dir_all(w.path("state")).expect("remove state");
    let (mut d, _h) = w.started().await;
    assert_eq!(own_subnets(&mut d), want, "found by identity in etcd");
    let (raw, _) = w.store().list("/weft/v1/lab/subnets").await.expect("list");
    assert_eq!(raw.len(), 2, "no second claim in either family");
    // With the state dir but without the records (they expired): the remembered ones again.
    drop(d);
    w.store().delete(&subnet_key("10.244.1.0/24")).await.expect("delete");
    w.store().delete(&subnet_key("fd00:10:244:1::/64")).await.expect("delete");
    let (mut d, _h) = w.started().await;
    assert_eq!(own_subnets(&mut d), want, "re-claimed from the state dir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_family_is_taken_over_reused_or_claimed_by_the_same_rules() {
    let w = dual_world(V6_CIDR);
    // The IPv4 record is this node's own (a node of the network before it had an IPv6 pool);
    // the IPv6 one of this name is a dead machine's.
    w.put(&subnet_key("10.244.7.0/24"), record("n1", "id1", "172.30.0.11").to_json());
    w.put(&subnet_key("fd00:10:244:9::/64"), record("n1", "old-machine", "172.30.0.50").to_json());
    let (mut d, _h) = w.started().await;
    assert_eq!(own_subnets(&mut d), PerFamily::Dual(n("10.244.7.0/24"), n("fd00:10:244:9::/64")));
    let rec = SubnetRecord::from_json("k", &raw_record(&w, "fd00:10:244:9::/64").expect("v6").value).expect("valid");
    assert_eq!((rec.node_id.as_str(), rec.public_ip6.map(|a| a.to_string())), ("id1", Some("fd00:30::11".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_record_of_this_name_held_by_a_live_machine_refuses_the_node() {
    let w = dual_world(V6_CIDR);
    w.put(&subnet_key("fd00:10:244:7::/64"), record("n1", "other-machine", "172.30.0.50").to_json());
    let hb = decide::heartbeat("other-machine", n("fd00:10:244:7::/64"), 1, 1);
    w.put(&Keys::new("lab").node("n1"), hb.to_json());
    let (mut d, h) = w.daemon();
    assert!(tokio::time::timeout(Duration::from_millis(700), d.start()).await.is_err(), "start keeps retrying");
    let err = status(&h).last_error.expect("an error");
    assert!(err.contains("held by another live machine") && err.contains("fd00:10:244:7::/64"), "{err}");
    let (raw, _) = w.store().list("/weft/v1/lab/subnets").await.expect("list");
    assert_eq!(raw.len(), 1, "not even the free IPv4 subnet is claimed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_deletes_the_records_of_both_families() {
    let w = dual_world(V6_CIDR);
    dual_peer(&w, "n2", "10.244.5.0/24", "fd00:10:244:5::/64", "fd00:30::12");
    let (mut d, h) = w.started().await;
    let test = async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        h.commands.send((Request::Leave, tx)).await.expect("send");
        let resp = tokio::time::timeout(Duration::from_secs(10), rx).await.expect("answer").expect("reply");
        assert!(matches!(resp, Response::Done), "{resp:?}");
    };
    let (exit, ()) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(d.main_loop(), test) }).await.expect("ends");
    assert!(matches!(exit.expect("loop"), Exit::Left));
    assert!(
        raw_record(&w, "10.244.0.0/24").is_none() && raw_record(&w, "fd00:10:244::/64").is_none(),
        "own records gone"
    );
    assert!(raw_record(&w, "fd00:10:244:5::/64").is_some(), "the peer's records stay");
    assert!(w.store().leases().is_empty(), "{:?}", w.store().leases());
    assert!(!w.path("state").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_ipv6_record_is_recreated_on_the_same_lease() {
    let w = dual_world(V6_CIDR);
    let (mut d, _h) = w.started().await;
    let key6 = subnet_key("fd00:10:244::/64");
    let before = w.get(&key6).expect("record");
    w.store().delete(&key6).await.expect("evict");
    pump(&mut d).await;
    full(&mut d).await;
    assert_eq!(w.get(&key6), Some(before), "the same record is back");
    assert_eq!(w.store().leases().len(), 2, "the records' lease and the heartbeat's: no new one");
    pump(&mut d).await; // the re-created record's own event
                        // Another node takes the IPv6 subnet: this node moves its IPv6 subnet only.
    w.put(&key6, record("n9", "id9", "172.30.0.19").to_json());
    pump(&mut d).await;
    full(&mut d).await;
    assert_eq!(own_subnets(&mut d), PerFamily::Dual(n("10.244.0.0/24"), n("fd00:10:244:1::/64")));
}

/// `dst via gw dev eth0` of either family, as host-gw installs it.
fn route_via(w: &World, dst: &str, gw: &str) -> Route {
    let via = Some(gw.parse().expect("ip"));
    Route { dst: n(dst), kind: RouteKind::Unicast, via, oif: Some(w.eth0), src: None, metric: 0, onlink: false }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_gw_routes_both_subnets_of_a_dual_stack_peer_via_its_address_of_each_family() {
    let w = dual_world(V6_CIDR);
    dual_peer(&w, "n2", "10.244.5.0/24", "fd00:10:244:5::/64", "fd00:30::12");
    // n3's IPv6 underlay address is on another segment: its IPv6 subnet is refused, with why.
    let rec3 =
        SubnetRecord { public_ip6: Some("fd00:31::13".parse().expect("ip")), ..record("n3", "id-n3", "172.30.0.13") };
    w.put(&subnet_key("10.244.6.0/24"), rec3.to_json());
    w.put(&subnet_key("fd00:10:244:6::/64"), rec3.to_json());
    let (mut d, h) = w.started().await;
    let set = &node(&mut d).peers;
    assert_eq!(set.peers.len(), 4, "both families of both peers reach the backend");
    assert!(set.skipped.is_empty(), "{:?}", set.skipped);
    assert_eq!(
        w.weft_routes(),
        vec![
            route_via(&w, "10.244.5.0/24", "172.30.0.12"),
            route_via(&w, "10.244.6.0/24", "172.30.0.13"),
            route_via(&w, "fd00:10:244:5::/64", "fd00:30::12"),
        ]
    );
    assert!(w.weft_routes().iter().all(|r| r.check_family().is_ok()));
    let st = status(&h);
    let peers: Vec<(&str, bool, Option<&str>)> =
        st.peers.iter().map(|p| (p.subnet.as_str(), p.route_ok, p.problem.as_deref())).collect();
    assert_eq!(
        peers,
        [
            ("10.244.5.0/24", true, None),
            ("10.244.6.0/24", true, None),
            ("fd00:10:244:5::/64", true, None),
            (
                "fd00:10:244:6::/64",
                false,
                Some("public IPv6 fd00:31::13 is not on-link on eth0 (host-gw needs the peers on one L2 segment; use the quic backend across routers)")
            ),
        ]
    );
    // A route of either family that goes missing is repaired by the same diff.
    for r in w.weft_routes() {
        w.nl.apply(&crate::routes::Action::Del(r)).await.expect("delete");
    }
    full(&mut d).await;
    assert_eq!(w.weft_routes().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_peer_that_leaves_takes_both_its_routes_with_it() {
    let w = dual_world(V6_CIDR);
    dual_peer(&w, "n2", "10.244.5.0/24", "fd00:10:244:5::/64", "fd00:30::12");
    dual_peer(&w, "n3", "10.244.6.0/24", "fd00:10:244:6::/64", "fd00:30::13");
    let (mut d, _h) = w.started().await;
    assert_eq!(w.weft_routes().len(), 4);
    // `weft-agent --leave` on n2 deletes both its records (one transaction, one lease).
    w.store().delete(&subnet_key("10.244.5.0/24")).await.expect("delete");
    w.store().delete(&subnet_key("fd00:10:244:5::/64")).await.expect("delete");
    for _ in 0..2 {
        if w.weft_routes().len() > 2 {
            pump(&mut d).await;
        }
    }
    assert_eq!(
        w.weft_routes(),
        vec![route_via(&w, "10.244.6.0/24", "172.30.0.12"), route_via(&w, "fd00:10:244:6::/64", "fd00:30::13")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_node_without_an_ipv6_underlay_address_says_so_and_retries() {
    let w = World::with_net(MemStore::new(), &dual_net(V6_CIDR));
    w.nl.seed_address(w.eth0, n("fe80::11/64"));
    let (mut d, h) = w.daemon();
    assert!(tokio::time::timeout(Duration::from_millis(500), d.start()).await.is_err(), "keeps retrying");
    let err = status(&h).last_error.expect("an error");
    assert_eq!(
        err,
        "the network has an IPv6 pool (cidr6 fd00:10:244::/56) but underlay interface eth0 has no global IPv6 address \
         and [underlay] public_ip6 is not set: peers could not reach this node's IPv6 subnet"
    );
    let (raw, _) = w.store().list("/weft/v1/lab/subnets").await.expect("list");
    assert!(raw.is_empty(), "nothing claimed");
    // The address arrives (a router advertisement): the next attempt finds it.
    w.nl.seed_address(w.eth0, n("fd00:30::11/64"));
    assert!(tokio::time::timeout(Duration::from_secs(10), d.start()).await.expect("in time").is_ok());
    assert_eq!(status(&h).public_ip6.map(|a| a.to_string()), Some("fd00:30::11".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_only_network_holds_only_an_ipv6_subnet() {
    let net = NetworkConfig::with_pools("test", None, Some((V6_CIDR, 64)), Backend::HostGw).expect("v6");
    let w = World::with_net(MemStore::new(), &net);
    w.nl.seed_address(w.eth0, n("fd00:30::11/64"));
    w.put(
        &subnet_key("fd00:10:244::/64"),
        SubnetRecord { public_ip6: Some("fd00:30::12".parse().expect("ip")), ..record("n2", "id-n2", "172.30.0.12") }
            .to_json(),
    );
    let (mut d, h) = w.started().await;
    assert_eq!(own_subnets(&mut d), PerFamily::V6(n("fd00:10:244:1::/64")));
    assert_eq!(node(&mut d).subnet, n("fd00:10:244:1::/64"));
    let (raw, _) = w.store().list(&Keys::new("lab").subnets_prefix()).await.expect("list");
    assert!(raw.is_empty(), "no IPv4 lease");
    let st = status(&h);
    assert_eq!((st.subnet, st.subnet6.as_deref()), (None, Some("fd00:10:244:1::/64")));
    let env = std::fs::read_to_string(w.path("subnet.env")).expect("subnet.env");
    assert!(
        env.starts_with("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"),
        "{env}"
    );
    assert!(!env.contains("FLANNEL_NETWORK="), "{env}");
    assert_eq!(node(&mut d).peers.peers.keys().copied().collect::<Vec<_>>(), [n("fd00:10:244::/64")]);
    let state = StateDir::new(&w.path("state"));
    assert_eq!(state.load_subnet().expect("state"), None, "no IPv4 subnet remembered");
    // A restart without the state dir finds it by identity.
    drop(d);
    std::fs::remove_dir_all(w.path("state")).expect("remove state");
    let (mut d, _h) = w.started().await;
    assert_eq!(own_subnets(&mut d), PerFamily::V6(n("fd00:10:244:1::/64")));
}

//! Unit tests of a live backend change on `MemStore` + `FakeKernel`: a changed network config
//! is followed at the next full reconcile, without a restart.

use super::*;

fn vxlan_peer(w: &World, name: &str, subnet: &str, public_ip: &str, mac: &str) {
    let mut rec = record(name, &format!("id-{name}"), public_ip);
    rec.backend = Backend::Vxlan;
    rec.backend_data.insert("vxlan".into(), serde_json::json!({ "vtep_mac": mac }));
    w.put(&Keys::new("lab").subnet(n(subnet)), rec.to_json());
}

/// Handles every watch message there is (the own records' rewrites come first).
async fn drain(d: &mut TestDaemon) {
    let Phase::Running(node) = &mut d.phase else { panic!("daemon is not running") };
    while let Ok(msg) =
        tokio::time::timeout(Duration::from_millis(200), node.watch.as_mut().expect("watching").next()).await
    {
        node.on_watch(&d.ctx, msg).await;
    }
}

fn own_record(w: &World, d: &mut TestDaemon) -> SubnetRecord {
    let key = Keys::new("lab").subnet(node(d).subnet);
    SubnetRecord::from_json(&key, &w.get(&key).expect("own record")).expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_backend_is_followed_at_the_next_full_reconcile_and_the_old_one_leaves_nothing() {
    let w = World::new(CIDR);
    w.peer("n2", "10.244.2.0/24", "172.30.0.12");
    let (mut d, h) = w.started().await;
    assert_eq!(w.weft_routes(), vec![w.route_via("10.244.2.0/24", "172.30.0.12")]);
    let pid_before = status(&h).pid;

    // host-gw -> vxlan. Until the peer switches, host-gw keeps carrying it beside vxlan, and
    // the own record carries both backends' data.
    let vx = NetworkConfig::new("test", CIDR, 24, Backend::Vxlan).expect("net");
    w.put(&Keys::new("lab").config(), vx.to_json());
    tick(&mut d).await;
    assert_eq!(node(&mut d).drivers.names(), "vxlan+host-gw");
    assert_eq!(w.weft_routes(), vec![w.route_via("10.244.2.0/24", "172.30.0.12")], "n2 still on host-gw");
    assert_eq!(own_record(&w, &mut d).backend, Backend::Vxlan);
    tick(&mut d).await;
    assert_eq!(node(&mut d).drivers.names(), "vxlan+host-gw", "kept while a peer needs it");
    // The peer switches (its record gets a VTEP MAC): vxlan carries it, host-gw stops at the
    // next full reconcile.
    vxlan_peer(&w, "n2", "10.244.2.0/24", "172.30.0.12", "02:00:00:00:00:02");
    drain(&mut d).await;
    tick(&mut d).await;
    assert_eq!(node(&mut d).drivers.names(), "vxlan");
    assert_eq!(status(&h).backend.as_deref(), Some("vxlan"));
    let rec = own_record(&w, &mut d);
    assert_eq!(rec.backend, Backend::Vxlan, "the own record says so");
    assert!(rec.backend_data.contains_key("vxlan"), "and carries the VTEP MAC: {:?}", rec.backend_data);
    let dev = w.nl.links().into_iter().find(|l| l.name == "weft-vxlan").expect("the vxlan device");
    let routes = w.weft_routes();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!((routes[0].oif, routes[0].onlink), (Some(dev.index), true), "the route now goes through vxlan");
    let bridge = w.nl.links().into_iter().find(|l| l.name == "weft0").expect("bridge");
    assert_eq!(bridge.mtu, 1450, "the pod MTU follows the new backend");
    assert_eq!(status(&h).pid, pid_before, "no restart");

    // vxlan -> host-gw: the device goes, the route is direct again.
    let hg = NetworkConfig::new("test", CIDR, 24, Backend::HostGw).expect("net");
    w.put(&Keys::new("lab").config(), hg.to_json());
    w.peer("n2", "10.244.2.0/24", "172.30.0.12");
    drain(&mut d).await;
    tick(&mut d).await;
    tick(&mut d).await;
    assert_eq!(node(&mut d).drivers.names(), "host-gw");
    assert!(!w.nl.links().iter().any(|l| l.name == "weft-vxlan"), "nothing of vxlan is left");
    assert_eq!(w.weft_routes(), vec![w.route_via("10.244.2.0/24", "172.30.0.12")]);
    assert_eq!(own_record(&w, &mut d).backend, Backend::HostGw);

    // A changed pool is not followed (it needs a restart), and says so by doing nothing.
    let other = NetworkConfig::new("test", "10.245.0.0/16", 24, Backend::Vxlan).expect("net");
    w.put(&Keys::new("lab").config(), other.to_json());
    tick(&mut d).await;
    assert_eq!(node(&mut d).drivers.names(), "host-gw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_change_never_overwrites_a_subnet_another_node_took_meanwhile() {
    let w = World::new(CIDR);
    let (mut d, _h) = w.started().await;
    let key = Keys::new("lab").subnet(node(&mut d).subnet);
    // Evicted while partitioned, and the subnet taken by n9 before this agent saw either.
    let theirs = record("n9", "id-n9", "172.30.0.19").to_json();
    w.put(&key, theirs.clone());
    let vx = NetworkConfig::new("test", CIDR, 24, Backend::Vxlan).expect("net");
    w.put(&Keys::new("lab").config(), vx.to_json());
    tick(&mut d).await;
    assert_eq!(w.get(&key).as_deref(), Some(theirs.as_bytes()), "n9's record is left as n9 wrote it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_record_changed_by_someone_else_is_written_again() {
    let w = World::new(CIDR);
    let (mut d, _h) = w.started().await;
    let wrote = own_record(&w, &mut d);
    let key = Keys::new("lab").subnet(node(&mut d).subnet);
    let mut edited = wrote.clone();
    edited.public_ip = "172.30.0.99".parse().expect("ip");
    w.put(&key, edited.to_json());
    drain(&mut d).await;
    tick(&mut d).await;
    assert_eq!(own_record(&w, &mut d), wrote, "rewritten as this agent has it");
}

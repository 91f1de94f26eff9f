//! The vxlan backend on a routed dual-stack lab (two L2 segments joined by a router that knows
//! no pod subnet, so only the kernel's VXLAN encapsulation can carry pod traffic between them):
//! real etcd, real agents, real kernel. The lab's Drop removes everything.

use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use weft_lab::{IpFamily, Lab, Topology};
use weft_tests::*;

const DEV: &str = "weft-vxlan";
const DEV6: &str = "weft-vxlan6";

fn vxlan_lab(id: &str, nodes: usize) -> Lab {
    lab(id, nodes, 1, |s| {
        s.backend = weft_config::Backend::Vxlan;
        s.topology = Topology::Routed;
        s.ip_family = IpFamily::Dual;
    })
}

/// `ip -j …` (or `bridge -j …`) in node `i`, parsed.
fn json_in(lab: &Lab, i: usize, args: &[&str]) -> Vec<Value> {
    let out = run_ok(lab, &format!("n{i}"), args);
    let v: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).expect("JSON");
    v.as_array().cloned().unwrap_or_default()
}

fn field(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// The MAC of node `i`'s device `dev`.
fn mac_of(lab: &Lab, i: usize, dev: &str) -> String {
    let links = json_in(lab, i, &["ip", "-j", "link", "show", dev]);
    field(links.first().expect("the device exists"), "address")
}

/// (IP, MAC) of every permanent neighbour entry on `dev`.
fn neighbours(lab: &Lab, i: usize, dev: &str) -> BTreeSet<(String, String)> {
    json_in(lab, i, &["ip", "-j", "neigh", "show", "dev", dev])
        .iter()
        .filter(|n| n.get("state").is_some_and(|s| s.to_string().contains("PERMANENT")))
        .map(|n| (field(n, "dst"), field(n, "lladdr")))
        .collect()
}

/// (MAC, underlay destination) of every remote FDB entry on `dev`.
fn fdb(lab: &Lab, i: usize, dev: &str) -> BTreeSet<(String, String)> {
    json_in(lab, i, &["bridge", "-j", "fdb", "show", "dev", dev])
        .iter()
        .filter(|f| f.get("dst").is_some())
        .map(|f| (field(f, "mac"), field(f, "dst")))
        .collect()
}

/// What node `i` should hold for its peers: per family, its weft routes, neighbours and FDB
/// entries, from the peers' subnets, underlay addresses and VTEP MACs.
struct Expected {
    routes4: Vec<String>,
    routes6: Vec<String>,
    neigh4: BTreeSet<(String, String)>,
    neigh6: BTreeSet<(String, String)>,
    fdb4: BTreeSet<(String, String)>,
    fdb6: BTreeSet<(String, String)>,
}

fn expected(lab: &Lab, i: usize, peers: &[usize]) -> Expected {
    let mut e = Expected {
        routes4: vec![],
        routes6: vec![],
        neigh4: BTreeSet::new(),
        neigh6: BTreeSet::new(),
        fdb4: BTreeSet::new(),
        fdb6: BTreeSet::new(),
    };
    for &j in peers.iter().filter(|&&j| j != i) {
        let st = lab.wait_ready(j, Duration::from_secs(20)).expect("ready");
        let s4: ipnet::IpNet = st.subnet.expect("IPv4 subnet").parse().expect("prefix");
        let s6: ipnet::IpNet = st.subnet6.expect("IPv6 subnet").parse().expect("prefix");
        let (mac, mac6) = (mac_of(lab, j, DEV), mac_of(lab, j, DEV6));
        assert_eq!(mac, mac6, "one VTEP MAC per node");
        e.routes4.push(format!("{s4} via {} dev {DEV} proto 213", s4.network()));
        e.routes6.push(format!("{s6} via {} dev {DEV6} proto 213", s6.network()));
        e.neigh4.insert((s4.network().to_string(), mac.clone()));
        e.neigh6.insert((s6.network().to_string(), mac.clone()));
        e.fdb4.insert((mac.clone(), lab.node_ip(j).to_string()));
        e.fdb6.insert((mac, lab.node_ip6(j).expect("IPv6 underlay").to_string()));
    }
    e.routes4.sort();
    e.routes6.sort();
    e
}

/// Node `i`'s tables are exactly `want` (within `secs`); panics naming what differs.
fn assert_tables(lab: &Lab, i: usize, want: &Expected, secs: u64, what: &str) {
    let matches = || {
        weft_owned(route_table(lab, i)) == want.routes4
            && weft_owned(route_table6(lab, i)) == want.routes6
            && neighbours(lab, i, DEV) == want.neigh4
            && neighbours(lab, i, DEV6) == want.neigh6
            && fdb(lab, i, DEV) == want.fdb4
            && fdb(lab, i, DEV6) == want.fdb6
    };
    if wait_for(Duration::from_secs(secs), matches).is_none() {
        panic!(
            "{what}: n{i}'s tables differ from the expected ones:\n routes {:?} want {:?}\n routes6 {:?} want {:?}\n \
             neigh {:?} want {:?}\n neigh6 {:?} want {:?}\n fdb {:?} want {:?}\n fdb6 {:?} want {:?}",
            weft_owned(route_table(lab, i)),
            want.routes4,
            weft_owned(route_table6(lab, i)),
            want.routes6,
            neighbours(lab, i, DEV),
            want.neigh4,
            neighbours(lab, i, DEV6),
            want.neigh6,
            fdb(lab, i, DEV),
            want.fdb4,
            fdb(lab, i, DEV6),
            want.fdb6
        );
    }
}

#[test]
fn routed_dual_stack_pods_reach_each_other_through_kernel_vxlan_and_broken_state_is_repaired() {
    let lab = vxlan_lab("vx1", 3);
    let all = [1, 2, 3];
    for i in all {
        assert_tables(&lab, i, &expected(&lab, i, &all), 10, "after up");
    }

    // The devices: kernel VXLAN, weft's VNI and port, no learning, the underlay's MTU less the
    // outer headers (IPv6's, as the network has an IPv6 pool) for the bridge.
    let details = run_ok(&lab, "n1", &["ip", "-d", "link", "show", DEV]);
    assert!(
        details.contains("vxlan id 1 ") && details.contains("dstport 8472") && details.contains("nolearning"),
        "{details}"
    );
    let details6 = run_ok(&lab, "n1", &["ip", "-d", "link", "show", DEV6]);
    assert!(details6.contains("local fd00:172:30::11"), "the IPv6 device sends from the IPv6 underlay: {details6}");

    // Every pod pair, both families, across the router; the receiver sees the sender's own
    // pod address (no NAT), over each family.
    let failures = cross_node_ping_failures_all(&lab, 3, &["p1"]);
    assert!(failures.is_empty(), "pod pairs that do not ping over vxlan: {failures:?}");
    let (a, b) = (pod_addrs(&lab, 1, "p1"), pod_addrs(&lab, 2, "p1"));
    for (k, port) in [(0, 7301), (1, 7302)] {
        let seen = tcp_source_seen(&lab.pod_ns(2, 1), b[k], port, &lab.pod_ns(1, 1)).expect("TCP across the router");
        assert_eq!(seen.ip(), a[k], "the server sees the client pod's own address");
    }
    let path = run_ok(&lab, "n1", &["ip", "-o", "route", "get", &b[0].to_string()]);
    assert!(path.contains(&format!("dev {DEV}")), "n1 sends to n2's pod through the vxlan device: {path}");

    // Repairs, each within one reconcile (2 s here; 8 s allowed): deleted entries, a wrong
    // entry written by hand, a downed device, a deleted device.
    let want1 = expected(&lab, 1, &all);
    let mac2 = mac_of(&lab, 2, DEV);
    let n2_v4 = lab.node_ip(2).to_string();
    let n3_vtep = lab.wait_ready(3, Duration::from_secs(5)).expect("ready").subnet.expect("subnet");
    let n3_vtep = n3_vtep.parse::<ipnet::IpNet>().expect("prefix").network().to_string();
    run_ok(&lab, "n1", &["bridge", "fdb", "del", &mac2, "dev", DEV, "dst", &n2_v4]);
    run_ok(&lab, "n1", &["ip", "neigh", "del", &n3_vtep, "dev", DEV]);
    assert_tables(&lab, 1, &want1, 8, "after deleting an FDB and a neighbour entry");
    run_ok(&lab, "n1", &["bridge", "fdb", "replace", &mac2, "dev", DEV, "dst", "172.30.0.99", "self", "permanent"]);
    run_ok(
        &lab,
        "n1",
        &["ip", "neigh", "replace", &n3_vtep, "lladdr", "02:00:00:00:00:99", "dev", DEV, "nud", "permanent"],
    );
    assert_tables(&lab, 1, &want1, 8, "after wrong entries written by hand");
    run_ok(&lab, "n1", &["ip", "link", "set", DEV, "down"]);
    assert_tables(&lab, 1, &want1, 8, "after the device was set down");
    run_ok(&lab, "n1", &["ip", "link", "del", DEV6]);
    assert_tables(&lab, 1, &want1, 8, "after the IPv6 device was deleted");
    let failures = cross_node_ping_failures_all(&lab, 3, &["p1"]);
    assert!(failures.is_empty(), "after the repairs: {failures:?}");

    // `--leave` of n3 takes its routes and entries off its peers.
    lab.leave(3).expect("leave");
    for i in [1, 2] {
        assert_tables(&lab, i, &expected(&lab, i, &[1, 2]), 8, "after n3 left");
    }

    // A smaller underlay MTU is followed: each device the underlay's less its outer headers,
    // the bridge what both families can carry (the IPv6 device's).
    run_ok(&lab, "n1", &["ip", "link", "set", "eth0", "mtu", "1400"]);
    let mtu = |dev: &str| {
        json_in(&lab, 1, &["ip", "-j", "link", "show", dev])
            .first()
            .and_then(|l| l.get("mtu").and_then(Value::as_u64))
            .unwrap_or(0)
    };
    let followed = wait_for(Duration::from_secs(8), || (mtu(DEV), mtu(DEV6), mtu("weft0")) == (1350, 1330, 1330));
    assert!(followed.is_some(), "MTUs after the underlay's became 1400: {:?}", (mtu(DEV), mtu(DEV6), mtu("weft0")));

    // Evicting a dead node (its agent stopped, its records deleted by the operator) takes its
    // routes and entries off the peers too.
    lab.stop_agent(2, nix::sys::signal::Signal::SIGKILL).expect("stop n2's agent");
    let out = run_ok(&lab, "n1", &["weftctl", "node", "evict", "n2"]);
    assert!(out.contains("evicted n2"), "{out}");
    assert_tables(&lab, 1, &expected(&lab, 1, &[1]), 8, "after n2 was evicted");
}

/// `ip -o route get DST` on node `i`.
fn route_get(lab: &Lab, i: usize, dst: std::net::IpAddr) -> String {
    run_ok(lab, &format!("n{i}"), &["ip", "-o", "route", "get", &dst.to_string()])
}

/// auto on the routed lab: n1 and n3 share segment A, n2 is behind the router. Per pair and
/// family: a plain route between n1 and n3, encapsulation (`encap`) to and from n2.
fn auto_chooses_per_peer(id: &str, encap: weft_config::Backend, encap_dev: &str, cluster_status: bool) {
    let lab = lab(id, 3, 1, |s| {
        s.backend = weft_config::Backend::Auto;
        s.encap = encap;
        s.topology = Topology::Routed;
        s.ip_family = IpFamily::Dual;
    });
    let failures = cross_node_ping_failures_all(&lab, 3, &["p1"]);
    assert!(failures.is_empty(), "pod pairs that do not ping under auto/{encap}: {failures:?}");
    let pods: Vec<Vec<std::net::IpAddr>> = (1..=3).map(|i| pod_addrs(&lab, i, "p1")).collect();
    let underlay =
        |j: usize, k: usize| if k == 0 { lab.node_ip(j).to_string() } else { lab.node_ip6(j).expect("v6").to_string() };
    for k in [0, 1] {
        let direct = route_get(&lab, 1, pods[2][k]);
        assert!(
            direct.contains(&format!("via {} dev eth0", underlay(3, k))),
            "n1 reaches on-link n3's pod directly: {direct}"
        );
        let back = route_get(&lab, 3, pods[0][k]);
        assert!(back.contains(&format!("via {} dev eth0", underlay(1, k))), "and n3 n1's: {back}");
        for (from, to) in [(1, 2), (2, 1), (3, 2)] {
            let p = route_get(&lab, from, pods[to - 1][k]);
            assert!(
                p.contains(&format!("dev {encap_dev}")) && !p.contains(" dev eth0"),
                "n{from} reaches n{to} behind the router through {encap_dev}: {p}"
            );
        }
    }
    // The agent says which backend carries each peer subnet.
    let st = lab.wait_ready(1, Duration::from_secs(10)).expect("ready");
    let mut via: Vec<(String, Option<String>)> = st.peers.iter().map(|p| (p.node.clone(), p.via.clone())).collect();
    via.sort();
    let (hg, en) = (Some("host-gw".to_string()), Some(encap.to_string()));
    assert_eq!(via, vec![("n2".into(), en.clone()), ("n2".into(), en), ("n3".into(), hg.clone()), ("n3".into(), hg)]);
    // `weftctl status` shows the choice per pair and family, from the probe records (published
    // every 10 s; the first round may precede the first plan).
    if cluster_status {
        let mut v = serde_json::Value::Null;
        let via = |v: &serde_json::Value, m: &str, from: &str, to: &str| {
            v[m].as_array()
                .and_then(|ps| ps.iter().find(|p| p["from"] == from && p["to"] == to))
                .and_then(|p| p["via"].as_str().map(str::to_string))
        };
        let shown = wait_for(Duration::from_secs(25), || {
            v = serde_json::from_str(&run_ok(&lab, "n1", &["weftctl", "status", "--json"])).expect("status --json");
            ["reachability", "reachability6"].iter().all(|m| {
                via(&v, m, "n1", "n2").as_deref() == Some(encap.to_string().as_str())
                    && via(&v, m, "n1", "n3").as_deref() == Some("host-gw")
            })
        });
        assert!(shown.is_some(), "weftctl status does not show n1's choices: {v:#}");
    }
    // Through the router too, the receiver sees the sender's own pod address.
    for (k, port) in [(0, 7311), (1, 7312)] {
        let seen = tcp_source_seen(&lab.pod_ns(2, 1), pods[1][k], port, &lab.pod_ns(1, 1)).expect("TCP");
        assert_eq!(seen.ip(), pods[0][k], "no NAT between pods");
    }
}

#[test]
fn auto_routes_on_link_peers_directly_and_encapsulates_across_the_router_with_vxlan() {
    auto_chooses_per_peer("vx2", weft_config::Backend::Vxlan, DEV, true);
}

#[test]
fn auto_routes_on_link_peers_directly_and_encapsulates_across_the_router_with_quic() {
    auto_chooses_per_peer("vx3", weft_config::Backend::Quic, "weft-tun0", false);
}

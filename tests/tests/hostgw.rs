//! host-gw on the lab: real etcd, real agents, real kernel, everything in namespaces.
//! Each test builds its own lab (its own id) and the lab's Drop removes it, also on failure.
//! Run one at a time (`--test-threads=1`): several labs at once would fight over the 2 cores.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use weft_lab::{IpFamily, Lab};
use weft_tests::*;

const PODS: [&str; 2] = ["p1", "p2"];

fn expected_routes(lab: &Lab, i: usize, nodes: usize) -> Vec<String> {
    let mut want = vec![
        "default via 172.30.0.1 dev eth0".to_string(),
        format!("172.30.0.0/24 dev eth0 proto kernel scope link src {}", lab.node_ip(i)),
    ];
    for j in 1..=nodes {
        let st = lab.wait_ready(j, Duration::from_secs(10)).expect("ready");
        let subnet = st.subnet.expect("subnet");
        let gw = st.pods.first().and_then(|p| p.gateway).expect("pods");
        if j == i {
            want.push(format!("{subnet} dev weft0 proto kernel scope link src {gw}"));
        } else {
            want.push(format!("{subnet} via {} dev eth0 proto 213", lab.node_ip(j)));
        }
    }
    want.sort();
    want
}

#[test]
fn three_nodes_pods_reach_each_other_without_nat() {
    let lab = lab("t1", 3, 2, |_| {});
    let pods = all_pods(&lab, 3, &PODS);

    // Distinct subnets, one per node, and pod addresses inside them.
    let subnets: std::collections::BTreeSet<String> =
        (1..=3).map(|i| lab.wait_ready(i, Duration::from_secs(5)).expect("ready").subnet.expect("subnet")).collect();
    assert_eq!(subnets.len(), 3, "{subnets:?}");

    // Every pod pings every pod on the other nodes.
    let failures = cross_node_ping_failures(&lab, &pods);
    assert!(failures.is_empty(), "pings failed: {failures:?}");

    // Each node reaches the remote pods itself too.
    let (_, _, far) = pods[pods.len() - 1];
    assert!(ping(&lab, "n1", far), "node n1 cannot reach {far}");

    // TCP from n1/p1 to n3/p2: the server sees the client's pod IP (no NAT).
    let client_ip = pod_ip(&lab, 1, "p1");
    let server_ip = pod_ip(&lab, 3, "p2");
    let seen = tcp_source_seen(&lab.pod_ns(3, 2), server_ip, 7001, &lab.pod_ns(1, 1)).expect("tcp");
    assert_eq!(seen.ip(), std::net::IpAddr::V4(client_ip), "the server must see the client's pod IP");

    // Each node's whole route table is exactly what host-gw should give.
    for i in 1..=3 {
        assert_eq!(route_table(&lab, i), expected_routes(&lab, i, 3), "route table of n{i}");
    }

    // Without ip_masq, pods cannot reach the outside (the router has no route back to pods).
    assert!(
        !ping(&lab, "n1/p1", "203.0.113.2".parse().expect("lit")),
        "pod traffic must not be masqueraded without ip_masq"
    );

    // weftctl inside the lab sees every node alive.
    let nodes = run_ok(&lab, "n1", &["weftctl", "nodes", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&nodes).expect("nodes --json");
    let arr = v.as_array().or_else(|| v.get("nodes").and_then(|n| n.as_array())).expect("array of nodes");
    assert_eq!(arr.len(), 3, "{nodes}");
}

#[test]
fn leave_withdraws_routes_from_peers_within_two_seconds() {
    let lab = lab("t2", 3, 1, |_| {});
    let gone = lab.wait_ready(3, Duration::from_secs(5)).expect("ready").subnet.expect("subnet");
    for i in [1, 2] {
        assert!(route_table(&lab, i).iter().any(|r| r.starts_with(&gone)), "n{i} should route {gone} first");
    }
    lab.leave(3).expect("leave");
    for i in [1, 2] {
        let took = wait_for(Duration::from_secs(2), || !route_table(&lab, i).iter().any(|r| r.starts_with(&gone)));
        assert!(took.is_some(), "n{i} still routes {gone} 2 s after n3 left: {:?}", route_table(&lab, i));
    }
    // The leaving node removed what it made.
    let links = run_ok(&lab, "n3", &["ip", "-o", "link", "show"]);
    assert!(!links.contains("weft0"), "bridge still on n3: {links}");
    assert!(!route_table(&lab, 3).iter().any(|r| r.contains("proto 213")), "weft routes left on n3");
    let names = run_ok(&lab, "n1", &["ip", "netns", "list"]);
    assert!(!names.contains(&lab.pod_ns(3, 1)), "pod namespace of n3 still exists");
    let nodes = run_ok(&lab, "n1", &["weftctl", "nodes"]);
    assert!(!nodes.lines().any(|l| l.split_whitespace().next() == Some("n3")), "n3 still listed:\n{nodes}");
}

/// Every pod pair across nodes pings over every family of the lab, before and after node n1's
/// agent restarts (with its state dir, then without it); while it is stopped the data plane
/// carries on, and it comes back with the same subnets and pod addresses.
fn restart_keeps_subnets_addresses_and_traffic(id: &str, family: IpFamily) {
    let lab = lab(id, 2, 2, |s| s.ip_family = family);
    let t0 = Instant::now();
    let before = lab.wait_ready(1, Duration::from_secs(5)).expect("ready");
    let ips = |st: &weft_config::api::Status| st.pods.iter().map(|p| (p.name.clone(), p.ip, p.ip6)).collect::<Vec<_>>();
    let failures = cross_node_ping_failures_all(&lab, 2, &PODS);
    assert!(failures.is_empty(), "pod pairs that do not ping before the restart: {failures:?}");
    let remote = pod_addrs(&lab, 2, "p1");
    assert_eq!(remote.len(), if family == IpFamily::Dual { 2 } else { 1 }, "{remote:?}");

    for wipe_state in [false, true] {
        let pid = lab.agent_pid(1).expect("pid");
        lab.stop_agent(1, nix::sys::signal::Signal::SIGTERM).expect("stop");
        // The data plane outlives the agent.
        for ip in &remote {
            assert!(ping_addr(&lab, "n1/p1", *ip, "1"), "traffic to {ip} must keep flowing while the agent is stopped");
        }
        if wipe_state {
            let cfg = lab.node_config(1).expect("config");
            std::fs::remove_dir_all(&cfg.paths.state_dir).expect("remove state dir");
        }
        let new_pid = lab.start_agent(1).expect("start");
        assert_ne!(pid, new_pid, "the agent must really have restarted");
        let after = lab.wait_ready(1, Duration::from_secs(20)).expect("ready again");
        assert_eq!(
            (&after.subnet, &after.subnet6),
            (&before.subnet, &before.subnet6),
            "subnets changed across restart (state wiped: {wipe_state})"
        );
        assert_eq!(ips(&after), ips(&before), "pod addresses changed (state wiped: {wipe_state})");
        let failures = cross_node_ping_failures_all(&lab, 2, &PODS);
        assert!(
            failures.is_empty(),
            "pod pairs that do not ping after restart (state wiped: {wipe_state}): {failures:?}"
        );
    }
    eprintln!("measured: {id}: restart checks took {} s", t0.elapsed().as_secs_f64());
}

#[test]
fn restart_keeps_subnet_and_pod_addresses_also_without_state_dir() {
    restart_keeps_subnets_addresses_and_traffic("t3", IpFamily::V4);
}

/// IPv6 only: the flat host-gw ping matrix (every pod pair across nodes) and the restart.
#[test]
fn ipv6_only_pods_ping_every_pair_and_keep_addresses_and_traffic_across_a_restart() {
    restart_keeps_subnets_addresses_and_traffic("t9", IpFamily::V6);
}

/// The iptables tools of the families `family` switches on.
fn iptables_tools(family: IpFamily) -> Vec<&'static str> {
    [(family.has_v4(), "iptables"), (family.has_v6(), "ip6tables")]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, t)| t)
        .collect()
}

/// Drops forwarding both ways a host can, for every family of the lab: Docker's
/// `iptables -P FORWARD DROP` (and `ip6tables`'s) and a pure nftables `inet filter` forward
/// chain with policy drop.
fn drop_forwarding(lab: &Lab, node: &str, family: IpFamily) {
    for tool in iptables_tools(family) {
        run_ok(lab, node, &[tool, "-w", "5", "-P", "FORWARD", "DROP"]);
    }
    run_ok(lab, node, &["nft", "add", "table", "inet", "filter"]);
    run_ok(
        lab,
        node,
        &["nft", "add", "chain", "inet", "filter", "forward", "{ type filter hook forward priority 0; policy drop; }"],
    );
}

/// Flushes every rule of the filter table of each family's iptables (weft's chain and its jump
/// from `FORWARD`; the policies stay) and of the foreign `inet filter` table.
fn flush_weft_rules(lab: &Lab, node: &str, family: IpFamily) {
    for tool in iptables_tools(family) {
        run_ok(lab, node, &[tool, "-w", "5", "-F"]);
    }
    run_ok(lab, node, &["nft", "flush", "table", "inet", "filter"]);
}

/// Every address of pod `to` (node, pod) answers a ping from `from` within `within`; returns
/// the addresses that did not.
fn unreached(lab: &Lab, from: &str, to: (usize, &str), within: Duration) -> Vec<IpAddr> {
    let addrs = pod_addrs(lab, to.0, to.1);
    addrs.into_iter().filter(|ip| wait_for(within, || ping_addr(lab, from, *ip, "1")).is_none()).collect()
}

/// Pods of two nodes ping each other over every family of the lab through `FORWARD DROP`
/// policies (iptables, ip6tables) and a foreign nftables `inet` forward chain with policy drop;
/// with the agent stopped a flush of those tables cuts every family (the control), and the
/// agent puts its rules back, at start and within one reconcile while it runs.
fn forward_drop_policies(id: &str, family: IpFamily) {
    let lab = lab(id, 2, 1, |s| s.ip_family = family);
    let t0 = Instant::now();
    for n in ["n1", "n2"] {
        drop_forwarding(&lab, n, family);
    }
    // Within one reconcile (2 s) the agents put their accepts into the new chain too.
    let (far, near) = ((2, "p1"), (1, "p1"));
    let lost = unreached(&lab, "n1/p1", far, Duration::from_secs(4));
    assert!(lost.is_empty(), "FORWARD DROP broke pod traffic from n1/p1 to {lost:?}");
    let lost = unreached(&lab, "n2/p1", near, Duration::from_secs(1));
    assert!(lost.is_empty(), "FORWARD DROP broke pod traffic from n2/p1 to {lost:?}");

    // Control: with the agent stopped, flushing the rules really cuts traffic of every family...
    lab.stop_agent(1, nix::sys::signal::Signal::SIGTERM).expect("stop");
    flush_weft_rules(&lab, "n1", family);
    for ip in pod_addrs(&lab, 2, "p1") {
        assert!(
            !ping_addr(&lab, "n1/p1", ip, "1"),
            "traffic to {ip} passed without weft's rules: the test proves nothing"
        );
    }
    // ...and a started agent restores them.
    lab.start_agent(1).expect("start");
    lab.wait_ready(1, Duration::from_secs(20)).expect("ready");
    let lost = unreached(&lab, "n1/p1", far, Duration::from_secs(4));
    assert!(lost.is_empty(), "rules not restored at start: n1/p1 cannot reach {lost:?}");

    // A flush by hand while the agent runs is repaired within one reconcile period.
    flush_weft_rules(&lab, "n1", family);
    let lost = unreached(&lab, "n1/p1", far, Duration::from_secs(4));
    assert!(lost.is_empty(), "rules not restored within one reconcile: n1/p1 cannot reach {lost:?}");

    if family == IpFamily::Dual {
        // Each family's rules are repaired on their own: IPv6's gone from ip6tables only, then
        // from the inet chain only (by their tag), while the IPv4 ones stay.
        let v6 = pod_addrs(&lab, 2, "p1").into_iter().find(IpAddr::is_ipv6).expect("an IPv6 address");
        run_ok(&lab, "n1", &["ip6tables", "-w", "5", "-F"]);
        let back = wait_for(Duration::from_secs(4), || ping_addr(&lab, "n1/p1", v6, "1"));
        assert!(back.is_some(), "ip6tables rules not restored within one reconcile (iptables' untouched)");
        let jump = run_ok(&lab, "n1", &["ip6tables", "-w", "5", "-S", "FORWARD"]);
        assert!(jump.contains("-j WEFT-FWD-default"), "IPv6 came back without weft's jump:\n{jump}");
        let handles = |lab: &Lab| -> Vec<String> {
            let chain = run_ok(lab, "n1", &["nft", "-a", "list", "chain", "inet", "filter", "forward"]);
            chain
                .lines()
                .filter(|l| l.contains("\"weft:default:ip6\""))
                .filter_map(|l| l.rsplit_once("# handle ").map(|(_, h)| h.trim().to_string()))
                .collect()
        };
        let ip6_rules = handles(&lab);
        assert!(!ip6_rules.is_empty(), "no IPv6 rules of weft's in the inet chain");
        for h in &ip6_rules {
            run_ok(&lab, "n1", &["nft", "delete", "rule", "inet", "filter", "forward", "handle", h]);
        }
        let back = wait_for(Duration::from_secs(4), || ping_addr(&lab, "n1/p1", v6, "1"));
        assert!(back.is_some(), "the inet chain's IPv6 rules not restored within one reconcile (IPv4's untouched)");
        assert!(!handles(&lab).is_empty(), "IPv6 came back without weft's IPv6 rules in the inet chain");
    }
    eprintln!("measured: {id}: firewall checks took {} s", t0.elapsed().as_secs_f64());
}

#[test]
fn forward_drop_policies_do_not_break_pods_and_rules_come_back() {
    forward_drop_policies("t4", IpFamily::V4);
}

#[test]
fn dual_stack_forward_drop_policies_do_not_break_either_family_and_rules_come_back() {
    forward_drop_policies("t8", IpFamily::Dual);
}

#[test]
fn ip_masq_hides_pods_from_the_outside_only() {
    let lab = lab("t5", 2, 1, |s| s.ip_masq = true);
    let ext: Ipv4Addr = "203.0.113.2".parse().expect("lit");
    assert!(ping(&lab, "n1/p1", ext), "with ip_masq a pod reaches the external namespace");
    let seen = tcp_source_seen(&lab.names().ext_ns(), ext, 7002, &lab.pod_ns(1, 1)).expect("tcp to ext");
    assert_eq!(seen.ip(), std::net::IpAddr::V4(lab.node_ip(1)), "external side must see the node's address");
    let (a, b) = (pod_ip(&lab, 1, "p1"), pod_ip(&lab, 2, "p1"));
    let seen = tcp_source_seen(&lab.pod_ns(2, 1), b, 7003, &lab.pod_ns(1, 1)).expect("tcp pod to pod");
    assert_eq!(seen.ip(), std::net::IpAddr::V4(a), "pod-to-pod must keep the pod IP with ip_masq on");
}

#[test]
fn api_pods_persist_and_config_pods_are_protected() {
    let lab = lab("t6", 2, 1, |_| {});
    let ns = format!("{}-extra", lab.node_ns(1));
    let out = run_ok(&lab, "n1", &["weftctl", "pod", "add", "extra", "--netns", &ns]);
    assert!(out.contains("extra"), "{out}");
    let st = lab.wait_ready(1, Duration::from_secs(5)).expect("ready");
    let extra = st.pods.iter().find(|p| p.name == "extra").and_then(|p| p.ip).expect("extra pod");
    assert!(ping(&lab, "n2/p1", v4(extra)), "API pod not reachable from another node");

    // Deleting a pod declared in agent.toml is refused.
    let del = lab.exec("n1", &["weftctl", "pod", "del", "p1"]).expect("exec");
    assert!(!del.status.success(), "deleting a config pod must fail");
    assert!(String::from_utf8_lossy(&del.stderr).contains("agent.toml"), "{}", String::from_utf8_lossy(&del.stderr));

    // API pods survive a restart with the same address.
    lab.stop_agent(1, nix::sys::signal::Signal::SIGTERM).expect("stop");
    lab.start_agent(1).expect("start");
    let st = lab.wait_ready(1, Duration::from_secs(20)).expect("ready");
    assert_eq!(st.pods.iter().find(|p| p.name == "extra").and_then(|p| p.ip), Some(extra));

    run_ok(&lab, "n1", &["weftctl", "pod", "del", "extra"]);
    let names = run_ok(&lab, "n1", &["ip", "netns", "list"]);
    assert!(!names.lines().any(|l| l.split_whitespace().next() == Some(ns.as_str())), "pod namespace left: {names}");
}

#[test]
fn dual_stack_routes_ipv6_subnets_via_the_peers_ipv6_underlay_addresses() {
    let lab = lab("t7", 3, 1, |s| s.ip_family = weft_lab::IpFamily::Dual);
    let subnet6 = |j: usize| lab.wait_ready(j, Duration::from_secs(10)).expect("ready").subnet6.expect("subnet6");
    for i in 1..=3 {
        // Every weft route of the IPv6 table: each peer's IPv6 subnet via its IPv6 underlay
        // address, with weft's marker. The IPv4 table is exactly what it is without IPv6.
        let mut want: Vec<String> = (1..=3)
            .filter(|j| *j != i)
            .map(|j| format!("{} via {} dev eth0 proto 213", subnet6(j), lab.node_ip6(j).expect("an IPv6 underlay")))
            .collect();
        want.sort();
        assert_eq!(weft_owned(route_table6(&lab, i)), want, "weft's IPv6 routes on n{i}");
        assert_eq!(route_table(&lab, i), expected_routes(&lab, i, 3), "IPv4 route table of n{i}");
    }
    // Every pod reaches every pod on another node over both families, and a TCP server on
    // n2's pod sees n1's pod's own IPv6 address (no NAT between pods).
    let failures = cross_node_ping_failures_all(&lab, 3, &["p1"]);
    assert!(failures.is_empty(), "pod pairs that do not ping: {failures:?}");
    let (ip1, ip2) = (pod_addrs(&lab, 1, "p1"), pod_addrs(&lab, 2, "p1"));
    let seen = tcp_source_seen(&lab.pod_ns(2, 1), ip2[1], 7201, &lab.pod_ns(1, 1)).expect("TCP over IPv6");
    assert_eq!(seen.ip(), ip1[1], "the server sees the client pod's own IPv6 address");

    // Node n1 reaches n2's bridge over IPv6 through the route (from its IPv6 underlay address).
    let gw2 = bridge_ipv6_gateway(&lab, 2);
    let to = gw2.to_string();
    let ping6 = || lab.exec("n1", &["ping", "-n", "-q", "-c1", "-W", "1", &to]).is_ok_and(|o| o.status.success());
    assert!(wait_for(Duration::from_secs(3), ping6).is_some(), "n1 cannot reach {gw2} on n2 over IPv6");

    // The probes of both families: `weftctl status` sees every pair answer over IPv4 and IPv6
    // (a round that ran before a route was in place fails until the next, 10 s later), and each
    // agent's metrics count its two dual-stack peers as two nodes.
    let mut v = serde_json::Value::Null;
    let all_ok = |m: &serde_json::Value| m["pairs"] == 6 && m["reachable"] == 6;
    let settled = wait_for(Duration::from_secs(35), || {
        v = serde_json::from_str(&run_ok(&lab, "n1", &["weftctl", "status", "--json"])).expect("status --json");
        all_ok(&v["summary"]) && all_ok(&v["summary6"])
    });
    assert!(settled.is_some(), "the probes of both families never all answered: {v:#}");
    assert_eq!(v["reachability6"].as_array().map(Vec::len), Some(6), "{v:#}");
    for i in 1..=3 {
        let (code, body) =
            weft_tests::ops::http_get(&lab.node_ns(i), "127.0.0.1:9472".parse().expect("lit"), "/metrics")
                .expect("scrape");
        assert_eq!(code, 200, "{body}");
        let m = weft_tests::ops::parse_metrics(&body).unwrap_or_else(|e| panic!("n{i}: {e:#}:\n{body}"));
        for (series, want) in [
            ("weft_peers", 2.0),
            ("weft_peer_subnets{family=\"ipv6\"}", 2.0),
            ("weft_peer_subnets_routed{family=\"ipv6\"}", 2.0),
            ("weft_routes_installed", 4.0),
        ] {
            assert_eq!(m.get(series), Some(want), "n{i}: {series}: {:?}", m.series);
        }
        let peer = if i == 1 { "n2" } else { "n1" };
        let reach = format!("weft_probe_reachable{{peer=\"{peer}\",family=\"ipv6\"}}");
        assert_eq!(m.get(&reach), Some(1.0), "n{i}: {reach}: {:?}", m.series);
    }

    // `--leave` of n3 withdraws both of its subnets from its peers.
    let (gone, gone6) = (lab.wait_ready(3, Duration::from_secs(5)).expect("ready").subnet.expect("subnet"), subnet6(3));
    lab.leave(3).expect("leave");
    for i in [1, 2] {
        let routed = || {
            route_table(&lab, i).iter().any(|r| r.starts_with(&gone))
                || route_table6(&lab, i).iter().any(|r| r.starts_with(&gone6))
        };
        let took = wait_for(Duration::from_secs(2), || !routed());
        assert!(took.is_some(), "n{i} still routes {gone} or {gone6} 2 s after n3 left: {:?}", route_table6(&lab, i));
    }
    assert!(weft_owned(route_table6(&lab, 3)).is_empty(), "weft's IPv6 routes left on n3");
}

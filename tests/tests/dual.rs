//! Dual-stack on the lab, node-local side: real etcd, real agents, real kernel, in namespaces.
//! On one node of a flat host-gw lab with an IPv4 and an IPv6 pool: each pod has an address and
//! a default route per family, the bridge both gateways, a pod reaches its gateways and a pod
//! on the same bridge over both families, IPv6 forwarding is on with the underlay's RAs kept,
//! ip6tables and nftables hold weft's IPv6 forward rules, and a restart keeps both addresses
//! (with and without the state dir).
//! An IPv6-only node's pod has only its IPv6 address and route. Cross-node IPv6 traffic needs
//! the backends' IPv6 routes and is not tested here.

use ipnet::IpNet;
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;
use weft_config::api::Status;
use weft_lab::{IpFamily, Lab};
use weft_tests::*;

/// `ip -j <args>` in `target`, parsed.
fn ip_json(lab: &Lab, target: &str, args: &[&str]) -> Value {
    let mut all = vec!["ip", "-j"];
    all.extend_from_slice(args);
    serde_json::from_str(&run_ok(lab, target, &all)).unwrap_or_else(|e| panic!("ip -j {args:?} in {target}: {e}"))
}

/// The global addresses of `dev` in `target` with their flags (`tentative`, `dadfailed`, ..).
fn addrs(lab: &Lab, target: &str, dev: &str) -> Vec<(IpNet, Vec<String>)> {
    let v = ip_json(lab, target, &["addr", "show", "dev", dev]);
    let mut out = Vec::new();
    for info in v[0]["addr_info"].as_array().expect("addr_info") {
        if info["scope"] != "global" {
            continue;
        }
        let local = info["local"].as_str().expect("local");
        let len = info["prefixlen"].as_u64().expect("prefixlen");
        let net: IpNet = format!("{local}/{len}").parse().expect("address");
        let flags = ["tentative", "dadfailed", "deprecated"]
            .into_iter()
            .filter(|f| info.get(*f).and_then(Value::as_bool) == Some(true))
            .map(str::to_string)
            .collect();
        out.push((net, flags));
    }
    out.sort();
    out
}

/// The default route of the family (`-4` or `-6`) in `target`: (gateway, device).
fn default_route(lab: &Lab, target: &str, family: &str) -> Option<(String, String)> {
    let v = ip_json(lab, target, &[family, "route", "show", "default"]);
    let r = v.as_array()?.first()?;
    Some((r["gateway"].as_str()?.to_string(), r["dev"].as_str()?.to_string()))
}

fn ping_any(lab: &Lab, from: &str, to: IpAddr) -> bool {
    lab.exec(from, &["ping", "-n", "-q", "-c1", "-W", "2", &to.to_string()]).expect("ping").status.success()
}

fn pod(st: &Status, name: &str) -> weft_config::api::PodInfo {
    st.pods.iter().find(|p| p.name == name).cloned().unwrap_or_else(|| panic!("no pod {name}: {:?}", st.pods))
}

/// Every pod of `st` has an address and a default route per family on `eth0`, all usable
/// (none tentative).
fn check_pods(lab: &Lab, st: &Status, subnet: IpNet, subnet6: IpNet) {
    let gw = weft_config::subnet::gateway(subnet);
    let gw6 = weft_config::subnet::gateway(subnet6);
    for j in 1..=2 {
        let p = pod(st, &format!("p{j}"));
        let (ip, ip6) = (p.ip.expect("IPv4 address"), p.ip6.expect("IPv6 address"));
        assert!(subnet.contains(&ip) && subnet6.contains(&ip6), "{p:?} in {subnet} and {subnet6}");
        assert_eq!((p.gateway, p.gateway6), (Some(gw), Some(gw6)));
        let target = format!("n1/p{j}");
        let want = vec![
            (IpNet::new(ip, subnet.prefix_len()).expect("net"), vec![]),
            (IpNet::new(ip6, subnet6.prefix_len()).expect("net"), vec![]),
        ];
        assert_eq!(addrs(lab, &target, "eth0"), want, "addresses of {target} (usable, not tentative)");
        assert_eq!(default_route(lab, &target, "-4"), Some((gw.to_string(), "eth0".into())), "{target}");
        assert_eq!(default_route(lab, &target, "-6"), Some((gw6.to_string(), "eth0".into())), "{target}");
    }
}

#[test]
fn dual_stack_pods_have_both_families_on_their_node_and_keep_them_across_a_restart() {
    let lab = lab("d1", 2, 2, |s| s.ip_family = IpFamily::Dual);
    let st = lab.wait_ready(1, Duration::from_secs(20)).expect("ready");
    let subnet: IpNet = st.subnet.as_deref().expect("IPv4 subnet").parse().expect("subnet");
    let subnet6: IpNet = st.subnet6.as_deref().expect("IPv6 subnet").parse().expect("subnet6");
    check_pods(&lab, &st, subnet, subnet6);

    // The bridge holds both gateways, usable at once.
    let (gw, gw6) = (weft_config::subnet::gateway(subnet), weft_config::subnet::gateway(subnet6));
    let bridge: Vec<IpNet> = addrs(&lab, "n1", "weft0")
        .into_iter()
        .map(|(a, flags)| {
            assert!(flags.is_empty(), "bridge address {a} is {flags:?}");
            a
        })
        .collect();
    let mut want =
        vec![IpNet::new(gw, subnet.prefix_len()).expect("net"), IpNet::new(gw6, subnet6.prefix_len()).expect("net")];
    want.sort();
    assert_eq!(bridge, want);

    // A pod reaches its gateways and the other pod on its bridge over both families.
    let p2 = pod(&st, "p2");
    for to in [gw, gw6, p2.ip.expect("ip"), p2.ip6.expect("ip6")] {
        assert!(ping_any(&lab, "n1/p1", to), "n1/p1 cannot reach {to}");
    }
    // IPv4 still crosses nodes in a dual-stack lab (IPv6 needs the backends' routes: not here).
    let far = pod_ip(&lab, 2, "p1");
    assert!(ping(&lab, "n1/p1", far), "n1/p1 cannot reach n2/p1 {far} over IPv4");

    // IPv6 forwarding in the node's namespace, the underlay still taking router advertisements.
    let sysctl = |key: &str| run_ok(&lab, "n1", &["cat", &format!("/proc/sys/net/ipv6/conf/{key}")]).trim().to_string();
    assert_eq!(sysctl("all/forwarding"), "1");
    assert_eq!(sysctl("eth0/accept_ra"), "2");

    // weft's IPv6 forward rules: ip6tables (iptables-nft here, so nftables' ip6 filter table
    // holds them too), and the IPv4 ones as before.
    let (cidr, cidr6) = (weft_lab::names::CLUSTER_CIDR, weft_lab::names::CLUSTER_CIDR6);
    let v6 = run_ok(&lab, "n1", &["ip6tables", "-w", "5", "-S", "WEFT-FWD-default"]);
    for rule in [format!("-A WEFT-FWD-default -s {cidr6} "), format!("-A WEFT-FWD-default -d {cidr6} ")] {
        assert!(v6.lines().any(|l| l.starts_with(&rule) && l.ends_with("-j ACCEPT")), "no {rule}.. in\n{v6}");
    }
    let jump = run_ok(&lab, "n1", &["ip6tables", "-w", "5", "-S", "FORWARD"]);
    assert!(jump.contains("-j WEFT-FWD-default"), "{jump}");
    let xt = run_ok(&lab, "n1", &["nft", "list", "table", "ip6", "filter"]);
    assert!(xt.contains(&format!("ip6 saddr {cidr6}")) && xt.contains("jump WEFT-FWD-default"), "{xt}");
    // A foreign nftables `inet` forward chain with policy drop gets weft's accepts of both
    // families at its top within a reconcile (2 s), each family's tagged apart.
    run_ok(&lab, "n1", &["nft", "add", "table", "inet", "filter"]);
    run_ok(
        &lab,
        "n1",
        &["nft", "add", "chain", "inet", "filter", "forward", "{ type filter hook forward priority 0; policy drop; }"],
    );
    let chain = || run_ok(&lab, "n1", &["nft", "list", "chain", "inet", "filter", "forward"]);
    let both = wait_for(Duration::from_secs(6), || {
        let c = chain();
        c.contains(&format!("ip6 saddr {cidr6}")) && c.contains(&format!("ip saddr {cidr}"))
    });
    let c = chain();
    assert!(both.is_some(), "no accepts of both families in the foreign chain:\n{c}");
    assert!(c.contains("\"weft:default:ip6\"") && c.contains("\"weft:default\""), "{c}");
    let v4 = run_ok(&lab, "n1", &["iptables", "-w", "5", "-S", "WEFT-FWD-default"]);
    assert!(v4.contains(&format!("-s {cidr} ")), "{v4}");
    assert!(!v4.contains(cidr6) && !v6.contains(cidr), "each family's rules in its own tool");

    // A restart keeps both addresses of every pod.
    lab.stop_agent(1, nix::sys::signal::Signal::SIGTERM).expect("stop");
    lab.start_agent(1).expect("start");
    let after = lab.wait_ready(1, Duration::from_secs(20)).expect("ready again");
    for j in 1..=2 {
        let (b, a) = (pod(&st, &format!("p{j}")), pod(&after, &format!("p{j}")));
        assert_eq!((a.ip, a.ip6), (b.ip, b.ip6), "p{j} after the restart");
    }
    check_pods(&lab, &after, subnet, subnet6);
    assert!(ping_any(&lab, "n1/p1", gw6), "n1/p1 cannot reach {gw6} after the restart");

    // And without the state dir: both subnets found by identity, both addresses read back from
    // the pods' namespaces.
    lab.stop_agent(1, nix::sys::signal::Signal::SIGTERM).expect("stop");
    let state_dir = lab.node_config(1).expect("node config").paths.state_dir;
    std::fs::remove_dir_all(&state_dir).unwrap_or_else(|e| panic!("removing {}: {e}", state_dir.display()));
    lab.start_agent(1).expect("start");
    let fresh = lab.wait_ready(1, Duration::from_secs(20)).expect("ready without the state dir");
    assert_eq!((fresh.subnet.as_deref(), fresh.subnet6.as_deref()), (st.subnet.as_deref(), st.subnet6.as_deref()));
    for j in 1..=2 {
        let (b, a) = (pod(&st, &format!("p{j}")), pod(&fresh, &format!("p{j}")));
        assert_eq!((a.ip, a.ip6), (b.ip, b.ip6), "p{j} after a restart without the state dir");
    }
    check_pods(&lab, &fresh, subnet, subnet6);
}

#[test]
fn an_ipv6_only_pod_has_only_its_ipv6_address_and_route() {
    let lab = lab("d2", 1, 1, |s| s.ip_family = IpFamily::V6);
    let st = lab.wait_ready(1, Duration::from_secs(20)).expect("ready");
    assert_eq!(st.subnet, None, "no IPv4 subnet");
    let subnet6: IpNet = st.subnet6.as_deref().expect("IPv6 subnet").parse().expect("subnet6");
    let gw6 = weft_config::subnet::gateway(subnet6);
    let p = pod(&st, "p1");
    assert_eq!((p.ip, p.gateway), (None, None));
    let ip6 = p.ip6.expect("IPv6 address");
    assert_eq!(addrs(&lab, "n1/p1", "eth0"), vec![(IpNet::new(ip6, subnet6.prefix_len()).expect("net"), vec![])]);
    assert_eq!(default_route(&lab, "n1/p1", "-4"), None);
    assert_eq!(default_route(&lab, "n1/p1", "-6"), Some((gw6.to_string(), "eth0".into())));
    assert!(ping_any(&lab, "n1/p1", gw6), "n1/p1 cannot reach {gw6}");
    let v4 = run_ok(&lab, "n1", &["iptables", "-w", "5", "-S"]);
    assert!(!v4.contains("WEFT-FWD"), "no IPv4 rules in an IPv6-only network:\n{v4}");
    let v6 = run_ok(&lab, "n1", &["ip6tables", "-w", "5", "-S", "WEFT-FWD-default"]);
    assert!(v6.contains(weft_lab::names::CLUSTER_CIDR6), "{v6}");
    lab.stop_agent(1, nix::sys::signal::Signal::SIGTERM).expect("stop");
    lab.start_agent(1).expect("start");
    let after = lab.wait_ready(1, Duration::from_secs(20)).expect("ready again");
    assert_eq!((pod(&after, "p1").ip, pod(&after, "p1").ip6), (None, Some(ip6)));
}

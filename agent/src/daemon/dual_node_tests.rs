//! Unit tests of dual-stack's node-local side on `MemStore` + `FakeKernel` + the recording
//! firewall runner: pods with an address and a default route per family, the bridge with both
//! gateways, kept across restarts (with and without the state dir), IPv6 forwarding through the
//! host, and one firewall spec per family (installed every reconcile, removed on leave). An
//! IPv4-only node does none of the IPv6 part; an IPv6-only node none of the IPv4 part.

use super::*;
use std::net::IpAddr;
use weft_config::subnet::{Family, PerFamily};

const V6_CIDR: &str = "fd00:10:244::/56";

/// n1 on a network of `v4` and `v6` pools (either may be absent) with the pod `p1` (namespace
/// `ns-p1`) in its agent.toml, and `extra` appended before it; the underlay also holds
/// fd00:30::11/64.
fn world(v4: Option<&str>, v6: Option<&str>, extra: &str) -> World {
    let net =
        NetworkConfig::with_pools("test", v4.map(|c| (c, 24)), v6.map(|c| (c, 64)), Backend::HostGw).expect("network");
    let mut w = World::with_net(MemStore::new(), &net);
    w.nl.seed_address(w.eth0, n("fd00:30::11/64"));
    w.extra = format!("{extra}[[pods]]\nname = \"p1\"\nnetns = \"ns-p1\"\n");
    w
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal")
}

/// The pod's eth0 in the fake kernel: its addresses (sorted) and which families' default
/// routes leave through it.
async fn inside(w: &World, netns: &str) -> (Vec<IpNet>, Vec<Family>) {
    let pod = w.nl.in_netns(netns).expect("pod namespace");
    let eth0 = pod.link("eth0").await.expect("lookup").expect("eth0").index;
    let mut addrs = pod.addrs(eth0).await.expect("addrs");
    addrs.sort();
    let mut defaults = Vec::new();
    for family in [Family::V4, Family::V6] {
        if pod.default_route_oif(family).await.expect("route") == Some(eth0) {
            defaults.push(family);
        }
    }
    (addrs, defaults)
}

fn pod_addrs(h: &Handle, name: &str) -> (Option<IpAddr>, Option<IpAddr>) {
    let st = status(h);
    let p = st.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}: {:?}", st.pods));
    (p.ip, p.ip6)
}

async fn api(d: &mut TestDaemon, req: Request) -> Response {
    let Phase::Running(node) = &mut d.phase else { panic!("daemon is not running") };
    node.handle(&d.ctx, req).await
}

fn forwarding6(w: &World) -> Vec<String> {
    w.host.forwarding6.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The firewall commands of one program (`iptables`, `ip6tables`, `nft`) that write.
fn writes(w: &World, program: &str) -> Vec<String> {
    w.runner
        .calls()
        .into_iter()
        .filter(|c| c.split_whitespace().next() == Some(program))
        .filter(|c| !c.ends_with(" -S") && !c.contains(" list "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_pod_has_an_address_and_a_default_route_per_family_kept_across_restarts() {
    let w = world(Some(CIDR), Some(V6_CIDR), "");
    let (mut d, h) = w.started().await;
    let mut bridge = w.bridge_addrs().expect("bridge");
    bridge.sort();
    assert_eq!(bridge, vec![n("10.244.0.1/24"), n("fd00:10:244::1/64")], "both gateways on the bridge");
    let want = (vec![n("10.244.0.2/24"), n("fd00:10:244::2/64")], vec![Family::V4, Family::V6]);
    assert_eq!(inside(&w, "ns-p1").await, want);
    assert_eq!(pod_addrs(&h, "p1"), (Some(ip("10.244.0.2")), Some(ip("fd00:10:244::2"))));
    let st = status(&h);
    let p1 = &st.pods[0];
    assert_eq!(
        (p1.prefix_len, p1.gateway, p1.prefix_len6, p1.gateway6),
        (Some(24), Some(ip("10.244.0.1")), Some(64), Some(ip("fd00:10:244::1")))
    );

    // An API pod gets the next address of each family.
    let add = Request::PodAdd { name: "p2".into(), netns: None, ifname: None, netns_path: None, dns: None };
    let Response::Pod(p2) = api(&mut d, add).await else { panic!("pod_add failed") };
    assert_eq!((p2.ip, p2.ip6), (Some(ip("10.244.0.3")), Some(ip("fd00:10:244::3"))));
    let saved = StateDir::new(&w.path("state")).load_pods().expect("pods.json");
    assert_eq!(
        saved.iter().map(|p| (p.name.as_str(), p.addrs)).collect::<Vec<_>>(),
        [
            ("p1", PerFamily::Dual(ip("10.244.0.2"), ip("fd00:10:244::2"))),
            ("p2", PerFamily::Dual(ip("10.244.0.3"), ip("fd00:10:244::3")))
        ]
    );

    // A restart keeps both pods' addresses (the state dir remembers them).
    drop(d);
    let (_d, h) = w.started().await;
    assert_eq!(pod_addrs(&h, "p1"), (Some(ip("10.244.0.2")), Some(ip("fd00:10:244::2"))));
    assert_eq!(pod_addrs(&h, "p2"), (Some(ip("10.244.0.3")), Some(ip("fd00:10:244::3"))));
    assert_eq!(inside(&w, "ns-p1").await, want);

    // Without the state dir the config pod's addresses are read back from its namespace.
    drop(_d);
    std::fs::remove_dir_all(w.path("state")).expect("remove state");
    let (_d, h) = w.started().await;
    assert_eq!(pod_addrs(&h, "p1"), (Some(ip("10.244.0.2")), Some(ip("fd00:10:244::2"))));
    assert_eq!(inside(&w, "ns-p1").await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_node_turns_on_ipv6_forwarding_and_runs_a_firewall_spec_per_family() {
    let w = world(Some(CIDR), Some(V6_CIDR), "ip_masq6 = true\n");
    let (mut d, _h) = w.started().await;
    let on = forwarding6(&w);
    assert!(!on.is_empty() && on.iter().all(|u| u == "eth0"), "IPv6 forwarding with the underlay's RAs kept: {on:?}");

    let v4 = writes(&w, "iptables");
    let v6 = writes(&w, "ip6tables");
    let has = |calls: &[String], parts: &[&str]| calls.iter().any(|c| parts.iter().all(|p| c.contains(p)));
    assert!(has(&v4, &["-A WEFT-FWD-lab -s 10.244.0.0/16 ", "--comment weft:lab ", "-j ACCEPT"]), "{v4:#?}");
    assert!(!has(&v4, &["MASQUERADE"]), "ip_masq is off: {v4:#?}");
    assert!(has(&v6, &["-A WEFT-FWD-lab -s fd00:10:244::/56 ", "--comment weft:lab:ip6 ", "-j ACCEPT"]), "{v6:#?}");
    assert!(has(&v6, &["-A WEFT-FWD-lab -d fd00:10:244::/56 ", "-j ACCEPT"]), "{v6:#?}");
    assert!(has(&v6, &["-I FORWARD 1 ", "-j WEFT-FWD-lab"]), "{v6:#?}");
    assert!(has(&v6, &["-s fd00:10:244::/56 -d fd00:10:244::/56 ", "-j RETURN"]), "never pod to pod: {v6:#?}");
    assert!(has(&v6, &["-s fd00:10:244::/56 ", "-j MASQUERADE"]), "ip_masq6: {v6:#?}");
    assert!(v6.iter().all(|c| !c.contains("10.244.")), "no IPv4 prefix in an IPv6 rule: {v6:#?}");

    // Every full reconcile checks both families' rules again.
    let listed = |w: &World, program: &str| {
        w.runner.calls().iter().filter(|c| c.starts_with(program) && c.ends_with("-t filter -S")).count()
    };
    let before = (listed(&w, "iptables "), listed(&w, "ip6tables "));
    full(&mut d).await;
    assert_eq!((listed(&w, "iptables "), listed(&w, "ip6tables ")), (before.0 + 1, before.1 + 1));

    // Leave removes the rules of both families.
    let calls_before = w.runner.calls().len();
    assert!(matches!(api(&mut d, Request::Leave).await, Response::Done));
    let after: Vec<String> = w.runner.calls()[calls_before..].to_vec();
    for program in ["iptables ", "ip6tables "] {
        assert!(after.iter().any(|c| c.starts_with(program) && c.ends_with("-t filter -S")), "{program}: {after:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_only_pod_has_only_the_ipv6_address_and_the_node_no_ipv4_rules() {
    let w = world(None, Some(V6_CIDR), "");
    let (_d, h) = w.started().await;
    assert_eq!(w.bridge_addrs(), Some(vec![n("fd00:10:244::1/64")]));
    assert_eq!(inside(&w, "ns-p1").await, (vec![n("fd00:10:244::2/64")], vec![Family::V6]));
    assert_eq!(pod_addrs(&h, "p1"), (None, Some(ip("fd00:10:244::2"))));
    let json = serde_json::to_value(&status(&h).pods[0]).expect("json");
    assert!(json["ip"].is_null(), "ip is null without an IPv4 pool: {json}");
    assert!(!forwarding6(&w).is_empty());
    assert!(writes(&w, "iptables").is_empty(), "{:#?}", writes(&w, "iptables"));
    assert!(!writes(&w, "ip6tables").is_empty());
    // A restart without the state dir keeps the address.
    drop(_d);
    std::fs::remove_dir_all(w.path("state")).expect("remove state");
    let (_d, h) = w.started().await;
    assert_eq!(pod_addrs(&h, "p1"), (None, Some(ip("fd00:10:244::2"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_only_node_does_nothing_of_ipv6() {
    let w = world(Some(CIDR), None, "ip_masq6 = true\n");
    let (mut d, h) = w.started().await;
    assert_eq!(w.bridge_addrs(), Some(vec![n("10.244.0.1/24")]));
    assert_eq!(inside(&w, "ns-p1").await, (vec![n("10.244.0.2/24")], vec![Family::V4]));
    assert_eq!(pod_addrs(&h, "p1"), (Some(ip("10.244.0.2")), None));
    let json = serde_json::to_value(&status(&h).pods[0]).expect("json");
    assert!(json.get("ip6").is_none() && json.get("gateway6").is_none(), "{json}");
    assert!(forwarding6(&w).is_empty(), "no IPv6 sysctl without an IPv6 pool");
    assert!(!w.runner.calls().iter().any(|c| c.starts_with("ip6tables")), "{:#?}", w.runner.calls());
    let raw = std::fs::read_to_string(w.path("state/pods.json")).expect("pods.json");
    assert!(!raw.contains("ip6"), "{raw}");
    assert!(matches!(api(&mut d, Request::Leave).await, Response::Done));
    assert!(!w.runner.calls().iter().any(|c| c.starts_with("ip6tables")), "leave: {:#?}", w.runner.calls());
}

//! Human output of what the local agent reports (`weftctl agent status`, `weftctl pod list`).

use crate::output::table;
use weft_config::api::{PodInfo, Status};

pub fn render_status(s: &Status) -> String {
    let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    let mut out = format!(
        "node:        {} (id {})\nnetwork:     {}\npid:         {}\nready:       {}\netcd:        {}\n\
         subnet:      {}\npublic ip:   {}\n{}backend:     {}\nreconciles:  {} ({} failed)\nskipped:     {} record(s)\n\
         last error:  {}\n",
        s.node,
        s.node_id,
        s.network,
        s.pid,
        if s.ready { "yes" } else { "no" },
        if s.etcd_connected { "connected" } else { "not connected" },
        opt(s.subnet.clone()),
        opt(s.public_ip.map(|i| i.to_string())),
        ipv6_lines(s),
        opt(s.backend.clone()),
        s.reconciles,
        s.reconcile_errors,
        s.skipped_records,
        opt(s.last_error.clone()),
    );
    let peers: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            vec![
                p.node.clone(),
                p.subnet.clone(),
                p.public_ip.to_string(),
                if p.route_ok { "ok" } else { "missing" }.to_string(),
                opt(p.problem.clone()),
            ]
        })
        .collect();
    out.push_str(&format!("\npeers ({}):\n", s.peers.len()));
    if !peers.is_empty() {
        out.push_str(&indent(&table(&["NODE", "SUBNET", "PUBLIC-IP", "ROUTE", "PROBLEM"], &peers)));
    }
    out.push_str(&format!("\npods ({}):\n", s.pods.len()));
    if !s.pods.is_empty() {
        out.push_str(&indent(&render_pods(&s.pods)));
    }
    out
}

/// The IPv6 subnet and underlay address, for an agent of a network with an IPv6 pool.
fn ipv6_lines(s: &Status) -> String {
    match &s.subnet6 {
        None => String::new(),
        Some(subnet6) => format!(
            "subnet6:     {subnet6}\npublic ip6:  {}\n",
            s.public_ip6.map_or_else(|| "-".to_string(), |i| i.to_string())
        ),
    }
}

pub fn render_pods(pods: &[PodInfo]) -> String {
    let rows: Vec<Vec<String>> = pods
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.addrs_text(","),
                gateways(p),
                p.netns.clone(),
                p.ifname.clone(),
                p.host_veth.clone(),
                p.source.clone(),
            ]
        })
        .collect();
    table(&["NAME", "IP", "GATEWAY", "NETNS", "IFNAME", "HOST-VETH", "SOURCE"], &rows)
}

/// A pod's gateways (one per family), joined by `,`.
fn gateways(p: &PodInfo) -> String {
    let all: Vec<String> = p.addrs().iter().map(|a| a.gateway.to_string()).collect();
    if all.is_empty() {
        "-".into()
    } else {
        all.join(",")
    }
}

/// One line for a pod just added (`ADDR/LEN via GATEWAY` per family).
pub fn render_pod(p: &PodInfo) -> String {
    let addrs: Vec<String> = p.addrs().iter().map(|a| format!("{}/{} via {}", a.ip, a.prefix_len, a.gateway)).collect();
    format!("{}: {} in netns {} ({}, host side {})\n", p.name, addrs.join(", "), p.netns, p.ifname, p.host_veth)
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn pod() -> PodInfo {
        PodInfo {
            name: "p1".into(),
            netns: "weft0-n1-p1".into(),
            ifname: "eth0".into(),
            ip: Some(Ipv4Addr::new(10, 244, 1, 2).into()),
            prefix_len: Some(24),
            gateway: Some(Ipv4Addr::new(10, 244, 1, 1).into()),
            ip6: None,
            prefix_len6: None,
            gateway6: None,
            host_veth: "vp1".into(),
            source: "config".into(),
        }
    }

    #[test]
    fn status_and_pods() {
        let s = Status {
            node: "n1".into(),
            node_id: "lab-0-n1".into(),
            network: "default".into(),
            pid: 9,
            ready: true,
            etcd_connected: true,
            subnet: Some("10.244.1.0/24".into()),
            subnet6: None,
            public_ip: Some(Ipv4Addr::new(172, 30, 0, 11).into()),
            public_ip6: None,
            backend: Some("host-gw".into()),
            peers: vec![],
            pods: vec![pod()],
            reconciles: 3,
            reconcile_errors: 0,
            skipped_records: 0,
            last_error: None,
            quic: None,
            health: Default::default(),
            probes: vec![],
            last_route_removed: None,
        };
        let r = render_status(&s);
        assert!(r.starts_with("node:        n1 (id lab-0-n1)\n"), "{r}");
        assert!(r.contains("subnet:      10.244.1.0/24\n"), "{r}");
        assert!(r.contains("peers (0):\n\npods (1):\n  NAME  IP             GATEWAY"), "{r}");
        assert_eq!(render_pod(&pod()), "p1: 10.244.1.2/24 via 10.244.1.1 in netns weft0-n1-p1 (eth0, host side vp1)\n");
    }

    #[test]
    fn a_dual_stack_pod_shows_both_addresses() {
        let mut p = pod();
        p.set_addr(weft_config::api::PodAddr {
            ip: "fd00:10:244:1::2".parse().expect("lit"),
            prefix_len: 64,
            gateway: "fd00:10:244:1::1".parse().expect("lit"),
        });
        assert_eq!(
            render_pod(&p),
            "p1: 10.244.1.2/24 via 10.244.1.1, fd00:10:244:1::2/64 via fd00:10:244:1::1 in netns weft0-n1-p1 (eth0, host side vp1)\n"
        );
        let table = render_pods(&[p]);
        assert!(
            table.contains("10.244.1.2/24,fd00:10:244:1::2/64  10.244.1.1,fd00:10:244:1::1  weft0-n1-p1"),
            "{table}"
        );
    }

    #[test]
    fn a_dual_stack_agent_shows_its_ipv6_subnet_and_address() {
        let mut s: Status = serde_json::from_str(
            r#"{"node":"n1","node_id":"i","network":"d","pid":1,"ready":true,"etcd_connected":true,
                "subnet":"10.244.1.0/24","public_ip":"172.30.0.11","peers":[],"pods":[],
                "reconciles":0,"reconcile_errors":0,"skipped_records":0}"#,
        )
        .expect("a status without the IPv6 fields still parses");
        let v4 = render_status(&s);
        assert!(v4.contains("public ip:   172.30.0.11\nbackend:"), "{v4}");
        s.subnet6 = Some("fd00:10:244:1::/64".into());
        s.public_ip6 = Some("fd00:30::11".parse().expect("lit"));
        let dual = render_status(&s);
        assert!(
            dual.contains(
                "public ip:   172.30.0.11\nsubnet6:     fd00:10:244:1::/64\npublic ip6:  fd00:30::11\nbackend:"
            ),
            "{dual}"
        );
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(
            (json["subnet6"].as_str(), json["public_ip6"].as_str()),
            (Some("fd00:10:244:1::/64"), Some("fd00:30::11"))
        );
    }
}

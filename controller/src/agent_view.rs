//! Human output of what the local agent reports (`weftctl agent status`, `weftctl pod list`).

use crate::output::{round_trip, table};
use std::collections::BTreeSet;
use weft_config::api::{PeerStatus, PodInfo, Status};
use weft_config::subnet::Family;

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
    // One table per family when the node or its peers have subnets of both.
    let mut families: BTreeSet<Family> = s.families().into_iter().collect();
    families.extend(s.peers.iter().filter_map(PeerStatus::family));
    if families.len() < 2 {
        out.push_str(&peer_table(s, &format!("peers ({})", s.peers.len()), |_| true));
    } else {
        for f in families {
            let n = s.peers.iter().filter(|p| p.family() == Some(f)).count();
            out.push_str(&peer_table(s, &format!("peers over {f} ({n})"), |p| p.family() == Some(f)));
        }
    }
    out.push_str(&format!("\npods ({}):\n", s.pods.len()));
    if !s.pods.is_empty() {
        out.push_str(&indent(&render_pods(&s.pods)));
    }
    out
}

/// The peers `keep` selects under `title`, with their latest probe when the agent probes.
fn peer_table(s: &Status, title: &str, keep: impl Fn(&PeerStatus) -> bool) -> String {
    let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    let probing = !s.probes.is_empty();
    // Under auto, which backend carries each peer.
    let choosing = s.backend.as_deref() == Some("auto");
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .filter(|p| keep(p))
        .map(|p| {
            let mut row = vec![p.node.clone(), p.subnet.clone(), p.public_ip.to_string()];
            if choosing {
                row.push(opt(p.via.clone()));
            }
            row.push(if p.route_ok { "ok" } else { "missing" }.to_string());
            if probing {
                row.push(probe_cell(s, p));
            }
            row.push(opt(p.problem.clone()));
            row
        })
        .collect();
    let mut out = format!("\n{title}:\n");
    if !rows.is_empty() {
        let mut headers = vec!["NODE", "SUBNET", "PUBLIC-IP"];
        if choosing {
            headers.push("VIA");
        }
        headers.push("ROUTE");
        if probing {
            headers.push("PROBE");
        }
        headers.push("PROBLEM");
        out.push_str(&indent(&table(&headers, &rows)));
    }
    out
}

/// The latest probe of the peer's gateway of its subnet's family: the round trip, `FAIL`, or
/// `-` when there is none.
fn probe_cell(s: &Status, p: &PeerStatus) -> String {
    match s.probes.iter().find(|r| r.node == p.node && Some(r.family()) == p.family()) {
        None => "-".into(),
        Some(r) if r.ok => r.rtt_us.map_or_else(|| "ok".into(), round_trip),
        Some(_) => "FAIL".into(),
    }
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
    let mut t =
        format!("{}: {} in netns {} ({}, host side {})\n", p.name, addrs.join(", "), p.netns, p.ifname, p.host_veth);
    if let Some(dns) = &p.dns {
        t.push_str(&format!("  dns: {}\n", crate::network::dns_text(dns)));
    }
    t
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
            dns: None,
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

    #[test]
    fn a_dual_stack_agent_lists_its_peers_and_probes_per_family() {
        let peer = |node: &str, subnet: &str, ip: &str, route_ok| PeerStatus {
            node: node.into(),
            subnet: subnet.into(),
            public_ip: ip.parse().expect("lit"),
            route_ok,
            problem: None,
            route_since_unix_ms: 0,
            via: None,
        };
        let probe = |node: &str, target: &str, ok, rtt_us| weft_config::api::ProbeResult {
            node: node.into(),
            target: target.parse().expect("lit"),
            ok,
            rtt_us,
            at: 0,
        };
        let mut s: Status = serde_json::from_str(
            r#"{"node":"n1","node_id":"i","network":"d","pid":1,"ready":true,"etcd_connected":true,
                "subnet":"10.244.1.0/24","subnet6":"fd00:10:244:1::/64","public_ip":"172.30.0.11",
                "public_ip6":"fd00:30::11","peers":[],"pods":[],"reconciles":0,"reconcile_errors":0,
                "skipped_records":0}"#,
        )
        .expect("status");
        s.peers = vec![
            peer("n2", "10.244.2.0/24", "172.30.0.12", true),
            peer("n2", "fd00:10:244:2::/64", "fd00:30::12", false),
        ];
        s.probes = vec![probe("n2", "10.244.2.1", true, Some(250)), probe("n2", "fd00:10:244:2::1", false, None)];
        let r = render_status(&s);
        assert!(
            r.contains(
                "\npeers over IPv4 (1):\n  NODE  SUBNET         PUBLIC-IP    ROUTE  PROBE  PROBLEM\n  \
                 n2    10.244.2.0/24  172.30.0.12  ok     250us  -\n\
                 \npeers over IPv6 (1):\n  NODE  SUBNET              PUBLIC-IP    ROUTE    PROBE  PROBLEM\n  \
                 n2    fd00:10:244:2::/64  fd00:30::12  missing  FAIL   -\n\npods (0):\n"
            ),
            "{r}"
        );
        // A single family, probed: one table as before, with the probe column.
        s.subnet6 = None;
        s.peers.truncate(1);
        let r = render_status(&s);
        assert!(r.contains("\npeers (1):\n  NODE  SUBNET         PUBLIC-IP    ROUTE  PROBE  PROBLEM\n"), "{r}");
        // Not probed (probes disabled or the first round not done): no probe column.
        s.probes.clear();
        let r = render_status(&s);
        assert!(r.contains("\npeers (1):\n  NODE  SUBNET         PUBLIC-IP    ROUTE  PROBLEM\n  n2 "), "{r}");
        // Under auto, the backend carrying each peer.
        s.backend = Some("auto".into());
        s.peers[0].via = Some("vxlan".into());
        let r = render_status(&s);
        assert!(r.contains("\npeers (1):\n  NODE  SUBNET         PUBLIC-IP    VIA    ROUTE  PROBLEM\n  n2    10.244.2.0/24  172.30.0.12  vxlan  ok"), "{r}");
        s.backend = None;
        // JSON only gains: the probes carry their targets, so each result's family shows.
        s.probes = vec![probe("n2", "fd00:10:244:2::1", true, Some(90))];
        let j = serde_json::to_value(&s).expect("json");
        assert_eq!(j["probes"][0]["target"], "fd00:10:244:2::1");
        assert_eq!(j["peers"][0]["subnet"], "10.244.2.0/24");
    }
}

//! `weftctl status`: the cluster at a glance. The network config, every node (subnet records
//! joined with heartbeats, as `weftctl nodes`), and a reachability matrix per family built from
//! the probe records agents publish (`/weft/v1/<net>/probes/<node>`: each agent pings every
//! peer's gateway from its own gateway of the same family, through the overlay, every
//! `[probes] interval_secs`). The IPv4 matrix is `reachability` as before dual-stack; the IPv6
//! one, over the nodes holding an IPv6 subnet, is `reachability6` beside it.
//!
//! Probe records are untrusted input like every record: a malformed one makes its row
//! "unknown", never a crash.

use crate::nodes::{self, Kv, NodeRow};
use crate::output::{age, round_trip, table};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use weft_config::probes::ProbeRecord;
use weft_config::subnet::Family;
use weft_config::{Keys, NetworkConfig};
use weft_store::Store;

/// The state of one (from, to) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// The latest probe from `from` got an answer from `to`'s gateway.
    Ok,
    /// The latest probe got no answer.
    Fail,
    /// `from`'s latest results are older than three probe rounds.
    Stale,
    /// No result: `from` publishes no probe record (down, starting, or probes disabled), or
    /// its record does not mention `to` yet.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pair {
    pub from: String,
    pub to: String,
    pub state: Reach,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    /// Seconds since `from` ran the probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_secs: Option<u64>,
    /// Under `auto`: the backend `from` carries this pair's traffic with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// The nodes (named, holding a subnet), how many are alive, and the pairs of one matrix by
/// state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub nodes: usize,
    pub alive: usize,
    pub pairs: usize,
    pub reachable: usize,
    pub failing: usize,
    pub unknown: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterStatus {
    pub network: String,
    /// `None` before `weftctl network init`.
    pub config: Option<NetworkConfig>,
    pub nodes: Vec<NodeRow>,
    /// IPv4: every ordered pair of distinct named nodes holding an IPv4 subnet, by (from, to).
    pub reachability: Vec<Pair>,
    /// Every node holding a subnet (of either family); the pairs of `reachability`.
    pub summary: Summary,
    /// IPv6: every ordered pair of distinct named nodes holding an IPv6 subnet (ICMPv6 between
    /// their IPv6 gateways). Absent when no node holds an IPv6 subnet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reachability6: Vec<Pair>,
    /// The nodes holding an IPv6 subnet and the pairs of `reachability6`; absent with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary6: Option<Summary>,
}

/// Builds the status from what etcd holds. `now` is seconds since the Unix epoch.
pub fn build(
    network: &str,
    config: Option<NetworkConfig>,
    subnets: &[Kv],
    heartbeats: &[Kv],
    probes: &[Kv],
    now: u64,
) -> ClusterStatus {
    let keys = Keys::new(network);
    let nodes = nodes::build_rows(&keys, subnets, heartbeats, now);
    let records: BTreeMap<String, Option<ProbeRecord>> = probes
        .iter()
        .filter_map(|(k, v)| Some((keys.probe_segment(k)?.to_string(), ProbeRecord::from_json(k, v).ok())))
        .collect();
    let names = |held: &dyn Fn(&NodeRow) -> bool| -> Vec<String> {
        let mut v: Vec<String> = nodes.iter().filter(|r| held(r)).filter_map(|r| r.node.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let alive = |held: &dyn Fn(&NodeRow) -> bool| nodes.iter().filter(|r| r.alive && held(r)).count();
    let reachability = matrix(&names(&|r| r.subnet.is_some()), &records, Family::V4, now);
    let summary = summarize(names(&NodeRow::has_subnet).len(), alive(&NodeRow::has_subnet), &reachability);
    let names6 = names(&|r| r.subnet6.is_some());
    let reachability6 = matrix(&names6, &records, Family::V6, now);
    let summary6 =
        (!names6.is_empty()).then(|| summarize(names6.len(), alive(&|r| r.subnet6.is_some()), &reachability6));
    ClusterStatus { network: network.to_string(), config, nodes, reachability, summary, reachability6, summary6 }
}

/// Every ordered pair of distinct `names` by (from, to), from each `from`'s results of `family`.
fn matrix(names: &[String], records: &BTreeMap<String, Option<ProbeRecord>>, family: Family, now: u64) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for from in names {
        let rec = records.get(from).and_then(Option::as_ref);
        for to in names.iter().filter(|t| *t != from) {
            let via = rec.and_then(|r| r.of(family).get(to)).and_then(|p| p.via).map(|b| b.to_string());
            let (state, rtt_us, age_secs) = match rec {
                None => (Reach::Unknown, None, None),
                Some(r) => {
                    let age = now.saturating_sub(r.updated);
                    match r.of(family).get(to) {
                        None => (Reach::Unknown, None, Some(age)),
                        Some(_) if age > 3 * r.interval_secs.max(1) + 5 => (Reach::Stale, None, Some(age)),
                        Some(p) if p.ok => (Reach::Ok, p.rtt_us, Some(age)),
                        Some(_) => (Reach::Fail, None, Some(age)),
                    }
                }
            };
            pairs.push(Pair { from: from.clone(), to: to.clone(), state, rtt_us, age_secs, via });
        }
    }
    pairs
}

fn summarize(nodes: usize, alive: usize, pairs: &[Pair]) -> Summary {
    let count = |s: Reach| pairs.iter().filter(|p| p.state == s).count();
    Summary {
        nodes,
        alive,
        pairs: pairs.len(),
        reachable: count(Reach::Ok),
        failing: count(Reach::Fail),
        unknown: count(Reach::Unknown) + count(Reach::Stale),
    }
}

/// A pair's state, and under `auto` the backend carrying it (`312us vxlan`).
fn cell(p: &Pair) -> String {
    let state = match p.state {
        Reach::Ok => p.rtt_us.map_or_else(|| "ok".to_string(), round_trip),
        Reach::Fail => "FAIL".into(),
        Reach::Stale => "stale".into(),
        Reach::Unknown => "?".into(),
    };
    match &p.via {
        Some(via) => format!("{state} {via}"),
        None => state,
    }
}

/// The human view: config line, node table, reachability matrix (one per family when a node
/// holds an IPv6 subnet, each under its family's name), summary.
pub fn render(s: &ClusterStatus) -> String {
    let mut out = match &s.config {
        Some(c) => {
            let pools: Vec<String> =
                c.pools().iter().map(|(_, p)| format!("{}, /{} per node", p.cidr, p.subnet_len)).collect();
            format!("network {}: {}, backend {}\n\n", s.network, pools.join(", "), c.backend)
        }
        None => format!("network {}: not initialised (run weftctl network init)\n\n", s.network),
    };
    out.push_str(&nodes::render(&s.nodes));
    if s.summary6.is_none() {
        // IPv4 alone, as before dual-stack.
        out.push_str(&render_matrix(
            &s.reachability,
            "reachability (ICMP from the row node's gateway to the column node's gateway, round trip)",
        ));
        let m = &s.summary;
        out.push_str(&format!(
            "\n{} node(s), {} alive; {} of {} pair(s) reachable, {} failing, {} unknown\n",
            m.nodes, m.alive, m.reachable, m.pairs, m.failing, m.unknown
        ));
    } else {
        out.push_str(&render_matrix(
            &s.reachability,
            "reachability over IPv4 (ICMP from the row node's IPv4 gateway to the column node's, round trip)",
        ));
        out.push_str(&render_matrix(
            &s.reachability6,
            "reachability over IPv6 (ICMPv6 from the row node's IPv6 gateway to the column node's, round trip)",
        ));
        out.push_str(&format!("\n{} node(s), {} alive\n", s.summary.nodes, s.summary.alive));
        let v4 = s.nodes.iter().any(|r| r.subnet.is_some()).then_some(&s.summary);
        for (family, m) in [(Family::V4, v4), (Family::V6, s.summary6.as_ref())] {
            let Some(m) = m else { continue };
            out.push_str(&format!(
                "{family}: {} of {} pair(s) reachable, {} failing, {} unknown\n",
                m.reachable, m.pairs, m.failing, m.unknown
            ));
        }
    }
    if let Some(oldest) = s.reachability.iter().chain(&s.reachability6).filter_map(|p| p.age_secs).max() {
        out.push_str(&format!("oldest probe result: {} ago\n", age(Duration::from_secs(oldest))));
    }
    out
}

/// One matrix under its `title` (nothing with fewer than two nodes).
fn render_matrix(pairs: &[Pair], title: &str) -> String {
    let names: Vec<&String> = {
        let mut v: Vec<&String> = pairs.iter().map(|p| &p.from).collect();
        v.dedup();
        v
    };
    if names.len() < 2 {
        return String::new();
    }
    let mut headers = vec!["FROM\\TO"];
    headers.extend(names.iter().map(|n| n.as_str()));
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|from| {
            let mut row = vec![from.to_string()];
            for to in &names {
                row.push(if from == to {
                    "-".into()
                } else {
                    pairs.iter().find(|p| &&p.from == from && &&p.to == to).map_or("?".into(), cell)
                });
            }
            row
        })
        .collect();
    format!("\n{title}:\n{}", table(&headers, &rows))
}

/// Reads everything `weftctl status` shows.
pub async fn fetch(store: &impl Store, network: &str, now: u64) -> anyhow::Result<ClusterStatus> {
    let keys = Keys::new(network);
    // A missing or malformed config shows as "not initialised"; the nodes are still worth seeing.
    let config = nodes::list_prefix(store, &keys.config())
        .await?
        .into_iter()
        .find(|(k, _)| *k == keys.config())
        .and_then(|(k, v)| NetworkConfig::from_json(&k, &v).ok());
    let subnets = nodes::list_subnet_records(store, &keys).await?;
    let beats = nodes::list_prefix(store, &keys.nodes_prefix()).await?;
    let probes = nodes::list_prefix(store, &keys.probes_prefix()).await?;
    Ok(build(network, config, &subnets, &beats, &probes, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> Kv {
        (k.to_string(), v.as_bytes().to_vec())
    }

    fn subnet(n: u8, node: &str) -> Kv {
        kv(
            &format!("/weft/v1/default/subnets/10.244.{n}.0-24"),
            &format!(
                r#"{{"schema":1,"node":"{node}","node_id":"id-{node}","public_ip":"172.30.0.1{n}","backend":"host-gw"}}"#
            ),
        )
    }

    fn beat(node: &str, updated: u64) -> Kv {
        kv(
            &format!("/weft/v1/default/nodes/{node}"),
            &format!(r#"{{"schema":1,"node_id":"id-{node}","status":"ready","updated":{updated}}}"#),
        )
    }

    #[test]
    fn matrix_from_probe_records() {
        let now = 1000;
        let subnets = [subnet(1, "n1"), subnet(2, "n2"), subnet(3, "n3")];
        let beats = [beat("n1", 998), beat("n2", 999)];
        let probes = [
            kv(
                "/weft/v1/default/probes/n1",
                r#"{"schema":1,"updated":995,"interval_secs":10,"peers":{"n2":{"ok":true,"rtt_us":150},"n3":{"ok":false}}}"#,
            ),
            kv(
                "/weft/v1/default/probes/n2",
                r#"{"schema":1,"updated":900,"interval_secs":10,"peers":{"n1":{"ok":true}}}"#,
            ),
            kv("/weft/v1/default/probes/n3", "not json"),
        ];
        let cfg = NetworkConfig::new("t", "10.244.0.0/16", 24, weft_config::Backend::HostGw).expect("cfg");
        let s = build("default", Some(cfg), &subnets, &beats, &probes, now);
        let state = |f: &str, t: &str| {
            s.reachability.iter().find(|p| p.from == f && p.to == t).map(|p| (p.state, p.rtt_us)).expect("pair")
        };
        assert_eq!(state("n1", "n2"), (Reach::Ok, Some(150)));
        assert_eq!(state("n1", "n3"), (Reach::Fail, None));
        assert_eq!(state("n2", "n1"), (Reach::Stale, None), "100 s old with a 10 s interval");
        assert_eq!(state("n2", "n3"), (Reach::Unknown, None), "n2's record does not mention n3");
        assert_eq!(state("n3", "n1"), (Reach::Unknown, None), "malformed record");
        assert_eq!(s.reachability.len(), 6);
        assert_eq!(s.summary, Summary { nodes: 3, alive: 2, pairs: 6, reachable: 1, failing: 1, unknown: 4 });
        let text = render(&s);
        assert!(text.starts_with("network default: 10.244.0.0/16, /24 per node, backend host-gw\n\nNODE"), "{text}");
        assert!(text.contains("FROM\\TO  n1     n2     n3\nn1       -      150us  FAIL\nn2       stale  -      ?\nn3       ?      ?      -\n"), "{text}");
        assert!(text.contains("3 node(s), 2 alive; 1 of 6 pair(s) reachable, 1 failing, 4 unknown"), "{text}");
        let j = serde_json::to_value(&s).expect("json");
        assert_eq!(
            j["reachability"][0],
            serde_json::json!({"from":"n1","to":"n2","state":"ok","rtt_us":150,"age_secs":5})
        );
        assert_eq!(j["config"]["cidr"], "10.244.0.0/16");
    }

    #[test]
    fn under_auto_each_pair_shows_the_backend_carrying_it() {
        let subnets = [subnet(1, "n1"), subnet(2, "n2"), subnet(3, "n3")];
        let beats = [beat("n1", 998), beat("n2", 999), beat("n3", 999)];
        let probes = [kv(
            "/weft/v1/default/probes/n1",
            r#"{"schema":1,"updated":995,"interval_secs":10,"peers":{"n2":{"ok":true,"rtt_us":150,"via":"vxlan"},"n3":{"ok":true,"rtt_us":90,"via":"host-gw"}}}"#,
        )];
        let cfg = NetworkConfig::new("t", "10.244.0.0/16", 24, weft_config::Backend::Auto).expect("cfg");
        let s = build("default", Some(cfg), &subnets, &beats, &probes, 1000);
        let text = render(&s);
        assert!(text.contains("n1       -   150us vxlan  90us host-gw\n"), "{text}");
        let j = serde_json::to_value(&s).expect("json");
        assert_eq!(j["reachability"][0]["via"], "vxlan");
        assert!(j["reachability"][2].get("via").is_none(), "n2 published nothing: {}", j["reachability"][2]);
    }

    fn subnet6(n: u8, node: &str) -> Kv {
        kv(
            &format!("/weft/v1/default/subnets6/fd00:10:244:{n}::-64"),
            &format!(
                r#"{{"schema":1,"node":"{node}","node_id":"id-{node}","public_ip":"172.30.0.1{n}","public_ip6":"fd00:30::1{n}","backend":"host-gw"}}"#
            ),
        )
    }

    #[test]
    fn a_matrix_per_family_in_a_dual_stack_cluster() {
        let now = 1000;
        let subnets =
            [subnet(1, "n1"), subnet(2, "n2"), subnet(3, "n3"), subnet6(1, "n1"), subnet6(2, "n2"), subnet6(3, "n3")];
        let beats = [beat("n1", 998), beat("n2", 999), beat("n3", 999)];
        let probes = [
            kv(
                "/weft/v1/default/probes/n1",
                r#"{"schema":1,"updated":995,"interval_secs":10,"peers":{"n2":{"ok":true,"rtt_us":150},"n3":{"ok":true,"rtt_us":160}},"peers6":{"n2":{"ok":true,"rtt_us":170},"n3":{"ok":false}}}"#,
            ),
            kv(
                "/weft/v1/default/probes/n2",
                r#"{"schema":1,"updated":996,"interval_secs":10,"peers":{"n1":{"ok":true,"rtt_us":140},"n3":{"ok":true,"rtt_us":130}},"peers6":{"n1":{"ok":true,"rtt_us":1500},"n3":{"ok":true,"rtt_us":120}}}"#,
            ),
            // An agent from before IPv6 probes: IPv4 results alone.
            kv(
                "/weft/v1/default/probes/n3",
                r#"{"schema":1,"updated":997,"interval_secs":10,"peers":{"n1":{"ok":true,"rtt_us":110},"n2":{"ok":true,"rtt_us":100}}}"#,
            ),
        ];
        let cfg = NetworkConfig::with_pools(
            "t",
            Some(("10.244.0.0/16", 24)),
            Some(("fd00:10:244::/56", 64)),
            weft_config::Backend::HostGw,
        )
        .expect("cfg");
        let s = build("default", Some(cfg), &subnets, &beats, &probes, now);
        let state = |pairs: &[Pair], f: &str, t: &str| {
            pairs.iter().find(|p| p.from == f && p.to == t).map(|p| (p.state, p.rtt_us)).expect("pair")
        };
        assert_eq!(s.reachability.len(), 6);
        assert!(s.reachability.iter().all(|p| p.state == Reach::Ok), "{:?}", s.reachability);
        assert_eq!(state(&s.reachability, "n1", "n3"), (Reach::Ok, Some(160)));
        assert_eq!(state(&s.reachability6, "n1", "n2"), (Reach::Ok, Some(170)));
        assert_eq!(state(&s.reachability6, "n1", "n3"), (Reach::Fail, None));
        assert_eq!(state(&s.reachability6, "n3", "n1"), (Reach::Unknown, None), "an older agent's record");
        assert_eq!(s.summary, Summary { nodes: 3, alive: 3, pairs: 6, reachable: 6, failing: 0, unknown: 0 });
        assert_eq!(s.summary6, Some(Summary { nodes: 3, alive: 3, pairs: 6, reachable: 3, failing: 1, unknown: 2 }));
        let text = render(&s);
        assert!(
            text.contains(
                "\nreachability over IPv4 (ICMP from the row node's IPv4 gateway to the column node's, round trip):\n\
                 FROM\\TO  n1     n2     n3\nn1       -      150us  160us\nn2       140us  -      130us\nn3       110us  100us  -\n\
                 \nreachability over IPv6 (ICMPv6 from the row node's IPv6 gateway to the column node's, round trip):\n\
                 FROM\\TO  n1     n2     n3\nn1       -      170us  FAIL\nn2       1.5ms  -      120us\nn3       ?      ?      -\n\
                 \n3 node(s), 3 alive\nIPv4: 6 of 6 pair(s) reachable, 0 failing, 0 unknown\n\
                 IPv6: 3 of 6 pair(s) reachable, 1 failing, 2 unknown\noldest probe result: 5s ago\n"
            ),
            "{text}"
        );
        // JSON: the IPv4 matrix and summary as before, the IPv6 ones beside them.
        let j = serde_json::to_value(&s).expect("json");
        assert_eq!(
            j["reachability"][0],
            serde_json::json!({"from":"n1","to":"n2","state":"ok","rtt_us":150,"age_secs":5})
        );
        assert_eq!(j["reachability6"][1], serde_json::json!({"from":"n1","to":"n3","state":"fail","age_secs":5}));
        assert_eq!(j["summary"]["reachable"], 6);
        assert_eq!(j["summary6"]["failing"], 1);

        // IPv6 only: the IPv6 matrix alone, under its name; no IPv4 pairs.
        let only6 = build("default", None, &subnets[3..], &beats, &probes[..2], now);
        assert!(only6.reachability.is_empty());
        assert_eq!(only6.summary, Summary { nodes: 3, alive: 3, pairs: 0, reachable: 0, failing: 0, unknown: 0 });
        let text = render(&only6);
        assert!(!text.contains("over IPv4") && !text.contains("IPv4:"), "{text}");
        assert!(text.contains("reachability over IPv6 (ICMPv6"), "{text}");
        assert!(
            text.contains("\n3 node(s), 3 alive\nIPv6: 3 of 6 pair(s) reachable, 1 failing, 2 unknown\n"),
            "{text}"
        );
        let j = serde_json::to_value(&only6).expect("json");
        assert_eq!(j["reachability"], serde_json::json!([]));
    }

    #[test]
    fn an_ipv4_cluster_has_no_ipv6_fields() {
        let s = build("default", None, &[subnet(1, "n1"), subnet(2, "n2")], &[], &[], 1000);
        let j = serde_json::to_value(&s).expect("json");
        assert!(j.get("reachability6").is_none() && j.get("summary6").is_none(), "{j}");
        let text = render(&s);
        assert!(
            text.contains(
                "\nreachability (ICMP from the row node's gateway to the column node's gateway, round trip):\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("\n2 node(s), 0 alive; 0 of 2 pair(s) reachable, 0 failing, 2 unknown\n"), "{text}");
    }
}

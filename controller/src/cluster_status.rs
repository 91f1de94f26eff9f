//! `weftctl status`: the cluster at a glance. The network config, every node (subnet records
//! joined with heartbeats, as `weftctl nodes`), and a reachability matrix built from the probe
//! records agents publish (`/weft/v1/<net>/probes/<node>`: each agent pings every peer's gateway
//! from its own gateway, through the overlay, every `[probes] interval_secs`).
//!
//! Probe records are untrusted input like every record: a malformed one makes its row
//! "unknown", never a crash.

use crate::nodes::{self, Kv, NodeRow};
use crate::output::{age, table};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use weft_config::probes::ProbeRecord;
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
}

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
    /// Every ordered pair of distinct named nodes, by (from, to).
    pub reachability: Vec<Pair>,
    pub summary: Summary,
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
    let mut names: Vec<String> = nodes.iter().filter(|r| r.has_subnet()).filter_map(|r| r.node.clone()).collect();
    names.sort();
    names.dedup();
    let mut reachability = Vec::new();
    for from in &names {
        let rec = records.get(from).and_then(Option::as_ref);
        for to in names.iter().filter(|t| *t != from) {
            let (state, rtt_us, age_secs) = match rec {
                None => (Reach::Unknown, None, None),
                Some(r) => {
                    let age = now.saturating_sub(r.updated);
                    match r.peers.get(to) {
                        None => (Reach::Unknown, None, Some(age)),
                        Some(_) if age > 3 * r.interval_secs.max(1) + 5 => (Reach::Stale, None, Some(age)),
                        Some(p) if p.ok => (Reach::Ok, p.rtt_us, Some(age)),
                        Some(_) => (Reach::Fail, None, Some(age)),
                    }
                }
            };
            reachability.push(Pair { from: from.clone(), to: to.clone(), state, rtt_us, age_secs });
        }
    }
    let count = |s: Reach| reachability.iter().filter(|p| p.state == s).count();
    let summary = Summary {
        nodes: names.len(),
        alive: nodes.iter().filter(|r| r.alive && r.has_subnet()).count(),
        pairs: reachability.len(),
        reachable: count(Reach::Ok),
        failing: count(Reach::Fail),
        unknown: count(Reach::Unknown) + count(Reach::Stale),
    };
    ClusterStatus { network: network.to_string(), config, nodes, reachability, summary }
}

fn cell(p: &Pair) -> String {
    match p.state {
        Reach::Ok => match p.rtt_us {
            None => "ok".to_string(),
            Some(us) if us < 1000 => format!("{us}us"),
            Some(us) => format!("{:.1}ms", us as f64 / 1000.0),
        },
        Reach::Fail => "FAIL".into(),
        Reach::Stale => "stale".into(),
        Reach::Unknown => "?".into(),
    }
}

/// The human view: config line, node table, reachability matrix, summary.
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
    let names: Vec<&String> = {
        let mut v: Vec<&String> = s.reachability.iter().map(|p| &p.from).collect();
        v.dedup();
        v
    };
    if names.len() >= 2 {
        out.push_str("\nreachability (ICMP from the row node's gateway to the column node's gateway, round trip):\n");
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
                        s.reachability.iter().find(|p| &&p.from == from && &&p.to == to).map_or("?".into(), cell)
                    });
                }
                row
            })
            .collect();
        out.push_str(&table(&headers, &rows));
    }
    let m = &s.summary;
    out.push_str(&format!(
        "\n{} node(s), {} alive; {} of {} pair(s) reachable, {} failing, {} unknown\n",
        m.nodes, m.alive, m.reachable, m.pairs, m.failing, m.unknown
    ));
    if let Some(oldest) = s.reachability.iter().filter_map(|p| p.age_secs).max() {
        out.push_str(&format!("oldest probe result: {} ago\n", age(Duration::from_secs(oldest))));
    }
    out
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
}

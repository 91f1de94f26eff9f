//! `weftctl nodes` and `weftctl node evict`: subnet records joined with heartbeats.
//!
//! Records come from other machines, so they are parsed as untrusted input: a malformed one
//! becomes a row that says so, never a crash.

use crate::output::{age, table};
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use weft_config::subnet::Family;
use weft_config::{Heartbeat, Keys, SubnetRecord};
use weft_store::{Compare, Op, Store};

/// One line of `weftctl nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    /// Node name; `None` for a malformed record.
    pub node: Option<String>,
    /// Subnet (from the key), `None` for a node with a heartbeat but no subnet record.
    pub subnet: Option<String>,
    pub public_ip: Option<String>,
    /// The IPv6 subnet (from its key under `subnets6/`), in a network with an IPv6 pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    /// The IPv6 underlay address the node's records publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip6: Option<String>,
    pub backend: Option<String>,
    pub node_id: Option<String>,
    /// A heartbeat with the same node id is present.
    pub alive: bool,
    /// Seconds since the heartbeat was created (the agent's start; renewals only extend its lease).
    pub age_secs: Option<u64>,
    pub status: Option<String>,
    /// What is wrong with the record, if anything.
    pub problem: Option<String>,
}

impl NodeRow {
    /// Whether the row holds a subnet of either family.
    pub fn has_subnet(&self) -> bool {
        self.subnet.is_some() || self.subnet6.is_some()
    }
}

/// A key and its value as read from etcd.
pub type Kv = (String, Vec<u8>);

/// Joins subnet records (IPv4 under `subnets/`, IPv6 under `subnets6/`) with heartbeats: one row
/// per node, its IPv6 subnet beside the IPv4 one when both records name the same node and
/// identity. `now` is seconds since the Unix epoch.
pub fn build_rows(keys: &Keys, subnets: &[Kv], heartbeats: &[Kv], now: u64) -> Vec<NodeRow> {
    let mut beats: BTreeMap<String, Result<Heartbeat, String>> = BTreeMap::new();
    for (k, v) in heartbeats {
        if let Some(name) = keys.node_segment(k) {
            beats.insert(name.to_string(), Heartbeat::from_json(k, v).map_err(|e| e.to_string()));
        }
    }
    let v6_prefix = keys.subnets_prefix_of(Family::V6);
    let (v6, v4): (Vec<&Kv>, Vec<&Kv>) = subnets.iter().partition(|(k, _)| k.starts_with(&v6_prefix));
    let mut seen = std::collections::BTreeSet::new();
    let mut rows: Vec<NodeRow> = Vec::new();
    for (family, records) in [(Family::V4, v4), (Family::V6, v6)] {
        for (k, v) in records {
            let subnet = match family {
                Family::V4 => keys.subnet_segment(k),
                Family::V6 => keys.subnet_segment_of(k).map(|(_, seg)| seg),
            }
            .map(|seg| weft_config::subnet::from_key_form(seg).map_or_else(|| seg.to_string(), |s| s.to_string()));
            let (subnet, subnet6) = match family {
                Family::V4 => (subnet, None),
                Family::V6 => (None, subnet),
            };
            match SubnetRecord::from_json(k, v) {
                Ok(r) => {
                    let public_ip6 = r.public_ip6.map(|ip| ip.to_string());
                    let joined = rows.iter_mut().find(|row| {
                        family == Family::V6
                            && row.subnet6.is_none()
                            && row.node.as_deref() == Some(r.node.as_str())
                            && row.node_id.as_deref() == Some(r.node_id.as_str())
                    });
                    if let Some(row) = joined {
                        row.subnet6 = subnet6;
                        row.public_ip6 = public_ip6;
                        continue;
                    }
                    let hb = beats.get(&r.node);
                    seen.insert(r.node.clone());
                    let (alive, age_secs, status, problem) = match hb {
                        Some(Ok(h)) if h.node_id == r.node_id => {
                            (true, Some(now.saturating_sub(h.updated)), Some(h.status.clone()), None)
                        }
                        Some(Ok(h)) => (false, None, None, Some(format!("heartbeat is from node id {:?}", h.node_id))),
                        Some(Err(e)) => (false, None, None, Some(e.clone())),
                        None => (false, None, None, None),
                    };
                    rows.push(NodeRow {
                        node: Some(r.node),
                        subnet,
                        public_ip: Some(r.public_ip.to_string()),
                        subnet6,
                        public_ip6: if family == Family::V6 { public_ip6 } else { None },
                        backend: Some(r.backend.to_string()),
                        node_id: Some(r.node_id),
                        alive,
                        age_secs,
                        status,
                        problem,
                    });
                }
                Err(e) => rows.push(NodeRow {
                    node: None,
                    subnet,
                    public_ip: None,
                    subnet6,
                    public_ip6: None,
                    backend: None,
                    node_id: None,
                    alive: false,
                    age_secs: None,
                    status: None,
                    problem: Some(format!("malformed record: {e}")),
                }),
            }
        }
    }
    // Nodes that beat but hold no subnet (starting, or their record was evicted).
    for (name, hb) in beats {
        if seen.contains(&name) {
            continue;
        }
        let (age_secs, status, node_id, problem) = match hb {
            Ok(h) => {
                (Some(now.saturating_sub(h.updated)), Some(h.status), Some(h.node_id), Some("no subnet record".into()))
            }
            Err(e) => (None, None, None, Some(e)),
        };
        rows.push(NodeRow {
            node: Some(name),
            subnet: None,
            public_ip: None,
            subnet6: None,
            public_ip6: None,
            backend: None,
            node_id,
            alive: age_secs.is_some(),
            age_secs,
            status,
            problem,
        });
    }
    rows
}

/// The table of `weftctl nodes`; a NOTE column appears only when some row has a problem.
pub fn render(rows: &[NodeRow]) -> String {
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let with_notes = rows.iter().any(|r| r.problem.is_some());
    let with_v6 = rows.iter().any(|r| r.subnet6.is_some());
    let mut headers = vec!["NODE", "SUBNET", "PUBLIC-IP"];
    if with_v6 {
        headers.extend(["SUBNET6", "PUBLIC-IP6"]);
    }
    headers.extend(["BACKEND", "ALIVE", "AGE"]);
    if with_notes {
        headers.push("NOTE");
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row =
                vec![r.node.clone().unwrap_or_else(|| "<malformed>".into()), dash(&r.subnet), dash(&r.public_ip)];
            if with_v6 {
                row.extend([dash(&r.subnet6), dash(&r.public_ip6)]);
            }
            row.extend([
                dash(&r.backend),
                if r.alive { "yes" } else { "no" }.to_string(),
                r.age_secs.map_or_else(|| "-".into(), |s| age(Duration::from_secs(s))),
            ]);
            if with_notes {
                row.push(dash(&r.problem));
            }
            row
        })
        .collect();
    table(&headers, &body)
}

/// Reads every key under `prefix` as (key, value) pairs.
pub async fn list_prefix(store: &impl Store, prefix: &str) -> anyhow::Result<Vec<Kv>> {
    let (records, _) = store.list(prefix).await?;
    Ok(records.into_iter().map(|r| (r.key, r.value)).collect())
}

/// Every subnet record of the network, IPv4 (`subnets/`) then IPv6 (`subnets6/`).
pub async fn list_subnet_records(store: &impl Store, keys: &Keys) -> anyhow::Result<Vec<Kv>> {
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        out.extend(list_prefix(store, &keys.subnets_prefix_of(family)).await?);
    }
    Ok(out)
}

pub async fn list(store: &impl Store, network: &str, now: u64) -> anyhow::Result<Vec<NodeRow>> {
    let keys = Keys::new(network);
    let subnets = list_subnet_records(store, &keys).await?;
    let beats = list_prefix(store, &keys.nodes_prefix()).await?;
    Ok(build_rows(&keys, &subnets, &beats, now))
}

/// Deletes the subnet record(s) of node `name` (of both families) and its heartbeat, in one
/// transaction. Each record is deleted only if unchanged since it was read. Returns the deleted
/// subnet keys; none found is an error.
pub async fn evict(store: &impl Store, network: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let keys = Keys::new(network);
    let mut records = Vec::new();
    for family in [Family::V4, Family::V6] {
        records.extend(store.list(&keys.subnets_prefix_of(family)).await?.0);
    }
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    let mut deleted = Vec::new();
    for r in records {
        if SubnetRecord::from_json(&r.key, &r.value).is_ok_and(|rec| rec.node == name) {
            compares.push(Compare::modified_at(&r.key, r.mod_revision));
            ops.push(Op::delete(&r.key));
            deleted.push(r.key);
        }
    }
    if deleted.is_empty() {
        anyhow::bail!("node {name} holds no subnet record in network {network}");
    }
    ops.push(Op::delete(&keys.node(name)));
    let ok = store.txn(compares, ops, vec![]).await.with_context(|| format!("deleting the records of node {name}"))?;
    if !ok {
        anyhow::bail!("the records of node {name} changed while evicting it; look again with weftctl nodes");
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> Kv {
        (k.to_string(), v.as_bytes().to_vec())
    }

    #[test]
    fn join_records_and_heartbeats() {
        let keys = Keys::new("default");
        let subnets = vec![
            kv(
                "/weft/v1/default/subnets/10.244.1.0-24",
                r#"{"schema":1,"node":"n1","node_id":"id1","public_ip":"172.30.0.11","backend":"host-gw"}"#,
            ),
            kv(
                "/weft/v1/default/subnets/10.244.2.0-24",
                r#"{"schema":1,"node":"n2","node_id":"id2","public_ip":"172.30.0.12","backend":"host-gw"}"#,
            ),
            kv("/weft/v1/default/subnets/10.244.3.0-24", "garbage"),
        ];
        let beats = vec![
            kv("/weft/v1/default/nodes/n1", r#"{"schema":1,"node_id":"id1","status":"ready","updated":990}"#),
            kv("/weft/v1/default/nodes/n2", r#"{"schema":1,"node_id":"other","status":"ready","updated":990}"#),
            kv("/weft/v1/default/nodes/n4", r#"{"schema":1,"node_id":"id4","status":"starting","updated":999}"#),
        ];
        let rows = build_rows(&keys, &subnets, &beats, 1000);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].node.as_deref(), Some("n1"));
        assert!(rows[0].alive);
        assert_eq!(rows[0].age_secs, Some(10));
        assert_eq!(rows[0].subnet.as_deref(), Some("10.244.1.0/24"));
        assert!(!rows[1].alive, "heartbeat of another machine does not count");
        assert!(rows[2].problem.as_deref().is_some_and(|p| p.starts_with("malformed record: ")));
        assert_eq!(rows[3].node.as_deref(), Some("n4"));
        assert_eq!(rows[3].problem.as_deref(), Some("no subnet record"));

        let t = render(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NODE         SUBNET         PUBLIC-IP    BACKEND  ALIVE  AGE  NOTE"), "{t}");
        assert!(lines[1].starts_with("n1           10.244.1.0/24  172.30.0.11  host-gw  yes    10s  -"), "{t}");
        assert!(
            lines[3].starts_with("<malformed>  10.244.3.0/24  -            -        no     -    malformed record"),
            "{t}"
        );
    }

    #[tokio::test]
    async fn evict_deletes_the_node_records_and_heartbeat_only() {
        let s = weft_store::MemStore::new();
        let rec = |n: &str| {
            format!(r#"{{"schema":1,"node":"{n}","node_id":"id-{n}","public_ip":"172.30.0.11","backend":"host-gw"}}"#)
        };
        s.put("/weft/v1/default/subnets/10.244.1.0-24", rec("n1"), 0).await.expect("put");
        s.put("/weft/v1/default/subnets/10.244.2.0-24", rec("n2"), 0).await.expect("put");
        s.put("/weft/v1/default/subnets/10.244.3.0-24", "garbage", 0).await.expect("put");
        s.put("/weft/v1/default/nodes/n1", "{}", 0).await.expect("put");
        s.put("/weft/v1/default/nodes/n2", "{}", 0).await.expect("put");
        let deleted = evict(&s, "default", "n1").await.expect("evict");
        assert_eq!(deleted, ["/weft/v1/default/subnets/10.244.1.0-24"]);
        let (left, _) = s.list("/weft/v1/default/").await.expect("list");
        let left: Vec<&str> = left.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            left,
            [
                "/weft/v1/default/nodes/n2",
                "/weft/v1/default/subnets/10.244.2.0-24",
                "/weft/v1/default/subnets/10.244.3.0-24"
            ]
        );
        let e = evict(&s, "default", "n1").await.expect_err("nothing left");
        assert_eq!(e.to_string(), "node n1 holds no subnet record in network default");
        let rows = list(&s, "default", 0).await.expect("list");
        assert_eq!(rows.len(), 2, "n2 (joined with its heartbeat) and the malformed record: {rows:?}");
        assert_eq!(rows[0].node.as_deref(), Some("n2"));
    }

    #[test]
    fn no_notes_column_when_all_is_well() {
        let rows = build_rows(&Keys::new("default"), &[], &[], 0);
        assert_eq!(render(&rows), "NODE  SUBNET  PUBLIC-IP  BACKEND  ALIVE  AGE\n");
    }

    fn rec6(n: &str, id: &str) -> String {
        format!(
            r#"{{"schema":1,"node":"{n}","node_id":"{id}","public_ip":"172.30.0.11","public_ip6":"fd00:30::11","backend":"host-gw"}}"#
        )
    }

    #[test]
    fn a_dual_stack_node_is_one_row_with_both_subnets() {
        let keys = Keys::new("default");
        let subnets = vec![
            kv("/weft/v1/default/subnets/10.244.1.0-24", &rec6("n1", "id1")),
            kv("/weft/v1/default/subnets/10.244.2.0-24", &rec6("n2", "id2")),
            kv("/weft/v1/default/subnets6/fd00:10:244:1::-64", &rec6("n1", "id1")),
            kv("/weft/v1/default/subnets6/fd00:10:244:3::-64", &rec6("n3", "id3")),
            kv("/weft/v1/default/subnets6/fd00:10:244:4::-64", "garbage"),
        ];
        let beats =
            vec![kv("/weft/v1/default/nodes/n1", r#"{"schema":1,"node_id":"id1","status":"ready","updated":990}"#)];
        let rows = build_rows(&keys, &subnets, &beats, 1000);
        let view: Vec<String> =
            rows.iter().map(|r| format!("{:?} {:?} {:?} {}", r.node, r.subnet, r.subnet6, r.alive)).collect();
        assert_eq!(
            view,
            [
                r#"Some("n1") Some("10.244.1.0/24") Some("fd00:10:244:1::/64") true"#,
                r#"Some("n2") Some("10.244.2.0/24") None false"#,
                r#"Some("n3") None Some("fd00:10:244:3::/64") false"#,
                r#"None None Some("fd00:10:244:4::/64") false"#,
            ]
        );
        assert!(rows.iter().all(NodeRow::has_subnet));
        assert_eq!(rows[0].public_ip6.as_deref(), Some("fd00:30::11"));
        let t = render(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("NODE         SUBNET         PUBLIC-IP    SUBNET6             PUBLIC-IP6   BACKEND"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("n1           10.244.1.0/24  172.30.0.11  fd00:10:244:1::/64  fd00:30::11  host-gw"),
            "{t}"
        );
        let json = serde_json::to_value(&rows[1]).expect("json");
        assert!(json.get("subnet6").is_none(), "absent, not null, without an IPv6 subnet: {json}");
    }

    #[tokio::test]
    async fn evict_deletes_the_records_of_both_families() {
        let s = weft_store::MemStore::new();
        s.put("/weft/v1/default/subnets/10.244.1.0-24", rec6("n1", "id1"), 0).await.expect("put");
        s.put("/weft/v1/default/subnets6/fd00:10:244:1::-64", rec6("n1", "id1"), 0).await.expect("put");
        s.put("/weft/v1/default/subnets6/fd00:10:244:2::-64", rec6("n2", "id2"), 0).await.expect("put");
        let rev = s.revision();
        let deleted = evict(&s, "default", "n1").await.expect("evict");
        assert_eq!(deleted, ["/weft/v1/default/subnets/10.244.1.0-24", "/weft/v1/default/subnets6/fd00:10:244:1::-64"]);
        assert_eq!(s.revision(), rev + 1, "in one transaction");
        let (left, _) = s.list("/weft/v1/default/").await.expect("list");
        assert_eq!(
            left.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["/weft/v1/default/subnets6/fd00:10:244:2::-64"]
        );
        let rows = list(&s, "default", 0).await.expect("list");
        assert_eq!(rows.iter().map(|r| r.subnet6.as_deref()).collect::<Vec<_>>(), [Some("fd00:10:244:2::/64")]);
    }
}
